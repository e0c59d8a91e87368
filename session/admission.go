package session

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/codegw/codegw"
)

// LimitError is a refusal by a per-key quota. It wraps a codegw.Error with
// the ELIMIT code; the gateway answers it 429 with Retry-After and counts
// it under its Limit in the metrics.
type LimitError struct {
	// Limit names the quota: "concurrency" (executions at once) or
	// "memory" (kernel memory held).
	Limit string
	// RetryAfter is when trying again may succeed.
	RetryAfter time.Duration
	Err        *codegw.Error
}

// Error returns the message.
func (e *LimitError) Error() string { return e.Err.Error() }

// Unwrap returns the codegw.Error, so codegw.ErrorCode sees ELIMIT.
func (e *LimitError) Unwrap() error { return e.Err }

func limitError(limit string, retry time.Duration, format string, args ...any) error {
	return &LimitError{Limit: limit, RetryAfter: retry, Err: codegw.Errorf(codegw.ELIMIT, format, args...)}
}

// errDraining is the answer to new work once Drain was called.
func errDraining() error {
	return codegw.Errorf(codegw.EUNAVAILABLE, "this instance is shutting down; retry on another")
}

// admission counts what each key holds on this instance: the executions it
// has submitted and not seen finish (every way in: REST, NDJSON,
// websockets, Jupyter, MCP), and the kernels it holds (its sessions, and
// its stateless executions, each on a kernel of its own). Each kernel
// reserves its enforced memory limit against the key's total. Keys are the
// configured ones (or "anonymous"), so the map stays as small as API_KEYS;
// an entry is dropped when it holds nothing.
type admission struct {
	maxExec   int   // executions at once per key; 0: unlimited
	kernelMem int64 // the memory each kernel reserves
	maxMem    int64 // kernel memory per key; 0: unlimited

	mu       sync.Mutex
	draining bool
	// running counts the work the drain waits for, all keys: executions
	// held, answers still being written (holdAnswer) and waits for or
	// holds of a worker slot. idle is closed while it is zero.
	running    int
	idle       chan struct{}
	executions int // executions held, all keys
	use        map[string]*keyUse
}

// closedChan is an idle channel when nothing runs.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// up counts one more piece of running work; a.mu held.
func (a *admission) up() {
	if a.running == 0 {
		a.idle = make(chan struct{})
	}
	a.running++
}

// down counts one piece of running work over; a.mu held.
func (a *admission) down() {
	a.running--
	if a.running == 0 {
		close(a.idle)
	}
}

// idleChan returns a channel closed once nothing runs.
func (a *admission) idleChan() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running == 0 {
		return closedChan
	}
	return a.idle
}

// track counts running work that is not refused while draining (a wait
// for a worker slot); release gives it back, once.
func (a *admission) track() (release func()) {
	a.mu.Lock()
	a.up()
	a.mu.Unlock()
	return a.once(a.down)
}

// holdAnswer counts a request that answers an execution, refused while
// draining; release, once its answer has left, gives it back.
func (a *admission) holdAnswer() (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return nil, errDraining()
	}
	a.up()
	return a.once(a.down), nil
}

type keyUse struct {
	executions int
	kernels    int
	stateless  int // of the kernels, those of stateless executions
}

func (a *admission) of(owner string) *keyUse {
	u := a.use[owner]
	if u == nil {
		u = &keyUse{}
		a.use[owner] = u
	}
	return u
}

func (a *admission) tidy(owner string, u *keyUse) {
	if u.executions == 0 && u.kernels == 0 {
		delete(a.use, owner)
	}
}

// holdExecution counts one execution of owner; release, called when it is
// over (more calls do nothing), gives it back.
func (a *admission) holdExecution(owner string) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return nil, errDraining()
	}
	u := a.of(owner)
	if a.maxExec > 0 && u.executions >= a.maxExec {
		a.tidy(owner, u)
		return nil, limitError("concurrency", time.Second, "at most %d executions at once per key; wait for one to finish", a.maxExec)
	}
	u.executions++
	a.executions++
	a.up()
	return a.once(func() {
		u.executions--
		a.executions--
		a.down()
		a.tidy(owner, u)
	}), nil
}

// holdKernel reserves one kernel's memory for owner; stateless says it is
// for one execution (which ends soon). release gives it back.
func (a *admission) holdKernel(owner string, stateless bool) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return nil, errDraining()
	}
	u := a.of(owner)
	if a.maxMem > 0 && int64(u.kernels+1)*a.kernelMem > a.maxMem {
		a.tidy(owner, u)
		// Stateless executions end soon; sessions only when closed or idle.
		retry, hint := 30*time.Second, "close one of its sessions to free some"
		if u.stateless > 0 {
			retry, hint = time.Second, "wait for an execution to finish or close a session"
		}
		return nil, limitError("memory", retry, "kernel memory limit reached: this key holds %d kernels of %s each, at most %s in all; %s",
			u.kernels, sizeString(a.kernelMem), sizeString(a.maxMem), hint)
	}
	u.kernels++
	if stateless {
		u.stateless++
	}
	return a.once(func() {
		u.kernels--
		if stateless {
			u.stateless--
		}
		a.tidy(owner, u)
	}), nil
}

// once returns a release that runs f under the lock, the first time only.
func (a *admission) once(f func()) func() {
	var o sync.Once
	return func() {
		o.Do(func() {
			a.mu.Lock()
			f()
			a.mu.Unlock()
		})
	}
}

// KeyUsage is what one key holds on this instance.
type KeyUsage struct {
	Executions   int   `json:"executions"`
	Kernels      int   `json:"kernels"`
	KernelMemory int64 `json:"kernel_memory_bytes"` // reserved: Kernels times the per-kernel limit
}

// Usage returns what owner holds on this instance.
func (m *Manager) Usage(owner string) KeyUsage {
	a := &m.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.use[owner]
	if u == nil {
		return KeyUsage{}
	}
	return KeyUsage{Executions: u.executions, Kernels: u.kernels, KernelMemory: int64(u.kernels) * a.kernelMem}
}

// HoldExecution counts an execution of owner that does not go through
// Execute or a session's Start (a Jupyter client's execute_request sent
// to the kernel as is) against the per-key limit and the drain. release
// gives it back; calling it more than once does nothing.
func (m *Manager) HoldExecution(owner string) (release func(), err error) {
	return m.adm.holdExecution(owner)
}

// HoldAnswer counts a request that answers an execution (a REST or
// NDJSON one) from before its execution is submitted until its answer has
// left, for the drain, and refuses it while draining. release gives it
// back; calling it more than once does nothing.
func (m *Manager) HoldAnswer() (release func(), err error) {
	return m.adm.holdAnswer()
}

// Idle returns a channel closed once no work the drain waits for runs on
// this instance: no execution (every way in), no answer of one being
// written (HoldAnswer), no kernel start waiting for or holding a worker.
// Work that starts later makes a new channel: call Idle again.
func (m *Manager) Idle() <-chan struct{} { return m.adm.idleChan() }

// WaitIdle waits until Idle is closed, or ctx ends.
func (m *Manager) WaitIdle(ctx context.Context) error {
	select {
	case <-m.Idle():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Drain makes the manager refuse new work: executions (every way in) and
// sessions are refused with EUNAVAILABLE; those running go on.
func (m *Manager) Drain() {
	m.adm.mu.Lock()
	m.adm.draining = true
	m.adm.mu.Unlock()
}

// sizeString writes a byte count with the largest unit that divides it.
func sizeString(n int64) string {
	for _, u := range []struct {
		s    string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.s)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
