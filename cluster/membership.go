package cluster

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/store"
)

// MemberStore is the part of the store contract membership uses: the
// instance registry and the records naming this instance.
type MemberStore interface {
	Heartbeat(ctx context.Context, inst store.Instance, ttl time.Duration) error
	RemoveInstance(ctx context.Context, id string) error
	ListInstanceSessions(ctx context.Context, instance string) ([]store.SessionRecord, error)
	GetSession(ctx context.Context, id string) (store.SessionRecord, error)
	CreateSession(ctx context.Context, rec store.SessionRecord, maxPerOwner, maxTotal int) error
	DeleteSession(ctx context.Context, id string) error
}

// DefaultTTL is how long an instance's registry entry lives without a
// heartbeat (INSTANCE_TTL).
const DefaultTTL = 15 * time.Second

// Membership is this instance's membership of a multi-instance deployment:
// it registers the instance with its internal address and refreshes the
// entry every TTL/3, and on each beat reconciles the store with the
// sessions this instance really holds, both ways, so that nothing an outage
// interrupted is silently dropped:
//
//   - a session deleted while the store was unreachable has its record
//     deleted when the store is back (the delete is retried);
//   - records naming this instance for sessions it does not hold (left by
//     an earlier run under the same id) are deleted;
//   - records of sessions it holds that the store lost (Redis restarted
//     empty) are written again, so other instances can route to them.
//
// A store that comes back is picked up by the next beat: no manual step.
type Membership struct {
	st    MemberStore
	self  store.Instance
	ttl   time.Duration
	log   *slog.Logger
	local func(id string) bool

	mu      sync.Mutex
	known   map[string]knownRecord // sessions recorded by this run and not deleted
	pending map[string]bool        // deletes the store refused, to retry
	// moved holds the sessions whose record this run moved to another
	// holder (paused), and when: a beat's listing taken before the move
	// still names this instance, and must not delete the moved record.
	moved map[string]time.Time
	down  bool // the last beat failed (for logging transitions)

	stop chan struct{}
	done chan struct{}
}

type knownRecord struct {
	rec  store.SessionRecord
	seen time.Time // when this run recorded it
}

// createGrace bounds how long a session may take from its record to its
// kernel (the gateway gives Create 2 minutes); a record of this run that is
// still not a live session after it is dropped.
const createGrace = 10 * time.Minute

// NewMembership returns the membership of instance self (its id and the
// address other instances reach it at) in st. ttl is the registry entry's
// lifetime (DefaultTTL when 0); log defaults to slog.Default().
func NewMembership(st MemberStore, self store.Instance, ttl time.Duration, log *slog.Logger) *Membership {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if log == nil {
		log = slog.Default()
	}
	return &Membership{
		st: st, self: self, ttl: ttl, log: log,
		known: map[string]knownRecord{}, pending: map[string]bool{}, moved: map[string]time.Time{},
	}
}

// Wrap returns the store the session manager writes through, so that the
// membership sees every record this instance creates and deletes.
func (m *Membership) Wrap(st store.Store) store.Store {
	return &recordingStore{Store: st, m: m}
}

// recordingStore notes the session records this instance writes.
type recordingStore struct {
	store.Store
	m *Membership
}

// CreateSession notes the record before writing it, so that a beat that
// lists the store's records never mistakes it for a stale one.
func (r *recordingStore) CreateSession(ctx context.Context, rec store.SessionRecord, maxPerOwner, maxTotal int) error {
	r.m.mu.Lock()
	r.m.known[rec.ID] = knownRecord{rec: rec, seen: time.Now()}
	r.m.mu.Unlock()
	err := r.Store.CreateSession(ctx, rec, maxPerOwner, maxTotal)
	if err != nil {
		r.m.mu.Lock()
		delete(r.m.known, rec.ID)
		r.m.mu.Unlock()
	}
	return err
}

// ReassignSession notes a record moving to this instance (a session
// resumed here) before it moves, as CreateSession does, and forgets one
// moving away (paused).
func (r *recordingStore) ReassignSession(ctx context.Context, id, from, to string) error {
	r.m.mu.Lock()
	prev, had := r.m.known[id]
	if to == r.m.self.ID {
		r.m.known[id] = knownRecord{rec: store.SessionRecord{ID: id, Instance: to}, seen: time.Now()}
		delete(r.m.moved, id)
	} else {
		delete(r.m.known, id)
		r.m.moved[id] = time.Now()
	}
	r.m.mu.Unlock()
	err := r.Store.ReassignSession(ctx, id, from, to)
	if err != nil {
		r.m.mu.Lock()
		if had {
			r.m.known[id] = prev
		} else {
			delete(r.m.known, id)
		}
		r.m.mu.Unlock()
		return err
	}
	if to == r.m.self.ID {
		// The whole record, for a beat that must record it again.
		if rec, err := r.Store.GetSession(ctx, id); err == nil {
			r.m.mu.Lock()
			if k, ok := r.m.known[id]; ok {
				k.rec = rec
				r.m.known[id] = k
			}
			r.m.mu.Unlock()
		}
	}
	return nil
}

