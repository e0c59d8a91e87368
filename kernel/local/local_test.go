package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testcheck"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/kerneltest"
)

// The tests run real ipykernel kernels under /usr/bin/python3 (Debian's
// python3-ipykernel, see scripts/deps.sh). On a loaded 2-core machine a
// kernel with the data stack can take several seconds to start, hence the
// generous deadlines; nothing sleeps to wait for readiness.
const (
	startTimeout = 120 * time.Second
	execTimeout  = 60 * time.Second
)

var ids atomic.Int64

func newID() string { return fmt.Sprintf("t%d-%d", os.Getpid(), ids.Add(1)) }

// testLogger sends the provisioner's logs to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// stateDir is shared by the tests' provisioners, so the executor files and
// the font cache are made once. It is short (t.TempDir's paths are long) and
// traversable by the sandbox user.
var stateDir string

// newProvisioner returns a provisioner for the test.
func newProvisioner(t *testing.T, cfg Config) *Provisioner {
	t.Helper()
	cfg.StateDir = stateDir
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if cfg.Sandbox == SandboxBwrap && !p.sandbox {
		t.Fatal("bwrap requested but not in use")
	}
	if (cfg.Start == "" || cfg.Start == StartFork) && !p.fork {
		t.Fatal("fork requested but the zygote did not start")
	}
	return p
}

