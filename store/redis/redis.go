// Package redis implements store.Store on Redis (github.com/redis/go-redis/v9),
// so that every gateway instance of a deployment shares one view of session
// ownership, the instance registry and which instance holds each session.
//
// Keys, under a configurable prefix (default "codegw:"):
//
//	<p>session:<id>             hash: id, owner, instance, created_at (unix ns)
//	<p>sessions                 set of all session ids (the global limit)
//	<p>owner:<owner>            set of the owner's session ids
//	<p>instance-sessions:<inst> set of the session ids an instance holds
//	<p>instance:<inst>          string: the instance's address, with a TTL (SET PX)
//	<p>instances                set of registered instance ids (pruned lazily)
//
// Creating (with limits), deleting and reassigning a session are each one
// Lua script, so they are atomic with respect to every instance. Scripts
// touch keys derived from the prefix that they are not passed, which a
// single Redis server (or a replicated one) allows; on Redis Cluster use a
// prefix with a hash tag, such as "{codegw}:", to keep every key in one slot.
//
// Owners are stored as given: the gateway should pass a stable identifier
// of an API key (a hash), not the key itself.
//
// When Redis cannot be reached, calls fail fast with a codegw.EUNAVAILABLE
// error ("session store unavailable") and work again once Redis is back:
// go-redis redials on demand, and no state in the Store needs repair.
package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/store"
)

var _ store.Store = (*Store)(nil)

// DefaultPrefix is the key prefix used unless WithPrefix says otherwise.
const DefaultPrefix = "codegw:"

// Defaults for the connection, chosen so that an outage turns into an error
// within about two seconds instead of stalling requests. A setting given in
// the URL's query (dial_timeout, read_timeout, write_timeout, max_retries)
// or by an Option wins over these.
const (
	DefaultDialTimeout = time.Second
	DefaultTimeout     = time.Second
	DefaultMaxRetries  = 1
)

// Store is a store.Store on Redis. It is safe for concurrent use.
type Store struct {
	client *goredis.Client
	prefix string
	addr   string
	// onError is WithErrorHook's function; nil: none.
	onError func(op string)

	closeOnce sync.Once
	closeErr  error
}

// Option configures New.
type Option func(*config)

type config struct {
	prefix      string
	dialTimeout time.Duration
	timeout     time.Duration
	maxRetries  *int
	onError     func(op string)
}

// WithPrefix sets the prefix of every key, so several deployments (or
// tests) can share one Redis database.
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithDialTimeout sets how long connecting to Redis may take.
func WithDialTimeout(d time.Duration) Option {
	return func(c *config) { c.dialTimeout = d }
}

// WithTimeout sets the socket read and write timeouts of each command.
func WithTimeout(d time.Duration) Option {
	return func(c *config) { c.timeout = d }
}

// WithMaxRetries sets how many times a failed command is retried; 0 means
// never.
func WithMaxRetries(n int) Option {
	return func(c *config) { c.maxRetries = &n }
}

// WithErrorHook calls f with the operation's name each time a command
// fails (not when its context was canceled): the metrics count them.
func WithErrorHook(f func(op string)) Option {
	return func(c *config) { c.onError = f }
}

// New connects to the Redis server at rawURL ("redis://[:password@]host:port/db",
// "rediss://..." for TLS, or "unix:///path.sock"), checks that it answers,
// and returns a Store. It returns a codegw.EINVALID error for a malformed
// URL (without echoing it, as it may hold a password) and a codegw.EUNAVAILABLE error naming the address when Redis does not
// answer.
func New(ctx context.Context, rawURL string, opts ...Option) (*Store, error) {
	cfg := config{prefix: DefaultPrefix}
	for _, o := range opts {
		o(&cfg)
	}
	o, err := goredis.ParseURL(rawURL)
	if err != nil {
		// A *url.Error quotes the whole url, password included: keep only
		// what it says is wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, codegw.WrapError(codegw.EINVALID, err, "invalid redis url")
	}
	if cfg.dialTimeout > 0 {
		o.DialTimeout = cfg.dialTimeout
	} else if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if cfg.timeout > 0 {
		o.ReadTimeout, o.WriteTimeout = cfg.timeout, cfg.timeout
	} else if o.ReadTimeout == 0 {
		o.ReadTimeout, o.WriteTimeout = DefaultTimeout, DefaultTimeout
	}
	if cfg.maxRetries != nil {
		o.MaxRetries = *cfg.maxRetries
	} else if o.MaxRetries == 0 {
		o.MaxRetries = DefaultMaxRetries
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1 // go-redis reads 0 as "the default of 3"
	}
	// One dial attempt per command attempt: retries are MaxRetries' job,
	// and go-redis' default of 5 dial attempts would slow every failure.
	o.DialerRetries = 1
	o.ContextTimeoutEnabled = true
	// Maintenance notifications are a Redis Enterprise/Cloud feature; the
	// probe only adds a round trip and log noise on plain Redis.
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}

	s := &Store{client: goredis.NewClient(o), prefix: cfg.prefix, addr: o.Addr, onError: cfg.onError}
	if err := s.client.Ping(ctx).Err(); err != nil {
		s.client.Close()
		return nil, codegw.WrapError(codegw.EUNAVAILABLE, err,
			"session store unavailable: cannot reach redis at %s", o.Addr)
	}
	return s, nil
}

