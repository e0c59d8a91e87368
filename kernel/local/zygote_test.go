package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/forked"
	"github.com/codegw/codegw/kernel/kerneltest"
)

// Tests of forked kernels (KERNEL_START=fork) beyond the contract tests of
// local_test.go, which run forked by default too: isolation between two
// children of one zygote, faults beside a sibling, and the zygote's death.

// startSpec starts a kernel with spec and returns it with a Client.
func startSpec(t *testing.T, p *Provisioner, spec kernel.Spec) (*instance, *kernel.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	proc, err := p.Start(ctx, spec)
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

// alive reports whether any process is left in a forked kernel's cgroups
// or, without cgroups, whether it still runs.
func alive(r *forked.Run) bool {
	if r.Cgroup() != nil {
		return !r.Cgroup().Empty()
	}
	return syscall.Kill(r.PID(), 0) == nil
}

func TestForkIsolation(t *testing.T) {
	requireBwrap(t)
	p := newProvisioner(t, Config{Sandbox: SandboxBwrap, Memory: 1 << 30, PidsLimit: 256})
	a, ca := startSpec(t, p, kernel.Spec{ID: newID()})
	b, cb := startSpec(t, p, kernel.Spec{ID: newID(), Env: map[string]string{"GREETING": "hello"}})

	// What a leaves behind, of every kind.
	execute(t, ca, `
import os, subprocess, pandas as pd
open("/tmp/secret", "w").write("a")
open("/code/output/a.txt", "w").write("a")
open("/dev/shm/a", "w").write("a")
os.environ["LEAK"] = "a"
pd.options.display.max_rows = 3
child = subprocess.Popen(["sleep", "`+kerneltest.SleepArg+`"])
`)

	t.Run("files", func(t *testing.T) {
		got := lines(t, cb, fmt.Sprintf(`import os
print(os.path.exists("/tmp/secret"), os.listdir("/code/output"), os.path.exists("/dev/shm/a"))
print(os.path.exists(%q), os.path.exists(%q), os.path.exists(%q))`, a.files.kdir, a.Dir(), filepath.Join(a.files.kdir, "s")))
		if got[0] != "False [] False" {
			t.Errorf("b sees a's files: %s", got[0])
		}
		if got[1] != "False False False" {
			t.Errorf("b sees a's directories: %s", got[1])
		}
		if _, err := os.Stat(filepath.Join(a.Dir(), "output", "a.txt")); err != nil {
			t.Errorf("a's output file is not in its directory: %v", err)
		}
	})
	t.Run("processes", func(t *testing.T) {
		got := lines(t, cb, `import os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmds = [open("/proc/%d/cmdline" % p, "rb").read().split(b"\0")[0].decode() for p in pids]
print(os.getpid(), os.getuid(), any("sleep" in c for c in cmds), len(pids) <= 3)`)
		if got[0] != "1 65534 False True" {
			t.Errorf("pid uid sleep-seen few-pids = %s, want 1 65534 False True", got[0])
		}
		if got := lines(t, ca, `print(child.poll() is None)`); got[0] != "True" {
			t.Error("a's child is not running")
		}
	})
	t.Run("env", func(t *testing.T) {
		got := lines(t, cb, `import os; print(os.environ.get("LEAK"), os.environ.get("GREETING"))`)
		if got[0] != "None hello" {
			t.Errorf("b's LEAK GREETING = %s, want None hello", got[0])
		}
		if got := lines(t, ca, `import os; print(os.environ.get("GREETING"))`); got[0] != "None" {
			t.Errorf("a has b's env: %s", got[0])
		}
	})
	t.Run("module state", func(t *testing.T) {
		got := lines(t, cb, `import pandas as pd; print(pd.options.display.max_rows)`)
		if got[0] != "60" {
			t.Errorf("b's display.max_rows = %s, want 60", got[0])
		}
	})
	t.Run("random", func(t *testing.T) {
		code := `import random, numpy as np; print(random.random(), np.random.rand())`
		ga, gb := lines(t, ca, code), lines(t, cb, code)
		fa, fb := strings.Fields(ga[0]), strings.Fields(gb[0])
		if fa[0] == fb[0] || fa[1] == fb[1] {
			t.Errorf("same random numbers in two children: %v %v", fa, fb)
		}
	})
	t.Run("prepared shell", func(t *testing.T) {
		// The shell was built in the zygote (prepare_kernel): it must be
		// wired to this child's kernel and see the child's environment.
		execute(t, cb, "class Point:\n    pass\nimport pickle\nblob = pickle.dumps(Point())\nshell_x = 41")
		got := lines(t, cb, `import os, sys, pickle
ip = get_ipython()
print(ip.kernel is not None and ip.kernel.shell is ip, os.getcwd(), ip.starting_dir, os.environ.get("PAGER"))
print(type(pickle.loads(blob)).__name__, sys.modules["__main__"].__dict__ is ip.user_ns, ip.user_ns["shell_x"] + 1)
print(os.path.isdir(ip.profile_dir.location), ip.profile_dir.location.startswith(os.environ["IPYTHONDIR"]))
print(ip.home_dir == os.path.expanduser("~"), sys.excepthook is not sys.__excepthook__, _dh)`)
		want := []string{"True /code /code cat", "Point True 42", "True True", "True True ['/code']"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("prepared shell in the child:\n got %q\nwant %q", got, want)
		}
		// %cd and the completer work from the child's state.
		if got := lines(t, cb, "%cd /tmp\nimport os; print(os.getcwd())"); got[len(got)-1] != "/tmp" {
			t.Errorf("%%cd: %q", got)
		}
	})
	t.Run("signals", func(t *testing.T) {
		// b can neither signal a's processes nor end itself as pid 1.
		got := lines(t, cb, fmt.Sprintf(`import os
try:
    os.kill(%d, 9); print("killed")
except OSError as e:
    print(type(e).__name__)
try:
    os.kill(1, 9); print("sent")
except OSError as e:
    print(type(e).__name__)`, forkedRun(a).PID()))
		if got[0] == "killed" {
			t.Error("b killed a")
		}
		if got := lines(t, cb, "print(1+1)"); got[0] != "2" {
			t.Errorf("b after kill(1): %v", got)
		}
		if got := lines(t, ca, "print(1+1)"); got[0] != "2" {
			t.Errorf("a after b's kill: %v", got)
		}
	})
	t.Run("cgroups", func(t *testing.T) {
		if p.cg == nil {
			t.Skip("no cgroups here")
		}
		ra, rb := forkedRun(a), forkedRun(b)
		if ra.Cgroup().Mem == rb.Cgroup().Mem {
			t.Fatal("two kernels share a memory cgroup")
		}
		limit, _ := os.ReadFile(filepath.Join(ra.Cgroup().Mem, "memory.limit_in_bytes"))
		if strings.TrimSpace(string(limit)) != strconv.Itoa(1<<30) {
			t.Errorf("memory limit %s", limit)
		}
		got := lines(t, cb, `print([l for l in open("/proc/self/cgroup").read().split() if ":pids:" in l][0])`)
		if !strings.HasSuffix(got[0], "/"+rb.Token()) {
			t.Errorf("b's pids cgroup %s, want .../%s", got[0], rb.Token())
		}
	})

	// Whatever a started is gone with it.
	ra := forkedRun(a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	testwait.Within(10*time.Second, func() bool { return !alive(ra) })
	if alive(ra) {
		t.Error("processes of a closed kernel left")
	}
}

// TestZygoteDeath kills the zygote with SIGKILL while a kernel it forked runs
// a cell: the call ends with ErrDied, nothing of the kernel is left, and the
// next start gets a new zygote.
func TestZygoteDeath(t *testing.T) {
	for _, mode := range sandboxes(t) {
		t.Run(mode, func(t *testing.T) {
			p := newProvisioner(t, Config{Sandbox: mode, Preload: []string{}})
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			k, err := kernel.Launch(ctx, p, kernel.Spec{ID: newID()}, kernel.LaunchOptions{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close(context.Background())
			proc := k.Process().(*instance)
			r := forkedRun(proc)
			zpid := p.ZygotePID()
			if _, err := k.Execute(ctx, `import subprocess; subprocess.Popen(["sleep", "`+kerneltest.SleepArg+`"])`, kernel.ExecuteOptions{}, kernel.Deadline{}); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			started := make(chan struct{}, 1)
			go func() {
				_, err := k.Execute(ctx, "import time; print('sleeping', flush=True); time.sleep(60)", kernel.ExecuteOptions{OnMessage: kerneltest.OnStream(started)}, kernel.Deadline{})
				done <- err
			}()
			<-started // the call is in flight
			old := r.Zygote()
			if err := syscall.Kill(zpid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if !errors.Is(err, kernel.ErrDied) {
					t.Errorf("in-flight call: %v, want ErrDied", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the in-flight call hangs")
			}
			testwait.Within(10*time.Second, func() bool { return !alive(r) && sleepers(t) == 0 })
			if alive(r) {
				t.Error("the kernel outlived its zygote")
			}
			if n := sleepers(t); n > 0 {
				t.Errorf("%d 'sleep' children outlived the zygote", n)
			}
			// A new zygote serves the next kernel.
			k2, c2 := startKernel(t, p)
			if got := lines(t, c2, "print(1+1)"); got[0] != "2" {
				t.Errorf("after restart: %v", got)
			}
			if forkedRun(k2).Zygote() == old {
				t.Error("the dead zygote forked the new kernel")
			}
		})
	}
}

// forkHelper is TestHelperProcess for TestForkGatewayKill: a gateway that
// forks one kernel, says "started <kernel pid> <zygote pid> <pids cgroup>"
// and waits to be killed.
func forkHelper(dir string) {
	p, err := New(Config{StateDir: dir, Sandbox: os.Getenv(helperSandboxEnv), Preload: []string{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil && !p.fork {
		err = errors.New("the zygote did not start")
	}
	var proc kernel.Process
	if err == nil {
		proc, err = p.Start(context.Background(), kernel.Spec{ID: os.Getenv(helperKernelEnv)})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	r := forkedRun(proc.(*instance))
	cg := ""
	if r.Cgroup() != nil {
		cg = r.Cgroup().Pids
	}
	fmt.Printf("started %d %d %s\n", r.PID(), p.ZygotePID(), cg)
	time.Sleep(time.Minute)
	os.Exit(3)
}

// TestForkGatewayKill kills a gateway (a helper process) with SIGKILL while
// its zygote has a kernel running: the zygote and the kernel end with it.
func TestForkGatewayKill(t *testing.T) {
	for _, mode := range sandboxes(t) {
		t.Run(mode, func(t *testing.T) {
			newProvisioner(t, Config{Sandbox: mode, Preload: []string{}}) // executor files, font cache
			id := newID()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+stateDir, helperKernelEnv+"="+id,
				helperSandboxEnv+"="+mode, helperStartEnv+"="+StartFork)
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
			case <-time.After(startTimeout):
				t.Fatalf("helper did not start a kernel; stderr: %s", stderr.String())
			}
			f := strings.Fields(s)
			if len(f) < 3 || f[0] != "started" {
				t.Fatalf("helper said %q; stderr: %s", s, stderr.String())
			}
			kpid, _ := strconv.Atoi(f[1])
			zpid, _ := strconv.Atoi(f[2])
			cgDir := ""
			if len(f) > 3 {
				cgDir = f[3]
			}
			t.Cleanup(func() { os.RemoveAll(filepath.Join(stateDir, "k", id)) })
			cmd.Process.Kill()
			cmd.Wait()
			gone := func() bool {
				if syscall.Kill(zpid, 0) == nil || syscall.Kill(kpid, 0) == nil {
					return false
				}
				if cgDir != "" {
					return (&cgroupv1.Group{Pids: cgDir}).Empty()
				}
				return true
			}
			testwait.Within(10*time.Second, gone)
			if !gone() {
				syscall.Kill(-kpid, syscall.SIGKILL)
				syscall.Kill(kpid, syscall.SIGKILL)
				syscall.Kill(-zpid, syscall.SIGKILL)
				t.Fatal("the zygote or its kernel outlived the gateway")
			}
		})
	}
}

// TestForkRlimits forks kernels as where cgroups cannot be written: the
// memory limit is RLIMIT_AS, which numpy and the kernel's threads live with,
// and an allocation past it fails in the kernel instead of killing it.
func TestForkRlimits(t *testing.T) {
	requireBwrap(t)
	p := newProvisioner(t, Config{Sandbox: SandboxBwrap, Memory: 1 << 30})
	p.cg = nil // as if detectCgroups had failed
	if p.LimitMode() != "rlimit" {
		t.Fatalf("limit mode %s", p.LimitMode())
	}
	k, c := startSpec(t, p, kernel.Spec{ID: newID()})
	if forkedRun(k).Cgroup() != nil {
		t.Fatal("the kernel has cgroups")
	}
	got := lines(t, c, `import resource, numpy as np
print(resource.getrlimit(resource.RLIMIT_AS)[0], np.ones(10**6).sum())
try:
    x = bytearray(2 << 30)
    print("allocated")
except MemoryError:
    print("MemoryError")`)
	if got[0] != strconv.Itoa(1<<30)+" 1000000.0" || got[1] != "MemoryError" {
		t.Errorf("got %q, want the 1 GiB limit, a numpy sum and a MemoryError", got)
	}
}

// TestForkFallback: when the zygote cannot start, New warns and kernels are
// spawned.
func TestForkFallback(t *testing.T) {
	// An interpreter that runs everything but the zygote.
	wrapper := filepath.Join(t.TempDir(), "python")
	script := "#!/bin/sh\ncase \"$1\" in *zygote.py) echo 'no zygote here' >&2; exit 1;; esac\nexec /usr/bin/python3 \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	p, err := New(Config{Python: wrapper, StateDir: stateDir, Sandbox: SandboxNone, Preload: []string{},
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if p.StartMode() != StartSpawn {
		t.Fatalf("start mode %s, want spawn", p.StartMode())
	}
	mu.Lock()
	warned := strings.Contains(logs.String(), "fork server unavailable") && strings.Contains(logs.String(), "no zygote here")
	mu.Unlock()
	if !warned {
		t.Errorf("no warning naming the zygote's failure in:\n%s", logs.String())
	}
	_, c := startKernel(t, p)
	if got := lines(t, c, "print(1+1)"); got[0] != "2" {
		t.Errorf("spawned kernel said %v", got)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestRemoveKernelDir: a kernel's directory goes, whatever the kernel left
// in it, and nothing a link in it points to.
func TestRemoveKernelDir(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, kdir, outside string)
	}{
		{"empty", func(t *testing.T, kdir, outside string) {}},
		{"a file in output", func(t *testing.T, kdir, outside string) {
			os.WriteFile(filepath.Join(kdir, "code", "output", "a.txt"), []byte("a"), 0o644)
		}},
		{"files and directories in code", func(t *testing.T, kdir, outside string) {
			os.MkdirAll(filepath.Join(kdir, "code", "x", "y"), 0o755)
			os.WriteFile(filepath.Join(kdir, "code", "x", "y", "z"), nil, 0o644)
			os.WriteFile(filepath.Join(kdir, "connection.json"), nil, 0o644)
		}},
		{"input and output replaced by links", func(t *testing.T, kdir, outside string) {
			for _, d := range []string{"input", "output"} {
				os.Remove(filepath.Join(kdir, "code", d))
				if err := os.Symlink(outside, filepath.Join(kdir, "code", d)); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kdir, outside := filepath.Join(t.TempDir(), "k"), t.TempDir()
			os.MkdirAll(filepath.Join(outside, "input"), 0o755)
			os.MkdirAll(filepath.Join(outside, "output"), 0o755)
			for _, d := range []string{"code/input", "code/output", "s"} {
				if err := os.MkdirAll(filepath.Join(kdir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			tc.make(t, kdir, outside)
			if err := removeKernelDir(kdir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(kdir); !os.IsNotExist(err) {
				t.Errorf("the kernel's directory is left: %v", err)
			}
			for _, d := range []string{"input", "output"} {
				if _, err := os.Stat(filepath.Join(outside, d)); err != nil {
					t.Errorf("%s, outside the kernel's directory: %v", d, err)
				}
			}
		})
	}
}
