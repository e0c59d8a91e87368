package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/store"
)

// cluster is this instance's membership of a multi-instance deployment
// (REDIS_URL set): it registers the instance with its internal address and
// refreshes the entry every INSTANCE_TTL/3, and on each beat reconciles the
// store with the sessions this instance really holds, both ways, so that
// nothing an outage interrupted is silently dropped:
//
//   - a session deleted while the store was unreachable has its record
//     deleted when the store is back (the delete is retried);
//   - records naming this instance for sessions it does not hold (left by
//     an earlier run under the same id) are deleted;
//   - records of sessions it holds that the store lost (Redis restarted
//     empty) are written again, so other instances can route to them.
//
// A Redis that comes back is picked up by the next beat: no manual step.
type cluster struct {
	st    store.Store
	self  store.Instance
	ttl   time.Duration
	log   *slog.Logger
	local func(id string) bool

	mu      sync.Mutex
	known   map[string]knownRecord // sessions recorded by this run and not deleted
	pending map[string]bool        // deletes the store refused, to retry
	down    bool                   // the last beat failed (for logging transitions)

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

// newCluster returns nil when the deployment has a single instance (no
// REDIS_URL): there is nothing to register or route.
func newCluster(cfg Config, st store.Store, log *slog.Logger) (*cluster, error) {
	if cfg.RedisURL == "" {
		return nil, nil
	}
	addr, err := internalAddr(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.ClusterSecret == "" {
		log.Warn("CLUSTER_SECRET is not set: requests forwarded between instances are not authenticated; set the same secret on every instance")
	}
	return &cluster{
		st: st, self: store.Instance{ID: cfg.InstanceID, Addr: addr}, ttl: cfg.InstanceTTL, log: log,
		known: map[string]knownRecord{}, pending: map[string]bool{},
	}, nil
}

// internalAddr is the base URL other instances reach this one at:
// INTERNAL_ADDR, where "{ip}" stands for this host's first non-loopback
// address (one setting for every replica of a compose service), or
// http://HOST:PORT.
func internalAddr(cfg Config) (string, error) {
	addr := cfg.InternalAddr
	if addr == "" {
		if unspecified(cfg.Host) {
			return "", fmt.Errorf("config: HOST=%q listens on every address: set INTERNAL_ADDR to the URL other instances reach this one at (e.g. http://{ip}:%d)", cfg.Host, cfg.Port)
		}
		return "http://" + net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)), nil
	}
	if strings.Contains(addr, "{ip}") {
		ip, err := hostIP()
		if err != nil {
			return "", fmt.Errorf("config: INTERNAL_ADDR=%s: %w", addr, err)
		}
		host := ip.String()
		if ip.To4() == nil {
			host = "[" + host + "]"
		}
		addr = strings.ReplaceAll(addr, "{ip}", host)
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return strings.TrimSuffix(addr, "/"), nil
}

func unspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

// hostIP returns the first global unicast address of an interface that is
// up, IPv4 first.
func hostIP() (net.IP, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var v6 net.IP
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || !n.IP.IsGlobalUnicast() {
				continue
			}
			if n.IP.To4() != nil {
				return n.IP, nil
			}
			if v6 == nil {
				v6 = n.IP
			}
		}
	}
	if v6 != nil {
		return v6, nil
	}
	return nil, fmt.Errorf("no non-loopback address found")
}

// wrap returns the store the session manager writes through, so that the
// cluster sees every record this instance creates and deletes.
func (c *cluster) wrap(st store.Store) store.Store {
	if c == nil {
		return st
	}
	return &recordingStore{Store: st, c: c}
}

// recordingStore notes the session records this instance writes.
type recordingStore struct {
	store.Store
	c *cluster
}

// CreateSession notes the record before writing it, so that a beat that
// lists the store's records never mistakes it for a stale one.
func (r *recordingStore) CreateSession(ctx context.Context, rec store.SessionRecord, maxPerOwner, maxTotal int) error {
	r.c.mu.Lock()
	r.c.known[rec.ID] = knownRecord{rec: rec, seen: time.Now()}
	r.c.mu.Unlock()
	err := r.Store.CreateSession(ctx, rec, maxPerOwner, maxTotal)
	if err != nil {
		r.c.mu.Lock()
		delete(r.c.known, rec.ID)
		r.c.mu.Unlock()
	}
	return err
}

