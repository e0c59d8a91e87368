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

	executorimage "github.com/codegw/codegw/executor-image"
	"github.com/codegw/codegw/kernel"
)

// plainProvisioner runs the kernel launcher (executor-image/launch.py, as
// both provisioners do) as a plain child process: no sandbox, no lifeline,
// nothing preloaded, so these tests exercise the protocol client against
// the kernel the gateway runs. kernel/local has the sandboxed provisioner
// and its own tests.
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
	if err := writeExecutor(); err != nil {
		return err
	}
	cmd := exec.Command("/usr/bin/python3", filepath.Join(executorDir, executorimage.Launcher), "-f", pp.file)
	cmd.Dir = pp.dir
	// The launcher puts IPython's and matplotlib's directories under TMPDIR.
	cmd.Env = append(os.Environ(), "HOME="+pp.dir, "TMPDIR="+pp.dir, "EXECUTOR_PRELOAD=",
		"EXECUTOR_MPL_CACHE="+mplCache(), "EXECUTOR_WORKDIR="+pp.dir)
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

// launch starts a kernel for the test and closes it at cleanup.
func launch(t testing.TB, tcp bool) *kernel.Kernel {
	t.Helper()
	k, err := start(t, tcp)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	return k
}

// start is launch for any goroutine: it returns the error instead.
func start(t testing.TB, tcp bool) (*kernel.Kernel, error) {
	kernelSeq.Lock()
	kernelSeq.n++
	id := fmt.Sprintf("t%d", kernelSeq.n)
	kernelSeq.Unlock()
	// Unix socket paths are short: use /tmp, not t.TempDir()'s long path.
	dir, err := os.MkdirTemp("", "kt")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k, err := kernel.Launch(ctx, &plainProvisioner{dir: dir, tcp: tcp}, kernel.Spec{ID: id}, kernel.LaunchOptions{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { k.Close(context.Background()) })
	return k, nil
}

func (pp *plainProcess) Pid() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.cmd.Process.Pid
}

// executorDir holds the launcher for every kernel of the test binary and
// the matplotlib font cache it builds once; TestMain makes and removes it.
var executorDir string

// writeExecutor writes the launcher into executorDir and builds the font
// cache there, on first use.
var writeExecutor = sync.OnceValue(func() error {
	if err := executorimage.WriteTo(executorDir); err != nil {
		return err
	}
	launcher := filepath.Join(executorDir, executorimage.Launcher)
	if out, err := exec.Command("/usr/bin/python3", launcher, "--build-mpl-cache", mplCache()).CombinedOutput(); err != nil {
		return fmt.Errorf("font cache: %v: %s", err, out)
	}
	return nil
})

func mplCache() string { return filepath.Join(executorDir, "mplcache") }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kexec")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	executorDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