// Close closes the connections to Redis. Later calls fail with
// codegw.EUNAVAILABLE; closing twice is not an error.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.client.Close() })
	return s.closeErr
}

// Ping checks that Redis answers, for readiness checks. It fails like the
// other calls, with codegw.EUNAVAILABLE when Redis cannot be reached.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx).Err(); err != nil {
		return s.fail("ping", err)
	}
	return nil
}

func (s *Store) sessionKey(id string) string          { return s.prefix + "session:" + id }
func (s *Store) sessionsKey() string                  { return s.prefix + "sessions" }
func (s *Store) ownerKey(owner string) string         { return s.prefix + "owner:" + owner }
func (s *Store) instanceSessionsKey(id string) string { return s.prefix + "instance-sessions:" + id }
func (s *Store) instanceKey(id string) string         { return s.prefix + "instance:" + id }
func (s *Store) instancesKey() string                 { return s.prefix + "instances" }

// fail turns a go-redis error into the store's error for op. Failures to
// reach Redis, and replies that say Redis cannot serve now, become
// codegw.EUNAVAILABLE; a canceled context stays itself; any other reply
// error is a bug and stays uncoded (internal).
func (s *Store) fail(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("redis store: %s: %w", op, err)
	}
	if s.onError != nil {
		s.onError(op)
	}
	var reply goredis.Error
	if errors.As(err, &reply) && !transient(err) {
		return fmt.Errorf("redis store: %s: %w", op, err)
	}
	return store.Unavailable(fmt.Errorf("redis at %s: %s: %w", s.addr, op, err))
}

// transient reports whether a Redis reply error means the server cannot
// serve for now (loading, failing over, out of memory, busy script) rather
// than that the request was wrong.
func transient(err error) bool {
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "NOREPLICAS", "OOM"} {
		if goredis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// Replies of createScript.
const (
	createOK = iota
	createExists
	createOwnerLimit
	createTotalLimit
)

// createScript records a session unless its id is taken or a limit is
// reached. KEYS: session hash, all-sessions set, owner set,
// instance-sessions set. ARGV: id, owner, instance, created_at,
// maxPerOwner, maxTotal.
var createScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local maxOwner, maxTotal = tonumber(ARGV[5]), tonumber(ARGV[6])
if maxOwner > 0 and redis.call('SCARD', KEYS[3]) >= maxOwner then return 2 end
if maxTotal > 0 and redis.call('SCARD', KEYS[2]) >= maxTotal then return 3 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'owner', ARGV[2], 'instance', ARGV[3], 'created_at', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 0
`)

// deleteScript removes a session and its index entries. KEYS: session
// hash, all-sessions set. ARGV: prefix, id.
var deleteScript = goredis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'owner', 'instance')
redis.call('SREM', KEYS[2], ARGV[2])
if not v[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. 'owner:' .. v[1], ARGV[2])
redis.call('SREM', ARGV[1] .. 'instance-sessions:' .. v[2], ARGV[2])
return 1
`)

// reassignScript moves a session from one instance to another if it is
// still on the first. KEYS: session hash. ARGV: prefix, id, from, to.
// It returns {0} on success, {1} when the session is missing and
// {2, current} when another instance holds it.
var reassignScript = goredis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'instance')
if not cur then return {1} end
if cur ~= ARGV[3] then return {2, cur} end
redis.call('HSET', KEYS[1], 'instance', ARGV[4])
redis.call('SREM', ARGV[1] .. 'instance-sessions:' .. ARGV[3], ARGV[2])
redis.call('SADD', ARGV[1] .. 'instance-sessions:' .. ARGV[4], ARGV[2])
return {0}
`)

// pruneScript drops an instance id from the registry set if its entry has
// expired, without racing a heartbeat that re-registers it. KEYS: instance
// entry, instances set. ARGV: id.
var pruneScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
`)

