// Package kerneltest is the conformance suite for kernel.Provisioner
// implementations: every provisioner, in each of its modes (local forked
// and spawned kernels, sandboxed or not; Docker forked kernels and a
// container per kernel), runs the same fault and isolation matrix, so
// that the session layer can rely on the contract of kernel.Process
// rather than on one provisioner.
//
// The matrix: how a kernel's end is reported (killed, exit status,
// segfault, abort), faults beside a sibling kernel that keeps working
// (exit, segfault, memory bomb → OOMKilled, fork bomb → PidsLimited), a
// bounded fork bomb refused at the pids limit, interrupt, Restart (state
// and /tmp lost, files kept, a new Exited and bound signal), Close (no
// process, socket file or directory left, idempotent, no Restart after
// it) and, where the provisioner makes them, one-shot kernels.
package kerneltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
)

// SleepArg is the argument of the `sleep` children the tests start (600 s
// and a fraction unique to this test process), so that counting them on the
// host is not confused by another package's tests running at the same time.
var SleepArg = fmt.Sprintf("600.%d", os.Getpid())

// Limits are the limits a Target's provisioner gives each kernel for the
// tests that need them; zero is none.
type Limits struct {
	Memory int64 // bytes
	Pids   int64
}

// Target is one provisioner in one mode.
type Target struct {
	// New returns a provisioner whose kernels have lim, or fails the test
	// (skips, when the provisioner cannot run here and CI is not true); it
	// registers the provisioner's Close with t.Cleanup.
	New func(t *testing.T, lim Limits) kernel.Provisioner
	// OOM: a kernel over its memory limit is killed and its Exit says
	// OOMKilled. Pids: a kernel's fork beyond its pids limit fails, and
	// its Exit says PidsLimited once it ends. False: the target has no
	// such limit (spawned local kernels) and those rows are not run.
	OOM, Pids bool
	// PidsHits reports how many forks proc's pids limit refused so far;
	// nil: the suite polls proc's PidsLimitHits.
	PidsHits func(proc kernel.Process) int64
	// AbortSignal is how a kernel that called abort() is reported; ""
	// leaves the abort row out. (A sandboxed forked kernel is pid 1 of its
	// namespace, which ignores its own SIGABRT: glibc then faults.)
	AbortSignal string
	// FreshTmp: Restart gives the kernel an empty /tmp.
	FreshTmp bool
	// PIDNamespace: each kernel process has a pid namespace of its own,
	// so a restarted kernel may have its old pid; without one a restart
	// must show a new pid.
	PIDNamespace bool
	// OneShot: Spec.OneShot gets a one-shot kernel (kernel.OneShotter).
	OneShot bool
	// Processes returns a counter of the processes of proc's current
	// kernel process (its cgroups, its process group): the kernel and
	// its children. Nil: not checked beyond Exited.
	Processes func(t *testing.T, proc kernel.Process) func() int
	// Leftovers lists what is left of a closed kernel besides its socket
	// files and directory, which the suite checks itself: processes,
	// containers. Nil: nothing more to check.
	Leftovers func(t *testing.T, proc kernel.Process) []string
}

// Timeouts of the suite: a kernel's start, and one execution.
const (
	StartTimeout = 120 * time.Second
	ExecTimeout  = 60 * time.Second
)

// Run runs the suite against target. Subtests run one after another (the
// process checks count processes by name host-wide); run targets in
// parallel with t.Parallel around Run where they allow it.
func Run(t *testing.T, target Target) {
	tests := []struct {
		name string
		fn   func(*testing.T, Target)
	}{
		{"Exit", testExit},
		{"Faults", testFaults},
		{"PidsLimit", testPidsLimit},
		{"Interrupt", testInterrupt},
		{"Restart", testRestart},
		{"Close", testClose},
		{"OneShot", testOneShot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, target) })
	}
}

// faultLimits are the limits of the tests that hit them.
var faultLimits = Limits{Memory: 256 << 20, Pids: 64}

var ids struct {
	sync.Mutex
	n int
}

