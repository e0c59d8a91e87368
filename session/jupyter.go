package session

import (
	"time"

	"github.com/codegw/codegw/kernel"
)

// Accessors for the Jupyter kernel API, which drives a session's kernel
// with its own connection (kernel.RawConn) beside the session's queue.

// Kernel is the session's kernel.
func (s *Session) Kernel() *kernel.Kernel { return s.k }

// Owner is the key the session belongs to.
func (s *Session) Owner() string { return s.owner }

// Touch records activity, postponing the idle cull.
func (s *Session) Touch() { s.touch() }

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.ctx.Done() }

// LastActive is the time of the session's latest activity.
func (s *Session) LastActive() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastActive
}
