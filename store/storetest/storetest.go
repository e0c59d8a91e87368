// Package storetest is the conformance suite for store.Store
// implementations: every implementation runs the same tests, so the session
// manager and gateway can rely on the contract rather than on one store.
package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store"
)

// Run runs the conformance suite against the stores made by newStore. Each
// subtest calls newStore once and expects an empty store of its own; the
// factory registers the store's cleanup with t.Cleanup (Close may already
// have been called by then, and must tolerate that). Subtests run in
// parallel.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"CreateGet", testCreateGet},
		{"CreateFillsCreatedAt", testCreateFillsCreatedAt},
		{"CreateInvalid", testCreateInvalid},
		{"CreateDuplicate", testCreateDuplicate},
		{"GetMissing", testGetMissing},
		{"ListByOwner", testListByOwner},
		{"ListByInstance", testListByInstance},
		{"Delete", testDelete},
		{"LimitPerOwner", testLimitPerOwner},
		{"LimitTotal", testLimitTotal},
		{"Unlimited", testUnlimited},
		{"LimitTotalConcurrent", testLimitTotalConcurrent},
		{"LimitPerOwnerConcurrent", testLimitPerOwnerConcurrent},
		{"Heartbeat", testHeartbeat},
		{"HeartbeatInvalid", testHeartbeatInvalid},
		{"HeartbeatRefresh", testHeartbeatRefresh},
		{"InstanceExpiry", testInstanceExpiry},
		{"ListInstances", testListInstances},
		{"RemoveInstance", testRemoveInstance},
		{"GetInstanceMissing", testGetInstanceMissing},
		{"LocateLost", testLocateLost},
		{"Reassign", testReassign},
		{"ReassignConflict", testReassignConflict},
		{"ReassignConcurrent", testReassignConcurrent},
		{"CanceledContext", testCanceledContext},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

// base is a fixed creation time; records made by rec are one second apart
// in the order of their n so listings have a known order.
var base = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)

func rec(n int, owner, instance string) store.SessionRecord {
	return store.SessionRecord{
		ID:        fmt.Sprintf("s%02d-%s", n, owner),
		Owner:     owner,
		Instance:  instance,
		CreatedAt: base.Add(time.Duration(n) * time.Second),
	}
}

func create(t *testing.T, s store.Store, recs ...store.SessionRecord) {
	t.Helper()
	for _, r := range recs {
		if err := s.CreateSession(context.Background(), r, 0, 0); err != nil {
			t.Fatalf("CreateSession(%s): %v", r.ID, err)
		}
	}
}

func heartbeat(t *testing.T, s store.Store, id, addr string, ttl time.Duration) {
	t.Helper()
	if err := s.Heartbeat(context.Background(), store.Instance{ID: id, Addr: addr}, ttl); err != nil {
		t.Fatalf("Heartbeat(%s): %v", id, err)
	}
}

// wantCode fails the test unless err carries the codegw code.
func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if got := codegw.ErrorCode(err); got != code {
		t.Fatalf("%s: error %v has code %q, want %q", what, err, got, code)
	}
}

func sameRecord(t *testing.T, what string, got, want store.SessionRecord) {
	t.Helper()
	if got.ID != want.ID || got.Owner != want.Owner || got.Instance != want.Instance || !got.CreatedAt.Equal(want.CreatedAt) {
		t.Fatalf("%s: got %+v, want %+v", what, got, want)
	}
}

