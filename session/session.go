package session

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/session/outputs"
)

// Session is a live kernel owned by one API key. Its executions run one at
// a time from a bounded queue; every event is numbered and fanned out to
// the connected clients.
type Session struct {
	m    *Manager
	id   string
	k    *kernel.Kernel
	hub  *hub
	jobs chan *job
	// ctx ends when the session does, stopping its queue and the running
	// execution.
	ctx    context.Context
	cancel context.CancelFunc

	owner     string
	created   time.Time
	idle      time.Duration
	env       map[string]string
	executing atomic.Bool

	interrupted atomic.Bool

	mu         sync.Mutex
	lastActive time.Time
	executions int
	closing    bool
	// pending counts the executions submitted and not yet over: a new one
	// is "queued" when another is ahead of it.
	pending int
	// releaseKernel ends the session's kernel memory reservation.
	releaseKernel func()

	// outputs is /code/output as the last execution left it; only the
	// loop touches it.
	outputs map[string]outputs.FileState

	// kmu is held by whoever uses the kernel for the session's state: an
	// execution, or a snapshot (which waits for the execution to end).
	kmu sync.Mutex
	// restored is what the session got back from a snapshot, told with
	// its first answer; checkpointed is the executions count at the last
	// snapshot (under mu).
	restored     *codegw.Restored
	checkpointed int
	// paused is set once the session's state is in a snapshot and its
	// kernel is going away: new work is refused as for a closing session.
	paused bool
	// awaiting receives the answer to the pending input_request; nil when
	// none is pending (Reply refuses then).
	awaiting chan string
	// checkpointing is set while an automatic checkpoint runs; emptied is
	// closed when pending drops to zero (waitQueue).
	checkpointing bool
	emptied       chan struct{}
}

type job struct {
	id     string
	req    codegw.ExecuteRequest
	code   string
	emit   func(codegw.Event) // extra per-call receiver (NDJSON), may be nil
	stdin  bool               // input() is answered by a client
	result chan *codegw.ExecuteResult
	err    chan error
	// release gives back the key's execution slot when the job is over.
	release func()
	// logAttrs are the submitting request's log ids.
	logAttrs []any
	// announced is closed once the submitter has published the job's
	// "queued" event (or decided it has none): the loop waits for it, so a
	// subscriber never sees "queued" after the job's "busy".
	announced chan struct{}
}

// setEnv sets the session's environment in the kernel.
func (s *Session) setEnv(ctx context.Context) error {
	code := "import os as _cg_os\n"
	for k, v := range s.env {
		code += "_cg_os.environ[" + pyString(k) + "] = " + pyString(v) + "\n"
	}
	code += "del _cg_os"
	r, err := s.k.Execute(ctx, code, kernel.ExecuteOptions{Silent: true}, kernel.Deadline{Timeout: 10 * time.Second})
	if err != nil || r.Status != "ok" {
		return codegw.Errorf(codegw.EUNAVAILABLE, "could not set the session environment")
	}
	return nil
}

// pyString quotes s as a Python string literal (JSON strings are valid
// Python literals once non-ASCII is escaped, which encoding/json does not
// need to: Python 3 source is UTF-8).
func pyString(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r < 0x20 || r == 0x7f:
			b = append(b, []byte("\\x"+string("0123456789abcdef"[r>>4])+string("0123456789abcdef"[r&15]))...)
		default:
			b = append(b, string(r)...)
		}
	}
	return string(append(b, '"'))
}

func (s *Session) idleSince(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending > 0 {
		return 0
	}
	return now.Sub(s.lastActive)
}

func (s *Session) touch() {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.mu.Unlock()
}

// ID is the session id.
func (s *Session) ID() string { return s.id }

// Info describes the session.
func (s *Session) Info() codegw.SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	state := "idle"
	switch {
	case s.closing:
		state = "closed"
	case s.k.Err() != nil:
		state = "dead"
	case s.executing.Load():
		state = "busy"
	}
	return codegw.SessionInfo{
		ID: s.id, Instance: s.m.cfg.Instance, CreatedAt: s.created, LastActive: s.lastActive,
		IdleTimeout: codegw.Duration(s.idle), State: state, Executions: s.executions,
	}
}

