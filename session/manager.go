// Package session runs code for callers: one-shot stateless executions on a
// fresh kernel each, and stateful sessions that own a kernel across calls.
// It handles limits (workers, queues, output bytes, sessions), input and
// output files, event fan-out with replay, and idle culling.
package session

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/metrics"
	"github.com/codegw/codegw/session/artifact"
	"github.com/codegw/codegw/session/inputs"
	"github.com/codegw/codegw/session/outputs"
	"github.com/codegw/codegw/session/snapshot"
	"github.com/codegw/codegw/store"
)

// Acquirer hands out ready kernels; *kernel.Pool is one.
type Acquirer interface {
	Acquire(ctx context.Context) (*kernel.Kernel, error)
}

// Config configures a Manager.
type Config struct {
	Kernels Acquirer
	// Stateless hands out the kernels of stateless calls (one-shot
	// kernels); nil takes them from Kernels.
	Stateless Acquirer
	Images    *artifact.Store
	Files     *artifact.Store
	Fetcher   *inputs.Fetcher
	Outputs   outputs.Limits
	// Store records session ownership and placement; nil means sessions
	// are only known to this instance.
	Store    store.Store
	Instance string

	ExecTimeout    time.Duration // the most any execution may run (EXECUTION_TIMEOUT)
	InterruptGrace time.Duration // after the interrupt, before the kill
	MaxCodeBytes   int
	MaxOutputBytes int // the text of one answer and of its events (see budget)
	MaxImages      int
	MaxImageBytes  int

	MaxWorkers   int           // concurrent executions (MAX_WORKERS)
	MaxQueue     int           // executions waiting for a worker
	QueueTimeout time.Duration // how long one waits before a 503

	MaxSessions       int
	MaxSessionsPerKey int
	SessionIdle       time.Duration // default idle timeout
	MaxSessionIdle    time.Duration
	SessionQueue      int // executions queued per session
	ReplayEvents      int // events kept per session for reconnects
	// MaxExecutionsPerKey bounds the executions one key has submitted and
	// not seen finish on this instance, every way in (0: unlimited).
	MaxExecutionsPerKey int
	// KernelMemory is the memory limit the provisioner enforces on each
	// kernel; every kernel a key holds (a session, a stateless execution)
	// reserves it against MaxKernelMemoryPerKey (0: unlimited). The caller
	// must not set a total without an enforced per-kernel limit.
	KernelMemory          int64
	MaxKernelMemoryPerKey int64
	Logger                *slog.Logger
	// Metrics records executions, queue waits, truncation and input
	// downloads; nil records nothing.
	Metrics *metrics.Metrics

	// Snapshots stores session snapshots (pause, resume, checkpoints);
	// nil turns them off. They need Store too.
	Snapshots snapshot.Store
	// MaxSnapshotBytes bounds one snapshot before compression;
	// MaxSnapshotBytesPerKey the stored bytes of one key's snapshots (0:
	// unlimited).
	MaxSnapshotBytes       int64
	MaxSnapshotBytesPerKey int64
	// IdleAction is what idle culling does: IdleDelete, or IdlePause when
	// snapshots are on.
	IdleAction string
	// PausedTTL deletes paused sessions this long after their pause (0:
	// never).
	PausedTTL time.Duration
	// CheckpointAfter takes a checkpoint of a session once it has been
	// idle this long after an execution (0: never).
	CheckpointAfter time.Duration
}

// DefaultConfig returns limits that suit a laptop; kernels and stores must
// still be set.
func DefaultConfig() Config {
	return Config{
		ExecTimeout:       120 * time.Second,
		InterruptGrace:    2 * time.Second,
		MaxCodeBytes:      1 << 20,
		MaxOutputBytes:    1 << 20,
		MaxImages:         50,
		MaxImageBytes:     20 << 20,
		MaxWorkers:        4,
		MaxQueue:          64,
		QueueTimeout:      30 * time.Second,
		MaxSessions:       100,
		MaxSessionsPerKey: 20,
		SessionIdle:       30 * time.Minute,
		MaxSessionIdle:    24 * time.Hour,
		SessionQueue:      16,
		ReplayEvents:      1000,
		Instance:          "local",
		MaxSnapshotBytes:  2 << 30,
		IdleAction:        IdleDelete,
	}
}

