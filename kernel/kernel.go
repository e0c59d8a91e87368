// Package kernel drives IPython kernels over the Jupyter messaging protocol
// (wire protocol 5.3 over ZeroMQ, github.com/go-zeromq/zmq4).
//
// It holds the wire codec (Signer), the protocol Client, the Provisioner
// contract that kernel/local and kernel/docker implement, the Kernel that
// ties a Client to its process (death detection, deadlines, restart) and the
// warm Pool that keeps ready kernels ahead of demand.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LaunchOptions tunes Launch.
type LaunchOptions struct {
	Client ClientOptions
	// StartTimeout bounds the start until ready (default DefaultStartTimeout).
	StartTimeout time.Duration
	// WarmUp is code run once before the kernel is handed out, without
	// history (so the caller's first cell is still number 1): the first
	// execution in a fresh IPython costs ~17 ms more than the next ones.
	WarmUp string
	Logger *slog.Logger
}

// Kernel is one running kernel: its process and the Client connected to it.
// A Kernel serves one caller (a session or one stateless execution) and is
// then closed.
type Kernel struct {
	id   string
	proc Process
	opts LaunchOptions
	info *KernelInfo

	mu        sync.Mutex
	client    *Client
	closed    bool
	parked    bool  // waiting in a pool: its heartbeat is not watched
	killedFor error // why the gateway killed a kernel it could not talk to
}

// Launch starts a kernel with prov, connects to it and waits until it is
// ready. Its process's exit ends every waiting call with ErrDied at once.
func Launch(ctx context.Context, prov Provisioner, spec Spec, opts LaunchOptions) (*Kernel, error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Client.Logger == nil {
		opts.Client.Logger = opts.Logger
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	proc, err := prov.Start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("kernel: start %s: %w", spec.ID, err)
	}
	k := &Kernel{id: spec.ID, proc: proc, opts: opts}
	if err := k.connect(ctx); err != nil {
		proc.Close(context.Background())
		return nil, fmt.Errorf("kernel: start %s: %w", spec.ID, err)
	}
	if opts.WarmUp != "" {
		if _, err := k.Client().Execute(ctx, opts.WarmUp, ExecuteOptions{}); err != nil {
			k.Close(context.Background())
			return nil, fmt.Errorf("kernel: warm up %s: %w", spec.ID, err)
		}
	}
	return k, nil
}

// connect dials the current process and waits for readiness. A process
// that says when its sockets are bound (Binder) is dialled once, then; one
// that exits first ends the wait.
func (k *Kernel) connect(ctx context.Context) error {
	opts := k.opts.Client
	if b, ok := k.proc.(Binder); ok {
		opts.Bound = b.Bound()
	}
	dctx, cancel := context.WithCancel(ctx)
	exited := k.proc.Exited()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-dctx.Done():
		}
	}()
	dial := Dial
	if o, ok := k.proc.(OneShotter); ok && o.OneShot() {
		dial = DialOneShot
	}
	c, err := dial(dctx, k.proc.ConnectionInfo(), opts)
	cancel()
	if err != nil {
		if e, ok := k.Exit(); ok && ctx.Err() == nil {
			return fmt.Errorf("%w: %s", ErrDied, DescribeExit(e))
		}
		return err
	}
	go k.watch(c)
	info, err := c.WaitReady(ctx)
	if err != nil {
		k.closeClient(c)
		return err
	}
	k.mu.Lock()
	k.client, k.info = c, info
	if !k.parked {
		c.Heartbeat(true)
	}
	k.mu.Unlock()
	return nil
}

// Binder is implemented by processes that tell when the kernel has bound
// its sockets, so that the gateway dials once instead of retrying until the
// kernel listens: the launcher writes to a pipe or a FIFO right after
// ipykernel's initialize(), and a zygote forwards its child's byte.
type Binder interface {
	// Bound is closed when the current kernel process has bound its
	// sockets. After Restart it returns a new channel for the new process.
	Bound() <-chan struct{}
}

// Park stops watching the heartbeat of a kernel that waits in a pool: no
// caller waits on it, and its process's exit still tells its death. Unpark
// watches it again when it is handed out.
func (k *Kernel) Park() { k.setParked(true) }

// Unpark watches the heartbeat again; see Park.
func (k *Kernel) Unpark() { k.setParked(false) }

func (k *Kernel) setParked(parked bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.parked = parked
	if k.client != nil {
		k.client.Heartbeat(!parked)
	}
}