// Submission says how an execution is sent to a session.
type Submission struct {
	// ID is the execution's id; empty, a new one is made.
	ID string
	// Emit, when set, receives the execution's events besides every
	// subscriber.
	Emit func(codegw.Event)
	// Stdin: input() waits for Reply; without it, input() fails at once.
	Stdin bool
}

// Start queues req and returns the execution's id and a wait for its
// answer; ctx carries the log ids of the request (see codegw.WithLogAttrs)
// to the execution. A refusal (a quota, a full queue, the drain) comes at
// once; the refusal of a step before the code ran (input files, workers)
// comes from wait and as a "rejected" done event. Events go to every
// subscriber and to sub.Emit. Not calling wait leaks nothing.
func (s *Session) Start(ctx context.Context, req codegw.ExecuteRequest, sub Submission) (id string, wait func() (*codegw.ExecuteResult, error), err error) {
	code, err := s.m.prepare(&req)
	if err != nil {
		return "", nil, err
	}
	id = sub.ID
	if id == "" {
		id = newExecutionID()
	}
	release, err := s.m.adm.holdExecution(s.owner)
	if err != nil {
		return "", nil, err
	}
	j := &job{id: id, req: req, code: code, emit: sub.Emit, stdin: sub.Stdin, logAttrs: codegw.LogAttrs(ctx),
		result: make(chan *codegw.ExecuteResult, 1), err: make(chan error, 1), release: release,
		announced: make(chan struct{})}
	// Under the lock that remove takes to mark the session closing: a job
	// queued here is run or failed by the loop (see drain), never left
	// holding its slot.
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		release()
		return "", nil, codegw.Errorf(codegw.ENOTFOUND, "session %q has ended", s.id)
	}
	if s.paused {
		s.mu.Unlock()
		release()
		return "", nil, codegw.Errorf(codegw.ECONFLICT, "session %q is being paused; send the execution again once it is paused, and it resumes", s.id)
	}
	queued := s.pending > 0
	select {
	case s.jobs <- j:
		s.pending++
	default:
		s.mu.Unlock()
		release()
		return "", nil, codegw.Errorf(codegw.ELIMIT, "session %q has %d executions queued; wait for them", s.id, cap(s.jobs))
	}
	s.mu.Unlock()
	s.touch()
	if queued {
		s.publish(j, codegw.Event{Type: codegw.EventStatus, ExecutionID: id, State: "queued"})
	}
	close(j.announced)
	return id, func() (*codegw.ExecuteResult, error) {
		select {
		case r := <-j.result:
			return r, nil
		case err := <-j.err:
			return nil, err
		case <-s.ctx.Done():
			return nil, codegw.Errorf(codegw.ENOTFOUND, "session %q ended during the execution", s.id)
		}
	}, nil
}

// Execute runs req and waits for its answer.
func (s *Session) Execute(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	_, wait, err := s.Start(ctx, req, Submission{Emit: emit})
	if err != nil {
		return nil, err
	}
	return wait()
}

func (s *Session) publish(j *job, ev codegw.Event) {
	ev = s.hub.publish(ev)
	if j != nil && j.emit != nil {
		j.emit(ev)
	}
}

// loop runs the queued executions one at a time.
func (s *Session) loop() {
	defer s.m.bg.Done()
	for {
		select {
		case <-s.ctx.Done():
			s.drain()
			return
		case j := <-s.jobs:
			s.run(j)
		}
	}
}

// drain fails the executions still queued when the session ends.
func (s *Session) drain() {
	for {
		select {
		case j := <-s.jobs:
			s.over()
			j.release()
			j.err <- codegw.Errorf(codegw.ENOTFOUND, "session %q has ended", s.id)
		default:
			return
		}
	}
}