// Manager runs executions and owns the live sessions of this instance.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	workers chan struct{}
	waiting atomic.Int32
	// stateless counts the stateless calls running (for the metrics).
	stateless atomic.Int32

	adm admission // per-key executions and kernel memory; the drain

	mu       sync.Mutex
	sessions map[string]*Session
	resuming map[string]chan struct{} // sessions being resumed here
	closed   bool
	added    chan struct{} // wakes the culler, which sleeps while there is no session

	bg     sync.WaitGroup // kernel teardowns and session loops
	ctx    context.Context
	cancel context.CancelFunc
	// halt ends with Abort: every execution running, or started later, is
	// interrupted, its cause the error it ends with.
	halt  context.Context
	abort context.CancelCauseFunc
}

// New returns a Manager and starts its idle culler.
func New(cfg Config) (*Manager, error) {
	d := DefaultConfig()
	if cfg.Kernels == nil || cfg.Images == nil || cfg.Files == nil || cfg.Fetcher == nil {
		return nil, errors.New("session: kernels, image store, file store and fetcher are required")
	}
	cfg.ExecTimeout = cmp.Or(cfg.ExecTimeout, d.ExecTimeout)
	cfg.InterruptGrace = cmp.Or(cfg.InterruptGrace, d.InterruptGrace)
	cfg.MaxCodeBytes = cmp.Or(cfg.MaxCodeBytes, d.MaxCodeBytes)
	cfg.MaxOutputBytes = cmp.Or(cfg.MaxOutputBytes, d.MaxOutputBytes)
	cfg.MaxImages = cmp.Or(cfg.MaxImages, d.MaxImages)
	cfg.MaxImageBytes = cmp.Or(cfg.MaxImageBytes, d.MaxImageBytes)
	cfg.MaxWorkers = cmp.Or(cfg.MaxWorkers, d.MaxWorkers)
	cfg.MaxQueue = cmp.Or(cfg.MaxQueue, d.MaxQueue)
	cfg.QueueTimeout = cmp.Or(cfg.QueueTimeout, d.QueueTimeout)
	cfg.SessionIdle = cmp.Or(cfg.SessionIdle, d.SessionIdle)
	cfg.MaxSessionIdle = cmp.Or(cfg.MaxSessionIdle, d.MaxSessionIdle)
	cfg.SessionQueue = cmp.Or(cfg.SessionQueue, d.SessionQueue)
	cfg.ReplayEvents = cmp.Or(cfg.ReplayEvents, d.ReplayEvents)
	cfg.MaxSnapshotBytes = cmp.Or(cfg.MaxSnapshotBytes, d.MaxSnapshotBytes)
	cfg.IdleAction = cmp.Or(cfg.IdleAction, d.IdleAction)
	if cfg.IdleAction != IdleDelete && cfg.IdleAction != IdlePause {
		return nil, fmt.Errorf("session: idle action %q: want %q or %q", cfg.IdleAction, IdleDelete, IdlePause)
	}
	if cfg.Instance == "" {
		cfg.Instance = d.Instance
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	halt, abort := context.WithCancelCause(context.Background())
	m := &Manager{
		cfg: cfg, log: cfg.Logger,
		workers:  make(chan struct{}, cfg.MaxWorkers),
		sessions: make(map[string]*Session),
		resuming: make(map[string]chan struct{}),
		added:    make(chan struct{}, 1),
		ctx:      ctx, cancel: cancel,
		halt: halt, abort: abort,
		adm: admission{maxExec: cfg.MaxExecutionsPerKey, kernelMem: cfg.KernelMemory, maxMem: cfg.MaxKernelMemoryPerKey,
			use: map[string]*keyUse{}},
	}
	m.bg.Add(1)
	go m.cull()
	return m, nil
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// acquireWorker takes a worker slot, waiting in a bounded queue. The wait
// and the hold count as running work for the drain.
func (m *Manager) acquireWorker(ctx context.Context) (func(), error) {
	done := m.adm.track()
	release, err := m.takeWorker(ctx)
	if err != nil {
		done()
		return nil, err
	}
	return func() { release(); done() }, nil
}

// takeWorker is acquireWorker without the drain's count.
func (m *Manager) takeWorker(ctx context.Context) (func(), error) {
	select {
	case m.workers <- struct{}{}:
		return func() { <-m.workers }, nil
	default:
	}
	if int(m.waiting.Add(1)) > m.cfg.MaxQueue {
		m.waiting.Add(-1)
		return nil, codegw.Errorf(codegw.ELIMIT, "too many executions waiting (%d); try again later", m.cfg.MaxQueue)
	}
	defer m.waiting.Add(-1)
	queued := time.Now()
	defer func() { m.cfg.Metrics.QueueWait(time.Since(queued)) }()
	t := time.NewTimer(m.cfg.QueueTimeout)
	defer t.Stop()
	select {
	case m.workers <- struct{}{}:
		return func() { <-m.workers }, nil
	case <-t.C:
		return nil, codegw.Errorf(codegw.EBUSY, "no worker free within %v; try again later", m.cfg.QueueTimeout)
	case <-ctx.Done():
		return nil, codegw.WrapError(codegw.EBUSY, ctx.Err(), "gave up waiting for a worker")
	case <-m.ctx.Done():
		return nil, codegw.Errorf(codegw.EUNAVAILABLE, "server is shutting down")
	}
}

// prepare validates a request and returns the code to run.
func (m *Manager) prepare(req *codegw.ExecuteRequest) (string, error) {
	code := stripCodeFence(req.Code)
	switch {
	case len(req.Code) > m.cfg.MaxCodeBytes:
		return "", codegw.Errorf(codegw.ETOOLARGE, "code is %d bytes; the limit is %d", len(req.Code), m.cfg.MaxCodeBytes)
	case strings.TrimSpace(code) == "":
		return "", codegw.Errorf(codegw.EINVALID, "code is required")
	case req.Timeout < 0:
		return "", codegw.Errorf(codegw.EINVALID, "timeout must be positive")
	case len(req.Files) > m.cfg.Fetcher.Limits().MaxFiles:
		return "", codegw.Errorf(codegw.ETOOLARGE, "%d input files; the limit is %d", len(req.Files), m.cfg.Fetcher.Limits().MaxFiles)
	}
	return code, nil
}

// Execute runs req on a fresh kernel from the pool, which is destroyed
// afterwards. emit, when not nil, receives events as they happen. Errors
// are the caller's fault or a capacity problem; a failed execution is an
// answer with a non-ok status. The execution is counted under no key in
// particular (the empty owner): callers serving a key use ExecuteFor.
func (m *Manager) Execute(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	return m.ExecuteFor(ctx, "", req, emit)
}

// ExecuteFor is Execute for owner: the execution, and its kernel's memory,
// count against owner's quotas (a *LimitError when over), and it is
// refused while the manager drains.
func (m *Manager) ExecuteFor(ctx context.Context, owner string, req codegw.ExecuteRequest, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	r, err := m.Reserve(owner, req)
	if err != nil {
		return nil, err
	}
	return r.Execute(ctx, emit)
}

// Reservation is what a stateless execution of one key holds before it
// runs: its checked request, its slot among the key's executions and its
// kernel's memory. It lets a caller learn of a refusal, and the
// execution's id, before it commits to an answer (an NDJSON stream starts
// with a 200).
type Reservation struct {
	m       *Manager
	id      string
	req     codegw.ExecuteRequest
	code    string // req.Code without its code fence
	release []func()
	once    sync.Once
}

// Reserve checks req (EINVALID, ETOOLARGE), then takes a stateless
// execution's share of owner's quotas: a *LimitError when over,
// EUNAVAILABLE while draining. The reservation ends with Execute or
// Release.
func (m *Manager) Reserve(owner string, req codegw.ExecuteRequest) (*Reservation, error) {
	code, err := m.prepare(&req)
	if err != nil {
		return nil, err
	}
	release, err := m.adm.holdExecution(owner)
	if err != nil {
		return nil, err
	}
	releaseKernel, err := m.adm.holdKernel(owner, true)
	if err != nil {
		release()
		return nil, err
	}
	return &Reservation{m: m, id: newExecutionID(), req: req, code: code, release: []func(){releaseKernel, release}}, nil
}

// ID is the id the execution will have.
func (r *Reservation) ID() string { return r.id }

// Release ends the reservation unused; after Execute it does nothing.
func (r *Reservation) Release() { r.once.Do(r.free) }

// free gives back the reservation's quotas; more calls do nothing (each
// release is the admission's, which runs once).
func (r *Reservation) free() {
	for _, f := range r.release {
		f()
	}
}

// Execute runs the reserved request as Manager.Execute does; the
// reservation ends with it. A reservation runs one execution: later calls
// are refused.
func (r *Reservation) Execute(ctx context.Context, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	first := false
	r.once.Do(func() { first = true })
	if !first {
		return nil, codegw.Errorf(codegw.ECONFLICT, "this reservation was used or released")
	}
	defer r.free()
	m := r.m
	m.stateless.Add(1)
	defer m.stateless.Add(-1)
	x := m.newExecution(r.id, r.req, r.code, emit)
	x.free = r.free
	return x.run(ctx)
}

// freshKernel takes a kernel nobody used from the pool.
func (m *Manager) freshKernel(ctx context.Context) (*kernel.Kernel, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.QueueTimeout+kernel.DefaultStartTimeout)
	defer cancel()
	k, err := m.cfg.Kernels.Acquire(ctx)
	if err != nil {
		return nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "no kernel available")
	}
	return k, nil
}

// statelessKernel takes a fresh kernel for a stateless call.
func (m *Manager) statelessKernel(ctx context.Context) (*kernel.Kernel, error) {
	if m.cfg.Stateless == nil {
		return m.freshKernel(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.QueueTimeout+kernel.DefaultStartTimeout)
	defer cancel()
	k, err := m.cfg.Stateless.Acquire(ctx)
	if err != nil {
		return nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "no kernel available")
	}
	return k, nil
}

// destroy closes k in the background so the answer is not delayed by the
// teardown; Close waits for every such teardown.
func (m *Manager) destroy(k *kernel.Kernel) {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := k.Close(ctx); err != nil {
			m.log.Error("destroy kernel", "kernel", k.ID(), "err", err)
		}
	}()
}

// Abort interrupts every execution still running, stateless or in a
// session, and any started after it: each is answered with status
// interrupted and an error that names why (the drain's end: the server is
// shutting down), instead of being cut when its kernel is closed. Their
// kernels are interrupted, then killed after InterruptGrace.
func (m *Manager) Abort(why string) {
	m.abort(errors.New(why))
}

// Close ends every session (telling connected clients why) and waits for
// every kernel to be destroyed.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	list := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		list = append(list, s)
	}
	m.mu.Unlock()
	for _, s := range list {
		m.end(s, "server shutting down", endShutdown)
	}
	m.cancel()
	m.bg.Wait()
	return nil
}

