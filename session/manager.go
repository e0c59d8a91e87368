// Package session runs code for callers: one-shot stateless executions on a
// fresh kernel each, and stateful sessions that own a kernel across calls.
// It handles limits (workers, queues, output bytes, sessions), input and
// output files, event fan-out with replay, and idle culling.
package session

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/metrics"
	"github.com/codegw/codegw/session/files"
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
	Images    *files.Store
	Files     *files.Store
	Fetcher   *files.Fetcher
	Outputs   files.OutputLimits
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

// acquireWorker takes a worker slot, waiting in a bounded queue.
func (m *Manager) acquireWorker(ctx context.Context) (func(), error) {
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
	code := files.StripCodeFence(req.Code)
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
	if _, err := m.prepare(&req); err != nil {
		return nil, err
	}
	r, err := m.Reserve(owner)
	if err != nil {
		return nil, err
	}
	return r.Execute(ctx, req, emit)
}

// Reservation is what a stateless execution of one key holds before it
// runs: its slot among the key's executions and its kernel's memory. It
// lets a caller learn of a refusal, and the execution's id, before it
// commits to an answer (an NDJSON stream starts with a 200).
type Reservation struct {
	m       *Manager
	id      string
	release []func()
	once    sync.Once
}

// Reserve takes a stateless execution's share of owner's quotas: a
// *LimitError when over, EUNAVAILABLE while draining. The reservation ends
// with Execute or Release.
func (m *Manager) Reserve(owner string) (*Reservation, error) {
	release, err := m.adm.holdExecution(owner)
	if err != nil {
		return nil, err
	}
	releaseKernel, err := m.adm.holdKernel(owner, true)
	if err != nil {
		release()
		return nil, err
	}
	return &Reservation{m: m, id: newExecutionID(), release: []func(){releaseKernel, release}}, nil
}

// ID is the id the execution will have.
func (r *Reservation) ID() string { return r.id }

// Release ends the reservation unused; after Execute it does nothing.
func (r *Reservation) Release() {
	r.once.Do(func() {
		for _, f := range r.release {
			f()
		}
	})
}

// Execute runs req as Manager.Execute does, on the reservation, which ends
// with it. A reservation runs one execution: later calls are refused.
func (r *Reservation) Execute(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	first := false
	r.once.Do(func() { first = true })
	if !first {
		return nil, codegw.Errorf(codegw.ECONFLICT, "this reservation was used or released")
	}
	defer func() {
		for _, f := range r.release {
			f()
		}
	}()
	m := r.m
	code, err := m.prepare(&req)
	if err != nil {
		return nil, err
	}
	m.stateless.Add(1)
	defer m.stateless.Add(-1)
	return m.newExecution(r.id, req, code, emit).run(ctx)
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
		m.remove(s, "server shutting down")
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
	x := m.adm.running
	m.adm.mu.Unlock()
	return Stats{Sessions: n, Busy: len(m.workers), Waiting: int(m.waiting.Load()), Workers: cap(m.workers), Stateless: int(m.stateless.Load()), Executions: x}
}

// CreateOptions are the optional settings of a new session.
type CreateOptions struct {
	IdleTimeout time.Duration
	Env         map[string]string
}

// Create starts a session for owner on a warm kernel. The kernel's memory
// counts against owner's quota until the session ends (a *LimitError when
// over); sessions are refused while the manager drains.
func (m *Manager) Create(ctx context.Context, owner string, opts CreateOptions) (_ *Session, err error) {
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
	id := "s_" + codegw.NewID()[:24]
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, codegw.Errorf(codegw.EUNAVAILABLE, "server is shutting down")
	}
	m.mu.Unlock()
	now := time.Now()
	if m.cfg.Store != nil {
		rec := store.SessionRecord{ID: id, Owner: owner, Instance: m.cfg.Instance, CreatedAt: now}
		if err := m.cfg.Store.CreateSession(ctx, rec, m.cfg.MaxSessionsPerKey, m.cfg.MaxSessions); err != nil {
			return nil, err
		}
	}
	k, err := m.freshKernel(ctx)
	if err != nil {
		m.forget(id)
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
		owner: owner, created: now, idle: idle, env: opts.Env,
		input: make(chan string), lastActive: now,
		outputs: map[string]files.FileState{}, releaseKernel: releaseKernel,
	}
	if len(opts.Env) > 0 {
		if err := s.setEnv(ctx); err != nil {
			m.destroy(k)
			m.forget(id)
			return nil, err
		}
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.destroy(k)
		m.forget(id)
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

// List returns owner's sessions on this instance, oldest first.
func (m *Manager) List(owner string) []codegw.Session {
	m.mu.Lock()
	var out []codegw.Session
	for _, s := range m.sessions {
		if s.owner == owner {
			out = append(out, s.Info())
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	if out == nil {
		out = []codegw.Session{}
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

// remove ends s: clients are told why, its kernel is destroyed and its
// record forgotten.
func (m *Manager) remove(s *Session, reason string) {
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
	m.forget(s.id)
	m.log.Info("session closed", "session", s.id, "reason", reason)
}

// cull ends sessions idle past their timeout. It looks once a second while
// sessions exist and sleeps without a timer while none does: a gateway
// serving only stateless calls is not woken for nothing.
func (m *Manager) cull() {
	defer m.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m.mu.Lock()
		none := len(m.sessions) == 0
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
			var idle []*Session
			for _, s := range m.sessions {
				if s.idleSince(now) > s.idle {
					idle = append(idle, s)
				}
			}
			m.mu.Unlock()
			for _, s := range idle {
				m.remove(s, "idle timeout: no activity for "+s.idle.String())
			}
		}
	}
}