// requireBwrap skips (or, under CI=true, fails) when bubblewrap cannot run
// sandboxes here.
func requireBwrap(t *testing.T) {
	t.Helper()
	p, err := New(Config{Sandbox: SandboxBwrap, StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil {
		p.Close()
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("bubblewrap unusable under CI: %v", err)
	}
	t.Skipf("bubblewrap unusable: %v", err)
}

// startKernel starts a kernel and returns it with a Client once it is ready.
func startKernel(t *testing.T, p *Provisioner) (*instance, *kernel.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	proc, err := p.Start(ctx, kernel.Spec{ID: newID()})
	if err != nil {
		t.Fatal(err)
	}
	k := proc.(*instance)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := k.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return k, dial(t, ctx, k)
}

// dial connects a Client to the kernel's current process and waits until it
// is ready.
func dial(t *testing.T, ctx context.Context, k *instance) *kernel.Client {
	t.Helper()
	c, err := kernel.Dial(ctx, k.ConnectionInfo(), kernel.ClientOptions{HeartbeatTimeout: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ready := make(chan error, 1)
	go func() { _, err := c.WaitReady(ctx); ready <- err }()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("kernel not ready: %v\noutput:\n%s", err, k.Output())
		}
	case <-k.Exited():
		t.Fatalf("kernel exited before it was ready: %+v\noutput:\n%s", k.Exit(), k.Output())
	}
	return c
}

// result is what one execution produced.
type result struct {
	stdout, stderr string
	mimes          []string // of display_data and execute_result, in order
	reply          *kernel.ExecuteReply
}

// execute runs code and fails the test unless it ran without error.
func execute(t *testing.T, c *kernel.Client, code string) result {
	t.Helper()
	r, err := tryExecute(c, code)
	if err != nil {
		t.Fatalf("execute %q: %v", code, err)
	}
	if r.reply.Status != "ok" {
		t.Fatalf("execute %q: %s: %s: %s", code, r.reply.Status, r.reply.EName, r.reply.EValue)
	}
	return r
}

func tryExecute(c *kernel.Client, code string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	var r result
	var out, errOut strings.Builder
	reply, err := c.Execute(ctx, code, kernel.ExecuteOptions{OnMessage: func(m *kernel.Message) {
		switch m.Header.MsgType {
		case "stream":
			var s struct{ Name, Text string }
			json.Unmarshal(m.Content, &s)
			if s.Name == "stdout" {
				out.WriteString(s.Text)
			} else {
				errOut.WriteString(s.Text)
			}
		case "display_data", "execute_result":
			var d struct{ Data map[string]json.RawMessage }
			json.Unmarshal(m.Content, &d)
			for mime := range d.Data {
				r.mimes = append(r.mimes, mime)
			}
		}
	}})
	r.stdout, r.stderr, r.reply = out.String(), errOut.String(), reply
	return r, err
}

// lines runs code and returns its stdout lines.
func lines(t *testing.T, c *kernel.Client, code string) []string {
	t.Helper()
	return strings.Split(strings.TrimSpace(execute(t, c, code).stdout), "\n")
}

func TestSandbox(t *testing.T) {
	requireBwrap(t)
	p := newProvisioner(t, Config{Sandbox: SandboxBwrap})
	k, c := startKernel(t, p)
	if k.ConnectionInfo().Transport != "ipc" {
		t.Fatalf("transport %s, want ipc", k.ConnectionInfo().Transport)
	}

	t.Run("only loopback", func(t *testing.T) {
		got := lines(t, c, "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
		if got[0] != "['lo']" {
			t.Errorf("interfaces %s, want only lo", got[0])
		}
	})

	t.Run("no way out", func(t *testing.T) {
		// A listener on the host's loopback is not the sandbox's loopback.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		port := l.Addr().(*net.TCPAddr).Port
		code := fmt.Sprintf(`import socket
for addr in [("127.0.0.1", %d), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection(addr, timeout=3).close()
        print("connected", addr)
    except OSError as e:
        print("refused", addr, e)`, port)
		for _, line := range lines(t, c, code) {
			t.Log(line)
			if !strings.HasPrefix(line, "refused") {
				t.Errorf("got out: %s", line)
			}
		}
	})

	t.Run("read-only system", func(t *testing.T) {
		got := lines(t, c, `for path in ["/usr/codegw-test", "/etc/codegw-test", "/usr/lib/codegw-test"]:
    try:
        open(path, "w").close()
        print("wrote", path)
    except OSError as e:
        print("denied", path, e)`)
		for _, line := range got {
			t.Log(line)
			if !strings.HasPrefix(line, "denied") {
				t.Error(line)
			}
		}
	})

	t.Run("private tmp", func(t *testing.T) {
		marker, err := os.CreateTemp("", "codegw-marker")
		if err != nil {
			t.Fatal(err)
		}
		marker.Close()
		defer os.Remove(marker.Name())
		got := lines(t, c, fmt.Sprintf(`import os
print(os.path.exists(%q))
open("/tmp/from-kernel", "w").write("x")
print(os.listdir("/tmp") != [])`, marker.Name()))
		if got[0] != "False" {
			t.Error("the host's /tmp is visible in the sandbox")
		}
		if got[1] != "True" {
			t.Error("/tmp is not writable in the sandbox")
		}
		if _, err := os.Stat("/tmp/from-kernel"); err == nil {
			t.Error("the sandbox's /tmp is the host's")
		}
	})

	t.Run("code dir", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(k.Dir(), "input", "in.txt"), []byte("hello"), 0o644); err != nil {
			t.Fatal(err)
		}
		got := lines(t, c, `import os
print(os.getcwd())
print(open("/code/input/in.txt").read())
open("/code/output/out.csv", "w").write("a,b\n1,2\n")`)
		if got[0] != "/code" || got[1] != "hello" {
			t.Errorf("cwd and input: %q", got)
		}
		b, err := os.ReadFile(filepath.Join(k.Dir(), "output", "out.csv"))
		if err != nil || string(b) != "a,b\n1,2\n" {
			t.Errorf("output file on the host: %q, %v", b, err)
		}
	})

	t.Run("clean environment", func(t *testing.T) {
		t.Setenv("CODEGW_SECRET_TEST", "x") // started kernels never see it anyway
		got := lines(t, c, `import os
print(os.environ.get("HOME"), os.environ.get("LANG"), os.environ.get("MPLBACKEND"))
print(sorted(k for k in os.environ if "SECRET" in k or k.startswith("GO")))`)
		if got[0] != "/tmp C.UTF-8 module://matplotlib_inline.backend_inline" || got[1] != "[]" {
			t.Errorf("environment: %q", got)
		}
	})

	if os.Geteuid() == 0 {
		t.Run("unprivileged", func(t *testing.T) {
			got := lines(t, c, `import os
print(os.getuid())
try:
    open("/etc/shadow").read(); print("read shadow")
except OSError:
    print("denied")
print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])`)
			t.Logf("uid, /etc/shadow, CapEff: %q", got)
			if got[0] == "0" || got[1] != "denied" || strings.Trim(got[2], "0") != "" {
				t.Errorf("privileges in the sandbox: %q", got)
			}
		})
	}

	t.Run("own processes only", func(t *testing.T) {
		got := lines(t, c, `import os; print(len([d for d in os.listdir("/proc") if d.isdigit()]) < 10, os.getpid() < 10)`)
		if got[0] != "True True" {
			t.Errorf("pid namespace: %q", got)
		}
	})

	t.Run("kernel setup", func(t *testing.T) {
		got := lines(t, c, `import sys
print(all(m in sys.modules for m in ("numpy", "pandas", "matplotlib.pyplot")))
print(get_ipython().history_manager.enabled)
print("np" in dir() or "pd" in dir() or "plt" in dir())
import matplotlib
print(matplotlib.rcParams["font.sans-serif"][0], matplotlib.rcParams["axes.unicode_minus"])`)
		want := []string{"True", "False", "False", "WenQuanYi Micro Hei False"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	t.Run("inline plots", func(t *testing.T) {
		r := execute(t, c, `import matplotlib.pyplot as plt
plt.plot([1, -2]); plt.title("中文标题")
plt.show()
plt.figure(); plt.plot([3, 4])`) // left open: sent at the end of the cell
		n := 0
		for _, m := range r.mimes {
			if m == "image/png" {
				n++
			}
		}
		if n != 2 {
			t.Errorf("%d images (%q), want 2; stderr: %s", n, r.mimes, r.stderr)
		}
		if strings.Contains(r.stderr, "missing from current font") {
			t.Errorf("CJK glyphs missing: %s", r.stderr)
		}
	})
}

func TestNoSandbox(t *testing.T) {
	p := newProvisioner(t, Config{Sandbox: SandboxNone, Preload: []string{}})
	k, c := startKernel(t, p)
	got := lines(t, c, `import os, sys
print(os.getcwd())
print("pandas" in sys.modules)
open("output/out.txt", "w").write("plain")`)
	if got[0] != k.Dir() {
		t.Errorf("cwd %s, want %s", got[0], k.Dir())
	}
	if got[1] != "False" {
		t.Error("pandas preloaded despite an empty Preload")
	}
	if b, err := os.ReadFile(filepath.Join(k.Dir(), "output", "out.txt")); err != nil || string(b) != "plain" {
		t.Errorf("output file: %q, %v", b, err)
	}
}

func TestTCP(t *testing.T) {
	p := newProvisioner(t, Config{Sandbox: SandboxNone, Transport: TransportTCP, Preload: []string{}})
	k, c := startKernel(t, p)
	if k.ConnectionInfo().Transport != "tcp" {
		t.Fatalf("transport %s", k.ConnectionInfo().Transport)
	}
	if got := execute(t, c, "print(6*7)").stdout; got != "42\n" {
		t.Errorf("got %q", got)
	}
}

// sandboxes lists the modes to run the lifecycle tests in.
func sandboxes(t *testing.T) []string {
	modes := []string{SandboxNone}
	if p, err := New(Config{Sandbox: SandboxBwrap, StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err == nil {
		p.Close()
		modes = append(modes, SandboxBwrap)
	} else if os.Getenv("CI") == "true" {
		t.Fatalf("bubblewrap unusable under CI: %v", err)
	}
	return modes
}

// groupMembers counts the processes whose process group is pgid.
func groupMembers(t *testing.T, pgid int) int {
	t.Helper()
	n := 0
	for _, pr := range testcheck.Procs() {
		if pr.PGID == pgid {
			n++
		}
	}
	return n
}

// sleepers counts the "sleep" children the tests start (kerneltest.SleepArg).
func sleepers(t *testing.T) int {
	t.Helper()
	n := 0
	for _, pr := range testcheck.Procs() {
		if pr.Cmdline == "sleep "+kerneltest.SleepArg {
			n++
		}
	}
	return n
}

func TestReap(t *testing.T) {
	p := newProvisioner(t, Config{Sandbox: SandboxNone, Preload: []string{}})
	k, _ := startKernel(t, p)

	// A kernel directory of a crashed instance: nobody holds its lock.
	stale := filepath.Join(p.cfg.StateDir, "k", "stale")
	if err := os.MkdirAll(filepath.Join(stale, "code", "output"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A start between its mkdir and its lock: empty and new.
	starting := filepath.Join(p.cfg.StateDir, "k", "starting")
	if err := os.Mkdir(starting, 0o711); err != nil {
		t.Fatal(err)
	}
	// A live kernel of an older version, which locked a file in it.
	legacy := filepath.Join(p.cfg.StateDir, "k", "legacy")
	if err := os.MkdirAll(filepath.Join(legacy, "code"), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.Create(filepath.Join(legacy, "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(legacy)
	defer os.RemoveAll(starting)
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	n, err := p.Reap(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("reaped %d, want 1", n)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale directory left: %v", err)
	}
	for _, dir := range []string{k.Dir(), starting, legacy} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s reaped: %v", dir, err)
		}
	}
}

func TestStartErrors(t *testing.T) {
	t.Run("no ipykernel", func(t *testing.T) {
		_, err := New(Config{Python: "/bin/false", StateDir: stateDir, Sandbox: SandboxNone})
		if !errors.Is(err, kernel.ErrProvisioner) {
			t.Errorf("err %v, want ErrProvisioner", err)
		}
	})
	t.Run("no bwrap", func(t *testing.T) {
		_, err := New(Config{Bwrap: "/nonexistent/bwrap", StateDir: stateDir, Sandbox: SandboxBwrap})
		if !errors.Is(err, kernel.ErrProvisioner) {
			t.Errorf("err %v, want ErrProvisioner", err)
		}
	})
	t.Run("auto without bwrap", func(t *testing.T) {
		var logs bytes.Buffer
		p, err := New(Config{Bwrap: "/nonexistent/bwrap", StateDir: stateDir,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		if p.sandbox || !strings.Contains(logs.String(), "sandbox is OFF") {
			t.Errorf("sandbox %v, logs %s", p.sandbox, logs.String())
		}
	})
	t.Run("bad ids", func(t *testing.T) {
		p := newProvisioner(t, Config{Sandbox: SandboxNone})
		for _, id := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("x", idMax+1)} {
			if _, err := p.Start(context.Background(), kernel.Spec{ID: id}); err == nil {
				t.Errorf("id %q accepted", id)
			}
		}
	})
	t.Run("id in use", func(t *testing.T) {
		p := newProvisioner(t, Config{Sandbox: SandboxNone, Preload: []string{}})
		k, _ := startKernel(t, p)
		if _, err := p.Start(context.Background(), kernel.Spec{ID: k.files.id}); err == nil {
			t.Error("a second kernel with the same id started")
		}
		if _, err := os.Stat(k.Dir()); err != nil {
			t.Errorf("the first kernel's directory is gone: %v", err)
		}
	})
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(8)
	for _, tt := range []struct{ write, want string }{
		{"abc", "abc"},
		{"defgh", "abcdefgh"},
		{"ij", "cdefghij"},
		{"0123456789xyz", "56789xyz"},
	} {
		b.Write([]byte(tt.write))
		if got := b.String(); got != tt.want {
			t.Errorf("after %q: %q, want %q", tt.write, got, tt.want)
		}
	}
}

// TestMain fails early with a clear message when the interpreter the tests
// need is missing.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run()) // TestHelperProcess: no checks, no state dir of its own
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import ipykernel").Run(); err != nil {
		fmt.Fprintln(os.Stderr, "kernel/local tests need /usr/bin/python3 with ipykernel: run scripts/deps.sh")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "cg")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stateDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
