package gateway

import (
	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
)

// Drain makes the server refuse new work: /readyz answers 503 at once, so
// a load balancer moves on, and new executions and sessions are refused
// with 503 and Retry-After. Requests in flight go on.
func (s *Server) Drain() { s.draining.Store(true) }

// Leave makes the server close each client connection after its next
// answer (Connection: close) while it serves as before: a client keeping
// connections alive to an instance that is about to drain (a Kubernetes
// pod being deleted: its preStop hook sends SIGUSR1) dials again, and the
// load balancer, which no longer lists the instance, sends it elsewhere.
// A drain does the same.
func (s *Server) Leave() { s.leaving.Store(true) }

// closeWhenLeaving asks for the connection to close after this answer
// once Leave or Drain was called; a websocket upgrade keeps its
// connection.
func (s *Server) closeWhenLeaving(c *fiber.Ctx) error {
	if (s.leaving.Load() || s.draining.Load()) && !websocket.IsWebSocketUpgrade(c) {
		c.Context().SetConnectionClose()
	}
	return c.Next()
}

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }
