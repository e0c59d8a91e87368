// Package gateway is the HTTP and websocket face of the service, built on
// Fiber: the stateless execute of the original project, sessions over REST,
// NDJSON and websocket, API-key auth, error mapping and the image and file
// stores served under /images and /files. Requests for sessions another
// instance holds go to a Router: Forwarder, over a cluster.Router that
// locates them.
package gateway

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/metrics"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/artifact"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/web"
)

// Config configures the HTTP server.
type Config struct {
	Manager *session.Manager
	Images  *artifact.Store
	Files   *artifact.Store
	// APIKeys admits callers; empty means the server is open (allowed only
	// on loopback unless AllowOpen, which cmd enforces).
	APIKeys []string
	// BodyLimit caps request bodies (default 4 MiB); uploads have their own.
	BodyLimit   int
	UploadLimit int64
	// Capabilities is served at GET /capabilities.
	Capabilities func() any
	// Ready reports whether the server can take executions (GET /readyz).
	Ready  func() error
	Logger *slog.Logger
	// PingInterval keeps idle websockets open (default 20s).
	PingInterval time.Duration
	// MCP, when set, serves the Model Context Protocol at /mcp for
	// authenticated callers (see mcpserver.WithOwner).
	MCP http.Handler
	// Router, set in a multi-instance deployment, serves requests for
	// sessions this instance does not hold; nil with a single instance.
	Router Router

	// Metrics records requests, refusals and websockets and is served at
	// /metrics; nil records nothing and /metrics is 404.
	Metrics *metrics.Metrics
	// MetricsKey, when set, is the bearer token /metrics asks for; when
	// empty, /metrics answers loopback callers only.
	MetricsKey string
	// RateLimit is the requests per second each key may make (0:
	// unlimited), RateBurst the bucket's size (0: one second's worth).
	RateLimit float64
	RateBurst int

	// DifyNetwork is what a Dify run asking for network gets:
	// DifyNetworkRefuse (the default when empty), DifyNetworkOffline or
	// DifyNetworkAllow (see docs/dify-librechat.md).
	DifyNetwork string
	// DifyTimeout bounds each Dify run (default 15s, dify-sandbox's
	// worker_timeout), within the server's execution timeout.
	DifyTimeout time.Duration
	// LibreChatDir holds the files of LibreChat's sessions (see
	// librechat.go); empty turns /librechat's file routes into 404s.
	LibreChatDir string
	// LibreChatRetention is how long an untouched LibreChat session's files
	// are kept (0: forever).
	LibreChatRetention time.Duration
}

// Router forwards requests for sessions other instances hold and lists
// sessions across instances; *Forwarder is the one a multi-instance
// deployment uses.
type Router interface {
	// Forward answers a request for session id, which this instance does
	// not hold, on behalf of owner: by forwarding it to the holder, or with
	// the error to answer (404, 410, 503).
	Forward(c *fiber.Ctx, id, owner string) error
	// Sessions lists owner's sessions on every instance; local lists this
	// instance's.
	Sessions(c *fiber.Ctx, owner string, local func(owner string) []codegw.SessionInfo) ([]codegw.SessionInfo, error)
}

// Server is the Fiber app and what it needs.
type Server struct {
	cfg  Config
	app  *fiber.App
	log  *slog.Logger
	keys map[string]string // sha256(key) -> owner id
	jup  bridges           // Jupyter websocket bridges by kernel id

	quotas      *quotas
	promHandler fiber.Handler
	draining    atomic.Bool
	leaving     atomic.Bool  // Leave: every answer closes its connection
	libreSwept  atomic.Int64 // unix time of the last sweep of LibreChatDir
	// mcpCtx parents the requests bridged to Config.MCP; Shutdown cancels
	// it so open event streams end.
	mcpCtx  context.Context
	stopMCP context.CancelFunc
}

// Defaults of Config's zero fields, and the service's (app.DefaultConfig).
const (
	DefaultBodyLimit    = 4 << 20          // request bodies but uploads
	DefaultUploadLimit  = 100 << 20        // one upload
	DefaultPingInterval = 20 * time.Second // websocket keep-alive
)