// Stats is a snapshot for health endpoints.
type Stats struct {
	Sessions int `json:"sessions"`
	Busy     int `json:"busy_workers"`
	Waiting  int `json:"waiting"`
	Workers  int `json:"max_workers"`
	// Stateless counts the stateless calls running, each on its own kernel.
	Stateless int `json:"stateless"`
	// Executions counts the executions submitted and not finished, every
	// way in, queued ones included.
	Executions int `json:"executions"`
}

// Stats returns a snapshot.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	n := len(m.sessions)
	m.mu.Unlock()
	m.adm.mu.Lock()
	x := m.adm.executions
	m.adm.mu.Unlock()
	return Stats{Sessions: n, Busy: len(m.workers), Waiting: int(m.waiting.Load()), Workers: cap(m.workers), Stateless: int(m.stateless.Load()), Executions: x}
}

// CreateOptions are the optional settings of a new session.
type CreateOptions struct {
	IdleTimeout time.Duration
	Env         map[string]string
	// From starts the session from a snapshot: a session id (its latest
	// snapshot, or a checkpoint taken now when it is live here) or a
	// snapshot id.
	From string
}

// Create starts a session for owner on a warm kernel. The kernel's memory
// counts against owner's quota until the session ends (a *LimitError when
// over); sessions are refused while the manager drains. With opts.From the
// session starts from a snapshot of another session of owner's (branching).
func (m *Manager) Create(ctx context.Context, owner string, opts CreateOptions) (*Session, error) {
	if opts.From != "" {
		return m.branch(ctx, owner, opts)
	}
	return m.open(ctx, owner, opts, opening{})
}