func ids(recs []store.SessionRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func wantIDs(t *testing.T, what string, recs []store.SessionRecord, err error, want ...string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got := ids(recs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func testCreateGet(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := rec(1, "alice", "i1")
	create(t, s, r)
	got, err := s.GetSession(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	sameRecord(t, "GetSession", got, r)
	if got.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreatedAt = %v, want UTC", got.CreatedAt)
	}
	// A record given in another zone comes back as the same instant in UTC.
	r2 := rec(2, "alice", "i1")
	r2.CreatedAt = r2.CreatedAt.In(time.FixedZone("UTC+8", 8*3600))
	create(t, s, r2)
	if got, err = s.GetSession(ctx, r2.ID); err != nil || !got.CreatedAt.Equal(r2.CreatedAt) || got.CreatedAt.Location() != time.UTC {
		t.Fatalf("GetSession(%s) = %+v, %v; want CreatedAt %v in UTC", r2.ID, got, err, r2.CreatedAt)
	}
}

func testCreateFillsCreatedAt(t *testing.T, s store.Store) {
	ctx := context.Background()
	before := time.Now()
	r := store.SessionRecord{ID: "s1", Owner: "alice", Instance: "i1"}
	create(t, s, r)
	got, err := s.GetSession(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	if got.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreatedAt = %v, want UTC", got.CreatedAt)
	}
	if d := got.CreatedAt.Sub(before); d < 0 || d > 5*time.Second {
		t.Fatalf("CreatedAt = %v, want about %v", got.CreatedAt, before)
	}
}

func testCreateInvalid(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, r := range []store.SessionRecord{
		{Owner: "alice", Instance: "i1"},
		{ID: "s1", Instance: "i1"},
		{ID: "s1", Owner: "alice"},
	} {
		wantCode(t, fmt.Sprintf("CreateSession(%+v)", r), s.CreateSession(ctx, r, 0, 0), codegw.EINVALID)
	}
	_, err := s.GetSession(ctx, "s1")
	wantCode(t, "GetSession after invalid creates", err, codegw.ENOTFOUND)
}

func testCreateDuplicate(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := rec(1, "alice", "i1")
	create(t, s, r)
	dup := r
	dup.Owner, dup.Instance = "bob", "i2"
	wantCode(t, "duplicate CreateSession", s.CreateSession(ctx, dup, 0, 0), codegw.ECONFLICT)
	got, err := s.GetSession(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	sameRecord(t, "GetSession after duplicate", got, r)
	list, err := s.ListSessions(ctx, "bob")
	wantIDs(t, "ListSessions(bob)", list, err)
}

func testGetMissing(t *testing.T, s store.Store) {
	_, err := s.GetSession(context.Background(), "nope")
	wantCode(t, "GetSession(nope)", err, codegw.ENOTFOUND)
}

func testListByOwner(t *testing.T, s store.Store) {
	ctx := context.Background()
	// Created out of order: listings are oldest first.
	create(t, s, rec(3, "alice", "i1"), rec(1, "alice", "i2"), rec(2, "bob", "i1"), rec(2, "alice", "i1"))
	list, err := s.ListSessions(ctx, "alice")
	wantIDs(t, "ListSessions(alice)", list, err, "s01-alice", "s02-alice", "s03-alice")
	sameRecord(t, "ListSessions(alice)[0]", list[0], rec(1, "alice", "i2"))
	list, err = s.ListSessions(ctx, "bob")
	wantIDs(t, "ListSessions(bob)", list, err, "s02-bob")
	list, err = s.ListSessions(ctx, "carol")
	wantIDs(t, "ListSessions(carol)", list, err)
}

func testListByInstance(t *testing.T, s store.Store) {
	ctx := context.Background()
	create(t, s, rec(2, "alice", "i1"), rec(1, "bob", "i1"), rec(3, "alice", "i2"))
	list, err := s.ListInstanceSessions(ctx, "i1")
	wantIDs(t, "ListInstanceSessions(i1)", list, err, "s01-bob", "s02-alice")
	list, err = s.ListInstanceSessions(ctx, "i2")
	wantIDs(t, "ListInstanceSessions(i2)", list, err, "s03-alice")
	list, err = s.ListInstanceSessions(ctx, "i3")
	wantIDs(t, "ListInstanceSessions(i3)", list, err)
}

func testDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	a, b := rec(1, "alice", "i1"), rec(2, "alice", "i1")
	create(t, s, a, b)
	if err := s.DeleteSession(ctx, a.ID); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	_, err := s.GetSession(ctx, a.ID)
	wantCode(t, "GetSession after delete", err, codegw.ENOTFOUND)
	list, err := s.ListSessions(ctx, "alice")
	wantIDs(t, "ListSessions after delete", list, err, b.ID)
	list, err = s.ListInstanceSessions(ctx, "i1")
	wantIDs(t, "ListInstanceSessions after delete", list, err, b.ID)
	if err := s.DeleteSession(ctx, a.ID); err != nil {
		t.Fatalf("second DeleteSession: %v", err)
	}
	if err := s.DeleteSession(ctx, "never-existed"); err != nil {
		t.Fatalf("DeleteSession(never-existed): %v", err)
	}
	// The id and the limit slot are free again.
	if err := s.CreateSession(ctx, a, 2, 2); err != nil {
		t.Fatalf("CreateSession after delete: %v", err)
	}
}

func testLimitPerOwner(t *testing.T, s store.Store) {
	ctx := context.Background()
	for n := 1; n <= 2; n++ {
		if err := s.CreateSession(ctx, rec(n, "alice", "i1"), 2, 0); err != nil {
			t.Fatalf("CreateSession %d: %v", n, err)
		}
	}
	wantCode(t, "third session of alice", s.CreateSession(ctx, rec(3, "alice", "i1"), 2, 0), codegw.ELIMIT)
	if err := s.CreateSession(ctx, rec(3, "bob", "i1"), 2, 0); err != nil {
		t.Fatalf("first session of bob: %v", err)
	}
	list, err := s.ListSessions(ctx, "alice")
	wantIDs(t, "ListSessions(alice)", list, err, "s01-alice", "s02-alice")
	if err := s.DeleteSession(ctx, "s01-alice"); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if err := s.CreateSession(ctx, rec(3, "alice", "i1"), 2, 0); err != nil {
		t.Fatalf("CreateSession after freeing a slot: %v", err)
	}
}

func testLimitTotal(t *testing.T, s store.Store) {
	ctx := context.Background()
	for n, owner := range []string{"alice", "bob", "carol"} {
		if err := s.CreateSession(ctx, rec(n, owner, "i1"), 0, 3); err != nil {
			t.Fatalf("CreateSession %d: %v", n, err)
		}
	}
	wantCode(t, "fourth session", s.CreateSession(ctx, rec(4, "dave", "i2"), 0, 3), codegw.ELIMIT)
	// Both limits at once: the per-owner one is hit first here.
	wantCode(t, "both limits", s.CreateSession(ctx, rec(5, "alice", "i2"), 1, 10), codegw.ELIMIT)
	if err := s.CreateSession(ctx, rec(5, "dave", "i2"), 1, 10); err != nil {
		t.Fatalf("under both limits: %v", err)
	}
}

func testUnlimited(t *testing.T, s store.Store) {
	ctx := context.Background()
	for n := range 12 {
		if err := s.CreateSession(ctx, rec(n, "alice", "i1"), 0, 0); err != nil {
			t.Fatalf("CreateSession %d: %v", n, err)
		}
	}
	list, err := s.ListSessions(ctx, "alice")
	if err != nil || len(list) != 12 {
		t.Fatalf("ListSessions: %d sessions, %v; want 12", len(list), err)
	}
}

// race runs n goroutines calling fn(i) at once and returns their errors.
func race(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = fn(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// countOK returns how many errs are nil and fails on errors other than code.
func countOK(t *testing.T, errs []error, code string) int {
	t.Helper()
	ok := 0
	for i, err := range errs {
		if err == nil {
			ok++
		} else {
			wantCode(t, fmt.Sprintf("racer %d", i), err, code)
		}
	}
	return ok
}

func testLimitTotalConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	errs := race(20, func(i int) error {
		return s.CreateSession(ctx, rec(i, fmt.Sprintf("owner%d", i%4), "i1"), 0, 5)
	})
	if ok := countOK(t, errs, codegw.ELIMIT); ok != 5 {
		t.Fatalf("%d of 20 racing creates succeeded with maxTotal=5, want 5", ok)
	}
	list, err := s.ListInstanceSessions(ctx, "i1")
	if err != nil || len(list) != 5 {
		t.Fatalf("ListInstanceSessions: %d sessions, %v; want 5", len(list), err)
	}
}

func testLimitPerOwnerConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	errs := race(20, func(i int) error {
		return s.CreateSession(ctx, rec(i, "alice", fmt.Sprintf("i%d", i%3)), 3, 0)
	})
	if ok := countOK(t, errs, codegw.ELIMIT); ok != 3 {
		t.Fatalf("%d of 20 racing creates succeeded with maxPerOwner=3, want 3", ok)
	}
	list, err := s.ListSessions(ctx, "alice")
	if err != nil || len(list) != 3 {
		t.Fatalf("ListSessions: %d sessions, %v; want 3", len(list), err)
	}
}

func testHeartbeat(t *testing.T, s store.Store) {
	ctx := context.Background()
	before := time.Now()
	heartbeat(t, s, "i1", "10.0.0.1:14564", time.Minute)
	got, err := s.GetInstance(ctx, "i1")
	if err != nil {
		t.Fatalf("GetInstance: %v", err)
	}
	if got.ID != "i1" || got.Addr != "10.0.0.1:14564" {
		t.Fatalf("GetInstance = %+v", got)
	}
	if min, max := before.Add(time.Minute-time.Second), time.Now().Add(time.Minute+time.Second); got.ExpiresAt.Before(min) || got.ExpiresAt.After(max) {
		t.Fatalf("ExpiresAt = %v, want within [%v, %v]", got.ExpiresAt, min, max)
	}
	// A heartbeat updates the address.
	heartbeat(t, s, "i1", "10.0.0.2:14564", time.Minute)
	if got, err = s.GetInstance(ctx, "i1"); err != nil || got.Addr != "10.0.0.2:14564" {
		t.Fatalf("GetInstance after address change = %+v, %v", got, err)
	}
}

func testHeartbeatInvalid(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, c := range []struct {
		inst store.Instance
		ttl  time.Duration
	}{
		{store.Instance{Addr: "a:1"}, time.Second},
		{store.Instance{ID: "i1"}, time.Second},
		{store.Instance{ID: "i1", Addr: "a:1"}, 0},
		{store.Instance{ID: "i1", Addr: "a:1"}, -time.Second},
	} {
		wantCode(t, fmt.Sprintf("Heartbeat(%+v, %v)", c.inst, c.ttl), s.Heartbeat(ctx, c.inst, c.ttl), codegw.EINVALID)
	}
	_, err := s.GetInstance(ctx, "i1")
	wantCode(t, "GetInstance after invalid heartbeats", err, codegw.ENOTFOUND)
}

func testHeartbeatRefresh(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ttl = 500 * time.Millisecond
	// Heartbeats every 100ms keep the entry alive well past its TTL.
	end := time.Now().Add(3 * ttl)
	for time.Now().Before(end) {
		heartbeat(t, s, "i1", "a:1", ttl)
		if _, err := s.GetInstance(ctx, "i1"); err != nil {
			t.Fatalf("GetInstance while heartbeating: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func testInstanceExpiry(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	start := time.Now()
	heartbeat(t, s, "short", "a:1", ttl)
	heartbeat(t, s, "long", "a:2", time.Minute)
	if _, err := s.GetInstance(ctx, "short"); err != nil {
		t.Fatalf("GetInstance right after heartbeat: %v", err)
	}
	var gone time.Time
	testwait.Until(t, 10*ttl, "short instance expired", func() bool {
		_, err := s.GetInstance(ctx, "short")
		if err == nil {
			return false
		}
		wantCode(t, "GetInstance(short)", err, codegw.ENOTFOUND)
		gone = time.Now()
		return true
	})
	if d := gone.Sub(start); d < ttl/2 {
		t.Fatalf("instance expired after %v, before its TTL of %v", d, ttl)
	}
	list, err := s.ListInstances(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "long" {
		t.Fatalf("ListInstances after expiry = %+v, %v; want only long", list, err)
	}
	// An expired instance can register again.
	heartbeat(t, s, "short", "a:3", time.Minute)
	if got, err := s.GetInstance(ctx, "short"); err != nil || got.Addr != "a:3" {
		t.Fatalf("GetInstance after re-register = %+v, %v", got, err)
	}
}

func testListInstances(t *testing.T, s store.Store) {
	ctx := context.Background()
	list, err := s.ListInstances(ctx)
	if err != nil || len(list) != 0 {
		t.Fatalf("ListInstances on empty store = %+v, %v", list, err)
	}
	heartbeat(t, s, "i2", "a:2", time.Minute)
	heartbeat(t, s, "i1", "a:1", time.Minute)
	heartbeat(t, s, "i3", "a:3", time.Minute)
	list, err = s.ListInstances(ctx)
	if err != nil {
		t.Fatalf("ListInstances: %v", err)
	}
	var got []string
	for _, inst := range list {
		got = append(got, inst.ID+"="+inst.Addr)
		if inst.ExpiresAt.IsZero() {
			t.Fatalf("ListInstances: %s has no expiry", inst.ID)
		}
	}
	if fmt.Sprint(got) != "[i1=a:1 i2=a:2 i3=a:3]" {
		t.Fatalf("ListInstances = %v", got)
	}
}

func testRemoveInstance(t *testing.T, s store.Store) {
	ctx := context.Background()
	heartbeat(t, s, "i1", "a:1", time.Minute)
	heartbeat(t, s, "i2", "a:2", time.Minute)
	create(t, s, rec(1, "alice", "i1"))
	if err := s.RemoveInstance(ctx, "i1"); err != nil {
		t.Fatalf("RemoveInstance: %v", err)
	}
	_, err := s.GetInstance(ctx, "i1")
	wantCode(t, "GetInstance after remove", err, codegw.ENOTFOUND)
	list, err := s.ListInstances(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "i2" {
		t.Fatalf("ListInstances after remove = %+v, %v", list, err)
	}
	// Its sessions stay recorded until adopted or deleted.
	sessions, err := s.ListInstanceSessions(ctx, "i1")
	wantIDs(t, "ListInstanceSessions after remove", sessions, err, "s01-alice")
	if err := s.RemoveInstance(ctx, "i1"); err != nil {
		t.Fatalf("second RemoveInstance: %v", err)
	}
	if err := s.RemoveInstance(ctx, "never-existed"); err != nil {
		t.Fatalf("RemoveInstance(never-existed): %v", err)
	}
}

func testGetInstanceMissing(t *testing.T, s store.Store) {
	_, err := s.GetInstance(context.Background(), "nope")
	wantCode(t, "GetInstance(nope)", err, codegw.ENOTFOUND)
}

func testLocateLost(t *testing.T, s store.Store) {
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	heartbeat(t, s, "live", "10.0.0.1:1", time.Minute)
	heartbeat(t, s, "dying", "10.0.0.2:1", ttl)
	alive, doomed := rec(1, "alice", "live"), rec(2, "alice", "dying")
	create(t, s, alive, doomed)

	got, inst, err := store.Locate(ctx, s, alive.ID)
	if err != nil || got.ID != alive.ID || inst.ID != "live" || inst.Addr != "10.0.0.1:1" {
		t.Fatalf("Locate(alive) = %+v, %+v, %v", got, inst, err)
	}
	_, _, err = store.Locate(ctx, s, "nope")
	wantCode(t, "Locate(nope)", err, codegw.ENOTFOUND)

	testwait.Until(t, 10*ttl, "session on the dying instance is lost", func() bool {
		_, _, err := store.Locate(ctx, s, doomed.ID)
		return codegw.ErrorCode(err) == codegw.ELOST
	})
	got, _, err = store.Locate(ctx, s, doomed.ID)
	wantCode(t, "Locate(doomed)", err, codegw.ELOST)
	if got.ID != doomed.ID || got.Instance != "dying" {
		t.Fatalf("Locate(doomed) record = %+v, want the lost session's record", got)
	}
	// A survivor adopts it: it is found again.
	if err := s.ReassignSession(ctx, doomed.ID, "dying", "live"); err != nil {
		t.Fatalf("ReassignSession: %v", err)
	}
	if _, inst, err := store.Locate(ctx, s, doomed.ID); err != nil || inst.ID != "live" {
		t.Fatalf("Locate after adoption = %+v, %v", inst, err)
	}
}

func testReassign(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := rec(1, "alice", "dead")
	create(t, s, r, rec(2, "alice", "dead"))
	if err := s.ReassignSession(ctx, r.ID, "dead", "new"); err != nil {
		t.Fatalf("ReassignSession: %v", err)
	}
	got, err := s.GetSession(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	want := r
	want.Instance = "new"
	sameRecord(t, "GetSession after reassign", got, want)
	list, err := s.ListInstanceSessions(ctx, "dead")
	wantIDs(t, "ListInstanceSessions(dead)", list, err, "s02-alice")
	list, err = s.ListInstanceSessions(ctx, "new")
	wantIDs(t, "ListInstanceSessions(new)", list, err, "s01-alice")
	list, err = s.ListSessions(ctx, "alice")
	wantIDs(t, "ListSessions(alice)", list, err, "s01-alice", "s02-alice")
	// Deleting after a move cleans the new instance's index.
	if err := s.DeleteSession(ctx, r.ID); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	list, err = s.ListInstanceSessions(ctx, "new")
	wantIDs(t, "ListInstanceSessions(new) after delete", list, err)
}

func testReassignConflict(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := rec(1, "alice", "i1")
	create(t, s, r)
	wantCode(t, "ReassignSession from the wrong instance", s.ReassignSession(ctx, r.ID, "i9", "i2"), codegw.ECONFLICT)
	got, err := s.GetSession(ctx, r.ID)
	if err != nil || got.Instance != "i1" {
		t.Fatalf("GetSession after failed reassign = %+v, %v", got, err)
	}
	wantCode(t, "ReassignSession(missing)", s.ReassignSession(ctx, "nope", "i1", "i2"), codegw.ENOTFOUND)
	wantCode(t, "ReassignSession to nowhere", s.ReassignSession(ctx, r.ID, "i1", ""), codegw.EINVALID)
}

func testReassignConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := rec(1, "alice", "dead")
	create(t, s, r)
	errs := race(10, func(i int) error {
		return s.ReassignSession(ctx, r.ID, "dead", fmt.Sprintf("adopter%d", i))
	})
	if ok := countOK(t, errs, codegw.ECONFLICT); ok != 1 {
		t.Fatalf("%d of 10 racing adoptions succeeded, want 1", ok)
	}
	got, err := s.GetSession(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	winner := -1
	for i, err := range errs {
		if err == nil {
			winner = i
		}
	}
	if want := fmt.Sprintf("adopter%d", winner); got.Instance != want {
		t.Fatalf("session held by %s, want the winner %s", got.Instance, want)
	}
	for i := range 10 {
		list, err := s.ListInstanceSessions(ctx, fmt.Sprintf("adopter%d", i))
		if err != nil || (i == winner) != (len(list) == 1) || len(list) > 1 {
			t.Fatalf("ListInstanceSessions(adopter%d) = %v, %v (winner %d)", i, ids(list), err, winner)
		}
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.CreateSession(ctx, rec(1, "alice", "i1"), 0, 0); err == nil {
		t.Fatal("CreateSession with a canceled context succeeded")
	}
	if _, err := s.GetSession(context.Background(), "s01-alice"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Fatalf("session created despite canceled context: %v", err)
	}
}

func testClose(t *testing.T, s store.Store) {
	ctx := context.Background()
	create(t, s, rec(1, "alice", "i1"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := s.GetSession(ctx, "s01-alice")
	wantCode(t, "GetSession after Close", err, codegw.EUNAVAILABLE)
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
