package gateway

import (
	"context"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
)

// resumeTimeout bounds an implicit or explicit resume: a fresh kernel and
// the restore of its state.
const resumeTimeout = 5 * time.Minute

// routePaused serves a request for a session that is not live here but
// paused (or left by a dead instance with a checkpoint): reading or
// deleting it, or pausing it again, does not wake it; anything else
// resumes it here first and goes on to the handler. done is false for
// any other session.
func (s *Server) routePaused(c *fiber.Ctx, id string) (done bool, err error) {
	m := s.cfg.Manager
	if !m.Snapshots() {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), resumeTimeout)
	defer cancel()
	info, paused, err := m.Paused(ctx, id, owner(c))
	if err != nil || !paused {
		return err != nil, err
	}
	path := strings.TrimSuffix(c.Path(), "/")
	exact := strings.HasSuffix(path, "/"+id)
	switch {
	case exact && c.Method() == fiber.MethodDelete:
		if _, err := m.DeletePaused(ctx, id, owner(c)); err != nil {
			return true, err
		}
		return true, c.SendStatus(fiber.StatusNoContent)
	case exact && c.Method() == fiber.MethodGet && strings.Contains(path, "/sessions/"):
		return true, c.JSON(info)
	case strings.HasSuffix(path, "/pause"):
		return true, c.JSON(fiber.Map{"status": "paused", "session": info})
	case strings.HasSuffix(path, "/snapshots"):
		list, err := m.ListSnapshots(ctx, id, owner(c))
		if err != nil {
			return true, err
		}
		return true, c.JSON(fiber.Map{"snapshots": list})
	}
	if _, _, err := m.Resume(ctx, id, owner(c)); err != nil {
		return true, err
	}
	return false, nil
}

// pause snapshots the session and frees its kernel.
func (s *Server) pause(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), resumeTimeout)
	defer cancel()
	snap, err := s.cfg.Manager.Pause(ctx, sessionID(c), owner(c))
	if err != nil {
		return err
	}
	info, _, err := s.cfg.Manager.Paused(ctx, sessionID(c), owner(c))
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"status": "paused", "session": info, "snapshot": snap})
}

// resume answers once the session is live: routePaused resumed it if it
// was paused.
func (s *Server) resume(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"status": "running", "session": sess.Info(), "restored": sess.Restored()})
}

// checkpoint snapshots the session and leaves it running.
func (s *Server) checkpoint(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), resumeTimeout)
	defer cancel()
	snap, err := s.cfg.Manager.Checkpoint(ctx, sessionID(c), owner(c))
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(snap)
}

// listSnapshots lists a live session's snapshots (a paused one's are
// listed by routePaused).
func (s *Server) listSnapshots(c *fiber.Ctx) error {
	list, err := s.cfg.Manager.ListSnapshots(c.UserContext(), sessionID(c), owner(c))
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"snapshots": list})
}
