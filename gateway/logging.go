package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
)

// RequestIDHeader carries the request id: taken from the request when it
// is a sane token, made otherwise, and always returned in the response.
const RequestIDHeader = "X-Request-Id"

// Locals the handlers set for the request line.
const (
	localSession   = "log_session"
	localExecution = "log_execution"
	localLimit     = "log_limit"  // which limit refused the request (metrics label)
	localStream    = "log_stream" // a chan closed when the response's body stream ends
)

// observe runs first on every request: it names the request with an id
// (in the response header and in the context the handlers pass on, so
// kernel and cluster lines about the request carry it), answers errors
// itself so the status is known, and then logs one line and records the
// request's duration under its route pattern.
func (s *Server) observe(c *fiber.Ctx) error {
	start := time.Now()
	rid := requestID(c.Get(RequestIDHeader))
	c.Set(RequestIDHeader, rid)
	c.SetUserContext(codegw.WithLogAttrs(c.UserContext(), "request_id", rid))
	err := c.Next()
	code := ""
	if err != nil {
		code = codegw.ErrorCode(err)
		if herr := s.handleError(c, err); herr != nil {
			c.Status(fiber.StatusInternalServerError)
		}
	}
	status := c.Response().StatusCode()
	method := strings.Clone(c.Method()) // fasthttp reuses its bytes; labels are kept
	route := routeOf(c)
	if status == fiber.StatusTooManyRequests {
		limit, _ := c.Locals(localLimit).(string)
		if limit == "" {
			limit = "capacity"
		}
		s.cfg.Metrics.Refused(limit)
	}

	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs, slog.String("request_id", rid), slog.String("method", method),
		slog.String("route", route), slog.Int("status", status))
	if o := owner(c); o != "" {
		attrs = append(attrs, slog.String("key_id", o)) // a hash of the key, never the key
	}
	if id := sessionOf(c); id != "" {
		attrs = append(attrs, slog.String("session", id))
	}
	if id, _ := c.Locals(localExecution).(string); id != "" {
		attrs = append(attrs, slog.String("execution", id))
	}
	if code != "" {
		attrs = append(attrs, slog.String("code", code))
	}
	level := slog.LevelInfo
	if route == "/healthz" || route == "/readyz" || route == "/metrics" {
		level = slog.LevelDebug // probes every few seconds would drown the rest
	}
	finish := func() {
		took := time.Since(start)
		s.cfg.Metrics.Request(method, route, status, took)
		attrs = append(attrs, slog.Duration("duration", took))
		s.log.LogAttrs(context.Background(), level, "request", attrs...) // rid is in attrs already
	}
	// An NDJSON answer is written after the handler returned: its line and
	// duration wait for the stream's end (the writer always runs to it).
	if done, ok := c.Locals(localStream).(chan struct{}); ok && err == nil {
		go func() { <-done; finish() }()
	} else {
		finish()
	}
	return nil
}

// routeOf is the route pattern that answered, or "unmatched": never the
// raw path, which would make a label per session id.
func routeOf(c *fiber.Ctx) string {
	r := c.Route()
	if r == nil || r.Method == "USE" && r.Path == "/" {
		return "unmatched"
	}
	return r.Path
}

// sessionOf is the session the request was about.
func sessionOf(c *fiber.Ctx) string {
	if id, _ := c.Locals(localSession).(string); id != "" {
		return id
	}
	if r := c.Route(); r != nil {
		for _, p := range r.Params {
			if p == "id" {
				return strings.Clone(c.Params("id"))
			}
		}
	}
	return ""
}

// requestID returns h when it is a short token of safe characters, so it
// can go in a log line and a header as is; otherwise a new id.
func requestID(h string) string {
	if n := len(h); n > 0 && n <= 128 {
		ok := true
		for i := 0; i < n && ok; i++ {
			b := h[i]
			ok = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_' || b == '.' || b == ':'
		}
		if ok {
			return strings.Clone(h) // fasthttp reuses the header's bytes
		}
	}
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
