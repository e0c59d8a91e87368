package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/codegw/codegw/kernel"
)

// pidsSampleInterval is how often a running container's pids.events is read.
// The cgroup is gone by the time the exit is seen, so a hit of the limit is
// caught while the container runs; a read costs a few microseconds.
const pidsSampleInterval = 500 * time.Millisecond

// process is one kernel container. Its lifetime is one container; Restart
// starts the same container again, which is a new run.
type process struct {
	p       *Provisioner
	id      string
	name    string
	cid     string
	root    string // <StateDir>/<id>
	runDir  string // bound at /run/kernel: sockets and connection file
	codeDir string // holds input/ and output/
	info    kernel.ConnectionInfo
	kinfo   kernel.ConnectionInfo // info as the kernel sees it: container paths

	mu     sync.Mutex // serialises Restart and Close; guards closed
	closed bool
	run    atomic.Pointer[run] // the current run; read without mu

}

// run is one start of the container, watched by one waiter goroutine.
type run struct {
	exited chan struct{} // closed once exit is set
	done   chan struct{} // closed when the waiter returns
	cancel context.CancelFunc
	bound  *boundFIFO

	mu          sync.Mutex
	exit        kernel.Exit
	pidsLimited bool
}

func (r *run) setPidsLimited() {
	r.mu.Lock()
	r.pidsLimited = true
	r.mu.Unlock()
}

// Assign names the session a pooled container now serves: the container is
// renamed codegw-<instance>-<kernel>-<session>, so `docker ps --filter
// name=<session>` finds it. (Labels cannot change after creation, and
// pooled containers are created before their session exists.)
func (c *process) Assign(ctx context.Context, session string) error {
	if err := c.p.api.ContainerRename(ctx, c.cid, c.name+"-"+session); err != nil {
		return fmt.Errorf("docker: name container %s for session %s: %w", c.name, session, err)
	}
	return nil
}

// ConnectionInfo returns the endpoints as the gateway dials them: host paths.
func (c *process) ConnectionInfo() kernel.ConnectionInfo { return c.info }

// Dir is the host directory the kernel sees as /code.
func (c *process) Dir() string { return c.codeDir }

// InputDir is the host side of /code/input.
func (c *process) InputDir() string { return filepath.Join(c.codeDir, "input") }

// OutputDir is the host side of /code/output.
func (c *process) OutputDir() string { return filepath.Join(c.codeDir, "output") }

func (c *process) current() *run { return c.run.Load() }

func (c *process) Exited() <-chan struct{} { return c.current().exited }

func (c *process) Exit() kernel.Exit {
	r := c.current()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exit
}

func (c *process) writeConnectionFile() error {
	return c.kinfo.WriteFile(filepath.Join(c.runDir, connectionFile))
}

// removeSockets removes the ipc socket files a kernel leaves behind.
func (c *process) removeSockets() {
	for _, f := range c.info.SocketFiles() {
		os.Remove(f)
	}
}

// startRun sets up a new run for a container that was just started and
// starts its waiter. c.mu is held or c is not shared yet.
func (c *process) startRun(bound *boundFIFO) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{exited: make(chan struct{}), done: make(chan struct{}), cancel: cancel, bound: bound}
	c.run.Store(r)
	go bound.watch()
	go c.wait(ctx, r)
}

// Bound is closed once the current run's kernel has bound its sockets
// (kernel.Binder): the launcher writes to the run directory's FIFO.
func (c *process) Bound() <-chan struct{} { return c.current().bound.done }

// boundFIFO is the gateway's side of a run's bound FIFO.
type boundFIFO struct {
	r, w *os.File      // w only keeps r from reading end-of-file before the kernel opens it
	done chan struct{} // closed at the kernel's byte
}

// openBound makes a fresh FIFO in the run directory, the kernel user's,
// and opens it. It is open before the container starts: the launcher's
// non-blocking open fails when nobody reads.
func (c *process) openBound() (*boundFIFO, error) {
	path := filepath.Join(c.runDir, readyFIFO)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bound fifo: %w", err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("bound fifo: %w", err)
	}
	if err := c.p.giveToKernel(path); err != nil {
		return nil, fmt.Errorf("bound fifo: %w", err)
	}
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("bound fifo: %w", err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("bound fifo: %w", err)
	}
	return &boundFIFO{r: r, w: w, done: make(chan struct{})}, nil
}