// New returns a Server with every route mounted.
func New(cfg Config) *Server {
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = DefaultBodyLimit
	}
	if cfg.UploadLimit <= 0 {
		cfg.UploadLimit = DefaultUploadLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	s := &Server{cfg: cfg, log: cfg.Logger, keys: map[string]string{},
		quotas: newQuotas(cfg.RateLimit, cfg.RateBurst)}
	if cfg.Metrics != nil {
		s.promHandler = adaptor.HTTPHandler(cfg.Metrics.Handler())
	}
	s.mcpCtx, s.stopMCP = context.WithCancel(context.Background())
	for _, k := range cfg.APIKeys {
		sum := sha256.Sum256([]byte(k))
		s.keys[hex.EncodeToString(sum[:])] = "key_" + hex.EncodeToString(sum[:8])
	}
	bodyLimit := cfg.BodyLimit
	if int64(bodyLimit) < cfg.UploadLimit+1<<20 {
		bodyLimit = int(cfg.UploadLimit + 1<<20) // the multipart route checks its own limit
	}
	s.app = fiber.New(fiber.Config{
		BodyLimit:             bodyLimit,
		DisableStartupMessage: true,
		ErrorHandler:          s.handleError,
		ReadTimeout:           5 * time.Minute,
		// A request's line and headers: 431 past this, 414 past maxURL.
		ReadBufferSize:    headerLimit,
		IdleTimeout:       2 * time.Minute,
		StreamRequestBody: false,
	})
	s.routes()
	return s
}

// Limits on a request's head: its line and headers together may take
// headerLimit bytes (431 beyond), its URL maxURL bytes (414 beyond).
const (
	headerLimit = 16 << 10
	maxURL      = 8 << 10
)

// recoverRequest turns a panic in a handler into a 500 internal error for
// that request alone (codegw.Recover logs and counts it).
func (s *Server) recoverRequest(c *fiber.Ctx) (err error) {
	defer codegw.Recover(c.UserContext(), "http handler", func(p error) { err = codegw.PanicErr(p) })
	return c.Next()
}

// App is the Fiber app, for tests and Listen.
func (s *Server) App() *fiber.App { return s.app }

// Listen serves on addr until Shutdown.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve serves on ln until Shutdown. A connection the server ends while its
// client still sends is closed gracefully (lingerListener), so an
// oversized request gets its 414 or 431 instead of a reset.
func (s *Server) Serve(ln net.Listener) error { return s.app.Listener(lingerListener{ln}) }

// Shutdown stops accepting requests and waits for those in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopMCP()
	return s.app.ShutdownWithContext(ctx)
}

func (s *Server) routes() {
	a := s.app
	a.Use(s.recoverRequest)
	a.Use(s.observe)
	a.Use(s.closeWhenLeaving)
	a.Use(func(c *fiber.Ctx) error {
		if len(c.Request().RequestURI()) > maxURL {
			return c.Status(fiber.StatusRequestURITooLong).JSON(fiber.Map{
				"error": fmt.Sprintf("URL over %d KiB", maxURL>>10), "code": codegw.ETOOLARGE})
		}
		return c.Next()
	})
	a.Get("/metrics", s.metrics)
	a.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"status": "ok"}) })
	a.Get("/readyz", s.readyz)
	a.Get("/capabilities", s.capabilities)
	a.Get("/openapi.json", s.openapi)
	a.Get("/images/:name", s.serveStore(s.cfg.Images, false))
	a.Get("/files/:name", s.serveStore(s.cfg.Files, true))
	web.Mount(a)

	api := a.Group("/api/v1", s.auth, s.limitRate)
	api.Post("/execute", s.execute)
	api.Post("/sessions", s.createSession)
	api.Get("/sessions", s.listSessions)
	api.Use("/sessions/:id", s.route)
	api.Get("/sessions/:id", s.getSession)
	api.Delete("/sessions/:id", s.deleteSession)
	api.Post("/sessions/:id/execute", s.sessionExecute)
	api.Post("/sessions/:id/interrupt", s.interrupt)
	api.Post("/sessions/:id/restart", s.restart)
	api.Post("/sessions/:id/files", s.upload)
	api.Get("/sessions/:id/files", s.listOutputs)
	api.Get("/sessions/:id/files/:name", s.downloadOutput)
	api.Get("/sessions/:id/ws", s.websocket)
	api.Post("/sessions/:id/pause", s.pause)
	api.Post("/sessions/:id/resume", s.resume)
	api.Post("/sessions/:id/checkpoint", s.checkpoint)
	api.Get("/sessions/:id/snapshots", s.listSnapshots)
	s.jupyterRoutes()
	s.difyRoutes()
	s.libreRoutes()
	if s.cfg.MCP != nil {
		for _, m := range []string{fiber.MethodGet, fiber.MethodPost, fiber.MethodDelete} {
			a.Add(m, "/mcp", s.auth, s.mcp)
		}
	}
	a.Use(func(c *fiber.Ctx) error {
		return codegw.Errorf(codegw.ENOTFOUND, "no route for %s %s", c.Method(), c.Path())
	})
}

