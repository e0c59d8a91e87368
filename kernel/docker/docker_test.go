package docker

// These tests run kernels in real containers on a real Docker engine with the
// image built by scripts/docker-up.sh. Without an engine they skip, except
// under CI=true, where they fail.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/client"

	"github.com/codegw/codegw/kernel"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func randomID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// shortTempDir is a state directory with a short path: socket paths are
// limited to about 100 bytes, and t.TempDir's include the test name.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cgwd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testConfig is a configuration with a test-only instance id, so that Reap
// in one test never touches another's containers.
func testConfig(t *testing.T) Config {
	t.Helper()
	cfg := Config{
		Image:      os.Getenv("DOCKER_IMAGE"),
		InstanceID: "test-" + randomID(t),
		StateDir:   shortTempDir(t),
		Preload:    []string{}, // fast starts; one test checks the default
		Start:      StartSpawn, // a container per kernel; forked_test.go tests fork mode
		Logger:     quiet,
	}
	if testing.Verbose() {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// newTestProvisioner connects to the engine, or skips (fails under CI=true)
// when there is none or the image is missing.
func newTestProvisioner(t *testing.T, cfg Config) *Provisioner {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := New(ctx, cfg)
	if errors.Is(err, kernel.ErrProvisioner) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Docker is required under CI=true (run scripts/docker-up.sh first): %v", err)
		}
		t.Skipf("no Docker engine or executor image (run scripts/docker-up.sh): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if n, err := p.Reap(ctx); err != nil || n > 0 {
			t.Errorf("after the test, Reap removed %d kernels, err %v: a kernel was not closed", n, err)
		}
		p.Close()
	})
	return p
}

