package docker

// Tests of kernels forked by a zygote container (KERNEL_START=fork) on a
// real Docker engine: isolation between two children, faults beside a
// sibling, the zygote's death and the gateway's.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/kerneltest"
)

// forkConfig is testConfig in fork mode.
func forkConfig(t *testing.T) Config {
	cfg := testConfig(t)
	cfg.Start = StartFork
	return cfg
}

// newForkProvisioner is newTestProvisioner that fails when kernels are not
// forked: where Docker runs, the fork server must start.
func newForkProvisioner(t *testing.T, cfg Config) *Provisioner {
	t.Helper()
	// After Close (cleanups run last first): nothing left of the kernels'
	// cgroups.
	sum := sha256.Sum256([]byte(cfg.InstanceID))
	t.Cleanup(func() {
		for _, ctl := range []string{"memory", "pids"} {
			dir := filepath.Join(cgroupRoot, ctl, "codegw-docker-"+hex.EncodeToString(sum[:4]))
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgroup %s left after Close", dir)
			}
		}
	})
	p := newTestProvisioner(t, cfg)
	if p.StartMode() != StartFork {
		t.Fatalf("start mode %s, want fork (is the gateway root?)", p.StartMode())
	}
	return p
}

// lines runs code and returns its stdout's lines.
func lines(t *testing.T, k *kernel.Kernel, code string) []string {
	t.Helper()
	return strings.Split(strings.TrimSpace(mustRun(t, k, code)), "\n")
}