// DeleteSession queues a refused delete for the next beats.
func (r *recordingStore) DeleteSession(ctx context.Context, id string) error {
	r.m.mu.Lock()
	delete(r.m.known, id)
	r.m.mu.Unlock()
	err := r.Store.DeleteSession(ctx, id)
	r.m.mu.Lock()
	if err != nil {
		r.m.pending[id] = true
	} else {
		delete(r.m.pending, id)
	}
	r.m.mu.Unlock()
	return err
}

// Start registers the instance (a failure is logged and retried: the
// stateless API works without the store) and starts the beats. local
// reports whether a session lives on this instance.
func (m *Membership) Start(local func(id string) bool) {
	m.local = local
	m.stop, m.done = make(chan struct{}), make(chan struct{})
	m.beat()
	go func() {
		defer close(m.done)
		t := time.NewTicker(m.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.beat()
			}
		}
	}()
	m.log.Info("cluster: registered", "instance", m.self.ID, "addr", m.self.Addr, "ttl", m.ttl)
}

// Close stops the beats and removes the registry entry, so that other
// instances report this one's sessions lost at once rather than after the
// TTL. Call it after the manager has closed its sessions. Closing a
// membership that never started does nothing.
func (m *Membership) Close() {
	if m.stop == nil {
		return
	}
	close(m.stop)
	<-m.done
	m.stop = nil
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m.retryDeletes(ctx)
	if err := m.st.RemoveInstance(ctx, m.self.ID); err != nil {
		m.log.Warn("cluster: remove registry entry", "instance", m.self.ID, "err", err)
	}
}

// beat refreshes the registry entry and reconciles the session records.
func (m *Membership) beat() {
	ctx, cancel := context.WithTimeout(context.Background(), max(m.ttl/3, 2*time.Second))
	defer cancel()
	err := m.st.Heartbeat(ctx, m.self, m.ttl)
	m.mu.Lock()
	was := m.down
	m.down = err != nil
	m.mu.Unlock()
	if err != nil {
		if !was {
			m.log.Error("cluster: heartbeat failed; sessions held elsewhere are unreachable until the store is back", "instance", m.self.ID, "err", err)
		}
		return
	}
	if was {
		m.log.Info("cluster: store is back; instance registered again", "instance", m.self.ID)
	}
	m.retryDeletes(ctx)
	if err := m.reconcile(ctx); err != nil {
		m.log.Warn("cluster: reconcile session records", "instance", m.self.ID, "err", err)
	}
}

func (m *Membership) retryDeletes(ctx context.Context) {
	m.mu.Lock()
	ids := make([]string, 0, len(m.pending))
	for id := range m.pending {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		if err := m.st.DeleteSession(ctx, id); err != nil {
			return
		}
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
		m.log.Info("cluster: deleted the record of a session that ended during a store outage", "session", id)
	}
}

// reconcile makes the records naming this instance match the sessions it
// holds. The records are listed before `known` is read: a record being
// created is in `known` before it is in the store, so it is never taken
// for a stale one.
func (m *Membership) reconcile(ctx context.Context) error {
	recs, err := m.st.ListInstanceSessions(ctx, m.self.ID)
	if err != nil {
		return err
	}
	now := time.Now()
	m.mu.Lock()
	moved := make(map[string]bool, len(m.moved))
	for id, at := range m.moved {
		if now.Sub(at) > time.Minute {
			delete(m.moved, id)
			continue
		}
		moved[id] = true
	}
	known := make(map[string]knownRecord, len(m.known))
	for id, k := range m.known {
		if !m.local(id) && now.Sub(k.seen) > createGrace {
			delete(m.known, id) // recorded, never became a session, never deleted
			continue
		}
		known[id] = k
	}
	m.mu.Unlock()
	have := make(map[string]bool, len(recs))
	for _, r := range recs {
		have[r.ID] = true
		if _, ok := known[r.ID]; ok || m.local(r.ID) || moved[r.ID] {
			continue
		}
		// The listing may be older than a move made since: delete only a
		// record that still names this instance.
		if cur, err := m.st.GetSession(ctx, r.ID); err != nil || cur.Instance != m.self.ID {
			continue
		}
		if err := m.st.DeleteSession(ctx, r.ID); err != nil {
			return err
		}
		m.log.Info("cluster: deleted a stale record of a session this instance does not hold", "session", r.ID)
	}
	for id, k := range known {
		if have[id] || !m.local(id) {
			continue
		}
		switch err := m.st.CreateSession(ctx, k.rec, 0, 0); codegw.ErrorCode(err) {
		case "":
			m.log.Info("cluster: recorded again a session the store had lost", "session", id)
		case codegw.ECONFLICT: // recorded since the listing
		default:
			return err
		}
	}
	return nil
}