// launch starts a kernel and waits until it is ready.
func launch(t *testing.T, p *Provisioner, spec kernel.Spec) *kernel.Kernel {
	t.Helper()
	if spec.ID == "" {
		spec.ID = "k" + randomID(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k, err := kernel.Launch(ctx, p, spec, kernel.LaunchOptions{
		Logger: quiet,
		Client: kernel.ClientOptions{HeartbeatTimeout: 10 * time.Second, Logger: quiet},
	})
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	t.Cleanup(func() { k.Close(context.Background()) })
	return k
}

// execute runs code and returns its stdout.
func execute(t *testing.T, k *kernel.Kernel, code string) (string, *kernel.ExecuteReply, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out strings.Builder
	reply, err := k.Client().Execute(ctx, code, kernel.ExecuteOptions{
		OnMessage: func(m *kernel.Message) {
			if m.Header.MsgType != "stream" {
				return
			}
			var s struct{ Name, Text string }
			if json.Unmarshal(m.Content, &s) == nil && s.Name == "stdout" {
				out.WriteString(s.Text)
			}
		},
	})
	return out.String(), reply, err
}

func mustRun(t *testing.T, k *kernel.Kernel, code string) string {
	t.Helper()
	out, reply, err := execute(t, k, code)
	if err != nil {
		t.Fatalf("execute: %v", err)
	}
	if reply.Status != "ok" {
		t.Fatalf("execute: %s: %s: %s\n%s", reply.Status, reply.EName, reply.EValue, strings.Join(reply.Traceback, "\n"))
	}
	return out
}

func waitExited(t *testing.T, proc kernel.Process, within time.Duration) kernel.Exit {
	t.Helper()
	select {
	case <-proc.Exited():
		return proc.Exit()
	case <-time.After(within):
		t.Fatalf("kernel did not exit within %v", within)
		return kernel.Exit{}
	}
}

func engine(t *testing.T) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

const sandboxProbe = `
import json, os
r = {}
r["net"] = sorted(os.listdir("/sys/class/net"))
try:
    open("/probe", "w").close()
    r["root_writable"] = True
except OSError:
    r["root_writable"] = False
try:
    open("/tmp/probe", "w").close()
    r["tmp_writable"] = True
except OSError:
    r["tmp_writable"] = False
r["uid"], r["gid"] = os.getuid(), os.getgid()
r["status"] = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in open("/proc/self/status") if l.startswith(("Cap", "NoNewPrivs"))}
for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    if os.path.exists(p):
        r["memory"] = open(p).read().strip()
        break
for p in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):
    if os.path.exists(p):
        r["pids"] = open(p).read().strip()
        break
r["cwd"] = os.getcwd()
with open("/code/output/hello.txt", "w") as f:
    f.write("hello from the kernel")
print(json.dumps(r))
`

func TestSandbox(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Memory = 512 << 20
	cfg.PidsLimit = 100
	p := newTestProvisioner(t, cfg)

	begin := time.Now()
	k := launch(t, p, kernel.Spec{Labels: map[string]string{"session": "s1"}})
	t.Logf("start to ready (no preload): %v", time.Since(begin))

	var r struct {
		Net          []string          `json:"net"`
		RootWritable bool              `json:"root_writable"`
		TmpWritable  bool              `json:"tmp_writable"`
		UID          int               `json:"uid"`
		GID          int               `json:"gid"`
		Status       map[string]string `json:"status"`
		Memory       string            `json:"memory"`
		Pids         string            `json:"pids"`
		Cwd          string            `json:"cwd"`
	}
	out := mustRun(t, k, sandboxProbe)
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}

	t.Run("network", func(t *testing.T) {
		if strings.Join(r.Net, ",") != "lo" {
			t.Errorf("network interfaces %v, want only lo", r.Net)
		}
	})
	t.Run("filesystem", func(t *testing.T) {
		if r.RootWritable {
			t.Error("/ is writable")
		}
		if !r.TmpWritable {
			t.Error("/tmp is not writable")
		}
		if r.Cwd != "/code" {
			t.Errorf("working directory %q, want /code", r.Cwd)
		}
	})
	t.Run("user", func(t *testing.T) {
		if r.UID != 1000 || r.GID != 1000 {
			t.Errorf("uid:gid %d:%d, want 1000:1000", r.UID, r.GID)
		}
	})
	t.Run("capabilities", func(t *testing.T) {
		for _, c := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
			if v, ok := r.Status[c]; !ok || strings.Trim(v, "0") != "" {
				t.Errorf("%s = %q, want all zero", c, v)
			}
		}
		if r.Status["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs = %q, want 1", r.Status["NoNewPrivs"])
		}
	})
	t.Run("limits", func(t *testing.T) {
		if r.Memory != strconv.FormatInt(cfg.Memory, 10) {
			t.Errorf("cgroup memory limit %q, want %d", r.Memory, cfg.Memory)
		}
		if r.Pids != "100" {
			t.Errorf("cgroup pids limit %q, want 100", r.Pids)
		}
	})
	t.Run("output file on the host", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(k.Process().Dir(), "output", "hello.txt"))
		if err != nil || string(b) != "hello from the kernel" {
			t.Errorf("host copy of /code/output/hello.txt: %q, %v", b, err)
		}
	})
	t.Run("container", func(t *testing.T) {
		in, err := engine(t).ContainerInspect(context.Background(), p.containerName(k.ID()))
		if err != nil {
			t.Fatal(err)
		}
		hc := in.HostConfig
		if string(hc.NetworkMode) != "none" || !hc.ReadonlyRootfs || hc.Memory != cfg.Memory || hc.MemorySwap != cfg.Memory {
			t.Errorf("host config: network %q, read-only %v, memory %d, swap %d", hc.NetworkMode, hc.ReadonlyRootfs, hc.Memory, hc.MemorySwap)
		}
		want := map[string]string{LabelInstance: cfg.InstanceID, LabelKernel: k.ID(), "codegw.session": "s1"}
		for l, v := range want {
			if in.Config.Labels[l] != v {
				t.Errorf("label %s = %q, want %q", l, in.Config.Labels[l], v)
			}
		}
	})
}

