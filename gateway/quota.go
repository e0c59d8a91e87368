package gateway

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/time/rate"

	"github.com/codegw/codegw"
)

// quotas bound each key: a token bucket of requests and a count of
// executions running at once. Keys are the configured ones (or
// "anonymous"), so the map stays as small as API_KEYS.
type quotas struct {
	rate     rate.Limit // requests per second; 0: unlimited
	burst    int
	maxConc  int // executions at once; 0: unlimited
	mu       sync.Mutex
	perOwner map[string]*keyQuota
}

type keyQuota struct {
	lim     *rate.Limiter
	running int
}

func newQuotas(perSecond float64, burst, maxConc int) *quotas {
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return &quotas{rate: rate.Limit(perSecond), burst: burst, maxConc: maxConc, perOwner: map[string]*keyQuota{}}
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

// holdExecution counts an execution against its key's concurrency quota
// and the drain; release, called once when the execution is over, gives
// the slot back.
func (s *Server) holdExecution(c *fiber.Ctx) (release func(), err error) {
	if s.draining.Load() {
		return nil, drainingError(c)
	}
	q, o := s.quotas, owner(c)
	q.mu.Lock()
	k := q.of(o)
	if q.maxConc > 0 && k.running >= q.maxConc {
		q.mu.Unlock()
		return nil, refuse(c, "concurrency", time.Second, "at most %d executions at once per key; wait for one to finish", q.maxConc)
	}
	k.running++
	q.mu.Unlock()
	s.inflight.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			k.running--
			q.mu.Unlock()
			s.inflight.Add(-1)
		})
	}, nil
}

// refuse answers 429 with the limit code and Retry-After (whole seconds,
// at least 1), and names the limit for the metrics.
func refuse(c *fiber.Ctx, limit string, retry time.Duration, format string, args ...any) error {
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
	c.Locals(localLimit, limit)
	return codegw.Errorf(codegw.ELIMIT, format, args...)
}

// drainingError is the answer to new work while the instance drains.
func drainingError(c *fiber.Ctx) error {
	c.Set(fiber.HeaderRetryAfter, "1")
	return codegw.Errorf(codegw.EUNAVAILABLE, "this instance is shutting down; retry on another")
}
