package memory_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/memory"
	"github.com/codegw/codegw/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := memory.New()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// clock is a settable time source for WithClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestExpiryClock checks expiry against the injected clock, to the
// nanosecond, without sleeping.
func TestExpiryClock(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := memory.New(memory.WithClock(c.Now))
	defer s.Close()

	if err := s.Heartbeat(ctx, store.Instance{ID: "i1", Addr: "a:1"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, store.SessionRecord{ID: "s1", Owner: "o", Instance: "i1"}, 0, 0); err != nil {
		t.Fatal(err)
	}
	rec, err := s.GetSession(ctx, "s1")
	if err != nil || !rec.CreatedAt.Equal(c.Now()) {
		t.Fatalf("GetSession = %+v, %v; want CreatedAt from the clock", rec, err)
	}
	inst, err := s.GetInstance(ctx, "i1")
	if err != nil || !inst.ExpiresAt.Equal(c.Now().Add(time.Minute)) {
		t.Fatalf("GetInstance = %+v, %v", inst, err)
	}

	c.Advance(time.Minute - time.Nanosecond)
	if _, _, err := store.Locate(ctx, s, "s1"); err != nil {
		t.Fatalf("Locate just before expiry: %v", err)
	}
	c.Advance(time.Nanosecond)
	if _, err := s.GetInstance(ctx, "i1"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Fatalf("GetInstance at expiry: %v, want not found", err)
	}
	if _, _, err := store.Locate(ctx, s, "s1"); codegw.ErrorCode(err) != codegw.ELOST {
		t.Fatalf("Locate after expiry: %v, want session lost", err)
	}
	if list, err := s.ListInstances(ctx); err != nil || len(list) != 0 {
		t.Fatalf("ListInstances after expiry = %+v, %v", list, err)
	}
}
