package kernel_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
)

// poolFixture counts launches and remembers every process it started.
type poolFixture struct {
	dir      string
	opts     kernel.LaunchOptions
	launches atomic.Int32
	mu       sync.Mutex
	procs    []kernel.Process
}

func (f *poolFixture) launch(ctx context.Context) (*kernel.Kernel, error) {
	n := f.launches.Add(1)
	k, err := kernel.Launch(ctx, &plainProvisioner{dir: f.dir}, kernel.Spec{ID: fmt.Sprintf("p%d", n)}, f.opts)
	if err == nil {
		f.mu.Lock()
		f.procs = append(f.procs, k.Process())
		f.mu.Unlock()
	}
	return k, err
}

func TestPool(t *testing.T) {
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	f := &poolFixture{dir: dir}
	p := kernel.NewPool(kernel.PoolConfig{Size: 2, Launch: f.launch})
	testwait.Until(t, 60*time.Second, "pool to fill", func() bool { return p.Stats().Ready == 2 })

	// A warm acquire hands out a kernel started before it, and is quick.
	f.mu.Lock()
	warm := map[kernel.Process]bool{}
	for _, pr := range f.procs {
		warm[pr] = true
	}
	f.mu.Unlock()
	start := time.Now()
	k, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("warm acquire took %v", d)
	}
	if !warm[k.Process()] {
		t.Errorf("acquire returned a kernel it started itself")
	}
	r, err := k.Execute(context.Background(), "1+1", kernel.ExecuteOptions{}, kernel.Deadline{})
	if err != nil || r.Status != "ok" {
		t.Fatalf("execute on pooled kernel: %v %+v", err, r)
	}
	k.Close(context.Background())
	testwait.Until(t, 60*time.Second, "refill after acquire", func() bool { return p.Stats().Ready == 2 })

	// A kernel that dies while waiting in the pool is replaced.
	f.mu.Lock()
	victim := f.procs[len(f.procs)-1]
	f.mu.Unlock()
	launched := f.launches.Load()
	victim.Kill(context.Background())
	// Promptly: its exit tells it, with no heartbeat to miss.
	killed := time.Now()
	testwait.Until(t, 60*time.Second, "a replacement start", func() bool { return f.launches.Load() > launched })
	if d := time.Since(killed); d > time.Second {
		t.Errorf("the death of a pooled kernel was noticed after %v", d)
	}
	testwait.Until(t, 60*time.Second, "replacement of a dead kernel", func() bool {
		return f.launches.Load() > launched && p.Stats().Ready == 2
	})
	// Every kernel handed out afterwards works.
	for i := 0; i < 2; i++ {
		k, err := p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if r, err := k.Execute(context.Background(), "1", kernel.ExecuteOptions{}, kernel.Deadline{}); err != nil || r.Status != "ok" {
			t.Errorf("kernel %d after refill: %v", i, err)
		}
		k.Close(context.Background())
	}

	// Close leaves no kernel process and no kernel directory behind.
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, pr := range f.procs {
		select {
		case <-pr.Exited():
		default:
			t.Errorf("kernel %s still running after pool close", pr.Dir())
		}
		if err := syscall.Kill(pr.(interface{ Pid() int }).Pid(), 0); err == nil {
			t.Errorf("process of %s still exists", pr.Dir())
		}
		if _, err := os.Stat(pr.Dir()); !os.IsNotExist(err) {
			t.Errorf("directory %s left behind", pr.Dir())
		}
	}
	if _, err := p.Acquire(context.Background()); err == nil {
		t.Error("acquire after close succeeded")
	}
}

func TestPoolStartFailure(t *testing.T) {
	var calls atomic.Int32
	p := kernel.NewPool(kernel.PoolConfig{Size: 1, Launch: func(ctx context.Context) (*kernel.Kernel, error) {
		calls.Add(1)
		return nil, fmt.Errorf("no python here")
	}})
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p.Acquire(ctx)
	if err == nil || !strings.Contains(err.Error(), "no python here") {
		t.Fatalf("err = %v", err)
	}
	if calls.Load() == 0 {
		t.Error("pool never tried to start a kernel")
	}
}