// newID is a kernel id unique in this process and among processes.
func newID() string {
	ids.Lock()
	defer ids.Unlock()
	ids.n++
	return fmt.Sprintf("kt%d-%d", os.Getpid(), ids.n)
}

// start launches a kernel of p (kernel.Launch: its client is told when
// the process exits); it is closed when the test ends.
func start(t *testing.T, p kernel.Provisioner, spec kernel.Spec) *kernel.Kernel {
	t.Helper()
	if spec.ID == "" {
		spec.ID = newID()
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	k, err := kernel.Launch(ctx, p, spec, kernel.LaunchOptions{
		StartTimeout: StartTimeout,
		// Generous: the suite runs on loaded machines.
		Client: kernel.ClientOptions{HeartbeatTimeout: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := k.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return k
}

// output is what a process said, for failure messages, when it says.
func output(proc kernel.Process) string {
	if o, ok := proc.(interface{ Output() string }); ok {
		return "\noutput:\n" + o.Output()
	}
	return ""
}

// Result is what one execution produced.
type Result struct {
	Stdout string
	Reply  *kernel.ExecuteReply
}

// TryExecute runs code on k: a kernel that dies meanwhile ends the call
// with kernel.ErrDied.
func TryExecute(k *kernel.Kernel, code string) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	var out strings.Builder
	reply, err := k.Execute(ctx, code, kernel.ExecuteOptions{OnMessage: func(m *kernel.Message) {
		if m.Header.MsgType != "stream" {
			return
		}
		var s struct{ Name, Text string }
		if json.Unmarshal(m.Content, &s) == nil && s.Name == "stdout" {
			out.WriteString(s.Text)
		}
	}}, kernel.Deadline{})
	return Result{Stdout: out.String(), Reply: reply}, err
}

// Execute runs code and fails the test unless it ran without error.
func Execute(t *testing.T, k *kernel.Kernel, code string) string {
	t.Helper()
	r, err := TryExecute(k, code)
	if err != nil {
		t.Fatalf("execute %q: %v", code, err)
	}
	if r.Reply.Status != "ok" {
		t.Fatalf("execute %q: %s: %s: %s", code, r.Reply.Status, r.Reply.EName, r.Reply.EValue)
	}
	return r.Stdout
}

// lines runs code and returns its stdout's lines.
func lines(t *testing.T, k *kernel.Kernel, code string) []string {
	t.Helper()
	return strings.Split(strings.TrimSpace(Execute(t, k, code)), "\n")
}

// waitExited waits for proc's current process to end and returns its Exit.
func waitExited(t *testing.T, proc kernel.Process) kernel.Exit {
	t.Helper()
	select {
	case <-proc.Exited():
		return proc.Exit()
	case <-time.After(ExecTimeout):
		t.Fatalf("the kernel did not exit%s", output(proc))
		return kernel.Exit{}
	}
}

// waitGone fails the test when procs does not count 0 within 10 s.
func waitGone(t *testing.T, procs func() int, what string) {
	t.Helper()
	testwait.Within(10*time.Second, func() bool { return procs() == 0 })
	if n := procs(); n > 0 {
		t.Errorf("%d %s", n, what)
	}
}

// testExit: a kernel killed, or ending by itself, reports how it ended,
// and a call in flight ends with ErrDied.
func testExit(t *testing.T, target Target) {
	p := target.New(t, Limits{})
	tests := []struct {
		name string
		code string // empty: Kill
		want kernel.Exit
	}{
		{"kill", "", kernel.Exit{Code: -1, Signal: "killed"}},
		{"segfault", "import ctypes; ctypes.string_at(0)", kernel.Exit{Code: -1, Signal: "segmentation fault"}},
		{"exit code", "import os; os._exit(3)", kernel.Exit{Code: 3}},
		{"abort", "import os; os.abort()", kernel.Exit{Code: -1, Signal: target.AbortSignal}},
	}
	for _, tt := range tests {
		if tt.name == "abort" && target.AbortSignal == "" {
			t.Log("abort: not run, the target does not say how an abort is reported")
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			k := start(t, p, kernel.Spec{})
			proc := k.Process()
			var errc chan error
			if tt.code == "" {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := proc.Kill(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				errc = make(chan error, 1)
				go func() { _, err := TryExecute(k, tt.code); errc <- err }()
			}
			if got := waitExited(t, proc); got != tt.want {
				t.Errorf("exit %+v, want %+v%s", got, tt.want, output(proc))
			}
			if errc != nil {
				if err := <-errc; !errors.Is(err, kernel.ErrDied) {
					t.Errorf("the call: %v, want ErrDied", err)
				}
			}
		})
	}
}

// testFaults: a kernel that exits, segfaults, exhausts its memory or
// fork-bombs ends with that reported, leaves no process behind, and a
// sibling kernel of the same provisioner keeps answering meanwhile.
func testFaults(t *testing.T, target Target) {
	p := target.New(t, faultLimits)
	sib := start(t, p, kernel.Spec{})

	// sibling answers a computation while a fault happens next door.
	sibling := func(t *testing.T, stop <-chan struct{}) {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r, err := TryExecute(sib, fmt.Sprintf("print(sum(range(%d)))", 1000+i))
			if err != nil || r.Reply.Status != "ok" {
				t.Errorf("sibling: %+v %v", r.Reply, err)
				return
			}
			if want := strconv.Itoa((1000 + i) * (999 + i) / 2); strings.TrimSpace(r.Stdout) != want {
				t.Errorf("sibling said %q, want %s", r.Stdout, want)
				return
			}
		}
	}
	pidsHits := target.PidsHits
	if pidsHits == nil {
		pidsHits = func(proc kernel.Process) int64 {
			if c, ok := proc.(interface{ PidsLimitHits() int64 }); ok {
				return c.PidsLimitHits()
			}
			return 0
		}
	}

	for _, tt := range []struct {
		name string
		code string
		kill bool // kill the kernel once its pids limit was hit
		want func(kernel.Exit) bool
		runs bool // the target has what the row needs
	}{
		{"exit", "import os; os._exit(3)", false, func(e kernel.Exit) bool { return e.Code == 3 }, true},
		{"segfault", "import ctypes; ctypes.string_at(0)", false, func(e kernel.Exit) bool { return e.Signal == "segmentation fault" }, true},
		{"memory bomb", "x = []\nwhile True: x.append(bytearray(16 << 20))", false, func(e kernel.Exit) bool { return e.OOMKilled }, target.OOM},
		{"fork bomb", "import os, time\nwhile True:\n    try: os.fork()\n    except OSError: time.sleep(0.05)", true,
			func(e kernel.Exit) bool { return e.PidsLimited }, target.Pids},
	} {
		if !tt.runs {
			t.Logf("%s: not run, the target has no such limit", tt.name)
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			k := start(t, p, kernel.Spec{})
			proc := k.Process()
			var procs func() int
			if target.Processes != nil {
				procs = target.Processes(t, proc)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); sibling(t, stop) }()
			errc := make(chan error, 1)
			go func() {
				_, err := TryExecute(k, tt.code)
				errc <- err
			}()
			// The bomb spins at its limit until killed: poll for the limit.
			var hit <-chan time.Time
			poll := time.NewTicker(50 * time.Millisecond)
			defer poll.Stop()
			if tt.kill {
				hit = poll.C
			}
			deadline := time.NewTimer(ExecTimeout)
			defer deadline.Stop()
			for ended := false; !ended; {
				select {
				case <-proc.Exited():
					ended = true
				case <-hit:
					if pidsHits(proc) == 0 {
						continue
					}
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					err := proc.Kill(ctx)
					cancel()
					if err != nil {
						t.Fatal(err)
					}
					waitExited(t, proc)
					ended = true
				case <-deadline.C:
					t.Fatal("the kernel did not end")
				}
			}
			close(stop)
			wg.Wait()
			if e := proc.Exit(); !tt.want(e) {
				t.Errorf("exit %+v", e)
			}
			if err := <-errc; !errors.Is(err, kernel.ErrDied) {
				t.Errorf("the call: %v, want ErrDied", err)
			}
			if procs != nil {
				waitGone(t, procs, "processes left after the kernel ended")
			}
		})
	}
	if got := lines(t, sib, "print(1+1)"); got[0] != "2" {
		t.Errorf("sibling after the faults: %v", got)
	}
}

