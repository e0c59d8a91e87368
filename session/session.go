package session

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/session/files"
	"github.com/codegw/codegw/store"
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
	done chan struct{} // closed when the session ends

	owner     string
	created   time.Time
	idle      time.Duration
	env       map[string]string
	executing atomic.Bool

	interrupted atomic.Bool
	input       chan string // the answer to the pending input_request

	mu         sync.Mutex
	lastActive time.Time
	executions int
	closing    bool
	outputs    map[string]files.FileState
}

type job struct {
	id      string
	req     codegw.ExecuteRequest
	code    string
	emit    func(codegw.Event) // extra per-call receiver (NDJSON), may be nil
	stdin   bool               // input() is answered by a client
	result  chan *codegw.ExecuteResult
	err     chan error
	started chan struct{}
}

// CreateOptions are the optional settings of a new session.
type CreateOptions struct {
	IdleTimeout time.Duration
	Env         map[string]string
}

// Create starts a session for owner on a warm kernel.
func (m *Manager) Create(ctx context.Context, owner string, opts CreateOptions) (*Session, error) {
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
	id := "s_" + kernel.NewID()[:24]
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
	k, err := m.cfg.Kernels.Acquire(ctx)
	if err != nil {
		m.forget(id)
		return nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "no kernel available")
	}
	if a, ok := k.Process().(assigner); ok {
		if err := a.Assign(ctx, id); err != nil {
			m.log.Warn("could not name the kernel after its session", "session", id, "kernel", k.ID(), "err", err)
		}
	}
	s := &Session{
		m: m, id: id, k: k, hub: newHub(m.cfg.ReplayEvents),
		jobs: make(chan *job, m.cfg.SessionQueue), done: make(chan struct{}),
		owner: owner, created: now, idle: idle, env: opts.Env,
		input: make(chan string), lastActive: now,
		outputs: map[string]files.FileState{},
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
	m.sessions[id] = s
	m.mu.Unlock()
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
	close(s.done)
	m.destroy(s.k)
	m.forget(s.id)
	m.log.Info("session closed", "session", s.id, "reason", reason)
}

// cull ends sessions idle past their timeout.
func (m *Manager) cull() {
	defer m.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
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

func (s *Session) idleSince(now time.Time) time.Duration {
	if s.executing.Load() || len(s.jobs) > 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return now.Sub(s.lastActive)
}

func (s *Session) touch() {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.mu.Unlock()
}

// ID is the session id.
func (s *Session) ID() string { return s.id }

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// Info describes the session.
func (s *Session) Info() codegw.Session {
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
	return codegw.Session{
		ID: s.id, Instance: s.m.cfg.Instance, CreatedAt: s.created, LastActive: s.lastActive,
		IdleTimeout: codegw.Duration(s.idle), State: state, Executions: s.executions,
	}
}

// Submit queues an execution. The answer arrives on the returned channel;
// events go to every subscriber and to emit. With stdin, input() waits for
// Reply; without it, input() fails at once.
func (s *Session) Submit(req codegw.ExecuteRequest, execID string, emit func(codegw.Event), stdin bool) (<-chan *codegw.ExecuteResult, <-chan error, error) {
	code, err := s.m.prepare(&req)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		execID = kernel.NewID()[:16]
	}
	j := &job{id: execID, req: req, code: code, emit: emit, stdin: stdin,
		result: make(chan *codegw.ExecuteResult, 1), err: make(chan error, 1), started: make(chan struct{})}
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil, nil, codegw.Errorf(codegw.ENOTFOUND, "session %q has ended", s.id)
	}
	select {
	case s.jobs <- j:
	default:
		return nil, nil, codegw.Errorf(codegw.ELIMIT, "session %q has %d executions queued; wait for them", s.id, cap(s.jobs))
	}
	s.touch()
	if len(s.jobs) > 0 || s.executing.Load() {
		s.publish(j, codegw.Event{Type: codegw.EventStatus, ExecutionID: execID, State: "queued"})
	}
	return j.result, j.err, nil
}

// Execute runs req and waits for its answer.
func (s *Session) Execute(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (*codegw.ExecuteResult, error) {
	res, errc, err := s.Submit(req, "", emit, false)
	if err != nil {
		return nil, err
	}
	select {
	case r := <-res:
		return r, nil
	case err := <-errc:
		return nil, err
	case <-s.done:
		return nil, codegw.Errorf(codegw.ENOTFOUND, "session %q ended during the execution", s.id)
	}
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
		case <-s.done:
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
			j.err <- codegw.Errorf(codegw.ENOTFOUND, "session %q has ended", s.id)
		default:
			return
		}
	}
}

