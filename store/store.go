// Package store defines the Store contract that records who owns each
// session and which gateway instance holds it, so that several gateway
// instances behind one load balancer can route any request to the instance
// that holds the session's kernel.
//
// Two implementations exist: store/memory, the in-process default for a
// single instance, and store/redis, shared by every instance of a
// deployment. Both pass the conformance suite in store/storetest.
//
// The store keeps three kinds of record:
//
//   - sessions: id, owner (API key), holding instance and creation time;
//   - the instance registry: id and internal address of every live
//     instance, each entry kept alive by heartbeats and expiring after a TTL;
//   - the index from each instance to the sessions it holds.
//
// A session whose instance's registry entry has expired is lost: its kernel
// died with the instance. Locate reports that as a codegw.ELOST error, and
// ReassignSession lets a surviving instance adopt or clean up such sessions
// without racing other instances.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/codegw/codegw"
)

// Paused is the instance a paused session's record names: no instance
// holds its kernel, and its state waits in a snapshot for the instance that
// resumes it (ReassignSession from Paused, so exactly one does). No real
// instance may take this id.
const Paused = "(paused)"

// ErrPaused is matched by Locate's error for a paused session: no instance
// holds it, and the caller resumes it instead of forwarding.
var ErrPaused = errors.New("session paused")

// SessionRecord is what the store keeps about one session.
type SessionRecord struct {
	// ID is the session id, unique across all instances.
	ID string
	// Owner is the API key (or its stable identifier) that created the
	// session. Only the owner may use it.
	Owner string
	// Instance is the id of the gateway instance that holds the kernel.
	Instance string
	// CreatedAt is when the session was created. CreateSession fills in the
	// current time when it is zero; stores return it in UTC.
	CreatedAt time.Time
}

// Instance is one entry of the instance registry.
type Instance struct {
	// ID identifies the gateway instance (EXECUTOR_INSTANCE_ID).
	ID string
	// Addr is the instance's internal address (host:port or a base URL)
	// that other instances proxy requests to.
	Addr string
	// ExpiresAt is when the entry expires unless another heartbeat arrives.
	// Heartbeat ignores it; the store computes it from the TTL.
	ExpiresAt time.Time
}

// Store records session ownership, the instance registry and which instance
// holds each session. Implementations are safe for concurrent use.
//
// Errors carry codegw codes: codegw.ENOTFOUND for a missing session or
// instance, codegw.ELIMIT when a session limit is reached, codegw.ECONFLICT
// for a duplicate id or a lost compare-and-set, codegw.EINVALID for bad
// arguments, and codegw.EUNAVAILABLE when the backing service cannot be
// reached. After an outage, calls work again as soon as the backing service
// is back; no call needs to be repeated to repair the store.
type Store interface {
	// CreateSession records a new session atomically. It refuses with a
	// codegw.ELIMIT error when the owner already has maxPerOwner sessions or
	// the store already holds maxTotal sessions (0 means unlimited), and
	// with codegw.ECONFLICT when the id is taken. rec.ID, rec.Owner and
	// rec.Instance are required. Sessions of a dead instance count against
	// the limits until they are deleted or reassigned.
	CreateSession(ctx context.Context, rec SessionRecord, maxPerOwner, maxTotal int) error

	// GetSession returns the session with the given id, or a
	// codegw.ENOTFOUND error. It does not check the owner or whether the
	// holding instance is alive: see Locate.
	GetSession(ctx context.Context, id string) (SessionRecord, error)

	// ListSessions returns the sessions of one owner, oldest first (ties
	// broken by id). An owner with no sessions gets an empty list.
	ListSessions(ctx context.Context, owner string) ([]SessionRecord, error)

	// DeleteSession removes a session. Deleting a missing session is not an
	// error.
	DeleteSession(ctx context.Context, id string) error

	// ListInstanceSessions returns the sessions held by one instance, oldest
	// first (ties broken by id), whether or not the instance is alive.
	ListInstanceSessions(ctx context.Context, instance string) ([]SessionRecord, error)

	// Heartbeat registers inst, or refreshes its entry and address, so that
	// it expires ttl from now unless refreshed again. ttl must be positive.
	Heartbeat(ctx context.Context, inst Instance, ttl time.Duration) error

	// GetInstance returns a live registry entry, or a codegw.ENOTFOUND
	// error when the instance never registered, expired or was removed.
	GetInstance(ctx context.Context, id string) (Instance, error)

	// ListInstances returns the live registry entries, sorted by id.
	ListInstances(ctx context.Context) ([]Instance, error)

	// RemoveInstance deletes a registry entry at once, e.g. on graceful
	// shutdown. Its sessions stay recorded (and are now lost) until they
	// are deleted or reassigned. Removing a missing instance is not an error.
	RemoveInstance(ctx context.Context, id string) error

	// ReassignSession moves a session to instance `to` only if it is still
	// held by instance `from` (compare-and-set), so that of several
	// instances adopting a dead instance's sessions exactly one wins. It
	// returns codegw.ENOTFOUND when the session is gone and codegw.ECONFLICT
	// when it is held by another instance than `from`.
	ReassignSession(ctx context.Context, id, from, to string) error

	// Close releases the store's resources. The store is unusable after.
	Close() error
}

