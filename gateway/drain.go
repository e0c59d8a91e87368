package gateway

import (
	"context"
	"time"
)

// Drain makes the server refuse new work: /readyz answers 503 at once, so
// a load balancer moves on, and new executions and sessions are refused
// with 503 and Retry-After. Requests in flight go on.
func (s *Server) Drain() { s.draining.Store(true) }

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// WaitIdle waits until no execution the gateway started is running (REST
// and NDJSON ones), or ctx ends.
func (s *Server) WaitIdle(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