// TestPoolHeartbeat: a kernel waiting in the pool is not pinged (a frozen
// one stays there), and once handed out its heartbeat is watched: frozen,
// it is found dead.
func TestPoolHeartbeat(t *testing.T) {
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	f := &poolFixture{dir: dir, opts: kernel.LaunchOptions{Client: kernel.ClientOptions{
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 400 * time.Millisecond}}}
	p := kernel.NewPool(kernel.PoolConfig{Size: 1, Launch: f.launch})
	defer p.Close(context.Background())
	testwait.Until(t, 60*time.Second, "pool to fill", func() bool { return p.Stats().Ready == 1 })
	f.mu.Lock()
	pid := f.procs[0].(interface{ Pid() int }).Pid()
	f.mu.Unlock()
	syscall.Kill(-pid, syscall.SIGSTOP)
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGCONT) })

	time.Sleep(4 * 400 * time.Millisecond) // four heartbeat timeouts
	if st := p.Stats(); st.Ready != 1 || f.launches.Load() != 1 {
		t.Fatalf("a frozen pooled kernel was replaced (stats %+v, %d launches): it was pinged in the pool", st, f.launches.Load())
	}

	k, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close(context.Background())
	start := time.Now()
	select {
	case <-k.Dead():
	case <-time.After(5 * time.Second):
		t.Fatal("a frozen kernel handed out was not found dead")
	}
	if err := k.Err(); !strings.Contains(fmt.Sprint(err), "heartbeat") {
		t.Errorf("Err() = %v, want a missed heartbeat", err)
	}
	t.Logf("found dead %v after it was handed out: %v", time.Since(start), k.Err())
}

// Kernels go to waiting callers in the order they asked, and a caller that
// gives up leaves the queue without taking a kernel from the next.
func TestPoolFIFO(t *testing.T) {
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	f := &poolFixture{dir: dir}
	p := kernel.NewPool(kernel.PoolConfig{Size: 1, MaxStarting: 1, Launch: f.launch})
	defer p.Close(context.Background())
	testwait.Until(t, 60*time.Second, "pool to fill", func() bool { return p.Stats().Ready == 1 })
	first, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close(context.Background())

	const n = 4
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
	)
	// Caller 1 gives up while it waits; 0, 2 and 3 wait their turn.
	giveUp, cancel := context.WithCancel(context.Background())
	for i := range n {
		ctx := context.Background()
		if i == 1 {
			ctx = giveUp
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := p.Acquire(ctx)
			if i == 1 {
				if err == nil {
					k.Close(context.Background())
					t.Error("caller 1 got a kernel after giving up")
				}
				return
			}
			if err != nil {
				t.Errorf("caller %d: %v", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			k.Close(context.Background())
		}()
		// The next caller asks only once this one waits.
		testwait.Until(t, 60*time.Second, "caller to wait", func() bool {
			mu.Lock()
			served := len(order)
			mu.Unlock()
			return p.Stats().Waiting+served >= i+1
		})
	}
	cancel()
	wg.Wait()
	if fmt.Sprint(order) != "[0 2 3]" {
		t.Errorf("kernels handed out in order %v, want [0 2 3]", order)
	}
	if s := p.Stats(); s.Waiting != 0 {
		t.Errorf("%d waiters left", s.Waiting)
	}
}

// Closing the pool ends the wait of callers that have no kernel yet.
func TestPoolCloseWakesWaiters(t *testing.T) {
	p := kernel.NewPool(kernel.PoolConfig{Size: 1, Launch: func(ctx context.Context) (*kernel.Kernel, error) {
		<-ctx.Done() // never ready
		return nil, ctx.Err()
	}})
	errc := make(chan error, 1)
	go func() {
		_, err := p.Acquire(context.Background())
		errc <- err
	}()
	testwait.Until(t, 60*time.Second, "caller to wait", func() bool { return p.Stats().Waiting == 1 })
	p.Close(context.Background())
	select {
	case err := <-errc:
		if !errors.Is(err, kernel.ErrClosed) {
			t.Errorf("Acquire after Close: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting Acquire outlived the pool's Close")
	}
}