// opening is how a session comes to be: new (the zero value), resumed
// under its own id from a snapshot, or branched from one.
type opening struct {
	id      string    // the session's id; a new one when empty
	created time.Time // when the session was first created; now when zero
	// claim records the session in the store as held here (CreateSession
	// when nil); unclaim undoes it when the opening fails.
	claim   func(ctx context.Context) error
	unclaim func()
	// restore loads the session's state into its new kernel.
	restore func(ctx context.Context, s *Session) (*codegw.Restored, error)
	// executions is the count the resumed session goes on from; seq the
	// event seq.
	executions int
	seq        uint64
}

func (m *Manager) open(ctx context.Context, owner string, opts CreateOptions, o opening) (_ *Session, err error) {
	idle := m.cfg.SessionIdle
	if opts.IdleTimeout < 0 {
		return nil, codegw.Errorf(codegw.EINVALID, "idle_timeout must be positive")
	} else if opts.IdleTimeout > 0 {
		idle = min(opts.IdleTimeout, m.cfg.MaxSessionIdle)
	}
	if len(opts.Env) > 100 {
		return nil, codegw.Errorf(codegw.EINVALID, "at most 100 environment variables")
	}
	for k, v := range opts.Env {
		if k == "" || len(k) > 256 || len(v) > 32<<10 || !validEnvName(k) {
			return nil, codegw.Errorf(codegw.EINVALID, "invalid environment variable %q", k)
		}
	}
	releaseKernel, err := m.adm.holdKernel(owner, false)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			releaseKernel()
		}
	}()
	id := o.id
	if id == "" {
		id = "s_" + codegw.NewID()[:24]
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, codegw.Errorf(codegw.EUNAVAILABLE, "server is shutting down")
	}
	m.mu.Unlock()
	now := time.Now()
	created := cmp.Or(o.created, now)
	unclaim := func() { m.forget(id) }
	if o.claim != nil {
		if err := o.claim(ctx); err != nil {
			return nil, err
		}
		unclaim = o.unclaim
	} else if m.cfg.Store != nil {
		rec := store.SessionRecord{ID: id, Owner: owner, Instance: m.cfg.Instance, CreatedAt: now}
		if err := m.cfg.Store.CreateSession(ctx, rec, m.cfg.MaxSessionsPerKey, m.cfg.MaxSessions); err != nil {
			return nil, err
		}
	}
	k, err := m.freshKernel(ctx)
	if err != nil {
		unclaim()
		return nil, err
	}
	if a, ok := k.Process().(assigner); ok {
		if err := a.Assign(ctx, id); err != nil {
			m.log.Warn("could not name the kernel after its session", "session", id, "kernel", k.ID(), "err", err)
		}
	}
	s := &Session{
		m: m, id: id, k: k, hub: newHub(m.cfg.ReplayEvents),
		jobs:  make(chan *job, m.cfg.SessionQueue),
		owner: owner, created: created, idle: idle, env: opts.Env,
		lastActive: now,
		outputs:    map[string]outputs.FileState{}, releaseKernel: releaseKernel,
		executions: o.executions, checkpointed: o.executions,
	}
	s.hub.seq = o.seq
	if len(opts.Env) > 0 {
		if err := s.setEnv(ctx); err != nil {
			m.destroy(k)
			unclaim()
			return nil, err
		}
	}
	if o.restore != nil {
		r, err := o.restore(ctx, s)
		if err != nil {
			m.destroy(k)
			unclaim()
			return nil, err
		}
		s.restored = r
		s.outputs = outputs.Snapshot(filepath.Join(k.Process().Dir(), "output"))
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.destroy(k)
		unclaim()
		return nil, codegw.Errorf(codegw.EUNAVAILABLE, "server is shutting down")
	}
	s.ctx, s.cancel = context.WithCancel(m.ctx)
	m.sessions[id] = s
	m.mu.Unlock()
	select {
	case m.added <- struct{}{}:
	default:
	}
	m.bg.Add(1)
	go s.loop()
	m.log.Info("session created", "session", id, "kernel", k.ID(), "idle_timeout", idle)
	return s, nil
}