// CreateSession implements store.Store.
func (s *Store) CreateSession(ctx context.Context, rec store.SessionRecord, maxPerOwner, maxTotal int) error {
	if err := rec.Validate(); err != nil {
		return err
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = time.Now()
	}
	keys := []string{s.sessionKey(rec.ID), s.sessionsKey(), s.ownerKey(rec.Owner), s.instanceSessionsKey(rec.Instance)}
	res, err := createScript.Run(ctx, s.client, keys,
		rec.ID, rec.Owner, rec.Instance, rec.CreatedAt.UnixNano(), max(maxPerOwner, 0), max(maxTotal, 0)).Int()
	if err != nil {
		return s.fail("create session", err)
	}
	switch res {
	case createOK:
		return nil
	case createExists:
		return codegw.Errorf(codegw.ECONFLICT, "session %s already exists", rec.ID)
	case createOwnerLimit:
		return codegw.Errorf(codegw.ELIMIT, "session limit reached: at most %d sessions per API key", maxPerOwner)
	case createTotalLimit:
		return codegw.Errorf(codegw.ELIMIT, "session limit reached: at most %d sessions in total", maxTotal)
	}
	return fmt.Errorf("redis store: create session: unexpected script reply %d", res)
}

// GetSession implements store.Store.
func (s *Store) GetSession(ctx context.Context, id string) (store.SessionRecord, error) {
	h, err := s.client.HGetAll(ctx, s.sessionKey(id)).Result()
	if err != nil {
		return store.SessionRecord{}, s.fail("get session", err)
	}
	rec, ok := parseSession(h)
	if !ok {
		return store.SessionRecord{}, codegw.Errorf(codegw.ENOTFOUND, "session %s not found", id)
	}
	return rec, nil
}

// parseSession reads a session hash; ok is false for a missing (empty) one.
func parseSession(h map[string]string) (rec store.SessionRecord, ok bool) {
	if h["id"] == "" {
		return rec, false
	}
	ns, _ := strconv.ParseInt(h["created_at"], 10, 64)
	return store.SessionRecord{
		ID:        h["id"],
		Owner:     h["owner"],
		Instance:  h["instance"],
		CreatedAt: time.Unix(0, ns).UTC(),
	}, true
}

// ListSessions implements store.Store.
func (s *Store) ListSessions(ctx context.Context, owner string) ([]store.SessionRecord, error) {
	recs, err := s.listSet(ctx, s.ownerKey(owner))
	if err != nil {
		return nil, s.fail("list sessions", err)
	}
	return recs, nil
}

// ListInstanceSessions implements store.Store.
func (s *Store) ListInstanceSessions(ctx context.Context, instance string) ([]store.SessionRecord, error) {
	recs, err := s.listSet(ctx, s.instanceSessionsKey(instance))
	if err != nil {
		return nil, s.fail("list instance sessions", err)
	}
	return recs, nil
}

// listSet reads the sessions whose ids are in the set at key, oldest first.
// A session deleted between the two round trips is left out.
func (s *Store) listSet(ctx context.Context, key string) ([]store.SessionRecord, error) {
	ids, err := s.client.SMembers(ctx, key).Result()
	if err != nil || len(ids) == 0 {
		return []store.SessionRecord{}, err
	}
	cmds := make([]*goredis.MapStringStringCmd, len(ids))
	_, err = s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, s.sessionKey(id))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	recs := make([]store.SessionRecord, 0, len(ids))
	for _, c := range cmds {
		if rec, ok := parseSession(c.Val()); ok {
			recs = append(recs, rec)
		}
	}
	slices.SortFunc(recs, func(a, b store.SessionRecord) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return recs, nil
}

// DeleteSession implements store.Store.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	err := deleteScript.Run(ctx, s.client, []string{s.sessionKey(id), s.sessionsKey()}, s.prefix, id).Err()
	if err != nil {
		return s.fail("delete session", err)
	}
	return nil
}