// route runs before every /sessions/:id handler: local sessions go on to
// the handler, others to the Router.
func (s *Server) route(c *fiber.Ctx) error {
	id := sessionID(c)
	if s.cfg.Manager.Local(id) {
		return c.Next()
	}
	if s.cfg.Router == nil {
		if done, err := s.routePaused(c, id); done || err != nil {
			return err
		}
		return c.Next()
	}
	// Forwarding reads the record anyway: only a session it finds paused,
	// or lost with its instance (it may have a checkpoint), is looked at for
	// a resume here, so a forwarded call costs no second store read.
	err := s.cfg.Router.Forward(c, id, owner(c))
	if code := codegw.ErrorCode(err); errors.Is(err, store.ErrPaused) || code == codegw.ELOST {
		if done, perr := s.routePaused(c, id); done || perr != nil {
			return perr
		}
		if s.cfg.Manager.Local(id) {
			return c.Next()
		}
	}
	s.cfg.Metrics.Forward(forwardOutcome(err))
	return err
}

// statusOf maps application error codes to HTTP statuses.
var statusOf = map[string]int{
	codegw.EINVALID:      fiber.StatusBadRequest,
	codegw.ENOTFOUND:     fiber.StatusNotFound,
	codegw.EUNAUTHORIZED: fiber.StatusUnauthorized,
	codegw.EFORBIDDEN:    fiber.StatusForbidden,
	codegw.ETOOLARGE:     fiber.StatusRequestEntityTooLarge,
	codegw.ELIMIT:        fiber.StatusTooManyRequests,
	codegw.EBUSY:         fiber.StatusServiceUnavailable,
	codegw.ECONFLICT:     fiber.StatusConflict,
	codegw.EUNAVAILABLE:  fiber.StatusServiceUnavailable,
	codegw.ELOST:         fiber.StatusGone,
	codegw.EFETCH:        fiber.StatusUnprocessableEntity,
	codegw.EINTERNAL:     fiber.StatusInternalServerError,
}

// handleError answers every error as {"error","code"}: application errors
// with their message, Fiber's own (bad method, body too large) mapped, and
// anything else as an internal error, logged.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	var fe *fiber.Error
	code, msg := codegw.ErrorCode(err), codegw.ErrorMessage(err)
	status := statusOf[code]
	if errors.As(err, &fe) {
		status, msg = fe.Code, fe.Message
		switch {
		case fe.Code == fiber.StatusRequestEntityTooLarge:
			code, msg = codegw.ETOOLARGE, "request body too large"
		case fe.Code == fiber.StatusRequestHeaderFieldsTooLarge:
			code, msg = codegw.ETOOLARGE, fmt.Sprintf("request line and headers over %d KiB", headerLimit>>10)
		case fe.Code == fiber.StatusNotFound:
			code = codegw.ENOTFOUND
		case fe.Code == fiber.StatusMethodNotAllowed:
			code = codegw.EINVALID
		case fe.Code < 500:
			code = codegw.EINVALID
		default:
			code = codegw.EINTERNAL
		}
	}
	if status == 0 {
		status = fiber.StatusInternalServerError
	}
	noteLimit(c, err)
	if code == codegw.EINTERNAL {
		s.log.Error("internal error", "method", c.Method(), "path", c.Path(), "err", err)
	}
	if strings.HasPrefix(c.Path(), "/v1/sandbox/") { // Dify's API: its envelope
		return difyFail(c, status, -status, "%s", msg)
	}
	return c.Status(status).JSON(fiber.Map{"error": msg, "code": code})
}

