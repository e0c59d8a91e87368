// Package session runs code for callers: one-shot stateless executions on a
// fresh kernel each, and stateful sessions that own a kernel across calls.
// It handles limits (workers, queues, output bytes, sessions), input and
// output files, event fan-out with replay, and idle culling.
package session

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
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
	Images  *files.Store
	Files   *files.Store
	Fetcher *files.Fetcher
	Outputs files.OutputLimits
	// Store records session ownership and placement; nil means sessions
	// are only known to this instance.
	Store    store.Store
	Instance string

	ExecTimeout    time.Duration // the most any execution may run (EXECUTION_TIMEOUT)
	InterruptGrace time.Duration // after the interrupt, before the kill
	MaxCodeBytes   int
	MaxOutputBytes int // stdout+stderr kept and streamed per execution
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
	Logger            *slog.Logger
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

	mu       sync.Mutex
	sessions map[string]*Session
	closed   bool

	bg     sync.WaitGroup // kernel teardowns and session loops
	ctx    context.Context
	cancel context.CancelFunc
}

// New returns a Manager and starts its idle culler.
func New(cfg Config) (*Manager, error) {
	d := DefaultConfig()
	if cfg.Kernels == nil || cfg.Images == nil || cfg.Files == nil || cfg.Fetcher == nil {
		return nil, errors.New("session: kernels, image store, file store and fetcher are required")
	}
	setDefault(&cfg.ExecTimeout, d.ExecTimeout)
	setDefault(&cfg.InterruptGrace, d.InterruptGrace)
	setDefault(&cfg.MaxCodeBytes, d.MaxCodeBytes)
	setDefault(&cfg.MaxOutputBytes, d.MaxOutputBytes)
	setDefault(&cfg.MaxImages, d.MaxImages)
	setDefault(&cfg.MaxImageBytes, d.MaxImageBytes)
	setDefault(&cfg.MaxWorkers, d.MaxWorkers)
	setDefault(&cfg.MaxQueue, d.MaxQueue)
	setDefault(&cfg.QueueTimeout, d.QueueTimeout)
	setDefault(&cfg.SessionIdle, d.SessionIdle)
	setDefault(&cfg.MaxSessionIdle, d.MaxSessionIdle)
	setDefault(&cfg.SessionQueue, d.SessionQueue)
	setDefault(&cfg.ReplayEvents, d.ReplayEvents)
	if cfg.Instance == "" {
		cfg.Instance = d.Instance
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		cfg: cfg, log: cfg.Logger,
		workers:  make(chan struct{}, cfg.MaxWorkers),
		sessions: make(map[string]*Session),
		ctx:      ctx, cancel: cancel,
	}
	m.bg.Add(1)
	go m.cull()
	return m, nil
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
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

// chdirInput makes /code/input the working directory, as the original did
// when inputs exist, so pd.read_csv('data.csv') works.
const chdirInput = "import os as _cg_os; _cg_os.chdir('/code/input'); del _cg_os"

// Execute runs req on a fresh kernel from the pool, which is destroyed
// afterwards. emit, when not nil, receives events as they happen. Errors
// are the caller's fault or a capacity problem; a failed execution is an
// answer with a non-ok status.
func (m *Manager) Execute(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	code, err := m.prepare(&req)
	if err != nil {
		return nil, err
	}
	release, err := m.acquireWorker(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	actx, cancel := context.WithTimeout(ctx, m.cfg.QueueTimeout+kernel.DefaultStartTimeout)
	k, err := m.cfg.Kernels.Acquire(actx)
	cancel()
	if err != nil {
		return nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "no kernel available")
	}
	defer m.destroy(k)
	execID := kernel.NewID()[:16]
	var inputs []codegw.InputFile
	if len(req.Files) > 0 {
		code, inputs, err = m.cfg.Fetcher.Fetch(ctx, req.Files, code, filepath.Join(k.Process().Dir(), "input"))
		if err != nil {
			return nil, err
		}
		if _, err := k.Execute(ctx, chdirInput, kernel.ExecuteOptions{Silent: true}, kernel.Deadline{Timeout: 10 * time.Second}); err != nil {
			return nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "prepare kernel")
		}
	}
	res := m.execute(ctx, k, execID, req, code, emit, nil, nil)
	res.Inputs = inputs
	if res.Inputs == nil {
		res.Inputs = []codegw.InputFile{}
	}
	res.Files = m.collect(k, nil, execID)
	if emit != nil {
		for i := range res.Files {
			emit(codegw.Event{Type: codegw.EventFile, ExecutionID: execID, File: &res.Files[i]})
		}
		emit(doneEvent(execID, res))
	}
	return res, nil
}

func doneEvent(execID string, res *codegw.ExecuteResult) codegw.Event {
	ev := codegw.Event{Type: codegw.EventDone, ExecutionID: execID, Status: res.Status, Duration: res.ExecutionTime, ExecutionCount: res.ExecutionCount, Truncated: res.Truncated}
	if res.Error != nil {
		ev.Error = *res.Error
	}
	return ev
}

// collect stores the output files named (all when names is nil).
func (m *Manager) collect(k *kernel.Kernel, names []string, execID string) []codegw.OutputFile {
	dir := filepath.Join(k.Process().Dir(), "output")
	var (
		out     []codegw.OutputFile
		skipped []files.Skipped
		err     error
	)
	if names == nil {
		out, skipped, err = files.CollectOutputs(dir, m.cfg.Outputs, m.cfg.Files)
	} else {
		out, skipped, err = files.Collect(dir, names, m.cfg.Outputs, m.cfg.Files)
	}
	if err != nil {
		m.log.Error("collect output files", "execution", execID, "err", err)
	}
	for _, s := range skipped {
		m.log.Info("output file skipped", "execution", execID, "file", s.Name, "reason", s.Reason)
	}
	if out == nil {
		out = []codegw.OutputFile{}
	}
	return out
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
}

// Stats returns a snapshot.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	n := len(m.sessions)
	m.mu.Unlock()
	return Stats{Sessions: n, Busy: len(m.workers), Waiting: int(m.waiting.Load()), Workers: cap(m.workers)}
}