// TestStartWithPreload measures a start with the launcher's default preload
// (numpy, pandas, matplotlib), as the warm pool does it.
func TestStartWithPreload(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Preload = nil
	p := newTestProvisioner(t, cfg)
	begin := time.Now()
	k := launch(t, p, kernel.Spec{})
	t.Logf("start to ready (numpy, pandas, matplotlib preloaded): %v", time.Since(begin))
	out := mustRun(t, k, "import sys; print(all(m in sys.modules for m in ('numpy', 'pandas', 'matplotlib.pyplot')))")
	if strings.TrimSpace(out) != "True" {
		t.Errorf("preloaded modules missing: %q", out)
	}

	// The image's font cache was seeded (not rebuilt on the read-only root)
	// and a CJK font is the default, so a Chinese title renders inline.
	out = mustRun(t, k, `import os, warnings, matplotlib, matplotlib.pyplot as plt
warnings.simplefilter("error")
print(any(f.startswith("fontlist-") for f in os.listdir(matplotlib.get_configdir())), matplotlib.rcParams["font.sans-serif"][0])
plt.plot([1, 2, 3]); plt.title("中文标题")
plt.show()`)
	if got := strings.TrimSpace(out); got != "True WenQuanYi Micro Hei" {
		t.Errorf("font setup: %q, want a seeded font cache and WenQuanYi Micro Hei", got)
	}
}

func TestKilledFromOutside(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	p := newTestProvisioner(t, cfg)
	k := launch(t, p, kernel.Spec{})
	begin := time.Now()
	if err := engine(t).ContainerKill(context.Background(), p.containerName(k.ID()), "KILL"); err != nil {
		t.Fatal(err)
	}
	exit := waitExited(t, k.Process(), 5*time.Second)
	if d := time.Since(begin); d > 1500*time.Millisecond {
		t.Errorf("Exited closed %v after docker kill, want about a second at most", d)
	}
	t.Logf("docker kill to Exited: %v", time.Since(begin))
	if exit.Code != -1 || exit.Signal != "killed" || exit.OOMKilled {
		t.Errorf("exit %+v, want killed", exit)
	}
	select {
	case <-k.Dead():
	case <-time.After(5 * time.Second):
		t.Error("client not told of the death")
	}
	// Told as a local kernel's would be, not as the sockets' hang-up.
	if err := k.Err(); !strings.Contains(fmt.Sprint(err), "killed by signal SIGKILL") {
		t.Errorf("Err() = %v, want the kernel killed by SIGKILL", err)
	}
}

