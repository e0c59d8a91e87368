package gateway

import (
	"errors"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/time/rate"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session"
)

// quotas bound each key's request rate with a token bucket. Keys are the
// configured ones (or "anonymous"), so the map stays as small as API_KEYS.
// The executions at once and the kernel memory of each key are counted by
// the session manager, which every way in goes through (see
// session.LimitError).
type quotas struct {
	rate     rate.Limit // requests per second; 0: unlimited
	burst    int
	mu       sync.Mutex
	perOwner map[string]*keyQuota
}

type keyQuota struct {
	lim *rate.Limiter
}

func newQuotas(perSecond float64, burst int) *quotas {
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return &quotas{rate: rate.Limit(perSecond), burst: burst, perOwner: map[string]*keyQuota{}}
}

func (q *quotas) of(owner string) *keyQuota {
	k := q.perOwner[owner]
	if k == nil {
		k = &keyQuota{}
		if q.rate > 0 {
			k.lim = rate.NewLimiter(q.rate, q.burst)
		}
		q.perOwner[owner] = k
	}
	return k
}

// limitRate runs after auth on every API request: a key past its rate is
// answered 429 with Retry-After, before any work is done for it.
func (s *Server) limitRate(c *fiber.Ctx) error {
	q := s.quotas
	if q.rate <= 0 {
		return c.Next()
	}
	q.mu.Lock()
	k := q.of(owner(c))
	r := k.lim.Reserve()
	q.mu.Unlock()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		return refuse(c, "rate", d, "rate limit: at most %g requests per second (burst %d) per key", float64(q.rate), q.burst)
	}
	return c.Next()
}

// holdExecution refuses a REST or NDJSON execution while draining, and
// counts it for the drain until release, once its answer has left (more
// calls do nothing). The per-key quotas are the session manager's.
func (s *Server) holdExecution(c *fiber.Ctx) (release func(), err error) {
	if s.draining.Load() {
		return nil, drainingError(c)
	}
	release, err = s.cfg.Manager.HoldAnswer()
	if err != nil {
		return nil, drainingError(c)
	}
	return release, nil
}

// refuse answers 429 with the limit code and Retry-After (whole seconds,
// at least 1), and names the limit for the metrics.
func refuse(c *fiber.Ctx, limit string, retry time.Duration, format string, args ...any) error {
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
	c.Locals(localLimit, limit)
	return codegw.Errorf(codegw.ELIMIT, format, args...)
}

// noteLimit sets Retry-After and the metrics label of a refusal by one of
// the session manager's per-key quotas.
func noteLimit(c *fiber.Ctx, err error) {
	var le *session.LimitError
	if errors.As(err, &le) {
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(max(1, int(math.Ceil(le.RetryAfter.Seconds())))))
		c.Locals(localLimit, le.Limit)
	}
}

// drainingError is the answer to new work while the instance drains.
func drainingError(c *fiber.Ctx) error {
	c.Set(fiber.HeaderRetryAfter, "1")
	return codegw.Errorf(codegw.EUNAVAILABLE, "this instance is shutting down; retry on another")
}