// assigner is implemented by processes that can show which session they
// serve (Docker containers are renamed after it).
type assigner interface {
	Assign(ctx context.Context, session string) error
}

func validEnvName(k string) bool {
	for i, r := range k {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func (m *Manager) forget(id string) {
	if m.cfg.Store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.cfg.Store.DeleteSession(ctx, id); err != nil {
		m.log.Error("forget session", "session", id, "err", err)
	}
}

// Get returns owner's live session on this instance. Sessions of other
// owners are reported as not found.
func (m *Manager) Get(id, owner string) (*Session, error) {
	m.mu.Lock()
	s := m.sessions[id]
	m.mu.Unlock()
	if s == nil || s.owner != owner {
		return nil, codegw.Errorf(codegw.ENOTFOUND, "session %q not found", id)
	}
	return s, nil
}

// Local reports whether the session lives on this instance.
func (m *Manager) Local(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sessions[id] != nil
}

// List returns owner's sessions on this instance, and paused ones, oldest
// first.
func (m *Manager) List(owner string) []codegw.SessionInfo {
	m.mu.Lock()
	var out []codegw.SessionInfo
	for _, s := range m.sessions {
		if s.owner == owner {
			out = append(out, s.Info())
		}
	}
	m.mu.Unlock()
	out = append(out, m.listPaused(owner)...)
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	if out == nil {
		out = []codegw.SessionInfo{}
	}
	return out
}

// Delete ends owner's session.
func (m *Manager) Delete(id, owner string) error {
	s, err := m.Get(id, owner)
	if err != nil {
		return err
	}
	m.remove(s, "session deleted")
	return nil
}

// How a session ends, for its record and snapshots.
const (
	endDeleted  = iota // the record and the snapshots go
	endPaused          // the record says paused; the snapshots stay
	endShutdown        // paused when a snapshot of it exists, else as endDeleted
)

// remove ends s for good: clients are told why, its kernel is destroyed,
// its record forgotten and its snapshots deleted.
func (m *Manager) remove(s *Session, reason string) { m.end(s, reason, endDeleted) }

// end ends s here: clients are told why and its kernel is destroyed; how
// says what becomes of its record and snapshots.
func (m *Manager) end(s *Session, reason string, how int) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing = true
	s.mu.Unlock()
	m.mu.Lock()
	delete(m.sessions, s.id)
	m.mu.Unlock()
	s.hub.publish(codegw.Event{Type: codegw.EventClosed, Reason: reason})
	s.cancel()
	m.destroy(s.k)
	// The memory is free once the kernel is destroyed, which goes on in
	// the background: the reservation ends now so that the key can open
	// another session at once (the destroy takes milliseconds).
	s.releaseKernel()
	if how == endShutdown && m.Snapshots() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		list, err := m.cfg.Snapshots.List(ctx, s.id)
		if err == nil && len(list) > 0 {
			if err := m.cfg.Store.ReassignSession(ctx, s.id, m.cfg.Instance, store.Paused); err == nil {
				how = endPaused
				reason += "; it resumes from its checkpoint of " + list[0].TakenAt.Format(time.RFC3339)
			}
		}
		cancel()
	}
	switch how {
	case endPaused:
	default:
		if m.Snapshots() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			m.cfg.Snapshots.DeleteSession(ctx, s.id)
			cancel()
		}
		m.forget(s.id)
	}
	m.log.Info("session closed", "session", s.id, "reason", reason)
}