// watch fails c when the process it talks to exits, and kills the process
// when c finds the kernel dead first (missed heartbeats, a broken or
// oversized message): a kernel we cannot talk to must not keep running.
func (k *Kernel) watch(c *Client) {
	proc := k.proc
	select {
	case <-proc.Exited():
		c.Fail(fmt.Errorf("%w: %s", ErrDied, DescribeExit(proc.Exit())))
	case <-c.dead:
		if errors.Is(c.Err(), ErrClosed) {
			return
		}
		grace := 300 * time.Millisecond // a socket error usually means the process is exiting
		if c.quitting.Load() {
			grace = 10 * time.Second // ipykernel takes its time to shut down
		}
		select {
		case <-proc.Exited():
			return
		case <-time.After(grace):
		}
		// A kernel that hung up is on its way out (a container's exit
		// takes the engine about a second to report): its exit, not the
		// hang-up, will say why it died. Anything else is why we kill it.
		if err := c.Err(); !errors.Is(err, io.EOF) {
			k.mu.Lock()
			k.killedFor = err
			k.mu.Unlock()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		proc.Kill(ctx)
	case <-c.ctx.Done():
	}
}

// DescribeExit says in words how a kernel process ended.
func DescribeExit(e Exit) string {
	switch {
	case e.OOMKilled:
		return "out of memory: the kernel was killed at its memory limit"
	case e.Signal != "":
		return "the kernel process was killed by signal " + signalName(e.Signal)
	default:
		return fmt.Sprintf("the kernel process exited with status %d", e.Code)
	}
}

// signalName adds the name to a signal's description (Exit.Signal holds
// syscall.Signal.String()): "SIGSEGV (segmentation fault)".
func signalName(desc string) string {
	for n := syscall.Signal(1); n <= 64; n++ {
		if n.String() == desc {
			if name := unix.SignalName(n); name != "" {
				return name + " (" + desc + ")"
			}
			break
		}
	}
	return desc
}

// ID is the kernel's id, as given in its Spec.
func (k *Kernel) ID() string { return k.id }

// Process is the kernel's process handle.
func (k *Kernel) Process() Process { return k.proc }

// Info is the kernel_info_reply the kernel gave when it became ready.
func (k *Kernel) Info() *KernelInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.info
}

// Client is the current protocol client; Restart replaces it.
func (k *Kernel) Client() *Client {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.client
}

// Dead is closed when the current kernel process is found dead.
func (k *Kernel) Dead() <-chan struct{} { return k.Client().Dead() }

// Err is why the kernel stopped working, or nil. Once its process has
// ended, a death is told by the process's account, as Execute tells it.
func (k *Kernel) Err() error {
	err := k.Client().Err()
	if !errors.Is(err, ErrDied) {
		return err
	}
	if e, ok := k.Exit(); ok {
		return k.explain(e)
	}
	return err
}

// DeadlineError reports an execution stopped by its deadline or its caller.
// Killed says whether the kernel ignored the interrupt for the grace period
// and had to be killed (its state is then gone).
type DeadlineError struct {
	Timeout time.Duration // zero when the caller cancelled
	Killed  bool
}

// ErrDeadline is matched by every *DeadlineError.
var ErrDeadline = errors.New("execution deadline exceeded")

func (e *DeadlineError) Error() string {
	what := "execution cancelled"
	if e.Timeout > 0 {
		what = fmt.Sprintf("execution timed out after %v", e.Timeout)
	}
	if e.Killed {
		return what + "; the kernel did not respond to the interrupt and was killed"
	}
	return what + "; the kernel was interrupted"
}

// Is makes errors.Is(err, ErrDeadline) true.
func (e *DeadlineError) Is(target error) bool { return target == ErrDeadline }

// Deadline bounds one execution.
type Deadline struct {
	// Timeout is the run time allowed; zero means none.
	Timeout time.Duration
	// Grace is how long the kernel gets to stop after the interrupt before
	// it is killed (default 2s).
	Grace time.Duration
}

