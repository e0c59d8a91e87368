// Package memory implements store.Store in process memory. It is the
// default store: it serves a single gateway instance with no external
// dependency. Nothing survives a restart, which is right for it, since the
// kernels it describes die with the process too.
package memory

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/store"
)

var _ store.Store = (*Store)(nil)

// Store is an in-memory store.Store. The zero value is not usable; call New.
type Store struct {
	now func() time.Time

	mu         sync.Mutex
	closed     bool
	sessions   map[string]store.SessionRecord
	byOwner    map[string]map[string]struct{}
	byInstance map[string]map[string]struct{}
	instances  map[string]store.Instance
}

// Option configures a Store.
type Option func(*Store)

// WithClock makes the store read the time from now instead of time.Now, so
// tests can expire instances without sleeping.
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// New returns an empty Store.
func New(opts ...Option) *Store {
	s := &Store{
		now:        time.Now,
		sessions:   make(map[string]store.SessionRecord),
		byOwner:    make(map[string]map[string]struct{}),
		byInstance: make(map[string]map[string]struct{}),
		instances:  make(map[string]store.Instance),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// lock takes the mutex, or returns an error when the store is closed; the
// caller unlocks only on success.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return store.Unavailable(errClosed)
	}
	return nil
}

var errClosed = errors.New("memory store: closed")

// CreateSession implements store.Store.
func (s *Store) CreateSession(ctx context.Context, rec store.SessionRecord, maxPerOwner, maxTotal int) error {
	if err := rec.Validate(); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.sessions[rec.ID]; ok {
		return codegw.Errorf(codegw.ECONFLICT, "session %s already exists", rec.ID)
	}
	if maxPerOwner > 0 && len(s.byOwner[rec.Owner]) >= maxPerOwner {
		return codegw.Errorf(codegw.ELIMIT, "session limit reached: at most %d sessions per API key", maxPerOwner)
	}
	if maxTotal > 0 && len(s.sessions) >= maxTotal {
		return codegw.Errorf(codegw.ELIMIT, "session limit reached: at most %d sessions in total", maxTotal)
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = s.now()
	}
	rec.CreatedAt = rec.CreatedAt.UTC() // as the Redis store returns it; drops the monotonic reading too
	s.sessions[rec.ID] = rec
	add(s.byOwner, rec.Owner, rec.ID)
	add(s.byInstance, rec.Instance, rec.ID)
	return nil
}

// GetSession implements store.Store.
func (s *Store) GetSession(ctx context.Context, id string) (store.SessionRecord, error) {
	if err := s.lock(ctx); err != nil {
		return store.SessionRecord{}, err
	}
	defer s.mu.Unlock()
	rec, ok := s.sessions[id]
	if !ok {
		return store.SessionRecord{}, codegw.Errorf(codegw.ENOTFOUND, "session %s not found", id)
	}
	return rec, nil
}

// ListSessions implements store.Store.
func (s *Store) ListSessions(ctx context.Context, owner string) ([]store.SessionRecord, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.collect(s.byOwner[owner]), nil
}

// ListInstanceSessions implements store.Store.
func (s *Store) ListInstanceSessions(ctx context.Context, instance string) ([]store.SessionRecord, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.collect(s.byInstance[instance]), nil
}

// collect returns the records of ids, oldest first. The caller holds s.mu.
func (s *Store) collect(ids map[string]struct{}) []store.SessionRecord {
	recs := make([]store.SessionRecord, 0, len(ids))
	for id := range ids {
		recs = append(recs, s.sessions[id])
	}
	slices.SortFunc(recs, func(a, b store.SessionRecord) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return recs
}

// DeleteSession implements store.Store.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	rec, ok := s.sessions[id]
	if !ok {
		return nil
	}
	delete(s.sessions, id)
	remove(s.byOwner, rec.Owner, id)
	remove(s.byInstance, rec.Instance, id)
	return nil
}

// ReassignSession implements store.Store.
func (s *Store) ReassignSession(ctx context.Context, id, from, to string) error {
	if to == "" {
		return codegw.Errorf(codegw.EINVALID, "target instance is required")
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	rec, ok := s.sessions[id]
	if !ok {
		return codegw.Errorf(codegw.ENOTFOUND, "session %s not found", id)
	}
	if rec.Instance != from {
		return codegw.Errorf(codegw.ECONFLICT, "session %s is held by instance %s, not %s", id, rec.Instance, from)
	}
	remove(s.byInstance, from, id)
	rec.Instance = to
	s.sessions[id] = rec
	add(s.byInstance, to, id)
	return nil
}

// Heartbeat implements store.Store.
func (s *Store) Heartbeat(ctx context.Context, inst store.Instance, ttl time.Duration) error {
	if err := inst.Validate(ttl); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	inst.ExpiresAt = s.now().Add(ttl).Round(0)
	s.instances[inst.ID] = inst
	return nil
}

// GetInstance implements store.Store.
func (s *Store) GetInstance(ctx context.Context, id string) (store.Instance, error) {
	if err := s.lock(ctx); err != nil {
		return store.Instance{}, err
	}
	defer s.mu.Unlock()
	inst, ok := s.instances[id]
	if !ok || !s.now().Before(inst.ExpiresAt) {
		delete(s.instances, id)
		return store.Instance{}, codegw.Errorf(codegw.ENOTFOUND, "instance %s not found", id)
	}
	return inst, nil
}

// ListInstances implements store.Store.
func (s *Store) ListInstances(ctx context.Context) ([]store.Instance, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	now := s.now()
	list := make([]store.Instance, 0, len(s.instances))
	for id, inst := range s.instances {
		if !now.Before(inst.ExpiresAt) {
			delete(s.instances, id)
			continue
		}
		list = append(list, inst)
	}
	slices.SortFunc(list, func(a, b store.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return list, nil
}

// RemoveInstance implements store.Store.
func (s *Store) RemoveInstance(ctx context.Context, id string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	delete(s.instances, id)
	return nil
}

// Close implements store.Store. Later calls fail with codegw.EUNAVAILABLE.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func add(index map[string]map[string]struct{}, key, id string) {
	set, ok := index[key]
	if !ok {
		set = make(map[string]struct{})
		index[key] = set
	}
	set[id] = struct{}{}
}

func remove(index map[string]map[string]struct{}, key, id string) {
	delete(index[key], id)
	if len(index[key]) == 0 {
		delete(index, key)
	}
}