// watch waits (in the runtime's poller) for the kernel's byte; close ends it.
func (b *boundFIFO) watch() {
	var buf [1]byte
	if n, _ := b.r.Read(buf[:]); n > 0 {
		close(b.done)
	}
}

// close ends watch; the run's end calls it.
func (b *boundFIFO) close() {
	b.r.Close()
	b.w.Close()
}

// wait is the waiter of one run: it records how the container ended and
// closes r.exited. It returns when the container is no longer running or
// ctx is cancelled (Close, after the container is removed).
func (c *process) wait(ctx context.Context, r *run) {
	defer close(r.done)
	defer r.cancel()
	defer r.bound.close()
	events := c.pidsEventsPath()
	tick := time.NewTicker(pidsSampleInterval)
	defer tick.Stop()
	for {
		resC, errC := c.p.api.ContainerWait(ctx, c.cid, container.WaitConditionNotRunning)
		var werr error
	inner:
		for {
			select {
			case <-resC:
				break inner
			case werr = <-errC:
				break inner
			case <-tick.C:
				if events == "" {
					events = c.pidsEventsPath()
				}
				if pidsMaxHit(events) {
					r.setPidsLimited()
				}
			}
		}
		if werr != nil && ctx.Err() == nil {
			// The connection to the engine broke: ask whether the container
			// still runs and, if it does, wait again.
			st, err := c.inspect(ctx)
			if err == nil && st.Running {
				select {
				case <-time.After(100 * time.Millisecond):
					continue
				case <-ctx.Done():
				}
			}
		}
		c.finish(r, events)
		return
	}
}

// finish records the exit of r from the container's state and closes
// r.exited.
func (c *process) finish(r *run, events string) {
	if pidsMaxHit(events) {
		r.setPidsLimited()
	}
	exit := kernel.Exit{Code: -1, Signal: "killed"} // removed under us (Close)
	ictx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := c.inspect(ictx)
	cancel()
	if err == nil {
		exit = exitFromState(st.ExitCode, st.OOMKilled)
	}
	r.mu.Lock()
	exit.PidsLimited = r.pidsLimited
	r.exit = exit
	r.mu.Unlock()
	close(r.exited)
	c.p.log.Info("docker: kernel exited", "kernel", c.id, "container", shortID(c.cid),
		"code", exit.Code, "signal", exit.Signal, "oom", exit.OOMKilled, "pids_limited", exit.PidsLimited)
}

func (c *process) inspect(ctx context.Context) (*container.State, error) {
	in, err := c.p.api.ContainerInspect(ctx, c.cid)
	if err != nil {
		return nil, err
	}
	if in.ContainerJSONBase == nil || in.State == nil {
		return nil, errors.New("docker: inspect: no state")
	}
	return in.State, nil
}

// exitFromState maps a container's exit status to a kernel.Exit. tini
// (PID 1) exits with 128+n when the kernel dies of signal n, and the engine
// reports 137 for a container it SIGKILLed.
func exitFromState(code int, oom bool) kernel.Exit {
	e := kernel.Exit{Code: code, OOMKilled: oom}
	if code > 128 && code <= 128+64 {
		e.Code = -1
		e.Signal = syscall.Signal(code - 128).String()
	}
	return e
}

// Kill sends SIGKILL to the container. It does not wait for Exited.
func (c *process) Kill(ctx context.Context) error {
	c.samplePids()
	return c.kill(ctx)
}

func (c *process) kill(ctx context.Context) error {
	err := c.p.api.ContainerKill(ctx, c.cid, "KILL")
	if err == nil || cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
		// NotFound: removed; Conflict: "is not running". Either way it is dead.
		return nil
	}
	return fmt.Errorf("docker: kill kernel %s: %w", c.id, err)
}

