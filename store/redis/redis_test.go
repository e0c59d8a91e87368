package redis_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/redis"
	"github.com/codegw/codegw/store/redis/redistest"
	"github.com/codegw/codegw/store/storetest"
)

// newStore opens a Store on url under a fresh prefix, so tests can share a
// server, and deletes the prefix's keys when t ends.
func newStore(t *testing.T, url string, opts ...redis.Option) *redis.Store {
	t.Helper()
	prefix := "codegw-test:" + rand.Text()[:12] + ":"
	ctx := context.Background()
	s, err := redis.New(ctx, url, append([]redis.Option{redis.WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatalf("redis.New(%s): %v", url, err)
	}
	t.Cleanup(func() {
		s.Close()
		opt, err := goredis.ParseURL(url)
		if err != nil {
			return
		}
		c := goredis.NewClient(opt)
		defer c.Close()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	url := redistest.URL(t)
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t, url) })
}

// TestPrefix checks that two stores with different prefixes on one database
// do not see each other.
func TestPrefix(t *testing.T) {
	ctx := context.Background()
	url := redistest.URL(t)
	a, b := newStore(t, url), newStore(t, url)
	if err := a.CreateSession(ctx, store.SessionRecord{ID: "s1", Owner: "o", Instance: "i"}, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Heartbeat(ctx, store.Instance{ID: "i", Addr: "a:1"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetSession(ctx, "s1"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Fatalf("other prefix sees the session: %v", err)
	}
	if list, err := b.ListInstances(ctx); err != nil || len(list) != 0 {
		t.Fatalf("other prefix sees instances: %+v, %v", list, err)
	}
	// a's session does not count against b's global limit.
	if err := b.CreateSession(ctx, store.SessionRecord{ID: "s2", Owner: "o", Instance: "i"}, 0, 1); err != nil {
		t.Fatalf("other prefix shares the limit: %v", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	start := time.Now()
	_, err = redis.New(context.Background(), "redis://"+addr+"/0")
	if codegw.ErrorCode(err) != codegw.EUNAVAILABLE {
		t.Fatalf("New on a closed port: %v, want code %s", err, codegw.EUNAVAILABLE)
	}
	if msg := codegw.ErrorMessage(err); !strings.Contains(msg, addr) || !strings.Contains(msg, "session store unavailable") {
		t.Fatalf("New error message %q should name the store and %s", msg, addr)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("New took %v to give up", d)
	}
}

func TestNewInvalidURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:6379", "redis://:hunter2@host:bad/0", "redis://127.0.0.1:6379/notadb"} {
		_, err := redis.New(context.Background(), u)
		if codegw.ErrorCode(err) != codegw.EINVALID {
			t.Errorf("New(%q): %v, want code %s", u, err, codegw.EINVALID)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("New(%q) error leaks the password: %v", u, err)
		}
	}
}

// TestOutage stops and restarts a private redis-server under a Store with
// the default options: calls fail fast with EUNAVAILABLE while it is down
// and work again once it is back, without reopening the Store.
func TestOutage(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := newStore(t, srv.URL())
	if err := s.CreateSession(ctx, store.SessionRecord{ID: "s1", Owner: "o", Instance: "i1"}, 0, 0); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	wantUnavailable(t, s, 3*time.Second)

	srv.Restart()
	// The restarted server is empty (no persistence): the session is gone,
	// and the store works again.
	waitUsable(t, s)
	if err := s.CreateSession(ctx, store.SessionRecord{ID: "s2", Owner: "o", Instance: "i1"}, 0, 0); err != nil {
		t.Fatalf("CreateSession after restart: %v", err)
	}
	if _, err := s.GetSession(ctx, "s2"); err != nil {
		t.Fatalf("GetSession after restart: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after restart: %v", err)
	}
}

// TestHang freezes the server: calls must not hang with it but time out
// with EUNAVAILABLE, and the data is there again once it resumes.
func TestHang(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := newStore(t, srv.URL(), redis.WithTimeout(300*time.Millisecond), redis.WithDialTimeout(300*time.Millisecond), redis.WithMaxRetries(0))
	if err := s.CreateSession(ctx, store.SessionRecord{ID: "s1", Owner: "o", Instance: "i1"}, 0, 0); err != nil {
		t.Fatal(err)
	}
	srv.Pause()
	wantUnavailable(t, s, 2*time.Second)
	srv.Resume()
	waitUsable(t, s)
	if _, err := s.GetSession(ctx, "s1"); err != nil {
		t.Fatalf("GetSession after resume: %v", err)
	}
}

// calls returns one call of each kind on s, by name.
func calls(s *redis.Store) map[string]func() error {
	ctx := context.Background()
	return map[string]func() error{
		"CreateSession": func() error {
			return s.CreateSession(ctx, store.SessionRecord{ID: "x", Owner: "o", Instance: "i1"}, 1, 1)
		},
		"GetSession":           func() error { _, err := s.GetSession(ctx, "s1"); return err },
		"ListSessions":         func() error { _, err := s.ListSessions(ctx, "o"); return err },
		"ListInstanceSessions": func() error { _, err := s.ListInstanceSessions(ctx, "i1"); return err },
		"DeleteSession":        func() error { return s.DeleteSession(ctx, "x") },
		"ReassignSession":      func() error { return s.ReassignSession(ctx, "s1", "i1", "i2") },
		"Heartbeat":            func() error { return s.Heartbeat(ctx, store.Instance{ID: "i1", Addr: "a:1"}, time.Minute) },
		"GetInstance":          func() error { _, err := s.GetInstance(ctx, "i1"); return err },
		"ListInstances":        func() error { _, err := s.ListInstances(ctx); return err },
		"RemoveInstance":       func() error { return s.RemoveInstance(ctx, "i9") },
		"Locate":               func() error { _, _, err := store.Locate(ctx, s, "s1"); return err },
		"Ping":                 func() error { return s.Ping(ctx) },
	}
}

// wantUnavailable checks that every kind of call fails with EUNAVAILABLE
// within limit.
func wantUnavailable(t *testing.T, s *redis.Store, limit time.Duration) {
	t.Helper()
	for name, call := range calls(s) {
		start := time.Now()
		err := call()
		d := time.Since(start)
		if codegw.ErrorCode(err) != codegw.EUNAVAILABLE || codegw.ErrorMessage(err) != "session store unavailable" {
			t.Errorf("%s during outage: %v (code %q), want %s", name, err, codegw.ErrorCode(err), codegw.EUNAVAILABLE)
		}
		if d > limit {
			t.Errorf("%s took %v to fail, want under %v", name, d, limit)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// waitUsable polls until no kind of call fails with EUNAVAILABLE. go-redis
// stops dialing after a burst of dial errors and probes once a second, so
// recovery takes up to about a second after Redis is back.
func waitUsable(t *testing.T, s *redis.Store) {
	t.Helper()
	start := time.Now()
	for name, call := range calls(s) {
		testwait.For(t, 10*time.Second-time.Since(start), name+" to work after Redis came back", func() string {
			if err := call(); codegw.ErrorCode(err) == codegw.EUNAVAILABLE {
				return err.Error()
			}
			return ""
		})
	}
	t.Logf("store usable %v after Redis came back", time.Since(start).Round(time.Millisecond))
}

func ExampleNew() {
	ctx := context.Background()
	s, err := redis.New(ctx, "redis://127.0.0.1:6379/0", redis.WithPrefix("codegw:"))
	if err != nil {
		fmt.Println(codegw.ErrorMessage(err))
		return
	}
	defer s.Close()
}

func TestMain(m *testing.M) {
	// The outage tests make go-redis log one line per failed dial; the
	// tests' own errors carry the causes.
	redis.SetLogger(nil)
	os.Exit(m.Run())
}
