package app

import (
	"context"
	"time"

	"github.com/codegw/codegw/metrics"
)

// watch registers the gauges read from the pool and the manager at each
// scrape.
func (a *App) watch() {
	a.Metrics.Watch(metrics.Gauges{
		PoolReady:    func() int { return a.Pool.Stats().Ready },
		PoolStarting: func() int { return a.Pool.Stats().Starting },
		QueueDepth:   func() int { return a.Manager.Stats().Waiting },
		Busy:         func() int { return a.Manager.Stats().Busy },
		SessionsOpen: func() int { return a.Manager.Stats().Sessions },
		KernelsRunning: func() int {
			s := a.Manager.Stats()
			return a.Pool.Stats().Ready + s.Sessions + s.Stateless
		},
	})
}

// Drain stops taking new work and waits, up to timeout, for the running
// executions to finish: /readyz fails at once, new executions (every way
// in: REST, NDJSON, websockets, Jupyter, MCP) and sessions are refused
// with 503 or an error message in the protocol at hand, and executions in
// flight, queued ones included, run on. Close then ends the sessions (websocket clients are
// told the server is shutting down), leaves the registry and stops every
// kernel. Drain reports whether everything finished in time.
func (a *App) Drain(timeout time.Duration) bool {
	a.gateway.Drain()
	a.Manager.Drain()
	a.log.Info("draining: new work is refused", "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := a.gateway.WaitIdle(ctx)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for err == nil {
		if s := a.Manager.Stats(); s.Busy == 0 && s.Waiting == 0 && s.Executions == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
		}
	}
	if err != nil {
		s := a.Manager.Stats()
		a.log.Warn("drain timed out: executions still running are stopped", "busy", s.Busy, "waiting", s.Waiting, "executions", s.Executions)
		return false
	}
	a.log.Info("drained: no execution running")
	return true
}