// auth resolves the caller's API key into an owner id.
func (s *Server) auth(c *fiber.Ctx) error {
	if len(s.keys) == 0 {
		c.Locals("owner", "anonymous")
		return c.Next()
	}
	// Bearer, or Jupyter's "token" scheme and ?token= query.
	key := ""
	h := c.Get(fiber.HeaderAuthorization)
	if scheme, rest, ok := strings.Cut(h, " "); ok && (strings.EqualFold(scheme, "Bearer") || strings.EqualFold(scheme, "token")) {
		key = strings.TrimSpace(rest)
	} else if t := c.Query("token"); t != "" {
		key = t
	}
	if key == "" {
		return codegw.Errorf(codegw.EUNAUTHORIZED, "missing API key: send Authorization: Bearer <key>")
	}
	o, ok := s.keyOwner(key)
	if !ok {
		return codegw.Errorf(codegw.EUNAUTHORIZED, "unknown API key")
	}
	c.Locals("owner", o)
	return c.Next()
}

func owner(c *fiber.Ctx) string {
	o, _ := c.Locals("owner").(string)
	return o
}

func (s *Server) readyz(c *fiber.Ctx) error {
	if s.draining.Load() {
		return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "draining", "error": "this instance is shutting down"})
	}
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "not ready", "error": err.Error()})
		}
	}
	return c.JSON(fiber.Map{"status": "ready", "stats": s.cfg.Manager.Stats()})
}

func (s *Server) capabilities(c *fiber.Ctx) error {
	if s.cfg.Capabilities == nil {
		return c.JSON(fiber.Map{})
	}
	return c.JSON(s.cfg.Capabilities())
}

// serveStore serves stored images or files; unknown names are 404.
func (s *Server) serveStore(st *artifact.Store, download bool) fiber.Handler {
	return func(c *fiber.Ctx) error {
		name, _ := url.PathUnescape(c.Params("name"))
		obj, err := st.Open(name)
		if err != nil {
			if codegw.ErrorCode(err) == codegw.ENOTFOUND {
				return codegw.Errorf(codegw.ENOTFOUND, "%q not found", name)
			}
			return err
		}
		c.Set(fiber.HeaderContentType, obj.ContentType)
		c.Set("X-Content-Type-Options", "nosniff")
		c.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; sandbox")
		c.Set(fiber.HeaderCacheControl, "private, max-age=3600")
		if download {
			dn := obj.OriginalName
			if dn == "" {
				dn = obj.Name
			}
			c.Set(fiber.HeaderContentDisposition, contentDisposition(dn))
		}
		return c.SendStream(obj.File, int(obj.Size))
	}
}

// contentDisposition builds an attachment header with an ASCII fallback and
// the UTF-8 name (RFC 6266).
func contentDisposition(name string) string {
	ascii := strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '_'
		}
		return r
	}, name)
	return fmt.Sprintf(`attachment; filename="%s"; filename*=UTF-8''%s`, ascii, extValue(name))
}