// over counts an execution out of pending; the session was active.
func (s *Session) over() {
	s.mu.Lock()
	s.pending--
	s.lastActive = time.Now()
	if s.pending == 0 && s.emptied != nil {
		close(s.emptied)
		s.emptied = nil
	}
	s.mu.Unlock()
}

func (s *Session) run(j *job) {
	defer j.release()
	defer s.over()
	answered := false
	// A panic ends this execution with an internal error; the session and
	// its loop go on.
	defer codegw.Recover(s.ctx, "session execution", func(err error) {
		if !answered {
			j.err <- codegw.PanicErr(err)
		}
	})
	<-j.announced
	s.kmu.Lock()
	defer s.kmu.Unlock()
	s.executing.Store(true)
	defer s.executing.Store(false)
	x := s.m.newExecution(j.id, j.req, j.code, func(ev codegw.Event) { s.publish(j, ev) })
	x.k, x.seen, x.interrupted, x.free = s.k, s.outputs, &s.interrupted, j.release
	if j.stdin {
		x.onInput = func(ctx context.Context, ir kernel.InputRequest) (string, error) {
			// Awaited before the client hears of it, so that an
			// immediate reply finds it.
			reply := make(chan string, 1)
			s.mu.Lock()
			s.awaiting = reply
			s.mu.Unlock()
			defer func() {
				s.mu.Lock()
				if s.awaiting == reply {
					s.awaiting = nil
				}
				s.mu.Unlock()
			}()
			x.send(codegw.Event{Type: codegw.EventInputRequest, Prompt: ir.Prompt, Password: ir.Password})
			select {
			case v := <-reply:
				return v, nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
	}
	res, err := x.run(codegw.WithLogAttrs(s.ctx, append([]any{"session", s.id}, j.logAttrs...)...))
	if err != nil {
		answered = true
		j.err <- err
		return
	}
	s.mu.Lock()
	s.outputs = x.seen
	s.executions++
	n := s.executions
	res.Restored, s.restored = s.restored, nil
	s.mu.Unlock()
	s.m.noteProgress(s.id, n)
	answered = true
	j.result <- res
}

// Reply answers the pending input_request. It fails when no input is
// awaited.
func (s *Session) Reply(value string) error {
	s.mu.Lock()
	reply := s.awaiting
	s.awaiting = nil // one reply per input_request
	s.mu.Unlock()
	if reply == nil {
		return codegw.Errorf(codegw.ECONFLICT, "no input is awaited")
	}
	reply <- value // buffered: never blocks
	s.touch()
	return nil
}

// Interrupt interrupts the running execution.
func (s *Session) Interrupt(ctx context.Context) error {
	s.touch()
	s.interrupted.Store(true)
	if err := s.k.Interrupt(ctx); err != nil {
		return codegw.WrapError(codegw.EUNAVAILABLE, err, "interrupt failed")
	}
	return nil
}

// Restart restarts the kernel: variables are lost, files are kept. It also
// revives a dead kernel.
func (s *Session) Restart(ctx context.Context) error {
	s.touch()
	s.interrupted.Store(true)
	if err := s.k.Restart(ctx); err != nil {
		return codegw.WrapError(codegw.EUNAVAILABLE, err, "restart failed")
	}
	if len(s.env) > 0 {
		if err := s.setEnv(ctx); err != nil {
			return err
		}
	}
	s.hub.publish(codegw.Event{Type: codegw.EventStatus, State: "restarted", Reason: "the kernel was restarted; all variables were lost, files were kept"})
	return nil
}

// Subscribe connects a client to the session's events. With replay, events
// after seq `after` still in the buffer come first; gap says some were lost.
func (s *Session) Subscribe(after uint64, replay bool) (*Subscriber, []codegw.Event, bool) {
	s.touch()
	return s.hub.subscribe(after, replay)
}

// LastSeq is the seq of the latest event.
func (s *Session) LastSeq() uint64 { return s.hub.lastSeq() }

// Restored is what the session got back from a snapshot when it was
// resumed or branched, until its first answer carries it; nil otherwise.
func (s *Session) Restored() *codegw.Restored {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restored
}
