package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	executorimage "github.com/codegw/codegw/executor-image"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/forked"
)

// instance is one local kernel, forked by the zygote (KERNEL_START=fork)
// or spawned. It implements kernel.Process.
type instance struct {
	// core is the kernel's lifecycle: a *forked.Kernel, whose Host is
	// files, or a *spawned.
	core
	files *kernelFiles
}

// core is what a local kernel's lifecycle provides.
type core interface {
	kernel.Process
	kernel.Binder
	kernel.OneShotter
}

var (
	_ kernel.Process    = (*instance)(nil)
	_ kernel.Binder     = (*instance)(nil)
	_ kernel.OneShotter = (*instance)(nil)
	_ core              = (*forked.Kernel)(nil)
	_ core              = (*spawned)(nil)
)

// Output returns the last bytes the kernel's current process wrote to its
// stdout and stderr (tracebacks of a crash, bwrap's complaints), for
// diagnostics; a forked kernel's go to its zygote's, with the zygote's.
func (k *instance) Output() string {
	if s, ok := k.core.(*spawned); ok {
		return s.current().tail.String()
	}
	if t := k.files.ztail.Load(); t != nil {
		return t.String()
	}
	return ""
}

// kernelFiles is what a local kernel owns on the host, however it is
// started: its directory, the lock on it and its connection file. It is
// the forked.Host of a forked kernel.
type kernelFiles struct {
	p    *Provisioner
	id   string
	kdir string
	info kernel.ConnectionInfo
	env  []string          // a spawned kernel's environment
	spec map[string]string // Spec.Env, applied by forked kernels
	lock *os.File          // flock held while the kernel's directory is ours
	// ztail is the output of the zygote that forked the kernel last.
	ztail atomic.Pointer[tailBuffer]
}

// ConnectionInfo is where the kernel listens; it stays the same across restarts.
func (k *kernelFiles) ConnectionInfo() kernel.ConnectionInfo { return k.info }

// Dir is the host directory the kernel sees as /code.
func (k *kernelFiles) Dir() string { return filepath.Join(k.kdir, "code") }

// spawned is a kernel spawned as a new interpreter (KERNEL_START=spawn,
// or where the zygote cannot run).
type spawned struct {
	*kernelFiles

	opMu   sync.Mutex // serialises Restart and Close
	closed bool

	mu  sync.Mutex
	cur *run
}

// OneShot is false: spawned kernels are full kernels.
func (k *spawned) OneShot() bool { return false }

// run is one process of a spawned kernel; Restart makes a new one.
type run struct {
	cmd    *exec.Cmd
	pgid   int
	exited chan struct{} // closed once the process ended and exit is set
	output chan struct{} // closed once its stdout/stderr pipe is drained
	pipe   *os.File      // read end of that pipe
	// lifeline is the write end of the kernel's lifeline pipe, held until
	// the process has ended: see lifelineFD.
	lifeline *os.File
	exit     kernel.Exit
	tail     *tailBuffer
	// bound is closed when the launcher writes a byte on the kernel's
	// bound pipe.
	bound     chan struct{}
	boundOnce sync.Once
}

// outputTail bounds the kernel output kept for diagnostics.
const outputTail = 16 << 10

// writeConnFile writes a fresh connection file, readable only by the
// kernel's user, and returns its path.
func (k *kernelFiles) writeConnFile() (string, error) {
	p := k.p
	connFile := filepath.Join(k.kdir, "s", "kernel.json")
	if err := k.info.WriteFile(connFile); err != nil {
		return "", fmt.Errorf("local: connection file: %w", err)
	}
	if err := p.chown(connFile); err != nil {
		return "", err
	}
	if p.cred != nil {
		// Only the kernel's user needs the key.
		if err := os.Chmod(connFile, 0o600); err != nil {
			return "", fmt.Errorf("local: connection file: %w", err)
		}
	}
	return connFile, nil
}

