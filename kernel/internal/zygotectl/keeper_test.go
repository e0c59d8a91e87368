package zygotectl

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeServer struct {
	n       int
	dead    atomic.Bool
	stopped atomic.Bool
}

func (s *fakeServer) Dead() bool { return s.dead.Load() }
func (s *fakeServer) Stop()      { s.stopped.Store(true); s.dead.Store(true) }

func TestKeeper(t *testing.T) {
	var k Keeper[*fakeServer]
	var starts atomic.Int32
	gate := make(chan struct{})
	start := func(context.Context) (*fakeServer, error) {
		n := starts.Add(1)
		<-gate
		return &fakeServer{n: int(n)}, nil
	}
	if _, ok := k.Current(); ok {
		t.Fatal("a zygote before any start")
	}

	// Concurrent callers share one start; one that gives up does not end it.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.Get(ctx, start); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled Get: %v", err)
	}
	var wg sync.WaitGroup
	got := make([]*fakeServer, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			z, err := k.Get(context.Background(), start)
			if err != nil {
				t.Error(err)
			}
			got[i] = z
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(gate)
	wg.Wait()
	if starts.Load() != 1 {
		t.Errorf("%d starts, want 1", starts.Load())
	}
	for _, z := range got {
		if z != got[0] {
			t.Fatalf("callers got different zygotes")
		}
	}

	// A dead one is replaced.
	got[0].dead.Store(true)
	if _, ok := k.Current(); ok {
		t.Error("Current returned a dead zygote")
	}
	z, err := k.Get(context.Background(), start)
	if err != nil || z.n != 2 {
		t.Fatalf("after a death: zygote %+v, %v; want the second start", z, err)
	}

	// A failed start is reported to its callers, and the next Get tries again.
	boom := errors.New("boom")
	z.dead.Store(true)
	if _, err := k.Get(context.Background(), func(context.Context) (*fakeServer, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("a failed start: %v", err)
	}
	if z, err := k.Get(context.Background(), start); err != nil || z.n != 3 {
		t.Errorf("after a failed start: %+v, %v", z, err)
	}

	// Close returns the last one and refuses later Gets.
	last, ok := k.Close()
	if !ok || last.n != 3 {
		t.Errorf("Close: %+v %v", last, ok)
	}
	if _, err := k.Get(context.Background(), start); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
}

func TestKeeperCloseDuringStart(t *testing.T) {
	var k Keeper[*fakeServer]
	gate := make(chan struct{})
	made := make(chan *fakeServer, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := k.Get(context.Background(), func(context.Context) (*fakeServer, error) {
			<-gate
			z := &fakeServer{}
			made <- z
			return z, nil
		})
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	k.Close()
	close(gate)
	z := <-made
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("the waiting Get: %v, want ErrClosed", err)
	}
	if !z.stopped.Load() {
		t.Error("a zygote started after Close was left running")
	}
}
