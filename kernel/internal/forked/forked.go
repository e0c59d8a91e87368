// Package forked is a kernel forked by a zygote (KERNEL_START=fork), run
// the same way by the local and the Docker provisioners: the fork request
// with its limits (cgroups where the provisioner has them, else rlimits),
// the kill through the zygote, Restart, Close and the bookkeeping of each
// child's exit. What differs between the provisioners comes from their
// Host: how the zygote is reached or started, where the zygote sees the
// kernel's files, and what else a kernel owns (directories, a uid).
//
// The zygote's control connection is zygotectl's; the provisioners keep
// the zygote's own lifecycle and, when it dies, call Orphaned on each Run
// its connection returned.
package forked

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/internal/cgroupv1"
	"github.com/codegw/codegw/kernel/internal/zygotectl"
)

// Host is what a provisioner supplies for its forked kernels. Its methods
// are called with the kernel's Restart and Close serialised.
type Host interface {
	// Zygote returns the control connection of the running zygote,
	// starting one when there is none or the last one died. Errors that
	// mean the zygote cannot run wrap kernel.ErrProvisioner.
	Zygote(ctx context.Context) (*zygotectl.Conn, error)
	// Request makes the kernel ready for its next child (no stale socket
	// files, its directories, a fresh connection file, or for a one-shot
	// child the connection in the request: it reads nothing else from
	// it) and returns that child's fork request with the paths, uid,
	// environment and sandbox as the zygote is to use them. Fork fills in
	// Token, OneShot, Cgroups and Rlimits.
	Request(oneShot bool) (zygotectl.Request, error)
	// CgroupDirs are the directories of g as the zygote sees them.
	CgroupDirs(g *cgroupv1.Group) []string
	// Remove removes what the provisioner made for the kernel (its
	// directories and socket files, its uid) once its last child is gone.
	// Close calls it once.
	Remove() error
}

// Limits are a forked kernel's limits: zero is none.
type Limits struct {
	// Cgroups makes each child's memory and pids cgroups; nil limits it
	// by RLIMIT_AS and RLIMIT_NPROC instead.
	Cgroups *cgroupv1.Parents
	// Memory is the memory limit in bytes.
	Memory int64
	// Pids is the process limit.
	Pids int64
}

// Config is one forked kernel.
type Config struct {
	// ID is the kernel's id (kernel.Spec.ID).
	ID string
	// Prefix starts errors and log lines: "local", "docker".
	Prefix string
	// Log receives a line per fork and per exit.
	Log *slog.Logger
	// Attrs are added to the log line of each fork.
	Attrs []any
	// Info is where the gateway dials the kernel (host paths).
	Info kernel.ConnectionInfo
	// Dir is the host directory the kernel sees as /code.
	Dir string
	// OneShot asks for one-shot children (kernel.Spec.OneShot); the
	// zygote makes them if it can.
	OneShot bool
	// Limits limit each child.
	Limits Limits
	// Seq numbers the forks of a provisioner, for unique tokens.
	Seq *atomic.Int64
	// HostPIDs says the pids the zygote reports are the host's (a local
	// zygote), so that an orphaned child can be watched and killed by
	// pid; a zygote in a container has its own pid namespace.
	HostPIDs bool
}

// Kernel is a forked kernel: one child of a zygote at a time, a new one
// on each Restart. It implements kernel.Process, kernel.Binder and
// kernel.OneShotter.
type Kernel struct {
	cfg  Config
	host Host

	opMu   sync.Mutex // serialises Restart and Close
	closed bool

	mu  sync.Mutex
	cur *Run
}

var (
	_ kernel.Process    = (*Kernel)(nil)
	_ kernel.Binder     = (*Kernel)(nil)
	_ kernel.OneShotter = (*Kernel)(nil)
	_ zygotectl.Run     = (*Run)(nil)
)

