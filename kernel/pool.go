package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// PoolConfig configures a Pool.
type PoolConfig struct {
	// Size is how many ready kernels are kept ahead of demand. Zero means
	// no warm kernels: Acquire starts one.
	Size int
	// MaxStarting bounds concurrent kernel starts (0: DefaultMaxStarting).
	MaxStarting int
	// Launch starts one ready kernel.
	Launch func(ctx context.Context) (*Kernel, error)
	Logger *slog.Logger
}

// Pool keeps ready kernels ahead of demand. Each kernel is handed to one
// caller, who closes it when done; the pool then starts a replacement.
// Kernels that die while waiting in the pool are replaced: their process's
// exit tells it. Their heartbeat is watched only once they are handed out
// (Kernel.Park), so an idle pool costs the gateway no wake-ups.
type Pool struct {
	cfg    PoolConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{} // nudges the filler

	mu       sync.Mutex
	ready    []*Kernel
	waiters  []chan *Kernel // Acquire calls waiting, oldest first; each gets one kernel
	starting int
	lastErr  error
	failures int
	closed   bool
}

// DefaultMaxStarting is PoolConfig.MaxStarting's default, and the service's
// (POOL_MAX_STARTING): two starts at once keep two cores busy with forked
// kernels, whose starts wait on the zygote as much as on the CPU.
const DefaultMaxStarting = 2

// NewPool returns a Pool and starts filling it.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.MaxStarting <= 0 {
		cfg.MaxStarting = DefaultMaxStarting
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{cfg: cfg, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1)}
	p.wg.Add(1)
	go p.fill()
	return p
}

func (p *Pool) nudge() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// fill keeps len(ready)+starting at Size.
func (p *Pool) fill() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		for !p.closed && len(p.ready)+p.starting < p.cfg.Size && p.starting < p.cfg.MaxStarting {
			p.starting++
			p.wg.Add(1)
			go p.startOne()
		}
		p.mu.Unlock()
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		}
	}
}

func (p *Pool) startOne() {
	defer p.wg.Done()
	defer p.nudge()
	begin := time.Now()
	k, err := p.cfg.Launch(p.ctx)
	if err != nil {
		p.mu.Lock()
		p.lastErr, p.failures = err, p.failures+1
		backoff := min(time.Duration(p.failures)*200*time.Millisecond, 5*time.Second)
		p.mu.Unlock()
		if p.ctx.Err() == nil {
			p.cfg.Logger.Error("pool: kernel start failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-p.ctx.Done():
			}
		}
		p.mu.Lock()
		p.starting--
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	p.starting--
	if p.closed {
		p.mu.Unlock()
		p.discard(k)
		return
	}
	p.failures, p.lastErr = 0, nil
	k.Park() // until handed out: no heartbeat while it waits
	p.cfg.Logger.Debug("pool: kernel ready", "kernel", k.ID(), "took", time.Since(begin))
	if p.handOver(k) {
		p.mu.Unlock()
		return
	}
	p.ready = append(p.ready, k)
	p.mu.Unlock()
	p.wg.Add(1)
	go p.guard(k)
}

// handOver gives k to the oldest waiting Acquire, if any, reporting
// whether it did. Kernels go to callers in the order they asked: under
// saturation no caller loses the race for every new kernel. p.mu is held.
func (p *Pool) handOver(k *Kernel) bool {
	if len(p.waiters) == 0 {
		return false
	}
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	w <- k // buffered: never blocks
	return true
}

// guard replaces k if it dies while it waits in the pool.
func (p *Pool) guard(k *Kernel) {
	defer p.wg.Done()
	select {
	case <-p.ctx.Done():
		return
	case <-k.Dead():
	}
	if p.remove(k) {
		p.cfg.Logger.Warn("pool: a waiting kernel died; replacing it", "kernel", k.ID(), "err", k.Err())
		p.discard(k)
		p.nudge()
	}
}

// remove takes k out of the ready list, reporting whether it was there.
func (p *Pool) remove(k *Kernel) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, r := range p.ready {
		if r == k {
			p.ready = append(p.ready[:i], p.ready[i+1:]...)
			return true
		}
	}
	return false
}

// Acquire hands out a ready kernel, waiting for one if none is ready. The
// caller owns it and must Close it. With Size 0 it starts one itself.
func (p *Pool) Acquire(ctx context.Context) (*Kernel, error) {
	if p.cfg.Size == 0 {
		return p.cfg.Launch(ctx)
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("kernel pool: %w", ErrClosed)
		}
		var k *Kernel
		if len(p.ready) > 0 && len(p.waiters) == 0 {
			k = p.ready[0]
			p.ready = p.ready[1:]
			p.mu.Unlock()
		} else {
			w := make(chan *Kernel, 1)
			p.waiters = append(p.waiters, w)
			p.mu.Unlock()
			var err error
			if k, err = p.wait(ctx, w); err != nil {
				return nil, err
			}
		}
		p.nudge()
		if k.Err() != nil { // died between its guard's check and now
			p.discard(k)
			continue
		}
		k.Unpark()
		return k, nil
	}
}

// wait waits for the kernel handed to waiter w. On ctx's end it leaves the
// queue; a kernel handed over meanwhile goes to the next in line.
func (p *Pool) wait(ctx context.Context, w chan *Kernel) (*Kernel, error) {
	select {
	case k := <-w:
		return k, nil
	case <-ctx.Done():
	case <-p.ctx.Done(): // the pool closed
	}
	p.mu.Lock()
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			break
		}
	}
	lastErr := p.lastErr
	var orphan *Kernel
	select {
	case k := <-w: // handed over just before we left the queue
		switch {
		case p.closed:
			orphan = k
		case !p.handOver(k):
			p.ready = append([]*Kernel{k}, p.ready...)
			p.wg.Add(1)
			go p.guard(k)
		}
	default:
	}
	p.mu.Unlock()
	if orphan != nil {
		p.discard(orphan)
	}
	if ctx.Err() == nil {
		return nil, fmt.Errorf("kernel pool: %w", ErrClosed)
	}
	if lastErr != nil {
		return nil, fmt.Errorf("kernel pool: no kernel ready (last start failed: %v): %w", lastErr, ctx.Err())
	}
	return nil, fmt.Errorf("kernel pool: no kernel ready: %w", ctx.Err())
}

// PoolStats is a snapshot of the pool.
type PoolStats struct {
	Ready    int    `json:"ready"`
	Starting int    `json:"starting"`
	Size     int    `json:"size"`
	Waiting  int    `json:"waiting"` // Acquire calls waiting for a kernel
	LastErr  string `json:"last_error,omitempty"`
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := PoolStats{Ready: len(p.ready), Starting: p.starting, Size: p.cfg.Size, Waiting: len(p.waiters)}
	if p.lastErr != nil {
		s.LastErr = p.lastErr.Error()
	}
	return s
}

// Close stops filling, waits for starts in flight and closes every ready
// kernel, so no kernel outlives the pool. It returns the kernels' close
// errors, joined.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	errs := make([]error, len(ready))
	var wg sync.WaitGroup
	for i, k := range ready {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = k.Close(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// discard closes a kernel nobody will use, logging a failure: what it
// leaves behind (a process, a container, files) is then the reaper's.
func (p *Pool) discard(k *Kernel) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.Close(ctx); err != nil {
		p.cfg.Logger.Error("pool: close kernel", "kernel", k.ID(), "err", err)
	}
}