// DeleteSession queues a refused delete for the next beats.
func (r *recordingStore) DeleteSession(ctx context.Context, id string) error {
	r.c.mu.Lock()
	delete(r.c.known, id)
	r.c.mu.Unlock()
	err := r.Store.DeleteSession(ctx, id)
	r.c.mu.Lock()
	if err != nil {
		r.c.pending[id] = true
	} else {
		delete(r.c.pending, id)
	}
	r.c.mu.Unlock()
	return err
}

// start registers the instance (a failure is logged and retried, the
// stateless API works without the store) and starts the beats. local
// reports whether a session lives on this instance.
func (c *cluster) start(local func(id string) bool) {
	if c == nil {
		return
	}
	c.local = local
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	c.beat()
	go func() {
		defer close(c.done)
		t := time.NewTicker(c.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-t.C:
				c.beat()
			}
		}
	}()
	c.log.Info("cluster: registered", "instance", c.self.ID, "addr", c.self.Addr, "ttl", c.ttl)
}

// close stops the beats and removes the registry entry, so that other
// instances report this one's sessions lost at once rather than after the
// TTL. Call it after the manager has closed its sessions.
func (c *cluster) close() {
	if c == nil || c.stop == nil {
		return
	}
	close(c.stop)
	<-c.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.retryDeletes(ctx)
	if err := c.st.RemoveInstance(ctx, c.self.ID); err != nil {
		c.log.Warn("cluster: remove registry entry", "instance", c.self.ID, "err", err)
	}
}

// beat refreshes the registry entry and reconciles the session records.
func (c *cluster) beat() {
	ctx, cancel := context.WithTimeout(context.Background(), max(c.ttl/3, 2*time.Second))
	defer cancel()
	err := c.st.Heartbeat(ctx, c.self, c.ttl)
	c.mu.Lock()
	was := c.down
	c.down = err != nil
	c.mu.Unlock()
	if err != nil {
		if !was {
			c.log.Error("cluster: heartbeat failed; sessions held elsewhere are unreachable until the store is back", "instance", c.self.ID, "err", err)
		}
		return
	}
	if was {
		c.log.Info("cluster: store is back; instance registered again", "instance", c.self.ID)
	}
	c.retryDeletes(ctx)
	if err := c.reconcile(ctx); err != nil {
		c.log.Warn("cluster: reconcile session records", "instance", c.self.ID, "err", err)
	}
}

func (c *cluster) retryDeletes(ctx context.Context) {
	c.mu.Lock()
	ids := make([]string, 0, len(c.pending))
	for id := range c.pending {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		if err := c.st.DeleteSession(ctx, id); err != nil {
			return
		}
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		c.log.Info("cluster: deleted the record of a session that ended during a store outage", "session", id)
	}
}

// reconcile makes the records naming this instance match the sessions it
// holds. The records are listed before `known` is read: a record being
// created is in `known` before it is in the store, so it is never taken
// for a stale one.
func (c *cluster) reconcile(ctx context.Context) error {
	recs, err := c.st.ListInstanceSessions(ctx, c.self.ID)
	if err != nil {
		return err
	}
	now := time.Now()
	c.mu.Lock()
	known := make(map[string]knownRecord, len(c.known))
	for id, k := range c.known {
		if !c.local(id) && now.Sub(k.seen) > createGrace {
			delete(c.known, id) // recorded, never became a session, never deleted
			continue
		}
		known[id] = k
	}
	c.mu.Unlock()
	have := make(map[string]bool, len(recs))
	for _, r := range recs {
		have[r.ID] = true
		if _, ok := known[r.ID]; ok || c.local(r.ID) {
			continue
		}
		if err := c.st.DeleteSession(ctx, r.ID); err != nil {
			return err
		}
		c.log.Info("cluster: deleted a stale record of a session this instance does not hold", "session", r.ID)
	}
	for id, k := range known {
		if have[id] || !c.local(id) {
			continue
		}
		switch err := c.st.CreateSession(ctx, k.rec, 0, 0); codegw.ErrorCode(err) {
		case "":
			c.log.Info("cluster: recorded again a session the store had lost", "session", id)
		case codegw.ECONFLICT: // recorded since the listing
		default:
			return err
		}
	}
	return nil
}

// shared returns the store the gateway routes with: nil with a single
// instance.
func (c *cluster) shared() store.Store {
	if c == nil {
		return nil
	}
	return c.st
}
