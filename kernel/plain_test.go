package kernel_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// plainProvisioner runs `python3 -m ipykernel_launcher` with no sandbox and
// no profile: the bare kernel, so these tests exercise the protocol client
// alone. kernel/local has the sandboxed provisioner and its own tests.
type plainProvisioner struct {
	dir string
	tcp bool
}

type plainProcess struct {
	info kernel.ConnectionInfo
	dir  string
	file string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	exit   kernel.Exit
}

func (p *plainProvisioner) Start(ctx context.Context, spec kernel.Spec) (kernel.Process, error) {
	dir := filepath.Join(p.dir, spec.ID)
	if err := os.MkdirAll(filepath.Join(dir, "output"), 0o755); err != nil {
		return nil, err
	}
	info, err := kernel.NewIPCConnection(filepath.Join(dir, "k"))
	if p.tcp {
		info, err = kernel.NewTCPConnection()
	}
	if err != nil {
		return nil, err
	}
	pp := &plainProcess{info: info, dir: dir, file: filepath.Join(dir, "conn.json")}
	if err := info.WriteFile(pp.file); err != nil {
		return nil, err
	}
	return pp, pp.start()
}

func (p *plainProvisioner) Close() error { return nil }

func (pp *plainProcess) start() error {
	cmd := exec.Command("/usr/bin/python3", "-m", "ipykernel_launcher", "-f", pp.file,
		"--HistoryManager.enabled=False", "--IPKernelApp.matplotlib=inline")
	cmd.Dir = pp.dir
	cmd.Env = append(os.Environ(), "MPLBACKEND=agg", "HOME="+pp.dir, "IPYTHONDIR="+filepath.Join(pp.dir, "ipython"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	pp.mu.Lock()
	pp.cmd, pp.exited = cmd, exited
	pp.mu.Unlock()
	go func() {
		err := cmd.Wait()
		e := kernel.Exit{}
		if ee, ok := err.(*exec.ExitError); ok {
			ws := ee.Sys().(syscall.WaitStatus)
			e.Code = ws.ExitStatus()
			if ws.Signaled() {
				e.Code, e.Signal = -1, ws.Signal().String()
			}
		}
		pp.mu.Lock()
		pp.exit = e
		pp.mu.Unlock()
		close(exited)
	}()
	return nil
}

func (pp *plainProcess) ConnectionInfo() kernel.ConnectionInfo { return pp.info }
func (pp *plainProcess) Dir() string                           { return pp.dir }
func (pp *plainProcess) Exited() <-chan struct{} {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.exited
}
func (pp *plainProcess) Exit() kernel.Exit {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.exit
}
func (pp *plainProcess) Kill(ctx context.Context) error {
	pp.mu.Lock()
	cmd := pp.cmd
	pp.mu.Unlock()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return nil
}
func (pp *plainProcess) Restart(ctx context.Context) error {
	pp.Kill(ctx)
	<-pp.Exited()
	for _, f := range pp.info.SocketFiles() {
		os.Remove(f)
	}
	return pp.start()
}
func (pp *plainProcess) Close(ctx context.Context) error {
	pp.Kill(ctx)
	select {
	case <-pp.Exited():
	case <-ctx.Done():
		return ctx.Err()
	}
	return os.RemoveAll(pp.dir)
}

var kernelSeq struct {
	sync.Mutex
	n int
}

// launch starts a bare kernel for the test and closes it at cleanup.
func launch(t testing.TB, tcp bool) *kernel.Kernel {
	t.Helper()
	kernelSeq.Lock()
	kernelSeq.n++
	id := fmt.Sprintf("t%d", kernelSeq.n)
	kernelSeq.Unlock()
	// Unix socket paths are short: use /tmp, not t.TempDir()'s long path.
	dir, err := os.MkdirTemp("", "kt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k, err := kernel.Launch(ctx, &plainProvisioner{dir: dir, tcp: tcp}, kernel.Spec{ID: id}, kernel.LaunchOptions{})
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	t.Cleanup(func() { k.Close(context.Background()) })
	return k
}

func (pp *plainProcess) Pid() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.cmd.Process.Pid
}