func (s *Session) run(j *job) {
	s.executing.Store(true)
	defer s.executing.Store(false)
	defer s.touch()
	release, err := s.m.acquireWorker(s.m.ctx)
	if err != nil {
		j.err <- err
		return
	}
	defer release()
	s.interrupted.Store(false)
	emit := func(ev codegw.Event) { s.publish(j, ev) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // a session that ends stops its running execution
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	code := j.code
	var inputs []codegw.InputFile
	if len(j.req.Files) > 0 {
		code, inputs, err = s.m.cfg.Fetcher.Fetch(ctx, j.req.Files, code, filepath.Join(s.k.Process().Dir(), "input"))
		if err != nil {
			j.err <- err
			return
		}
		if _, err := s.k.Execute(ctx, chdirInput, kernel.ExecuteOptions{Silent: true}, kernel.Deadline{Timeout: 10 * time.Second}); err != nil {
			j.err <- codegw.WrapError(codegw.EUNAVAILABLE, err, "prepare kernel")
			return
		}
	}
	var onInput func(context.Context, kernel.InputRequest) (string, error)
	if j.stdin {
		onInput = func(ctx context.Context, ir kernel.InputRequest) (string, error) {
			emit(codegw.Event{Type: codegw.EventInputRequest, ExecutionID: j.id, Prompt: ir.Prompt, Password: ir.Password})
			select {
			case v := <-s.input:
				return v, nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
	}
	outDir := filepath.Join(s.k.Process().Dir(), "output")
	res := s.m.execute(ctx, s.k, j.id, j.req, code, emit, onInput, s.interrupted.Load)
	res.Inputs = inputs
	if res.Inputs == nil {
		res.Inputs = []codegw.InputFile{}
	}
	after := files.Snapshot(outDir)
	s.mu.Lock()
	changed := files.Changed(s.outputs, after)
	s.outputs = after
	s.executions++
	s.mu.Unlock()
	res.Files = []codegw.OutputFile{}
	if len(changed) > 0 {
		res.Files = s.m.collect(s.k, changed, j.id)
		for i := range res.Files {
			f := res.Files[i]
			emit(codegw.Event{Type: codegw.EventFile, ExecutionID: j.id, File: &f})
		}
	}
	emit(doneEvent(j.id, res))
	j.result <- res
}

// Fail reports an execution that could not run (its input files were
// refused, the server is saturated) as its done event.
func (s *Session) Fail(execID string, err error) {
	s.hub.publish(codegw.Event{Type: codegw.EventDone, ExecutionID: execID, Status: codegw.StatusRejected, Error: codegw.ErrorMessage(err), Reason: codegw.ErrorCode(err)})
}

// Reply answers the pending input_request. It fails when no input is
// awaited.
func (s *Session) Reply(value string) error {
	select {
	case s.input <- value:
		s.touch()
		return nil
	case <-time.After(100 * time.Millisecond):
		return codegw.Errorf(codegw.ECONFLICT, "no input is awaited")
	}
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

// FileInfo describes a file in the session's input or output directory.
type FileInfo struct {
	Name     string    `json:"name"`
	Size     int64     `json:"size_bytes"`
	Modified time.Time `json:"modified"`
	URL      string    `json:"url,omitempty"`
}

// Upload writes r into /code/input/name, at most maxBytes.
func (s *Session) Upload(name string, r io.Reader, maxBytes int64) (FileInfo, error) {
	s.touch()
	clean := files.SanitizeName(name)
	if clean == "" {
		return FileInfo{}, codegw.Errorf(codegw.EINVALID, "invalid file name %q", name)
	}
	root, err := os.OpenRoot(filepath.Join(s.k.Process().Dir(), "input"))
	if err != nil {
		return FileInfo{}, codegw.WrapError(codegw.EINTERNAL, err, "open input directory")
	}
	defer root.Close()
	tmp := ".upload-" + kernel.NewID()[:12]
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return FileInfo{}, codegw.WrapError(codegw.EINTERNAL, err, "create upload")
	}
	n, err := io.Copy(f, io.LimitReader(r, maxBytes+1))
	f.Close()
	if err == nil && n > maxBytes {
		err = codegw.Errorf(codegw.ETOOLARGE, "file %q is larger than %d bytes", name, maxBytes)
	}
	if err == nil {
		err = root.Rename(tmp, clean)
	}
	if err != nil {
		root.Remove(tmp)
		if codegw.ErrorCode(err) == codegw.EINTERNAL {
			return FileInfo{}, codegw.WrapError(codegw.EINTERNAL, err, "upload failed")
		}
		return FileInfo{}, err
	}
	return FileInfo{Name: clean, Size: n, Modified: time.Now()}, nil
}

// Outputs lists the regular files in /code/output.
func (s *Session) Outputs() ([]FileInfo, error) {
	s.touch()
	dir := filepath.Join(s.k.Process().Dir(), "output")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, codegw.WrapError(codegw.EINTERNAL, err, "list output directory")
	}
	out := []FileInfo{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, FileInfo{Name: e.Name(), Size: info.Size(), Modified: info.ModTime()})
	}
	return out, nil
}

// OpenOutput opens /code/output/name for download. Only regular files
// directly in the directory are served, never through a symlink.
func (s *Session) OpenOutput(name string) (*os.File, fs.FileInfo, error) {
	s.touch()
	notFound := codegw.Errorf(codegw.ENOTFOUND, "output file %q not found", name)
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, nil, notFound
	}
	root, err := os.OpenRoot(filepath.Join(s.k.Process().Dir(), "output"))
	if err != nil {
		return nil, nil, notFound
	}
	defer root.Close()
	li, err := root.Lstat(name)
	if err != nil || !li.Mode().IsRegular() {
		return nil, nil, notFound
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscallNoFollow, 0)
	if err != nil {
		return nil, nil, notFound
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || !os.SameFile(fi, li) {
		f.Close()
		return nil, nil, notFound
	}
	return f, fi, nil
}