// ReassignSession implements store.Store.
func (s *Store) ReassignSession(ctx context.Context, id, from, to string) error {
	if to == "" {
		return codegw.Errorf(codegw.EINVALID, "target instance is required")
	}
	res, err := reassignScript.Run(ctx, s.client, []string{s.sessionKey(id)}, s.prefix, id, from, to).Slice()
	if err != nil {
		return s.fail("reassign session", err)
	}
	code, _ := res[0].(int64)
	switch code {
	case 0:
		return nil
	case 1:
		return codegw.Errorf(codegw.ENOTFOUND, "session %s not found", id)
	}
	cur := ""
	if len(res) > 1 {
		cur, _ = res[1].(string)
	}
	return codegw.Errorf(codegw.ECONFLICT, "session %s is held by instance %s, not %s", id, cur, from)
}

// Heartbeat implements store.Store.
func (s *Store) Heartbeat(ctx context.Context, inst store.Instance, ttl time.Duration) error {
	if err := inst.Validate(ttl); err != nil {
		return err
	}
	// Below a millisecond SET PX would round to 0, which Redis refuses.
	ttl = max(ttl, time.Millisecond)
	_, err := s.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, s.instanceKey(inst.ID), inst.Addr, ttl)
		p.SAdd(ctx, s.instancesKey(), inst.ID)
		return nil
	})
	if err != nil {
		return s.fail("heartbeat", err)
	}
	return nil
}

// GetInstance implements store.Store.
func (s *Store) GetInstance(ctx context.Context, id string) (store.Instance, error) {
	insts, err := s.instances(ctx, []string{id})
	if err != nil {
		return store.Instance{}, s.fail("get instance", err)
	}
	if len(insts) == 0 {
		return store.Instance{}, codegw.Errorf(codegw.ENOTFOUND, "instance %s not found", id)
	}
	return insts[0], nil
}

// ListInstances implements store.Store. It also drops expired ids from the
// registry set.
func (s *Store) ListInstances(ctx context.Context) ([]store.Instance, error) {
	ids, err := s.client.SMembers(ctx, s.instancesKey()).Result()
	if err != nil {
		return nil, s.fail("list instances", err)
	}
	insts, err := s.instances(ctx, ids)
	if err != nil {
		return nil, s.fail("list instances", err)
	}
	if len(insts) < len(ids) {
		live := make(map[string]bool, len(insts))
		for _, inst := range insts {
			live[inst.ID] = true
		}
		for _, id := range ids {
			if !live[id] {
				err := pruneScript.Run(ctx, s.client, []string{s.instanceKey(id), s.instancesKey()}, id).Err()
				if err != nil {
					return nil, s.fail("list instances", err)
				}
			}
		}
	}
	slices.SortFunc(insts, func(a, b store.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return insts, nil
}

// instances reads the live registry entries among ids, in the same order.
func (s *Store) instances(ctx context.Context, ids []string) ([]store.Instance, error) {
	insts := make([]store.Instance, 0, len(ids))
	if len(ids) == 0 {
		return insts, nil
	}
	type pair struct {
		addr *goredis.StringCmd
		ttl  *goredis.DurationCmd
	}
	cmds := make([]pair, len(ids))
	// MULTI so the address and its TTL belong to the same heartbeat.
	_, err := s.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = pair{p.Get(ctx, s.instanceKey(id)), p.PTTL(ctx, s.instanceKey(id))}
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, err
	}
	now := time.Now()
	for i, id := range ids {
		addr, err := cmds[i].addr.Result()
		if errors.Is(err, goredis.Nil) {
			continue
		} else if err != nil {
			return nil, err
		}
		inst := store.Instance{ID: id, Addr: addr}
		if ttl := cmds[i].ttl.Val(); ttl > 0 {
			inst.ExpiresAt = now.Add(ttl)
		}
		insts = append(insts, inst)
	}
	return insts, nil
}

// RemoveInstance implements store.Store.
func (s *Store) RemoveInstance(ctx context.Context, id string) error {
	_, err := s.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Del(ctx, s.instanceKey(id))
		p.SRem(ctx, s.instancesKey(), id)
		return nil
	})
	if err != nil {
		return s.fail("remove instance", err)
	}
	return nil
}

// SetLogger sends go-redis' own log lines (such as a failed dial, one per
// command while Redis is down) to l at level Warn, or discards them when l
// is nil. go-redis has a single logger per process, so cmd/ calls this once
// at startup; by default go-redis writes to stderr with the log package.
func SetLogger(l *slog.Logger) {
	goredis.SetLogger(slogAdapter{l})
}

// slogAdapter is the logger interface go-redis expects, over slog.
type slogAdapter struct{ l *slog.Logger }

// Printf logs one go-redis line.
func (a slogAdapter) Printf(ctx context.Context, format string, v ...any) {
	if a.l != nil {
		a.l.WarnContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
	}
}