// containers lists the containers of an instance.
func containers(t *testing.T, instance string) []container.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := engine(t).ContainerList(ctx, container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("label", LabelInstance+"="+instance)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func TestForkIsolation(t *testing.T) {
	t.Parallel()
	cfg := forkConfig(t)
	cfg.Memory, cfg.PidsLimit = 1<<30, 256
	cfg.Preload = []string{"numpy", "pandas"}
	p := newForkProvisioner(t, cfg)
	a := launch(t, p, kernel.Spec{})
	b := launch(t, p, kernel.Spec{Env: map[string]string{"GREETING": "hello"}})
	fa, fb := a.Process().(*forkedKernel), b.Process().(*forkedKernel)

	mustRun(t, a, `
import os, subprocess, pandas as pd
open("/tmp/secret", "w").write("a")
open("/code/output/a.txt", "w").write("a")
open("/dev/shm/a", "w").write("a")
os.environ["LEAK"] = "a"
pd.options.display.max_rows = 3
child = subprocess.Popen(["sleep", "600"])
`)

	t.Run("files", func(t *testing.T) {
		got := lines(t, b, fmt.Sprintf(`import os
print(os.path.exists("/tmp/secret"), os.listdir("/code/output"), os.path.exists("/dev/shm/a"))
print(os.path.exists(%q), os.path.exists(%q), os.listdir("/run/codegw") == [%q])`,
			p.containerPath(fa.files.dir), p.containerPath(fa.Dir()), fb.files.id))
		if got[0] != "False [] False" {
			t.Errorf("b sees a's files: %s", got[0])
		}
		if got[1] != "False False True" {
			t.Errorf("b sees a's directories (or more than its own in /run/codegw): %s", got[1])
		}
		// The gateway reads a's output on the host; the file is a's alone.
		path := filepath.Join(fa.Dir(), "output", "a.txt")
		if data, err := os.ReadFile(path); err != nil || string(data) != "a" {
			t.Errorf("a's output file: %q %v", data, err)
		}
		if fi, err := os.Stat(path); err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) != fa.files.uid || fi.Mode().Perm() != 0o600 {
				t.Errorf("a's output file: uid %d mode %v, want %d 0600 (umask 077)", st.Uid, fi.Mode().Perm(), fa.files.uid)
			}
		}
	})
	t.Run("processes and uid", func(t *testing.T) {
		got := lines(t, b, `import os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmds = [open("/proc/%d/cmdline" % p, "rb").read().split(b"\0")[0].decode() for p in pids]
print(os.getpid(), os.getuid(), any("sleep" in c for c in cmds), len(pids) <= 3)`)
		if want := fmt.Sprintf("1 %d False True", fb.files.uid); got[0] != want {
			t.Errorf("pid uid sleep-seen few-pids = %s, want %s", got[0], want)
		}
		if fa.files.uid == fb.files.uid {
			t.Error("two kernels share a uid")
		}
		if got := lines(t, a, `print(child.poll() is None)`); got[0] != "True" {
			t.Error("a's child is not running")
		}
		// Neither kernel can signal the zygote or the container's init.
		got = lines(t, b, `import os
for pid in (1, -1):
    try:
        os.kill(pid, 9)
    except OSError:
        pass
print("alive")`)
		if got[0] != "alive" {
			t.Errorf("b after kill(-1): %v", got)
		}
		if got := lines(t, a, "print(1+1)"); got[0] != "2" {
			t.Errorf("a after b's kill(-1): %v", got)
		}
	})
	t.Run("privileges and network", func(t *testing.T) {
		got := lines(t, b, `import os
st = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in open("/proc/self/status")}
print(st["CapEff"], st["CapPrm"], st["NoNewPrivs"], oct(os.umask(0o077)))
print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
try:
    open("/probe", "w")
    print("root writable")
except OSError:
    print("root read-only")`)
		if got[0] != "0000000000000000 0000000000000000 1 0o77" {
			t.Errorf("CapEff CapPrm NoNewPrivs umask = %s", got[0])
		}
		if got[1] != "['lo']" {
			t.Errorf("network interfaces %s", got[1])
		}
		if got[2] != "root read-only" {
			t.Errorf("root file system: %s", got[2])
		}
	})
	t.Run("env", func(t *testing.T) {
		got := lines(t, b, `import os; print(os.environ.get("LEAK"), os.environ.get("GREETING"))`)
		if got[0] != "None hello" {
			t.Errorf("b's LEAK GREETING = %s, want None hello", got[0])
		}
		if got := lines(t, a, `import os; print(os.environ.get("GREETING"))`); got[0] != "None" {
			t.Errorf("a has b's env: %s", got[0])
		}
	})
	t.Run("module state", func(t *testing.T) {
		if got := lines(t, b, `import pandas as pd; print(pd.options.display.max_rows)`); got[0] != "60" {
			t.Errorf("b's display.max_rows = %s, want 60", got[0])
		}
	})
	t.Run("random", func(t *testing.T) {
		code := `import random, numpy as np; print(random.random(), np.random.rand())`
		ga, gb := strings.Fields(lines(t, a, code)[0]), strings.Fields(lines(t, b, code)[0])
		if ga[0] == gb[0] || ga[1] == gb[1] {
			t.Errorf("same random numbers in two children: %v %v", ga, gb)
		}
	})
	t.Run("matplotlib not preloaded", func(t *testing.T) {
		// The image's font cache is there to seed the kernel's, and plots
		// render.
		got := lines(t, b, `import glob, os, matplotlib
import matplotlib.pyplot as plt
plt.plot([1, 2]); plt.savefig("/tmp/p.png")
print(len(glob.glob(os.environ["EXECUTOR_MPL_CACHE"] + "/fontlist-*.json")), os.path.getsize("/tmp/p.png") > 0)`)
		if got[0] != "1 True" {
			t.Errorf("font caches in EXECUTOR_MPL_CACHE, plot saved: %s", got[0])
		}
	})
	t.Run("limits", func(t *testing.T) {
		if p.cg == nil {
			t.Skip("no cgroups: rlimits")
		}
		ra, rb := fa.Current(), fb.Current()
		limit, _ := os.ReadFile(filepath.Join(ra.Cgroup().Mem, "memory.limit_in_bytes"))
		if strings.TrimSpace(string(limit)) != strconv.Itoa(1<<30) {
			t.Errorf("memory limit %s", limit)
		}
		got := lines(t, b, `print([l for l in open("/proc/self/cgroup").read().split() if ":pids:" in l][0])`)
		if want := filepath.Base(rb.Cgroup().Pids); !strings.HasSuffix(got[0], "/"+want) {
			t.Errorf("b's pids cgroup %s, want .../%s", got[0], want)
		}
	})
	// Everything a started ends with it.
	ra := fa.Current()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Its cgroups are empty: removed, or kept for the next kernel.
	if ra.Cgroup() != nil && !ra.Cgroup().Empty() {
		t.Errorf("a's cgroup %s still holds processes", ra.Cgroup().Pids)
	}
	if _, err := os.Stat(fa.files.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a's directory is left: %v", err)
	}
	if got := lines(t, b, "print(1+1)"); got[0] != "2" {
		t.Errorf("b after a closed: %v", got)
	}
}