// Start forks the kernel's first child. On error nothing is left of it
// but what the host made (the caller removes that).
func Start(ctx context.Context, cfg Config, host Host) (*Kernel, error) {
	k := &Kernel{cfg: cfg, host: host}
	if err := k.fork(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

// Run is one child of a zygote: a kernel process. It is the zygotectl.Run
// the zygote's connection reports on.
type Run struct {
	k       *Kernel
	z       *zygotectl.Conn // the zygote that forked it
	token   string
	cg      *cgroupv1.Group // nil: limited by rlimits
	t0      time.Time
	oneShot bool // the zygote made it a one-shot kernel

	pid atomic.Int64 // as the zygote sees it; 0 until forked

	// bound is closed on the zygote's "bound" event: the kernel's sockets
	// are bound, and kernel.Dial connects once.
	bound     chan struct{}
	boundOnce sync.Once

	exited chan struct{} // closed once exit is set
	once   sync.Once
	exit   kernel.Exit
}

// fork asks the zygote for a new child and makes it current. A child
// whose fork failed leaves no cgroup behind, unless ctx ended: the fork
// may still happen then, its kill follows (zygotectl.Conn.Fork), and its
// exit removes the cgroups as usual.
func (k *Kernel) fork(ctx context.Context) error {
	z, err := k.host.Zygote(ctx)
	if err != nil {
		return err
	}
	oneShot := k.cfg.OneShot && z.OneShots()
	req, err := k.host.Request(oneShot)
	if err != nil {
		return err
	}
	req.Token = k.cfg.ID + "." + strconv.FormatInt(k.cfg.Seq.Add(1), 10)
	req.OneShot = oneShot
	r := &Run{k: k, z: z, token: req.Token, t0: time.Now(), oneShot: req.OneShot,
		bound: make(chan struct{}), exited: make(chan struct{})}
	lim := k.cfg.Limits
	if lim.Cgroups != nil {
		cg, err := lim.Cgroups.Create(req.Token, lim.Memory, lim.Pids)
		if err != nil {
			return err
		}
		r.cg = cg
		req.Cgroups = k.host.CgroupDirs(cg)
	} else {
		req.Rlimits = map[string]int64{}
		if lim.Memory > 0 {
			req.Rlimits["as"] = lim.Memory
		}
		if lim.Pids > 0 {
			// Per uid: a kernel that has a uid of its own has it alone.
			req.Rlimits["nproc"] = lim.Pids
		}
	}
	pid, err := z.Fork(ctx, r, req)
	if err != nil {
		if r.cg != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			r.cg.Remove()
		}
		if errors.Is(err, zygotectl.ErrDied) {
			return fmt.Errorf("%w: %v", kernel.ErrProvisioner, err)
		}
		return err
	}
	k.mu.Lock()
	k.cur = r
	k.mu.Unlock()
	attrs := append([]any{"kernel", k.cfg.ID, "pid", pid}, k.cfg.Attrs...)
	attrs = append(attrs, "took", time.Since(r.t0).Round(time.Microsecond))
	k.cfg.Log.Info(k.cfg.Prefix+": kernel forked", attrs...)
	return nil
}

// Current is the current child.
func (k *Kernel) Current() *Run {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// ConnectionInfo returns the endpoints as the gateway dials them; they
// stay the same across restarts.
func (k *Kernel) ConnectionInfo() kernel.ConnectionInfo { return k.cfg.Info }

// Dir is the host directory the kernel sees as /code.
func (k *Kernel) Dir() string { return k.cfg.Dir }

// Exited is closed when the current child ends.
func (k *Kernel) Exited() <-chan struct{} { return k.Current().exited }

// Bound is closed when the zygote said the current child's sockets are
// bound (kernel.Binder).
func (k *Kernel) Bound() <-chan struct{} { return k.Current().bound }

// Exit describes how the current child ended; valid once Exited is closed.
func (k *Kernel) Exit() kernel.Exit {
	r := k.Current()
	select {
	case <-r.exited:
		return r.exit
	default:
		return kernel.Exit{}
	}
}

// OneShot reports whether the current child is a one-shot kernel: asked
// for and forked by a zygote that makes them.
func (k *Kernel) OneShot() bool { return k.Current().oneShot }

// PidsLimitHits returns how many forks the current child's pids cgroup
// refused so far (0 without cgroups); once the child ended, 1 if any was.
func (k *Kernel) PidsLimitHits() int64 {
	r := k.Current()
	if r.cg == nil {
		return 0
	}
	select {
	case <-r.exited:
		if r.exit.PidsLimited {
			return 1
		}
		return 0
	default:
		return r.cg.PidsHits()
	}
}

// Kill asks the zygote to kill the current child, which ends its pid
// namespace (or, without the sandbox, its process group), and waits until
// the child is gone or ctx ends. A zygote that died took its children with
// it: that is no error, and Kill waits for their end to be reported
// (Orphaned). Any other failure to ask is an error.
func (k *Kernel) Kill(ctx context.Context) error {
	return k.kill(ctx, k.Current())
}

func (k *Kernel) kill(ctx context.Context, r *Run) error {
	select {
	case <-r.exited:
		return nil
	default:
	}
	// The zygote has not reaped the child yet: its pid is still its own.
	if err := r.z.Kill(r.token); err != nil && !errors.Is(err, zygotectl.ErrDied) {
		return fmt.Errorf("%s: kill kernel %s: %w", k.cfg.Prefix, k.cfg.ID, err)
	}
	select {
	case <-r.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: kill kernel %s: %w", k.cfg.Prefix, k.cfg.ID, ctx.Err())
	}
}

// Restart kills the current child and forks a new one: the same
// endpoints, key and directory, a fresh /tmp and a fresh interpreter.
// Clients must redial.
func (k *Kernel) Restart(ctx context.Context) error {
	k.opMu.Lock()
	defer k.opMu.Unlock()
	if k.closed {
		return fmt.Errorf("%s: restart kernel %s: closed", k.cfg.Prefix, k.cfg.ID)
	}
	if err := k.kill(ctx, k.Current()); err != nil {
		return err
	}
	if err := k.fork(ctx); err != nil {
		return fmt.Errorf("%s: restart kernel %s: %w", k.cfg.Prefix, k.cfg.ID, err)
	}
	return nil
}

// Close kills the kernel and has the host remove what it made for it. It
// is safe to call more than once: a call that failed to kill (ctx ended
// before the child was gone) can be repeated; once the child is gone the
// kernel is closed, and an error removing its files is reported once.
func (k *Kernel) Close(ctx context.Context) error {
	k.opMu.Lock()
	defer k.opMu.Unlock()
	if k.closed {
		return nil
	}
	if err := k.kill(ctx, k.Current()); err != nil {
		return err
	}
	k.closed = true
	if err := k.host.Remove(); err != nil {
		return fmt.Errorf("%s: close kernel %s: %w", k.cfg.Prefix, k.cfg.ID, err)
	}
	return nil
}

// Forked records the child's pid (zygotectl.Run).
func (r *Run) Forked(pid int) { r.pid.Store(int64(pid)) }

// Bound marks the child's sockets bound (zygotectl.Run); only the first
// call counts.
func (r *Run) Bound() { r.boundOnce.Do(func() { close(r.bound) }) }

// Exited records the child's exit status (zygotectl.Run).
func (r *Run) Exited(status int) { r.finish(ExitOf(status)) }

// PID is the child's pid as the zygote sees it (0 until forked).
func (r *Run) PID() int { return int(r.pid.Load()) }

// Cgroup is the child's cgroups, or nil (rlimits).
func (r *Run) Cgroup() *cgroupv1.Group { return r.cg }

// ExitOf reads an exit status as the zygote (and bwrap) report it: the
// code, or 128 + the signal that ended the process.
func ExitOf(status int) kernel.Exit {
	if status > 128 && status <= 128+64 {
		return kernel.Exit{Code: -1, Signal: syscall.Signal(status - 128).String()}
	}
	return kernel.Exit{Code: status}
}

// finish records the child's exit with what its cgroups say about it,
// closes r.exited and gives the cgroups back (cgroupv1.Group.Release).
// Only the first call counts.
func (r *Run) finish(e kernel.Exit) {
	r.once.Do(func() {
		if r.cg != nil {
			e.OOMKilled, e.PidsLimited = r.cg.Ended()
		}
		r.exit = e
		close(r.exited)
		if r.cg != nil {
			r.cg.Release() // another kernel may have it now: PidsLimitHits reads r.exit
		}
		k := r.k
		k.cfg.Log.Info(k.cfg.Prefix+": kernel exited", "kernel", k.cfg.ID, "pid", r.PID(), "code", e.Code, "signal", e.Signal,
			"oom", e.OOMKilled, "pids_limited", e.PidsLimited, "uptime", time.Since(r.t0).Round(time.Millisecond))
	})
}

// Orphaned reports a child whose zygote died killed, once its processes
// are gone: a zygote's children end with it (its lifeline, its
// container). It watches the child's cgroups or, with HostPIDs, its pid;
// it kills by pid one that lingers for 2 s, and gives up waiting after
// 10 s. Without either it reports the child at once.
func (r *Run) Orphaned() {
	pid := r.PID()
	if !r.k.cfg.HostPIDs {
		pid = 0
	}
	gone := func() bool {
		if r.cg != nil {
			return r.cg.Empty()
		}
		return pid == 0 || syscall.Kill(pid, 0) != nil
	}
	for i := 0; !gone() && i <= 1000; i++ {
		if i == 200 && pid > 0 { // 2 s
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.finish(kernel.Exit{Code: -1, Signal: syscall.SIGKILL.String()})
}

// Token names the child in the zygote's messages and its cgroups.
func (r *Run) Token() string { return r.token }

// Zygote is the control connection of the zygote that forked the child.
func (r *Run) Zygote() *zygotectl.Conn { return r.z }