// extValue percent-encodes s as an RFC 5987 ext-value: every byte but the
// attr-chars. (url.PathEscape keeps ':', '=', '@' and more, which made the
// header unparsable for a name like "a=b.csv".)
func extValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// decodeExecute parses an execute body with clear errors for every fault.
func (s *Server) decodeExecute(c *fiber.Ctx) (codegw.ExecuteRequest, error) {
	var req codegw.ExecuteRequest
	body := c.Body()
	if len(body) > s.cfg.BodyLimit { // Fiber's own limit is raised for uploads
		return req, codegw.Errorf(codegw.ETOOLARGE, "request body is %d bytes; the limit is %d", len(body), s.cfg.BodyLimit)
	}
	if len(body) == 0 {
		return req, codegw.Errorf(codegw.EINVALID, "request body is empty; send JSON like {\"code\": \"print(1)\"}")
	}
	// One decode: Code is shadowed by a pointer so that a missing "code"
	// is told apart from an empty one.
	var in struct {
		codegw.ExecuteRequest
		Code *string `json:"code"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te) && te.Field != "":
			field := te.Field[strings.LastIndexByte(te.Field, '.')+1:] // "ExecuteRequest.files" -> "files"
			return req, codegw.Errorf(codegw.EINVALID, "field %q must be %s", field, jsonKind(te.Type.Kind().String()))
		case errors.As(err, &te):
			return req, codegw.Errorf(codegw.EINVALID, "request body is not a JSON object")
		}
		return req, codegw.Errorf(codegw.EINVALID, "request body is not a JSON object: %v", err)
	}
	if in.Code == nil {
		return req, codegw.Errorf(codegw.EINVALID, "code is required")
	}
	req = in.ExecuteRequest
	req.Code = *in.Code
	for _, u := range req.Files {
		if strings.TrimSpace(u) == "" {
			return req, codegw.Errorf(codegw.EINVALID, "files must be non-empty URLs")
		}
	}
	return req, nil
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "slice":
		return "an array of strings"
	case "float64", "int":
		return "a number"
	case "bool":
		return "a boolean"
	}
	return "of another type"
}

// wantsStream reports whether the caller asked for NDJSON events.
func wantsStream(c *fiber.Ctx) bool {
	return strings.Contains(c.Get(fiber.HeaderAccept), "application/x-ndjson") || c.Query("stream") == "1" || c.Query("stream") == "true"
}

func (s *Server) execute(c *fiber.Ctx) error {
	return s.answerExecute(c, func(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (string, func() (*codegw.ExecuteResult, error), error) {
		r, err := s.cfg.Manager.Reserve(owner(c), req)
		if err != nil {
			return "", nil, err
		}
		return r.ID(), func() (*codegw.ExecuteResult, error) {
			defer r.Release() // after Execute it does nothing; after a panic it gives the quotas back
			fault("stateless execution")
			return r.Execute(ctx, emit)
		}, nil
	})
}

// starter takes an execution's place (its key's quotas, a session's
// queue) and returns its id and a wait that runs it to its answer. A
// refusal comes from the starter itself, in time for a 4xx.
type starter func(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (id string, wait func() (*codegw.ExecuteResult, error), err error)

// answerExecute answers an execute call started by start (stateless, or a
// session's): it decodes the body, holds the execution for the drain while
// it goes, and answers NDJSON events or one JSON answer. Refusals are
// answered before a stream starts; the request line names the execution.
func (s *Server) answerExecute(c *fiber.Ctx, start starter) error {
	req, err := s.decodeExecute(c)
	if err != nil {
		return err
	}
	release, err := s.holdExecution(c)
	if err != nil {
		return err
	}
	// fasthttp does not cancel on disconnect: the execution's own deadline
	// bounds it. The user context carries only the log ids.
	ctx := c.UserContext()
	var events chan codegw.Event
	var emit func(codegw.Event)
	if wantsStream(c) {
		events = make(chan codegw.Event, 256)
		emit = func(ev codegw.Event) { events <- ev }
	}
	id, wait, err := start(ctx, req, emit)
	if err != nil {
		release()
		return err
	}
	c.Locals(localExecution, id)
	if events != nil {
		return s.stream(c, events, func() (*codegw.ExecuteResult, error) {
			defer release()
			return wait()
		})
	}
	defer release()
	res, err := wait()
	if err != nil {
		return err
	}
	return c.JSON(res)
}

// stream answers with NDJSON: one event per line (from events, which the
// execution's emit fills), flushed as it happens, and the full answer of
// wait as the last line {"type":"response",...}.
func (s *Server) stream(c *fiber.Ctx, events chan codegw.Event, wait func() (*codegw.ExecuteResult, error)) error {
	c.Set(fiber.HeaderContentType, "application/x-ndjson")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no")
	ended := make(chan struct{}) // for the request line (see observe)
	c.Locals(localStream, ended)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer close(ended)
		defer codegw.Recover(context.Background(), "execution stream writer", nil)
		type outcome struct {
			res *codegw.ExecuteResult
			err error
		}
		done := make(chan outcome, 1)
		go func() {
			defer codegw.Recover(context.Background(), "execution stream", func(err error) {
				done <- outcome{nil, codegw.PanicErr(err)}
			})
			res, err := wait()
			done <- outcome{res, err}
		}()
		enc := json.NewEncoder(w)
		write := func(v any) {
			enc.Encode(v)
			w.Flush()
		}
		for {
			select {
			case ev := <-events:
				write(ev)
			case o := <-done:
				for {
					select {
					case ev := <-events:
						write(ev)
						continue
					default:
					}
					break
				}
				if o.err != nil {
					write(fiber.Map{"type": "error_response", "error": codegw.ErrorMessage(o.err), "code": codegw.ErrorCode(o.err)})
				} else {
					write(struct {
						Type string `json:"type"`
						*codegw.ExecuteResult
					}{"response", o.res})
				}
				return
			}
		}
	})
	return nil
}