// start starts the kernel as a new interpreter (a cold start) and makes
// it current.
func (k *spawned) start() error {
	p := k.p
	connFile, err := k.writeConnFile()
	if err != nil {
		return err
	}

	launcher := filepath.Join(p.execDir, executorimage.Launcher)
	argv := []string{"/bin/sh", "-c", watchScript, "codegw-kernel"}
	if p.sandbox {
		argv = append(argv, p.bwrap)
		argv = append(argv, p.bwrapArgs(k.kdir, k.Dir(), k.info.Transport == "tcp")...)
		argv = append(argv, "--")
	}
	argv = append(argv, p.cfg.Python, launcher, "-f", connFile)
	cmd := exec.Command(argv[0], argv[1:]...)
	if !p.sandbox {
		cmd.Dir = k.Dir()
	}
	cmd.Env = k.env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:    true,
		Pdeathsig: syscall.SIGKILL,
		// The sandbox user, when the gateway is root; nil otherwise.
		Credential: p.cred,
	}
	// Our own pipe rather than an io.Writer: cmd.Wait then returns when the
	// process ends, even if a child of it still holds the pipe.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	lr, lw, err := os.Pipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("local: %w", err)
	}
	br, bw, err := os.Pipe()
	if err != nil {
		pr.Close()
		pw.Close()
		lr.Close()
		lw.Close()
		return fmt.Errorf("local: %w", err)
	}
	// The read end becomes lifelineFD in the child, for the watcher and
	// the launcher; the write end is close-on-exec, so no other kernel
	// inherits it. The bound pipe's write end becomes boundFD, on which the
	// launcher writes a byte once the kernel's sockets are bound.
	cmd.ExtraFiles = []*os.File{lr, bw}
	cmd.Env = append(cmd.Env[:len(cmd.Env):len(cmd.Env)], "EXECUTOR_READY_FD="+strconv.Itoa(boundFD))

	t0 := time.Now()
	err = p.spawn.start(cmd)
	pw.Close()
	lr.Close()
	bw.Close()
	if err != nil {
		pr.Close()
		lw.Close()
		br.Close()
		if errors.Is(err, errClosed) {
			return err
		}
		return fmt.Errorf("%w: local: start kernel: %v", kernel.ErrProvisioner, err)
	}
	r := &run{cmd: cmd, pgid: cmd.Process.Pid, exited: make(chan struct{}),
		output: make(chan struct{}), pipe: pr, lifeline: lw, tail: newTailBuffer(outputTail),
		bound: make(chan struct{})}
	go r.watchBound(br)
	go func() {
		defer close(r.output)
		io.Copy(r.tail, pr)
		pr.Close()
	}()
	go k.wait(r, t0)
	k.mu.Lock()
	k.cur = r
	k.mu.Unlock()
	p.log.Info("local: kernel started", "kernel", k.id, "pid", r.pgid, "sandbox", p.sandbox, "transport", k.info.Transport)
	return nil
}

// wait is the one goroutine that waits for r's process. It records the exit,
// kills what is left of the process group (a plain kernel's children) and
// closes r.exited.
func (k *spawned) wait(r *run, t0 time.Time) {
	r.cmd.Wait()
	syscall.Kill(-r.pgid, syscall.SIGKILL)
	r.lifeline.Close()
	r.exit = exitOf(r.cmd.ProcessState, k.p.sandbox)
	close(r.exited)

	attrs := []any{"kernel", k.id, "pid", r.pgid, "code", r.exit.Code, "uptime", time.Since(t0).Round(time.Millisecond)}
	if r.exit.Signal != "" {
		attrs = append(attrs, "signal", r.exit.Signal)
	}
	if r.exit.Code != 0 && r.exit.Signal != "killed" {
		// Give the pipe a moment to drain so the log shows why it died.
		select {
		case <-r.output:
		case <-time.After(time.Second):
		}
		attrs = append(attrs, "output", r.tail.String())
	}
	k.p.log.Info("local: kernel exited", attrs...)
}