// cull ends sessions idle past their timeout. It looks once a second while
// sessions exist and sleeps without a timer while none does: a gateway
// serving only stateless calls is not woken for nothing.
func (m *Manager) cull() {
	defer m.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var expired time.Time
	for {
		m.mu.Lock()
		none := len(m.sessions) == 0 && m.cfg.PausedTTL <= 0
		m.mu.Unlock()
		if none {
			t.Stop()
			select {
			case <-m.ctx.Done():
				return
			case <-m.added:
			}
			t.Reset(time.Second)
		}
		select {
		case <-m.ctx.Done():
			return
		case now := <-t.C:
			m.mu.Lock()
			var idle, stale []*Session
			for _, s := range m.sessions {
				since := s.idleSince(now)
				if since > s.idle {
					idle = append(idle, s)
				} else if m.cfg.CheckpointAfter > 0 && since > m.cfg.CheckpointAfter && s.changed() {
					stale = append(stale, s)
				}
			}
			m.mu.Unlock()
			for _, s := range idle {
				m.idle(s)
			}
			for _, s := range stale {
				m.autoCheckpoint(s)
			}
			if now.Sub(expired) > min(time.Minute, max(m.cfg.PausedTTL/4, time.Second)) {
				expired = now
				m.expire(m.ctx, now)
			}
		}
	}
}

// idle ends a session idle past its timeout: paused when IDLE_ACTION is
// pause (deleted if the pause fails), else deleted.
func (m *Manager) idle(s *Session) {
	why := "idle timeout: no activity for " + s.idle.String()
	if m.cfg.IdleAction == IdlePause && m.Snapshots() {
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			defer codegw.Recover(m.ctx, "pause an idle session", nil)
			ctx, cancel := context.WithTimeout(m.ctx, 5*time.Minute)
			defer cancel()
			if _, err := m.pause(ctx, s, why); err != nil && codegw.ErrorCode(err) != codegw.ECONFLICT {
				m.log.Warn("could not pause an idle session; deleting it", "session", s.id, "err", err)
				m.remove(s, why)
			}
		}()
		return
	}
	m.remove(s, why)
}

// changed reports whether s ran an execution since its last snapshot.
func (s *Session) changed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.executions > s.checkpointed && !s.checkpointing && !s.closing && !s.paused
}

// autoCheckpoint takes a checkpoint of s in the background (CHECKPOINT_AFTER).
func (m *Manager) autoCheckpoint(s *Session) {
	if !m.Snapshots() {
		return
	}
	s.mu.Lock()
	s.checkpointing = true
	s.mu.Unlock()
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer func() {
			s.mu.Lock()
			s.checkpointing = false
			s.mu.Unlock()
		}()
		defer codegw.Recover(m.ctx, "checkpoint an idle session", nil)
		ctx, cancel := context.WithTimeout(m.ctx, 5*time.Minute)
		defer cancel()
		if _, err := s.snapshot(ctx, snapshot.KindAuto); err != nil {
			m.log.Warn("automatic checkpoint failed", "session", s.id, "err", err)
			// Not again until the next execution.
			s.mu.Lock()
			s.checkpointed = s.executions
			s.mu.Unlock()
		}
	}()
}