// zygotePID is the host pid of the zygote process: the child of the
// container's init (tini).
func zygotePID(t *testing.T, cid string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := engine(t).ContainerInspect(ctx, cid)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", in.State.Pid, in.State.Pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("children of the container's init: %q", b)
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

// TestForkZygoteDeath kills the zygote process with SIGKILL while a kernel
// it forked runs a cell: the call ends with ErrDied, the container and the
// kernel's processes are gone, and the next kernel comes from a new zygote.
func TestForkZygoteDeath(t *testing.T) {
	t.Parallel()
	cfg := forkConfig(t)
	cfg.PidsLimit = 64
	p := newForkProvisioner(t, cfg)
	k := launch(t, p, kernel.Spec{})
	r := k.Process().(*forkedKernel).Current()
	mustRun(t, k, `import subprocess; subprocess.Popen(["sleep", "600"])`)
	old := p.ZygoteContainer()
	done := make(chan error, 1)
	started := make(chan struct{}, 1)
	go func() {
		_, err := k.Execute(context.Background(), "import time; print('sleeping', flush=True); time.sleep(60)", kernel.ExecuteOptions{OnMessage: kerneltest.OnStream(started)}, kernel.Deadline{})
		done <- err
	}()
	<-started // the call is in flight
	if err := syscall.Kill(zygotePID(t, old), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, kernel.ErrDied) {
			t.Errorf("in-flight call: %v, want ErrDied", err)
		}
		t.Logf("in-flight call ended %v after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("the in-flight call hangs")
	}
	testwait.Within(10*time.Second, func() bool { return r.Cgroup() == nil || r.Cgroup().Empty() })
	if r.Cgroup() != nil && !r.Cgroup().Empty() {
		t.Error("the kernel's processes outlived their zygote")
	}
	// A new zygote serves the next kernel; the old container is gone.
	k2 := launch(t, p, kernel.Spec{})
	if got := lines(t, k2, "print(1+1)"); got[0] != "2" {
		t.Errorf("after the zygote's death: %v", got)
	}
	now := p.ZygoteContainer()
	if now == "" || now == old {
		t.Errorf("zygote container %q after the death of %q", now, old)
	}
	for _, c := range containers(t, p.cfg.InstanceID) {
		if c.ID != now {
			t.Errorf("container left: %s %s %s", shortID(c.ID), c.Labels[LabelKernel], c.State)
		}
	}
	// Restart of the dead kernel forks it again from the new zygote.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lines(t, k, "print(2+2)"); got[0] != "4" {
		t.Errorf("after restart: %v", got)
	}
}

const (
	helperEnv      = "CODEGW_DOCKER_FORK_HELPER"
	helperImageEnv = "CODEGW_DOCKER_FORK_HELPER_IMAGE"
)

// TestHelperProcess is the gateway of TestForkGatewayKill when helperEnv is
// set ("<instance> <state dir>"): it forks one kernel, says "started
// <zygote container>" and waits to be killed.
func TestHelperProcess(t *testing.T) {
	args := strings.Fields(os.Getenv(helperEnv))
	if len(args) != 2 {
		return
	}
	p, err := New(context.Background(), Config{Image: os.Getenv(helperImageEnv), InstanceID: args[0], StateDir: args[1],
		Preload: []string{}, Start: StartFork, Logger: quiet})
	if err == nil && p.StartMode() != StartFork {
		err = errors.New("the zygote did not start")
	}
	if err == nil {
		_, err = p.Start(context.Background(), kernel.Spec{ID: "k1"})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	fmt.Printf("started %s\n", p.ZygoteContainer())
	time.Sleep(time.Minute)
	os.Exit(3)
}

// TestForkGatewayKill kills a gateway (a helper process) with SIGKILL while
// its zygote has a kernel: the zygote container ends and is removed.
func TestForkGatewayKill(t *testing.T) {
	t.Parallel()
	cfg := forkConfig(t)
	newTestProvisioner(t, Config{Image: cfg.Image, InstanceID: cfg.InstanceID + "-probe", StateDir: cfg.StateDir,
		Start: StartSpawn, Logger: quiet}) // skips without Docker
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+cfg.InstanceID+" "+cfg.StateDir, helperImageEnv+"="+cfg.Image)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	var s string
	select {
	case s = <-line:
	case <-time.After(2 * time.Minute):
		t.Fatalf("helper did not start a kernel; stderr: %s", stderr.String())
	}
	f := strings.Fields(s)
	if len(f) != 2 || f[0] != "started" {
		t.Fatalf("helper said %q; stderr: %s", s, stderr.String())
	}
	if n := len(containers(t, cfg.InstanceID)); n != 1 {
		t.Errorf("%d containers before the kill, want 1 (the zygote)", n)
	}
	cmd.Process.Kill()
	cmd.Wait()
	killed := time.Now()
	testwait.Within(15*time.Second, func() bool { return len(containers(t, cfg.InstanceID)) == 0 })
	if list := containers(t, cfg.InstanceID); len(list) > 0 {
		for _, c := range list {
			engine(t).ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
		}
		t.Fatalf("%d containers outlived the gateway", len(list))
	}
	t.Logf("zygote container gone %v after the gateway's kill", time.Since(killed).Round(time.Millisecond))
	// The killed gateway's cgroup parents stay for its instance's next
	// start, which empties them; this instance has none.
	sum := sha256.Sum256([]byte(cfg.InstanceID))
	for _, ctl := range []string{"memory", "pids"} {
		dir := filepath.Join(cgroupRoot, ctl, "codegw-docker-"+hex.EncodeToString(sum[:4]))
		kids, _ := os.ReadDir(dir)
		for _, k := range kids {
			if k.IsDir() {
				os.Remove(filepath.Join(dir, k.Name()))
			}
		}
		os.Remove(dir)
	}
}