// exitOf turns a process state into a kernel.Exit. bwrap reports a child
// killed by signal N as status 128+N.
func exitOf(ps *os.ProcessState, sandboxed bool) kernel.Exit {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok {
		return kernel.Exit{Code: ps.ExitCode()}
	}
	if ws.Signaled() {
		return kernel.Exit{Code: -1, Signal: ws.Signal().String()}
	}
	if sandboxed {
		return forked.ExitOf(ws.ExitStatus())
	}
	return kernel.Exit{Code: ws.ExitStatus()}
}

// markBound closes r.bound; only the first call counts.
func (r *run) markBound() { r.boundOnce.Do(func() { close(r.bound) }) }

// watchBound reads the kernel's bound pipe: its first byte marks r bound;
// end-of-file (the kernel died first) leaves it unmarked.
func (r *run) watchBound(f *os.File) {
	defer f.Close()
	var b [1]byte
	if n, _ := f.Read(b[:]); n > 0 {
		r.markBound()
	}
}

// Bound is closed once the current kernel process has bound its sockets
// (kernel.Binder): the launcher says so.
func (k *spawned) Bound() <-chan struct{} { return k.current().bound }

func (k *spawned) current() *run {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// Exited is closed when the current kernel process ends.
func (k *spawned) Exited() <-chan struct{} { return k.current().exited }

// Exit describes how the current process ended; valid once Exited is closed.
func (k *spawned) Exit() kernel.Exit {
	r := k.current()
	select {
	case <-r.exited:
		return r.exit
	default:
		return kernel.Exit{}
	}
}

// Kill sends SIGKILL to the kernel's process group and waits until the
// process is gone or ctx ends.
func (k *spawned) Kill(ctx context.Context) error {
	return k.kill(ctx, k.current())
}

func (k *spawned) kill(ctx context.Context, r *run) error {
	select {
	case <-r.exited:
		return nil
	default:
	}
	// The group leader is not reaped before r.exited closes, so its pid
	// cannot have been reused yet.
	if err := syscall.Kill(-r.pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("local: kill kernel %s: %w", k.id, err)
	}
	select {
	case <-r.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("local: kill kernel %s: %w", k.id, ctx.Err())
	}
}

// Restart kills the kernel process and starts a new one with the same
// connection file, key and directory. Clients must redial.
func (k *spawned) Restart(ctx context.Context) error {
	k.opMu.Lock()
	defer k.opMu.Unlock()
	if k.closed {
		return fmt.Errorf("local: restart kernel %s: closed", k.id)
	}
	if err := k.kill(ctx, k.current()); err != nil {
		return err
	}
	k.removeSockets() // the killed kernel left them
	if err := k.start(); err != nil {
		return fmt.Errorf("local: restart kernel %s: %w", k.id, err)
	}
	return nil
}

// Close kills the kernel and removes its directory, socket files included.
// It is safe to call more than once; a call that failed (ctx ended before
// the process was gone) can be repeated.
func (k *spawned) Close(ctx context.Context) error {
	k.opMu.Lock()
	defer k.opMu.Unlock()
	if k.closed {
		return nil
	}
	r := k.current()
	if err := k.kill(ctx, r); err != nil {
		return err
	}
	// A plain kernel's child that left the process group may still hold
	// the output pipe; do not wait for it.
	select {
	case <-r.output:
	case <-time.After(time.Second):
		r.pipe.Close()
		<-r.output
	}
	if err := os.RemoveAll(k.kdir); err != nil {
		return fmt.Errorf("local: close kernel %s: %w", k.id, err)
	}
	k.unlock()
	k.closed = true
	return nil
}

func (k *kernelFiles) unlock() {
	if k.lock != nil {
		k.lock.Close()
		k.lock = nil
	}
}

// removeSockets removes the socket files a killed kernel leaves behind.
func (k *kernelFiles) removeSockets() {
	for _, f := range k.info.SocketFiles() {
		os.Remove(f)
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(b)
	if len(b) >= t.max {
		b = b[len(b)-t.max:]
		t.buf = t.buf[:0]
	}
	if over := len(t.buf) + len(b) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, b...)
	return n, nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
