package local

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	executorimage "github.com/codegw/codegw/executor-image"
	"github.com/codegw/codegw/internal/testcheck"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/kerneltest"
)

// The helper process of TestOrphanedKernels reads its settings from these.
const (
	helperEnv        = "CODEGW_TEST_LIFELINE_HELPER" // the state dir
	helperKernelEnv  = "CODEGW_TEST_LIFELINE_KERNEL" // the kernel id
	helperSandboxEnv = "CODEGW_TEST_LIFELINE_SANDBOX"
	helperStartEnv   = "CODEGW_TEST_LIFELINE_START" // "fork": see forkHelper
)

// TestHelperProcess is not a test: TestOrphanedKernels runs the test binary
// with -test.run=^TestHelperProcess$ as a stand-in gateway that starts one
// kernel, says "started" on stdout and waits to be killed.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestOrphanedKernels")
	}
	if os.Getenv(helperStartEnv) == StartFork {
		forkHelper(dir)
	}
	// New's checks import ipykernel outside and inside the sandbox, which
	// takes seconds on a loaded machine; the test's own New made them in
	// this state dir, so set up the provisioner New would return.
	p := &Provisioner{
		cfg: Config{Python: "/usr/bin/python3", StateDir: dir, Sandbox: os.Getenv(helperSandboxEnv),
			Preload: []string{}, UID: 65534, GID: 65534},
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		execDir:  filepath.Join(dir, "executor"),
		mplCache: filepath.Join(dir, "mplcache"),
		spawn:    newSpawner(),
	}
	if p.cfg.Sandbox == SandboxBwrap {
		path, err := exec.LookPath("bwrap")
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		p.sandbox, p.bwrap = true, path
		if os.Geteuid() == 0 {
			p.cred = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
		}
	}
	if _, err := p.Start(context.Background(), kernel.Spec{ID: os.Getenv(helperKernelEnv)}); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	fmt.Println("started")
	// Killed long before; the bound only keeps a lost helper from lingering.
	time.Sleep(time.Minute)
	os.Exit(3)
}

// TestOrphanedKernels kills a gateway (a helper process) at once or a few
// milliseconds after it started a kernel, while bwrap sets up the sandbox
// and --die-with-parent is not yet in force, and checks that no process of
// the kernel survives it. Without the lifeline some do: the sandbox's init
// running the kernel, or blocked in bwrap's set-up handshake.
func TestOrphanedKernels(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("in the helper process")
	}
	delays := []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond,
		15 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond}
	for _, mode := range sandboxes(t) {
		t.Run(mode, func(t *testing.T) {
			// Build the font cache and the executor files once, here.
			newProvisioner(t, Config{Sandbox: mode, Preload: []string{}, Start: StartSpawn})
			var kdirs []string
			t.Cleanup(func() { killOrphans(t, kdirs) })
			for round := 0; round < 3; round++ {
				for _, d := range delays {
					id := newID()
					kdirs = append(kdirs, filepath.Join(stateDir, "k", id))
					if err := killHelper(mode, id, d); err != nil {
						t.Fatalf("helper killed after %v: %v", d, err)
					}
				}
			}
			// A kernel without a gateway ends within milliseconds of
			// reaching the launcher's main; under load that can take a
			// while.
			var left []string
			testwait.Within(10*time.Second, func() bool { left = orphans(t, kdirs); return len(left) == 0 })
			if len(left) > 0 {
				t.Errorf("%d processes outlived their gateway:\n%s", len(left), strings.Join(left, "\n"))
			}
		})
	}
}

// killHelper runs a helper that starts kernel id, and SIGKILLs it delay
// after the kernel started.
func killHelper(mode, id string, delay time.Duration) error {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+stateDir, helperKernelEnv+"="+id, helperSandboxEnv+"="+mode)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "started\n" {
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("helper said %q; stderr: %s", s, stderr.String())
		}
	case <-time.After(startTimeout):
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("helper did not start a kernel; stderr: %s", stderr.String())
	}
	time.Sleep(delay)
	cmd.Process.Kill()
	cmd.Wait()
	return nil
}