// forkBomb forks until refused and says how many forks succeeded and the
// errno of the first refusal.
const forkBomb = `
import os, time
n, err = 0, None
for i in range(10000):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    n += 1
print(n, err)
`

// testPidsLimit: forks beyond the pids limit fail with EAGAIN, the kernel
// survives them, and its exit, once killed, says it hit the limit.
func testPidsLimit(t *testing.T, target Target) {
	if !target.Pids {
		t.Log("not run: the target has no pids limit")
		return
	}
	p := target.New(t, Limits{Pids: faultLimits.Pids})
	k := start(t, p, kernel.Spec{})
	out := Execute(t, k, forkBomb)
	var n, errno int
	if _, err := fmt.Sscan(out, &n, &errno); err != nil {
		t.Fatalf("fork bomb output %q: %v", out, err)
	}
	if n >= int(faultLimits.Pids) || errno != 11 {
		t.Errorf("forked %d processes, then errno %d; want fewer than %d, then EAGAIN (11)", n, errno, faultLimits.Pids)
	}
	// The kernel itself survived the bomb.
	if got := strings.TrimSpace(Execute(t, k, "print(6 * 7)")); got != "42" {
		t.Errorf("kernel after the bomb: %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.Process().Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if exit := waitExited(t, k.Process()); !exit.PidsLimited || exit.Signal != "killed" || exit.Code != -1 {
		t.Errorf("exit %+v, want PidsLimited and killed", exit)
	}
}

// testInterrupt: an interrupt ends a running cell with KeyboardInterrupt
// and the kernel goes on.
func testInterrupt(t *testing.T, target Target) {
	p := target.New(t, Limits{})
	k := start(t, p, kernel.Spec{})
	done := make(chan Result, 1)
	go func() {
		r, _ := TryExecute(k, "import time; print('sleeping', flush=True); time.sleep(600)")
		done <- r
	}()
	// Interrupt until the execution ends: the first interrupt may arrive
	// before the code runs.
	deadline := time.After(ExecTimeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if r.Reply == nil || r.Reply.EName != "KeyboardInterrupt" {
				t.Errorf("reply %+v, want KeyboardInterrupt", r.Reply)
			}
			if got := Execute(t, k, "print(1+1)"); got != "2\n" {
				t.Errorf("after the interrupt: %q", got)
			}
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
			err := k.Interrupt(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("the execution was not interrupted")
		}
	}
}

// testRestart: Restart ends the old process (its Exited closes) and starts
// a new one on the same endpoints and directory (a new Exited, and a new
// bound signal where the process gives one): the interpreter's state (and,
// where FreshTmp, /tmp) is gone, the files under /code are kept.
func testRestart(t *testing.T, target Target) {
	p := target.New(t, Limits{})
	k := start(t, p, kernel.Spec{})
	proc := k.Process()
	pid := strings.TrimSpace(Execute(t, k, `import os; x = 42; open("output/kept.txt", "w").write("kept"); open("/tmp/gone", "w").write("gone"); print(os.getpid())`))
	old := proc.Exited()
	info := proc.ConnectionInfo()
	waitBound(context.Background(), t, proc)

	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	// kernel.Kernel's Restart: the process's, then a new client.
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old:
	default:
		t.Error("the old process's Exited is still open after Restart")
	}
	select {
	case <-proc.Exited():
		t.Fatalf("the new process's Exited is closed: %+v%s", proc.Exit(), output(proc))
	default:
	}
	if proc.Exited() == old {
		t.Error("Exited returns the old channel after Restart")
	}
	if proc.ConnectionInfo() != info {
		t.Errorf("endpoints after Restart %+v, want %+v", proc.ConnectionInfo(), info)
	}
	waitBound(ctx, t, proc)
	r, err := TryExecute(k, `import os; print(open("output/kept.txt").read(), os.path.exists("/tmp/gone"), os.getpid()); x`)
	if err != nil {
		t.Fatal(err)
	}
	if r.Reply.Status != "error" || r.Reply.EName != "NameError" {
		t.Errorf("state survived the restart: %+v", r.Reply)
	}
	got := strings.Fields(r.Stdout)
	if len(got) != 3 || got[0] != "kept" {
		t.Fatalf("files after restart: %q", r.Stdout)
	}
	if target.FreshTmp && got[1] != "False" {
		t.Errorf("/tmp after restart: %q, want it empty", r.Stdout)
	}
	if !target.PIDNamespace && got[2] == pid {
		t.Errorf("same pid %s after restart", pid)
	}
	if data, err := os.ReadFile(filepath.Join(proc.Dir(), "output", "kept.txt")); err != nil || string(data) != "kept" {
		t.Errorf("the kernel's file on the host: %q, %v", data, err)
	}
}

