package cluster

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/redis"
	"github.com/codegw/codegw/store/redis/redistest"
)

// openRedis starts a private redis-server for t and connects a store with
// short timeouts, so that a paused server fails calls quickly.
func openRedis(t *testing.T) (*redistest.Server, *redis.Store) {
	t.Helper()
	srv := redistest.Start(t)
	st, err := redis.New(context.Background(), srv.URL(), redis.WithTimeout(300*time.Millisecond), redis.WithMaxRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return srv, st
}

// localSet is the set of sessions an instance holds, as Manager.Local
// reports it.
type localSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (l *localSet) has(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids[id]
}

func (l *localSet) set(id string, held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids[id] = held
}

func record(id, inst string) store.SessionRecord {
	return store.SessionRecord{ID: id, Owner: "key", Instance: inst}
}

func recordIDs(t *testing.T, st store.Store, inst string) map[string]bool {
	t.Helper()
	recs, err := st.ListInstanceSessions(context.Background(), inst)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.ID] = true
	}
	return ids
}

func TestMembershipRegistersAndLeaves(t *testing.T) {
	_, st := openRedis(t)
	ctx := context.Background()
	self := store.Instance{ID: "a", Addr: "http://127.0.0.1:1"}
	m := NewMembership(st, self, time.Second, slog.Default())
	m.Start(func(string) bool { return false })
	got, err := st.GetInstance(ctx, "a")
	if err != nil || got.Addr != self.Addr {
		t.Fatalf("after Start: GetInstance = %+v, %v; want the entry with %s", got, err, self.Addr)
	}
	// Beats keep the entry alive past its TTL.
	time.Sleep(1500 * time.Millisecond)
	if _, err := st.GetInstance(ctx, "a"); err != nil {
		t.Fatalf("1.5 TTLs after Start: %v", err)
	}
	m.Close()
	if _, err := st.GetInstance(ctx, "a"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Fatalf("after Close: GetInstance error %v, want not found", err)
	}
	m.Close() // twice is harmless
}

func TestMembershipReconciles(t *testing.T) {
	srv, st := openRedis(t)
	ctx := context.Background()
	local := &localSet{ids: map[string]bool{}}
	m := NewMembership(st, store.Instance{ID: "a", Addr: "http://127.0.0.1:1"}, time.Hour, slog.Default())
	recs := m.Wrap(st)

	// A record an earlier run left, for a session this run does not hold,
	// and another instance's record.
	for _, r := range []store.SessionRecord{record("stale", "a"), record("theirs", "b")} {
		if err := st.CreateSession(ctx, r, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	m.Start(local.has) // the first beat runs before Start returns
	defer m.Close()
	if ids := recordIDs(t, st, "a"); ids["stale"] {
		t.Errorf("stale record kept: %v", ids)
	}
	if ids := recordIDs(t, st, "b"); !ids["theirs"] {
		t.Errorf("another instance's record deleted: %v", ids)
	}

	// A session being created (recorded, not yet live) is never taken for
	// a stale record.
	if err := recs.CreateSession(ctx, record("new", "a"), 0, 0); err != nil {
		t.Fatal(err)
	}
	m.beat()
	if ids := recordIDs(t, st, "a"); !ids["new"] {
		t.Fatalf("a record being created was deleted: %v", ids)
	}
	local.set("new", true)

	// Redis restarts empty: the next beat writes the live session's record
	// again.
	srv.Restart()
	m.beat()
	if got, err := st.GetSession(ctx, "new"); err != nil || got.Instance != "a" || got.Owner != "key" {
		t.Fatalf("after the store lost it: GetSession = %+v, %v; want it recorded again", got, err)
	}

	// A session ends while the store is unreachable: its record is deleted
	// once the store is back.
	local.set("new", false)
	srv.Pause()
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	err := recs.DeleteSession(dctx, "new")
	cancel()
	srv.Resume()
	if err == nil {
		t.Fatal("DeleteSession on a paused store succeeded")
	}
	if _, err := st.GetSession(ctx, "new"); err != nil {
		t.Fatalf("record gone before the retry: %v", err)
	}
	m.beat()
	if _, err := st.GetSession(ctx, "new"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Fatalf("after the store came back: GetSession error %v, want not found", err)
	}
}

func TestMembershipKeepsBeatingThroughAnOutage(t *testing.T) {
	srv, st := openRedis(t)
	ctx := context.Background()
	m := NewMembership(st, store.Instance{ID: "a", Addr: "http://127.0.0.1:1"}, 900*time.Millisecond, slog.Default())
	m.Start(func(string) bool { return false })
	defer m.Close()
	srv.Restart() // the registry is gone with the data
	testwait.Until(t, 5*time.Second, "the instance registered again after the store restarted empty", func() bool {
		_, err := st.GetInstance(ctx, "a")
		return err == nil
	})
}

func TestInternalAddr(t *testing.T) {
	cases := []struct {
		addr, host string
		want       string
		err        bool
	}{
		{"", "127.0.0.1", "http://127.0.0.1:8080", false},
		{"", "::1", "http://[::1]:8080", false},
		{"", "0.0.0.0", "", true},
		{"", "", "", true},
		{"10.0.0.5:9000", "0.0.0.0", "http://10.0.0.5:9000", false},
		{"https://gw.internal/", "0.0.0.0", "https://gw.internal", false},
	}
	for _, tc := range cases {
		got, err := InternalAddr(tc.addr, tc.host, 8080)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("InternalAddr(%q, %q) = %q, %v; want %q (error %v)", tc.addr, tc.host, got, err, tc.want, tc.err)
		}
	}
}