// samplePids reads pids.events now: a kill removes the cgroup before the
// waiter could look again.
func (c *process) samplePids() {
	r := c.current()
	if pidsMaxHit(c.pidsEventsPath()) {
		r.setPidsLimited()
	}
}

// Restart kills the container and starts it again: same mounts, endpoints
// and key, a fresh /tmp and a fresh kernel.
func (c *process) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("docker: restart kernel %s: closed", c.id)
	}
	r := c.current()
	if c.running(r) {
		if err := c.kill(ctx); err != nil {
			return err
		}
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return fmt.Errorf("docker: restart kernel %s: %w", c.id, ctx.Err())
	}
	c.removeSockets()
	// ipykernel may rewrite or remove its connection file: put ours back.
	if err := c.writeConnectionFile(); err != nil {
		return fmt.Errorf("docker: restart kernel %s: %w", c.id, err)
	}
	bound, err := c.openBound()
	if err != nil {
		return fmt.Errorf("docker: restart kernel %s: %w", c.id, err)
	}
	if err := c.p.api.ContainerStart(ctx, c.cid, container.StartOptions{}); err != nil {
		bound.close()
		return fmt.Errorf("docker: restart kernel %s: %w", c.id, err)
	}
	c.startRun(bound)
	c.p.log.Info("docker: kernel restarted", "kernel", c.id, "container", shortID(c.cid))
	return nil
}

// running reports whether r's kernel is still running, first recording
// whether it hit its pids limit: the container's events file, which tells,
// goes with the container.
func (c *process) running(r *run) bool {
	select {
	case <-r.exited:
		return false
	default:
	}
	if pidsMaxHit(c.pidsEventsPath()) {
		r.setPidsLimited()
	}
	return true
}

// Close removes the container (a missing one is fine), its socket files and
// the kernel's directory. Later calls return nil.
func (c *process) Close(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	r := c.current()
	c.running(r) // records a pids limit hit before the container goes
	err := c.p.api.ContainerRemove(ctx, c.cid, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("docker: close kernel %s: remove container: %w", c.id, err)
	}
	// The waiter sees the container gone; cancel it in case the engine's
	// answer is slow, and join it so that Exited is closed on return.
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.cancel()
		<-r.done
	}
	c.closed = true
	c.removeSockets()
	rmErr := os.RemoveAll(c.root)
	c.p.forget(c.id)
	if rmErr != nil {
		return fmt.Errorf("docker: close kernel %s: %w", c.id, rmErr)
	}
	return nil
}

// cgroupRoot is where the host's cgroup file systems are mounted.
var cgroupRoot = "/sys/fs/cgroup"

// pidsEventsPath finds the container's pids.events file on the host, for
// the cgroup layouts the engine uses: v1 and v2, cgroupfs and systemd
// drivers. "" when not found (e.g. the gateway runs in a container itself);
// the pids-limit flag is best effort.
func (c *process) pidsEventsPath() string {
	for _, p := range []string{
		filepath.Join(cgroupRoot, "pids", "docker", c.cid, "pids.events"),
		filepath.Join(cgroupRoot, "pids", "system.slice", "docker-"+c.cid+".scope", "pids.events"),
		filepath.Join(cgroupRoot, "docker", c.cid, "pids.events"),
		filepath.Join(cgroupRoot, "system.slice", "docker-"+c.cid+".scope", "pids.events"),
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// PidsLimitHits returns how many forks the container's pids limit has
// refused so far (best effort: 0 when the cgroup is not visible). The
// session layer compares it before and after an execution to report a fork
// bomb that the limit contained without killing the kernel.
func (c *process) PidsLimitHits() int64 {
	path := c.pidsEventsPath()
	if path == "" {
		return 0
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return parsePidsEvents(b)
}

// pidsMaxHit reports whether the pids.events file at path counts a fork
// refused at the limit ("max N" with N > 0).
func pidsMaxHit(path string) bool {
	if path == "" {
		return false
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return parsePidsEvents(b) > 0
}

// parsePidsEvents returns the "max" counter of a pids.events file.
func parsePidsEvents(b []byte) int64 {
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "max" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}