func TestReap(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	crashed := newTestProvisioner(t, cfg)
	ctx := context.Background()
	leftover, err := crashed.Start(ctx, kernel.Spec{ID: "left"})
	if err != nil {
		t.Fatal(err)
	}
	live, err := crashed.Start(ctx, kernel.Spec{ID: "live"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)
	// A kernel directory with no container: a crash between the two.
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "orphan", "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(cfg.StateDir, "orphan", instanceFile), []byte(cfg.InstanceID+"\n"), 0o600)
	// Another instance's directory in the same StateDir is not ours.
	os.MkdirAll(filepath.Join(cfg.StateDir, "other"), 0o700)
	os.WriteFile(filepath.Join(cfg.StateDir, "other", instanceFile), []byte("another\n"), 0o600)

	// The owner spares its live kernels.
	if n, err := crashed.Reap(ctx); err != nil || n != 1 {
		t.Errorf("Reap by the owner: %d, %v; want 1 (only the orphan directory)", n, err)
	}

	// After a "crash", a new provisioner of the same instance reaps both.
	cfg2 := cfg
	restarted := newTestProvisioner(t, cfg2)
	n, err := restarted.Reap(ctx)
	if err != nil || n != 2 {
		t.Errorf("Reap after a crash: %d, %v; want 2", n, err)
	}
	select {
	case <-leftover.Exited():
	case <-time.After(5 * time.Second):
		t.Error("reaped kernel's Exited not closed")
	}
	for _, id := range []string{"left", "live"} {
		if _, err := engine(t).ContainerInspect(ctx, crashed.containerName(id)); !cerrdefs.IsNotFound(err) {
			t.Errorf("container %s after Reap: %v, want NotFound", id, err)
		}
		if _, err := os.Stat(filepath.Join(cfg.StateDir, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory %s after Reap: %v, want gone", id, err)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "other")); err != nil {
		t.Errorf("another instance's directory was removed: %v", err)
	}
	// Closing what was reaped is fine.
	if err := leftover.Close(ctx); err != nil {
		t.Errorf("Close after Reap: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	t.Run("no engine", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "docker.sock")
		_, err := New(context.Background(), Config{Host: "unix://" + sock, Logger: quiet})
		if !errors.Is(err, kernel.ErrProvisioner) || !strings.Contains(err.Error(), sock) {
			t.Errorf("err %v, want ErrProvisioner naming %s", err, sock)
		}
	})
	t.Run("no image", func(t *testing.T) {
		cfg := testConfig(t)
		newTestProvisioner(t, cfg) // skips without an engine
		cfg.Image = "codegw/no-such-image:latest"
		_, err := New(context.Background(), cfg)
		if !errors.Is(err, kernel.ErrProvisioner) || !strings.Contains(err.Error(), "docker-up.sh") {
			t.Errorf("err %v, want ErrProvisioner telling how to build the image", err)
		}
	})
}

// BenchmarkLaunch measures a kernel's start until ready (kernel_info_reply
// and its iopub idle), split into the container start (Provisioner.Start)
// and the rest, with and without the default preload. It compares nothing:
// the engine's own container start is the floor.
func BenchmarkLaunch(b *testing.B) {
	for _, bc := range []struct {
		name    string
		preload []string
	}{{"none", []string{}}, {"default", nil}} {
		b.Run("preload="+bc.name, func(b *testing.B) {
			cfg := Config{
				Image: os.Getenv("DOCKER_IMAGE"), InstanceID: "bench", Preload: bc.preload, Logger: quiet,
			}
			dir, _ := os.MkdirTemp("", "cgwb")
			defer os.RemoveAll(dir)
			cfg.StateDir = dir
			p, err := New(context.Background(), cfg)
			if err != nil {
				b.Skip(err)
			}
			defer p.Close()
			var start time.Duration
			for i := 0; i < b.N; i++ {
				ctx := context.Background()
				k, err := kernel.Launch(ctx, timedProvisioner{p, &start}, kernel.Spec{ID: fmt.Sprintf("b%d", i)}, kernel.LaunchOptions{Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				k.Close(ctx)
				b.StartTimer()
			}
			b.ReportMetric(float64(start.Milliseconds())/float64(b.N), "start-ms/op")
		})
	}
}

// timedProvisioner adds up the time spent in Start.
type timedProvisioner struct {
	*Provisioner
	total *time.Duration
}

func (p timedProvisioner) Start(ctx context.Context, spec kernel.Spec) (kernel.Process, error) {
	t0 := time.Now()
	proc, err := p.Provisioner.Start(ctx, spec)
	*p.total += time.Since(t0)
	return proc, err
}

// A kernel that exits or dies of a signal is reported as precisely as a
// local one, from the container's state: the exit status, or the signal
// (tini exits with 128+n when the kernel dies of signal n).
func TestDeath(t *testing.T) {
	t.Parallel()
	p := newTestProvisioner(t, testConfig(t))
	for _, tc := range []struct {
		name, code string
		want       kernel.Exit
		msg        string
	}{
		{"exit status", "import os; os._exit(3)", kernel.Exit{Code: 3}, "the kernel process exited with status 3"},
		{"segfault", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
			kernel.Exit{Code: -1, Signal: "segmentation fault"}, "the kernel process was killed by signal SIGSEGV (segmentation fault)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := launch(t, p, kernel.Spec{})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			_, err := k.Execute(ctx, tc.code, kernel.ExecuteOptions{}, kernel.Deadline{})
			if !errors.Is(err, kernel.ErrDied) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err %v, want ErrDied saying %q", err, tc.msg)
			}
			if exit, ok := k.Exit(); !ok || exit != tc.want {
				t.Errorf("Exit() = %+v, %v; want %+v", exit, ok, tc.want)
			}
			if err := k.Err(); !errors.Is(err, kernel.ErrDied) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Err() = %v, want ErrDied saying %q", err, tc.msg)
			}
		})
	}
}
