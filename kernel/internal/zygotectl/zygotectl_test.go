package zygotectl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// The real zygote is driven by the local and Docker provisioners' fork
// tests; this one plays the zygote's side of the connection to reach the
// orders and faults a real one cannot be made to produce on cue.

type fakeRun struct {
	mu     sync.Mutex
	pid    int
	bound  bool
	status int
	exited chan struct{}
}

func newRun() *fakeRun { return &fakeRun{status: -1, exited: make(chan struct{})} }

func (r *fakeRun) Forked(pid int) { r.mu.Lock(); r.pid = pid; r.mu.Unlock() }
func (r *fakeRun) Bound()         { r.mu.Lock(); r.bound = true; r.mu.Unlock() }
func (r *fakeRun) Exited(status int) {
	r.mu.Lock()
	r.status = status
	r.mu.Unlock()
	close(r.exited)
}

type fakeZygote struct {
	t   *testing.T
	in  *bufio.Scanner
	out net.Conn
}

func (f *fakeZygote) next() Request {
	f.t.Helper()
	if !f.in.Scan() {
		f.t.Fatalf("no request: %v", f.in.Err())
	}
	var r Request
	if err := json.Unmarshal(f.in.Bytes(), &r); err != nil {
		f.t.Fatalf("request %q: %v", f.in.Text(), err)
	}
	return r
}

func (f *fakeZygote) say(m msg) {
	b, _ := json.Marshal(m)
	f.out.Write(append(b, '\n'))
}

func start(t *testing.T) (*Conn, *fakeZygote, chan []Run) {
	ours, theirs := net.Pipe()
	z := New(ours, slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
	f := &fakeZygote{t: t, in: bufio.NewScanner(theirs), out: theirs}
	orphans := make(chan []Run, 1)
	go func() { orphans <- z.Read() }()
	t.Cleanup(func() { theirs.Close() })
	go f.say(msg{Op: "ready", PID: 1})
	select {
	case <-z.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("not ready")
	}
	return z, f, orphans
}

func TestForkBoundExit(t *testing.T) {
	z, f, _ := start(t)
	r := newRun()
	type answer struct {
		pid int
		err error
	}
	got := make(chan answer, 1)
	go func() {
		pid, err := z.Fork(context.Background(), r, Request{Token: "k.1", Conn: "/c", Env: map[string]string{"A": "1"}})
		got <- answer{pid, err}
	}()
	req := f.next()
	if req.Op != "fork" || req.Token != "k.1" || req.Conn != "/c" || req.Env["A"] != "1" {
		t.Fatalf("request %+v", req)
	}
	f.say(msg{Op: "forked", Token: "k.1", PID: 42})
	a := <-got
	if a.err != nil || a.pid != 42 {
		t.Fatalf("fork: %d %v", a.pid, a.err)
	}
	r.mu.Lock()
	pid := r.pid
	r.mu.Unlock()
	if pid != 42 {
		t.Errorf("Forked got %d before Fork returned, want 42", pid)
	}
	f.say(msg{Op: "bound", Token: "k.1"})
	f.say(msg{Op: "exit", Token: "k.1", Status: 137})
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("exit not reported")
	}
	if !r.bound || r.status != 137 {
		t.Errorf("bound %v status %d", r.bound, r.status)
	}
	// A second exit for the token is not reported again (Exited would
	// panic on the closed channel).
	f.say(msg{Op: "exit", Token: "k.1", Status: 0})

	go func() {
		_, err := z.Fork(context.Background(), newRun(), Request{Token: "k.2"})
		got <- answer{0, err}
	}()
	f.next()
	f.say(msg{Op: "error", Token: "k.2", Error: "no memory"})
	if a := <-got; a.err == nil || errors.Is(a.err, ErrDied) || a.err.Error() != "test: fork kernel: no memory" {
		t.Errorf("a refused fork: %v", a.err)
	}
	f.say(msg{Op: "nonsense"})
	f.out.Write([]byte("not json\n"))
	if z.Ended() {
		t.Error("ended on messages it does not know")
	}
}

func TestForkCancelledSendsKill(t *testing.T) {
	z, f, _ := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	r := newRun()
	go func() {
		_, err := z.Fork(ctx, r, Request{Token: "k.1"})
		errc <- err
	}()
	f.next()
	cancel()
	if kill := f.next(); kill.Op != "kill" || kill.Token != "k.1" {
		t.Fatalf("after the cancel: %+v, want the kill", kill)
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("fork: %v", err)
	}
	// The fork happened after all: its exit still reaches the run.
	f.say(msg{Op: "forked", Token: "k.1", PID: 7})
	f.say(msg{Op: "exit", Token: "k.1", Status: 137})
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled kernel's exit was lost")
	}
}

func TestZygoteDies(t *testing.T) {
	z, f, orphans := start(t)
	running := newRun()
	go func() {
		z.Fork(context.Background(), running, Request{Token: "k.1"})
	}()
	f.next()
	f.say(msg{Op: "forked", Token: "k.1", PID: 9})
	errc := make(chan error, 1)
	go func() {
		_, err := z.Fork(context.Background(), newRun(), Request{Token: "k.2"})
		errc <- err
	}()
	f.next() // asked, never answered
	f.out.Close()
	if err := <-errc; !errors.Is(err, ErrDied) {
		t.Errorf("a fork in flight: %v, want ErrDied", err)
	}
	left := <-orphans
	if len(left) != 2 {
		t.Fatalf("orphans %d, want the forked kernel and the one in flight", len(left))
	}
	if !z.Ended() {
		t.Error("not ended")
	}
	if _, err := z.Fork(context.Background(), newRun(), Request{Token: "k.3"}); !errors.Is(err, ErrDied) {
		t.Errorf("a fork after the end: %v, want ErrDied", err)
	}
	if err := z.Kill("k.1"); !errors.Is(err, ErrDied) {
		t.Errorf("a kill after the end: %v, want ErrDied", err)
	}
}