// Locator is the part of the store Locate reads.
type Locator interface {
	GetSession(ctx context.Context, id string) (SessionRecord, error)
	GetInstance(ctx context.Context, id string) (Instance, error)
}

// Locate returns a session and the live instance that holds it. It returns
// a codegw.ENOTFOUND error when the session does not exist and a
// codegw.ELOST error when the instance holding it is no longer registered
// (it died or shut down), so callers can tell the client the session is
// lost rather than missing. Other errors are returned as they are.
func Locate(ctx context.Context, s Locator, id string) (SessionRecord, Instance, error) {
	rec, err := s.GetSession(ctx, id)
	if err != nil {
		return SessionRecord{}, Instance{}, err
	}
	if rec.Instance == Paused {
		return rec, Instance{}, codegw.WrapError(codegw.EUNAVAILABLE, ErrPaused, "session %s is paused; its next use resumes it", rec.ID)
	}
	inst, err := s.GetInstance(ctx, rec.Instance)
	if codegw.ErrorCode(err) == codegw.ENOTFOUND {
		return rec, Instance{}, codegw.WrapError(codegw.ELOST, err,
			"session %s lost: instance %s holding it is gone", rec.ID, rec.Instance)
	} else if err != nil {
		return rec, Instance{}, err
	}
	return rec, inst, nil
}

// Unavailable returns the codegw.EUNAVAILABLE error for a failure to reach
// the backing service, with err as its cause. Its message, the part shown to
// clients, is always "session store unavailable"; the cause (which may name
// internal addresses) is for logs.
func Unavailable(err error) error {
	return codegw.WrapError(codegw.EUNAVAILABLE, err, "session store unavailable")
}

// Validate checks the fields CreateSession requires. Implementations call it
// so that every store refuses the same records.
func (r SessionRecord) Validate() error {
	switch {
	case r.ID == "":
		return codegw.Errorf(codegw.EINVALID, "session id is required")
	case r.Owner == "":
		return codegw.Errorf(codegw.EINVALID, "session owner is required")
	case r.Instance == "":
		return codegw.Errorf(codegw.EINVALID, "session instance is required")
	}
	return nil
}

// Validate checks the fields Heartbeat requires. Implementations call it so
// that every store refuses the same entries.
func (i Instance) Validate(ttl time.Duration) error {
	switch {
	case i.ID == "":
		return codegw.Errorf(codegw.EINVALID, "instance id is required")
	case i.Addr == "":
		return codegw.Errorf(codegw.EINVALID, "instance address is required")
	case ttl <= 0:
		return codegw.Errorf(codegw.EINVALID, "instance ttl must be positive")
	}
	return nil
}
