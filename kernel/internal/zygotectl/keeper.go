package zygotectl

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Server is a running zygote as a Keeper sees it.
type Server interface {
	// Dead reports whether it ended: a new one is needed.
	Dead() bool
	// Stop ends it, and its kernels with it; it does not wait.
	Stop()
}

// ErrClosed is Get's error once the Keeper is closed.
var ErrClosed = errors.New("provisioner closed")

// Keeper keeps one zygote running for a provisioner: Get starts one when
// there is none or the last one died, and concurrent callers share one
// start. The zero value is ready to use.
type Keeper[Z Server] struct {
	mu       sync.Mutex
	cur      Z
	ok       bool  // cur is set
	err      error // of the last start
	starting chan struct{}
	closed   bool
}

// Get returns the running zygote, starting one with start if needed. A
// start outlives the ctx of the call that began it: the others wait for
// it, and the next Get finds it.
func (k *Keeper[Z]) Get(ctx context.Context, start func(context.Context) (Z, error)) (Z, error) {
	var none Z
	for {
		k.mu.Lock()
		if k.closed {
			k.mu.Unlock()
			return none, fmt.Errorf("zygote: %w", ErrClosed)
		}
		if k.ok && !k.cur.Dead() {
			z := k.cur
			k.mu.Unlock()
			return z, nil
		}
		if k.starting == nil {
			done := make(chan struct{})
			k.starting = done
			go func() {
				z, err := start(context.Background())
				k.mu.Lock()
				if k.closed && err == nil {
					z.Stop()
				}
				k.cur, k.ok, k.err, k.starting = z, err == nil, err, nil
				k.mu.Unlock()
				close(done)
			}()
		}
		done := k.starting
		k.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return none, fmt.Errorf("zygote: %w", ctx.Err())
		}
		k.mu.Lock()
		z, ok, err := k.cur, k.ok, k.err
		k.mu.Unlock()
		if err != nil {
			return none, err
		}
		if ok && !z.Dead() {
			return z, nil
		}
	}
}

// Current returns the running zygote, if there is one.
func (k *Keeper[Z]) Current() (Z, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.ok || k.cur.Dead() {
		var none Z
		return none, false
	}
	return k.cur, true
}

// Close refuses later Gets (a start under way stops what it started) and
// returns the last zygote started, for the caller to stop and wait for.
func (k *Keeper[Z]) Close() (Z, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	return k.cur, k.ok
}