// waitBound waits for the bound signal of proc's current process, where
// it gives one (kernel.Binder), and checks that its sockets exist then.
func waitBound(ctx context.Context, t *testing.T, proc kernel.Process) {
	t.Helper()
	b, ok := proc.(kernel.Binder)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	select {
	case <-b.Bound():
	case <-proc.Exited():
		t.Fatalf("kernel exited before it was bound: %+v%s", proc.Exit(), output(proc))
	case <-ctx.Done():
		t.Fatal("no bound signal")
	}
	for _, f := range proc.ConnectionInfo().SocketFiles() {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("bound, but socket %s: %v", f, err)
		}
	}
}

// testClose: Close ends the kernel with the processes it started, removes
// its socket files and directory, can be called again, and a closed
// kernel does not restart.
func testClose(t *testing.T, target Target) {
	p := target.New(t, Limits{})
	k := start(t, p, kernel.Spec{})
	proc := k.Process()
	// A child process: it must die with the kernel.
	Execute(t, k, `import subprocess; child = subprocess.Popen(["sleep", "`+SleepArg+`"]); open("output/a.txt", "w").write("a")`)
	var procs func() int
	if target.Processes != nil {
		procs = target.Processes(t, proc)
		if n := procs(); n < 2 { // the kernel and its child
			t.Fatalf("%d processes of the kernel before Close", n)
		}
	}
	sockets := proc.ConnectionInfo().SocketFiles()
	for _, f := range sockets {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("socket file: %v", err)
		}
	}
	dir := proc.Dir()
	if _, err := os.Stat(filepath.Join(dir, "output", "a.txt")); err != nil {
		t.Fatalf("the kernel's output on the host: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := proc.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	select {
	case <-proc.Exited():
	default:
		t.Error("Exited open after Close")
	}
	if procs != nil {
		// SIGKILL is asynchronous for the rest of the group: wait.
		waitGone(t, procs, "processes of the kernel left after Close")
	}
	if target.Leftovers != nil {
		for _, l := range target.Leftovers(t, proc) {
			t.Errorf("left after Close: %s", l)
		}
	}
	for _, f := range sockets {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file %s left: %v", f, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("kernel directory left: %v", err)
	}
	if err := proc.Restart(ctx); err == nil {
		t.Error("Restart after Close succeeded")
	}
}

// testOneShot: where the provisioner makes one-shot kernels, Spec.OneShot
// gets one; elsewhere a full kernel, which answers as any other.
func testOneShot(t *testing.T, target Target) {
	p := target.New(t, Limits{})
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	proc, err := p.Start(ctx, kernel.Spec{ID: newID(), OneShot: true})
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close(context.Background())
	o, ok := proc.(kernel.OneShotter)
	if got := ok && o.OneShot(); got != target.OneShot {
		t.Errorf("OneShot() = %v, want %v", got, target.OneShot)
	}
	if !target.OneShot {
		proc.Close(ctx)
		k := start(t, p, kernel.Spec{OneShot: true})
		if got := lines(t, k, "print(1+1)"); got[0] != "2" {
			t.Errorf("a full kernel asked for as one-shot: %v", got)
		}
	}
}

// OnStream returns an ExecuteOptions.OnMessage that sends on c (without
// blocking) when the kernel's first stream output arrives: the cell runs.
func OnStream(c chan<- struct{}) func(*kernel.Message) {
	return func(m *kernel.Message) {
		if m.Header.MsgType == "stream" {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}
