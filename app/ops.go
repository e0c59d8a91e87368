package app

import (
	"context"
	"fmt"
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

// Leave makes every client connection close after its next answer while
// the instance serves on (see gateway.Server.Leave): the first step of a
// shutdown announced ahead (SIGUSR1, a Kubernetes preStop hook).
func (a *App) Leave() {
	a.gateway.Leave()
	a.log.Info("leaving: client connections close after their next answer")
}

// Drain stops taking new work and waits, up to timeout, for the running
// executions to finish: /readyz fails at once, new executions (every way
// in: REST, NDJSON, websockets, Jupyter, MCP) and sessions are refused
// with 503 or an error message in the protocol at hand, and executions in
// flight, queued ones included, run on. At the timeout every execution
// still running is interrupted and answered (status interrupted, its
// error naming the shutdown), and Drain waits for those answers to leave
// (its kernel is killed if the interrupt is not obeyed within the grace).
// Close then ends the sessions (websocket clients are told the server is
// shutting down), leaves the registry and stops every kernel. Drain
// reports whether everything finished in time.
func (a *App) Drain(timeout time.Duration) bool {
	a.gateway.Drain()
	a.Manager.Drain()
	a.log.Info("draining: new work is refused", "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if a.waitIdle(ctx) == nil {
		a.log.Info("drained: no execution running")
		a.pauseAll(ctx)
		return true
	}
	s := a.Manager.Stats()
	a.log.Warn("drain timed out: executions still running are interrupted", "busy", s.Busy, "waiting", s.Waiting, "executions", s.Executions)
	a.Manager.Abort(fmt.Sprintf("the server is shutting down and the execution did not finish within the drain timeout (%v)", timeout))
	// The interrupt, then the kill after the grace, ends each one; the
	// answers then leave through the gateway.
	ctx, cancel = context.WithTimeout(context.Background(), a.cfg.InterruptGrace+15*time.Second)
	defer cancel()
	if err := a.waitIdle(ctx); err != nil {
		a.log.Error("executions still running after the interrupt", "err", err)
	}
	a.pauseAll(ctx)
	return false
}

// pauseAll pauses the sessions of this instance within ctx (snapshots on):
// a restart, on this instance or another, resumes them with their state.
func (a *App) pauseAll(ctx context.Context) {
	if !a.Manager.Snapshots() {
		return
	}
	// The pauses get at least a few seconds even when the executions took
	// the whole drain timeout.
	if d, ok := ctx.Deadline(); !ok || time.Until(d) < 10*time.Second {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
	}
	start := time.Now()
	paused, failed := a.Manager.PauseAll(ctx)
	if paused+failed > 0 {
		a.log.Info("drain: sessions paused", "paused", paused, "failed", failed, "took", time.Since(start))
	}
}

// waitIdle waits until no execution runs, through the gateway or in the
// manager (one count, which says when it reaches zero), or ctx ends.
func (a *App) waitIdle(ctx context.Context) error { return a.Manager.WaitIdle(ctx) }