// BenchmarkForkLaunch compares a forked kernel's start until it answers
// 1+1 with a spawned kernel container's, in the same run, with the default
// preload (numpy, pandas, matplotlib). new-ms is New's duration: for fork,
// the zygote container's start until it has imported them.
func BenchmarkForkLaunch(b *testing.B) {
	for _, start := range []string{StartFork, StartSpawn} {
		b.Run("start="+start, func(b *testing.B) {
			dir, _ := os.MkdirTemp("", "cgwb")
			defer os.RemoveAll(dir)
			t0 := time.Now()
			p, err := New(context.Background(), Config{Image: os.Getenv("DOCKER_IMAGE"), InstanceID: "bench-" + start,
				StateDir: dir, Start: start, Logger: quiet})
			if err != nil {
				b.Skip(err)
			}
			newMS := float64(time.Since(t0).Milliseconds())
			defer p.Close()
			if p.StartMode() != start {
				b.Fatalf("start mode %s", p.StartMode())
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ctx := context.Background()
				k, err := kernel.Launch(ctx, p, kernel.Spec{ID: fmt.Sprintf("b%d", i)}, kernel.LaunchOptions{Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := k.Execute(ctx, "1+1", kernel.ExecuteOptions{}, kernel.Deadline{}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				k.Close(ctx)
				b.StartTimer()
			}
			// fork: the zygote container's start and imports.
			b.ReportMetric(newMS, "new-ms")
		})
	}
}

// TestForkRlimits forks kernels as where cgroups cannot be made: memory is
// bounded by RLIMIT_AS, which numpy and the kernel's threads live with, and
// an allocation past it fails in the kernel instead of killing it;
// processes by RLIMIT_NPROC of the kernel's own uid, so a fork bomb in one
// kernel leaves its sibling's forks alone.
func TestForkRlimits(t *testing.T) {
	t.Parallel()
	cfg := forkConfig(t)
	cfg.Memory, cfg.PidsLimit = 1<<30, 64
	cfg.Preload = []string{"numpy"}
	cfg.noCgroups = true
	p := newForkProvisioner(t, cfg)
	if p.LimitMode() != "rlimit" {
		t.Fatalf("limit mode %s", p.LimitMode())
	}
	a := launch(t, p, kernel.Spec{})
	b := launch(t, p, kernel.Spec{})
	if got := lines(t, a, `import numpy as np; print(int(np.ones((1000, 1000)).sum()))`); got[0] != "1000000" {
		t.Errorf("numpy: %v", got)
	}
	out, reply, err := execute(t, a, "x = bytearray(2 << 30)")
	if err != nil || reply.Status != "error" || reply.EName != "MemoryError" {
		t.Errorf("allocation past the limit: %v %v %q", reply, err, out)
	}
	got := lines(t, a, `import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
        n += 1
except OSError as e:
    print("refused after", n, e.errno)`)
	if !strings.HasPrefix(got[0], "refused after") || strings.Fields(got[0])[2] == "0" {
		t.Errorf("fork bomb: %v", got)
	}
	if got := lines(t, b, `import subprocess; print(subprocess.run(["true"]).returncode)`); got[0] != "0" {
		t.Errorf("b cannot fork beside a's bomb: %v", got)
	}
	if got := lines(t, a, "print(1+1)"); got[0] != "2" {
		t.Errorf("a after its bomb: %v", got)
	}
}