// orphans describes the live processes whose command line names one of kdirs.
func orphans(t *testing.T, kdirs []string) []string {
	t.Helper()
	var left []string
	for _, pr := range testcheck.Procs() {
		for _, kdir := range kdirs {
			if strings.Contains(pr.Cmdline, kdir+"/") {
				left = append(left, fmt.Sprintf("pid %d ppid %d: %s", pr.PID, pr.PPID, pr.Cmdline))
				break
			}
		}
	}
	return left
}

// killOrphans kills what a failed TestOrphanedKernels left behind and
// removes the kernel directories of the killed helpers, which would
// otherwise be reaped by TestReap.
func killOrphans(t *testing.T, kdirs []string) {
	for _, pr := range testcheck.Procs() {
		for _, kdir := range kdirs {
			if strings.Contains(pr.Cmdline, kdir+"/") {
				syscall.Kill(pr.PID, syscall.SIGKILL)
				break
			}
		}
	}
	for _, kdir := range kdirs {
		if err := os.RemoveAll(kdir); err != nil {
			t.Error(err)
		}
	}
}

// TestLifeline ends a kernel by closing the gateway's end of its lifeline,
// as the death of the gateway does: the kernel and its children must go.
func TestLifeline(t *testing.T) {
	for _, mode := range sandboxes(t) {
		t.Run(mode, func(t *testing.T) {
			p := newProvisioner(t, Config{Sandbox: mode, Preload: []string{}, Start: StartSpawn})
			k, c := startKernel(t, p)
			execute(t, c, `import subprocess; child = subprocess.Popen(["sleep", "`+kerneltest.SleepArg+`"])`)
			r := spawnedRun(k)
			if n := groupMembers(t, r.pgid); n < 3 { // kernel, watcher, sleep
				t.Fatalf("%d processes in the kernel's group", n)
			}
			r.lifeline.Close()
			select {
			case <-k.Exited():
			case <-time.After(execTimeout):
				t.Fatal("the kernel outlived its lifeline")
			}
			if got, want := k.Exit(), (kernel.Exit{Code: -1, Signal: "killed"}); got != want {
				t.Errorf("exit %+v, want %+v; output:\n%s", got, want, k.Output())
			}
			testwait.Within(30*time.Second, func() bool { return groupMembers(t, r.pgid) == 0 })
			if n := groupMembers(t, r.pgid); n > 0 {
				t.Errorf("%d processes of the kernel's group outlived its lifeline", n)
			}
		})
	}
}

// TestLauncherLifeline runs the launcher alone, without the watcher.
func TestLauncherLifeline(t *testing.T) {
	dir := t.TempDir()
	launcher := filepath.Join(dir, "executor", "launch.py")
	if err := executorimage.WriteTo(filepath.Dir(launcher)); err != nil {
		t.Fatal(err)
	}
	launch := func(t *testing.T, fd string, extra *os.File) *exec.Cmd {
		t.Helper()
		cmd := exec.Command("/usr/bin/python3", launcher, "-f", filepath.Join(dir, "kernel.json"))
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir, "EXECUTOR_WORKDIR=" + dir,
			"EXECUTOR_PRELOAD=", "EXECUTOR_LIFELINE_FD=" + fd}
		if extra != nil {
			cmd.ExtraFiles = []*os.File{extra}
		}
		// Its own process group: the launcher kills its group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			if t.Failed() {
				t.Logf("launcher output:\n%s", out.String())
			}
		})
		return cmd
	}
	wait := func(t *testing.T, cmd *exec.Cmd) *os.ProcessState {
		t.Helper()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
			return cmd.ProcessState
		case <-time.After(execTimeout):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Fatal("the launcher did not exit")
			return nil
		}
	}

	t.Run("end of file", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := launch(t, strconv.Itoa(lifelineFD), r)
		r.Close()
		w.Close()
		ps := wait(t, cmd)
		if ws := ps.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("launcher ended with %v, want killed", ps)
		}
	})
	t.Run("no descriptor", func(t *testing.T) {
		ps := wait(t, launch(t, "9", nil))
		if ps.ExitCode() != 70 {
			t.Errorf("launcher ended with %v, want exit status 70", ps)
		}
	})
}