// Execute runs code like Client.Execute, but enforces dl and ctx: past the
// timeout (or when ctx ends) the kernel is interrupted over the control
// channel, and if it does not finish within the grace period its process is
// killed. Either way the error is a *DeadlineError saying which happened;
// the reply, when one came, is returned too.
func (k *Kernel) Execute(ctx context.Context, code string, opts ExecuteOptions, dl Deadline) (*ExecuteReply, error) {
	if dl.Grace <= 0 {
		dl.Grace = 2 * time.Second
	}
	c := k.Client()
	if c == nil {
		return nil, ErrClosed
	}
	var (
		finished = make(chan struct{})
		watched  = make(chan *DeadlineError, 1) // nil when no deadline fired
		timeout  <-chan time.Time
	)
	if dl.Timeout > 0 {
		t := time.NewTimer(dl.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	// execCtx is cancelled only if even the kill did not end the call.
	execCtx, cancelExec := context.WithCancel(context.Background())
	defer cancelExec()
	go func() {
		de := &DeadlineError{}
		select {
		case <-finished:
			watched <- nil
			return
		case <-timeout:
			de.Timeout = dl.Timeout
		case <-ctx.Done():
		}
		ictx, cancel := context.WithTimeout(context.Background(), dl.Grace)
		err := c.Interrupt(ictx)
		cancel()
		if err != nil {
			k.opts.Logger.WarnContext(ctx, "kernel: interrupt failed", "kernel", k.id, "err", err)
		}
		grace := time.NewTimer(dl.Grace)
		defer grace.Stop()
		select {
		case <-finished:
			watched <- de
			return
		case <-grace.C:
		}
		de.Killed = true
		defer func() { watched <- de }()
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := k.proc.Kill(kctx); err != nil {
			k.opts.Logger.ErrorContext(ctx, "kernel: kill after deadline failed", "kernel", k.id, "err", err)
		}
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			cancelExec()
		}
	}()
	reply, err := c.Execute(execCtx, code, opts)
	close(finished)
	if de := <-watched; de != nil {
		return reply, de
	}
	if errors.Is(err, ErrDied) {
		err = k.deathError(err)
	}
	return reply, err
}

// exitWait bounds how long a call that found the kernel dead waits for the
// provisioner's account of the death. The socket error usually comes first:
// a local process's exit follows within milliseconds, a container's within
// about a second (the engine learns it from containerd).
const exitWait = 5 * time.Second

// deathError prefers the process's own account of its death (exit status,
// signal, OOM) to the socket error that usually reports it first.
func (k *Kernel) deathError(err error) error {
	select {
	case <-k.proc.Exited():
		return k.explain(k.proc.Exit())
	case <-time.After(exitWait):
		return err
	}
}

// explain says why a kernel whose process ended with e died. The exit names
// the cause (status, signal, OOM) unless it is the kill watch sent because
// the kernel could not be talked to; then the reason for that kill does. A
// container that had already died keeps its own exit status when it is
// killed again.
func (k *Kernel) explain(e Exit) error {
	k.mu.Lock()
	cause := k.killedFor // set before the kill, so before the exit
	k.mu.Unlock()
	if cause != nil && e.Signal == "killed" && !e.OOMKilled && !e.PidsLimited {
		return cause
	}
	return fmt.Errorf("%w: %s", ErrDied, DescribeExit(e))
}

// Exit reports how the kernel process ended, and false while it runs.
func (k *Kernel) Exit() (Exit, bool) {
	select {
	case <-k.proc.Exited():
		return k.proc.Exit(), true
	default:
		return Exit{}, false
	}
}

// Interrupt interrupts the running code.
func (k *Kernel) Interrupt(ctx context.Context) error {
	c := k.Client()
	if c == nil {
		return ErrClosed
	}
	return c.Interrupt(ctx)
}

// Restart kills the kernel process, starts a new one on the same endpoints
// and directory, and redials every socket with a new Client: zmq4 sockets do
// not recover from their peer's restart. State is lost; files are kept.
func (k *Kernel) Restart(ctx context.Context) error {
	k.mu.Lock()
	old, closed := k.client, k.closed
	k.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if old != nil {
		k.closeClient(old)
	}
	if err := k.proc.Restart(ctx); err != nil {
		return fmt.Errorf("kernel: restart %s: %w", k.id, err)
	}
	if err := k.connect(ctx); err != nil {
		return fmt.Errorf("kernel: restart %s: %w", k.id, err)
	}
	return nil
}

// Close disconnects and destroys the kernel: process, sockets, files. It is
// safe to call more than once.
func (k *Kernel) Close(ctx context.Context) error {
	k.mu.Lock()
	c, closed := k.client, k.closed
	k.closed = true
	k.mu.Unlock()
	if closed {
		return nil
	}
	var errs []error
	if c != nil {
		errs = append(errs, c.Close())
	}
	if err := k.proc.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("kernel: close %s: %w", k.id, err))
	}
	return errors.Join(errs...)
}

// closeClient closes a client the kernel no longer uses, logging what goes
// wrong: the caller's own error is the one it reports.
func (k *Kernel) closeClient(c *Client) {
	if err := c.Close(); err != nil {
		k.opts.Logger.Warn("kernel: close client", "kernel", k.id, "err", err)
	}
}
