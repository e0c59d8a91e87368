package gateway

import (
	"crypto/subtle"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
)

// metrics serves GET /metrics in the Prometheus text format: to callers
// with MetricsKey as a bearer token, or, without one, to loopback callers
// only.
func (s *Server) metrics(c *fiber.Ctx) error {
	if s.cfg.Metrics == nil {
		return codegw.Errorf(codegw.ENOTFOUND, "metrics are off")
	}
	if key := s.cfg.MetricsKey; key != "" {
		h := c.Get(fiber.HeaderAuthorization)
		got, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(key)) != 1 {
			return codegw.Errorf(codegw.EUNAUTHORIZED, "send Authorization: Bearer <METRICS_KEY>")
		}
	} else if !c.Context().RemoteIP().IsLoopback() {
		return codegw.Errorf(codegw.EFORBIDDEN, "metrics are served to loopback callers only; set METRICS_KEY to scrape from elsewhere")
	}
	return s.promHandler(c)
}

// forwardOutcome names a Router.Forward result for the metrics: "ok", or
// the error's code (not_found, lost, unavailable...).
func forwardOutcome(err error) string {
	if err == nil {
		return "ok"
	}
	return codegw.ErrorCode(err)
}
