package cluster

// Routing between the instances of a multi-instance deployment.
//
// Every instance records the sessions it holds in the shared store (Redis)
// and keeps an entry with its internal address in the store's instance
// registry, refreshed by heartbeats. A request for a session this instance
// does not hold is located in the store and forwarded to the holder:
// REST calls (NDJSON streams, uploads and downloads included) through an
// HTTP reverse proxy that flushes as bytes arrive, websockets by dialing
// the holder's websocket and pumping frames both ways. The load balancer
// in front therefore needs no sticky sessions.
//
// Answers, in order: a session not in the store, or another key's, is 404
// (never revealing that it exists); a session whose instance's registry
// entry expired is 410 session_lost; a store that cannot be reached is 503
// unavailable; a live holder that does not answer is 503 unavailable (it
// becomes 410 once its entry expires). Forwarded requests carry
// ProxyHeader with a token derived from the cluster secret; a request
// carrying a valid token is never forwarded again, so a stale record can
// not make two instances bounce a request between them.

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	gws "github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/store"
)

// ProxyHeader marks a request that one instance forwarded to another. Its
// value is ProxyToken(secret); requests with any other value are treated as
// coming from outside.
const ProxyHeader = "X-Codegw-Proxy"

// ProxyToken returns the value of ProxyHeader for a cluster secret: an
// HMAC, so that the secret itself never travels.
func ProxyToken(secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("codegw proxied request v1"))
	return hex.EncodeToString(m.Sum(nil))
}

const (
	storeCallTimeout = 3 * time.Second // one store call (Redis gives up after ~2 s)
	proxyDialTimeout = 2 * time.Second // a live peer answers at once; a dead one must not stall
	maxProxyDuration = time.Hour       // a forwarded request; executions have their own deadlines
	bufferedLimit    = 1 << 20         // upstream bodies up to this size are sent in one piece
)

// hopHeaders are the hop-by-hop headers a proxy must not forward (RFC 9110
// 7.6.1), plus those the proxy sets itself.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true, ProxyHeader: true,
}

// RouteStore is the part of the store contract routing reads: where a
// session is, which instances are alive, whose sessions exist.
type RouteStore interface {
	store.Locator
	ListSessions(ctx context.Context, owner string) ([]store.SessionRecord, error)
	ListInstances(ctx context.Context) ([]store.Instance, error)
}

// RouterConfig configures a Router.
type RouterConfig struct {
	// Instance is this instance's id (EXECUTOR_INSTANCE_ID).
	Instance string
	// Secret, the same on every instance (CLUSTER_SECRET), authenticates
	// forwarded requests.
	Secret string
	// PingInterval is the holder's websocket keep-alive interval (default
	// 20s): a forwarded websocket whose holder sends nothing for three
	// intervals is cut.
	PingInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Router forwards requests for sessions held by other instances and lists
// sessions across instances. It is safe for concurrent use.
type Router struct {
	st     RouteStore
	self   string
	token  string
	ping   time.Duration
	log    *slog.Logger
	client *http.Client
	dialer *gws.Dialer
}

// NewRouter returns a Router that locates sessions in st.
func NewRouter(st RouteStore, cfg RouterConfig) *Router {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 20 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dial := (&net.Dialer{Timeout: proxyDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr := &http.Transport{
		DialContext:         dial,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // pass the holder's encoding through untouched
		ForceAttemptHTTP2:   false,
	}
	return &Router{
		st: st, self: cfg.Instance, token: ProxyToken(cfg.Secret), ping: cfg.PingInterval, log: cfg.Logger,
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		dialer: &gws.Dialer{NetDialContext: dial, HandshakeTimeout: 5 * time.Second, ReadBufferSize: 16 << 10, WriteBufferSize: 4 << 10},
	}
}

// forwarded reports whether c was forwarded by another instance.
func (r *Router) forwarded(c *fiber.Ctx) bool {
	v := c.Get(ProxyHeader)
	return v != "" && hmac.Equal([]byte(v), []byte(r.token))
}

// Forward serves a request for session id, which this instance does not
// hold, on behalf of owner: it locates the session in the store and
// forwards the request to the holder, or returns the error to answer
// with: 404 for a missing session or another owner's, 410 for a lost one,
// 503 when the store or the holder cannot be reached.
func (r *Router) Forward(c *fiber.Ctx, id, owner string) error {
	notFound := codegw.Errorf(codegw.ENOTFOUND, "session %q not found", id)
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	rec, inst, err := store.Locate(ctx, r.st, id)
	cancel()
	switch code := codegw.ErrorCode(err); {
	case code == codegw.ENOTFOUND:
		return notFound
	case rec.ID == "" && err != nil: // the store failed before finding the record
		return err
	case rec.Owner != owner:
		return notFound // never reveal another key's session
	case err != nil: // ELOST names the session and its instance
		return err
	case inst.ID == r.self:
		return codegw.Errorf(codegw.ELOST, "session %s lost: instance %s no longer holds it (it restarted)", id, inst.ID)
	case r.forwarded(c):
		return codegw.Errorf(codegw.EUNAVAILABLE, "session %s: instance %s at %s forwarded it here, but this is instance %s", id, inst.ID, inst.Addr, r.self)
	}
	if websocket.IsWebSocketUpgrade(c) {
		return r.proxySocket(c, id, inst)
	}
	return r.proxyHTTP(c, id, inst)
}

// unreachable is the answer when a live holder does not answer.
func unreachable(id string, inst store.Instance, err error) error {
	return codegw.WrapError(codegw.EUNAVAILABLE, err,
		"session %s: instance %s holding it does not answer; try again (the session is lost if the instance does not come back)", id, inst.ID)
}

// baseURL turns a registry address (a URL or host:port) into a base URL.
func baseURL(addr, scheme string) string {
	addr = strings.TrimSuffix(addr, "/")
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
	}
	return scheme + "://" + addr
}

func secure(addr string) bool { return strings.HasPrefix(addr, "https://") }

// proxyHTTP forwards a REST call and streams the answer back as it
// arrives: each read from the holder is flushed to the client at once, so
// NDJSON events are not held back.
func (r *Router) proxyHTTP(c *fiber.Ctx, id string, inst store.Instance) error {
	scheme := "http"
	if secure(inst.Addr) {
		scheme = "https"
	}
	target := baseURL(inst.Addr, scheme) + c.OriginalURL()
	ctx, cancel := context.WithTimeout(context.Background(), maxProxyDuration)
	var body io.Reader
	if b := c.Body(); len(b) > 0 {
		body = strings.NewReader(string(b)) // copied: fasthttp reuses its buffers after the handler
	}
	req, err := http.NewRequestWithContext(ctx, c.Method(), target, body)
	if err != nil {
		cancel()
		return codegw.WrapError(codegw.EINTERNAL, err, "build proxied request")
	}
	c.Request().Header.VisitAll(func(k, v []byte) {
		if name := string(k); !hopHeaders[http.CanonicalHeaderKey(name)] {
			req.Header.Add(name, string(v))
		}
	})
	req.Header.Set(ProxyHeader, r.token)
	req.Header.Set("X-Forwarded-For", forwardedFor(c))
	resp, err := r.client.Do(req)
	if err != nil {
		cancel()
		return unreachable(id, inst, err)
	}
	c.Status(resp.StatusCode)
	for k, vs := range resp.Header {
		if hopHeaders[k] {
			continue
		}
		for i, v := range vs {
			if i == 0 {
				c.Response().Header.Set(k, v)
			} else {
				c.Response().Header.Add(k, v)
			}
		}
	}
	ndjson := strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson")
	if !ndjson && resp.ContentLength >= 0 && resp.ContentLength <= bufferedLimit {
		defer cancel()
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, resp.ContentLength))
		if err != nil {
			return unreachable(id, inst, err)
		}
		return c.Send(b)
	}
	if !ndjson && resp.ContentLength > 0 {
		// A large download of known size: fasthttp copies it and closes it.
		c.Context().SetBodyStream(&cancelCloser{resp.Body, cancel}, int(resp.ContentLength))
		return nil
	}
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		defer resp.Body.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				if w.Flush() != nil {
					return // the client went away; closing the body tells the holder
				}
			}
			if err == io.EOF {
				return
			} else if err != nil {
				if ndjson { // the holder died mid-stream: say so on the last line
					line, _ := json.Marshal(fiber.Map{"type": "error_response", "code": codegw.EUNAVAILABLE,
						"error": fmt.Sprintf("session %s: the connection to instance %s holding it broke", id, inst.ID)})
					w.Write(append([]byte("\n"), append(line, '\n')...))
					w.Flush()
				}
				return
			}
		}
	})
	return nil
}

// cancelCloser ends the request's context when fasthttp closes the body.
type cancelCloser struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelCloser) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

func forwardedFor(c *fiber.Ctx) string {
	if prev := c.Get("X-Forwarded-For"); prev != "" {
		return prev + ", " + c.IP()
	}
	return c.IP()
}

// proxySocket dials the holder's websocket first, so that its refusal
// (404, 410, 401) reaches the client as an HTTP answer, then upgrades the
// client and pumps frames both ways.
func (r *Router) proxySocket(c *fiber.Ctx, id string, inst store.Instance) error {
	scheme := "ws"
	if secure(inst.Addr) {
		scheme = "wss"
	}
	target := baseURL(inst.Addr, scheme) + c.OriginalURL()
	hdr := http.Header{}
	for _, k := range []string{"Authorization", "Origin", "User-Agent"} {
		if v := c.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	hdr.Set(ProxyHeader, r.token)
	hdr.Set("X-Forwarded-For", forwardedFor(c))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	// Subprotocols the client offers (Jupyter's v1 kernel protocol) are
	// offered to the holder, and its choice is the client's.
	dialer := r.dialer
	if offered := c.Get("Sec-WebSocket-Protocol"); offered != "" {
		d := *r.dialer
		for _, p := range strings.Split(offered, ",") {
			d.Subprotocols = append(d.Subprotocols, strings.TrimSpace(p))
		}
		dialer = &d
	}
	up, resp, err := dialer.DialContext(ctx, target, hdr)
	cancel()
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != "" {
				c.Set(fiber.HeaderContentType, ct)
			}
			return c.Status(resp.StatusCode).Send(b)
		}
		return unreachable(id, inst, err)
	}
	cfg := websocket.Config{EnableCompression: false, ReadBufferSize: 4 << 10, WriteBufferSize: 16 << 10}
	if p := up.Subprotocol(); p != "" {
		cfg.Subprotocols = []string{p}
	}
	err = websocket.New(func(conn *websocket.Conn) {
		r.pumpSocket(conn, up)
	}, cfg)(c)
	if err != nil { // not upgraded: the pump never runs
		up.Close()
	}
	return err
}

// closeInternal tells the client that a panic ended the proxied
// connection (1011).
func closeInternal(client *websocket.Conn) {
	client.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "internal error"), time.Now().Add(time.Second))
}

// pumpSocket copies frames between the client and the holder until either
// side ends, forwarding close codes and reasons, pings and pongs, so the
// holder's keep-alive covers the whole path.
func (r *Router) pumpSocket(client *websocket.Conn, up *gws.Conn) {
	var wmu sync.Mutex // the client is written by the copy below and by closeClient
	done := make(chan struct{})
	copying := false
	// After a panic the copy from the holder must be done with client
	// before the handler returns it to Fiber.
	defer codegw.Recover(context.Background(), "proxy websocket client to holder", func(error) {
		wmu.Lock()
		closeInternal(client)
		wmu.Unlock()
		up.Close()
		if copying {
			<-done
		}
	})
	liveFor := 3 * r.ping
	ctl := func(conn interface {
		WriteControl(int, []byte, time.Time) error
	}, kind int) func(string) error {
		return func(data string) error {
			err := conn.WriteControl(kind, []byte(data), time.Now().Add(10*time.Second))
			if errors.Is(err, gws.ErrCloseSent) {
				return nil
			}
			return err
		}
	}
	client.SetReadLimit(8 << 20)
	up.SetReadLimit(64 << 20)
	up.SetReadDeadline(time.Now().Add(liveFor))
	toClientPing := ctl(client, websocket.PingMessage)
	up.SetPingHandler(func(data string) error {
		up.SetReadDeadline(time.Now().Add(liveFor))
		return toClientPing(data)
	})
	up.SetPongHandler(ctl(client, websocket.PongMessage))
	client.SetPingHandler(ctl(up, gws.PingMessage))
	client.SetPongHandler(ctl(up, gws.PongMessage))

	copying = true
	go func() { // holder -> client
		defer close(done)
		defer codegw.Recover(context.Background(), "proxy websocket holder to client", func(error) {
			wmu.Lock()
			closeInternal(client)
			wmu.Unlock()
			client.SetReadDeadline(time.Now()) // ends the copy to the holder
			up.Close()
		})
		for {
			kind, msg, err := up.ReadMessage()
			if err != nil {
				code, text := websocket.CloseGoingAway, "the connection to the instance holding the session broke"
				var ce *gws.CloseError
				if errors.As(err, &ce) {
					code, text = ce.Code, ce.Text
					if code == gws.CloseNoStatusReceived || code == gws.CloseAbnormalClosure {
						code = websocket.CloseGoingAway
					}
				}
				wmu.Lock()
				client.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(5*time.Second))
				wmu.Unlock()
				client.SetReadDeadline(time.Now().Add(5 * time.Second)) // wait briefly for the client's close
				return
			}
			up.SetReadDeadline(time.Now().Add(liveFor))
			wmu.Lock()
			client.SetWriteDeadline(time.Now().Add(30 * time.Second))
			err = client.WriteMessage(kind, msg)
			wmu.Unlock()
			if err != nil {
				up.Close()
				return
			}
		}
	}()
	for { // client -> holder
		kind, msg, err := client.ReadMessage()
		if err != nil {
			code, text := websocket.CloseNormalClosure, ""
			var ce *fws.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseNoStatusReceived && ce.Code != websocket.CloseAbnormalClosure {
				code, text = ce.Code, ce.Text
			}
			up.WriteControl(gws.CloseMessage, gws.FormatCloseMessage(code, text), time.Now().Add(5*time.Second))
			break
		}
		up.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if up.WriteMessage(kind, msg) != nil {
			break
		}
	}
	select { // let the holder answer the close, then cut it
	case <-done:
	case <-time.After(5 * time.Second):
	}
	up.Close()
	<-done
}

// Sessions lists owner's sessions on every instance: the store says which
// exist and where; each holder is asked once for the details of its own
// (local lists this instance's). A session whose instance is gone is listed
// with state "lost". A listing forwarded by another instance gets the local
// sessions only.
func (r *Router) Sessions(c *fiber.Ctx, owner string, local func(owner string) []codegw.SessionInfo) ([]codegw.SessionInfo, error) {
	if r.forwarded(c) {
		return local(owner), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	recs, err := r.st.ListSessions(ctx, owner)
	var insts []store.Instance
	if err == nil {
		insts, err = r.st.ListInstances(ctx)
	}
	cancel()
	if err != nil {
		return nil, err
	}
	live := map[string]store.Instance{}
	for _, in := range insts {
		live[in.ID] = in
	}
	known := map[string]codegw.SessionInfo{}
	for _, info := range local(owner) {
		known[info.ID] = info
	}
	ask := map[string]store.Instance{}
	for _, rec := range recs {
		if _, ok := known[rec.ID]; !ok && rec.Instance != r.self {
			if in, ok := live[rec.Instance]; ok {
				ask[in.ID] = in
			}
		}
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, in := range ask {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer codegw.Recover(context.Background(), "list peer sessions", nil)
			list, err := r.peerSessions(c, in)
			if err != nil {
				r.log.Warn("list sessions of a peer", "instance", in.ID, "err", err)
				return
			}
			mu.Lock()
			for _, info := range list {
				known[info.ID] = info
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	out := make([]codegw.SessionInfo, 0, len(recs))
	for _, rec := range recs {
		info, ok := known[rec.ID]
		if !ok {
			info = codegw.SessionInfo{ID: rec.ID, Instance: rec.Instance, CreatedAt: rec.CreatedAt, LastActive: rec.CreatedAt, State: "unknown"}
			if _, alive := live[rec.Instance]; !alive || rec.Instance == r.self {
				info.State = "lost"
			}
		}
		out = append(out, info)
	}
	return out, nil
}

// peerSessions asks one instance for the caller's sessions it holds.
func (r *Router) peerSessions(c *fiber.Ctx, in store.Instance) ([]codegw.SessionInfo, error) {
	scheme := "http"
	if secure(in.Addr) {
		scheme = "https"
	}
	target := baseURL(in.Addr, scheme) + "/api/v1/sessions"
	if q := c.Context().QueryArgs().QueryString(); len(q) > 0 {
		target += "?" + string(q)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	if a := c.Get(fiber.HeaderAuthorization); a != "" {
		req.Header.Set(fiber.HeaderAuthorization, a)
	}
	req.Header.Set(ProxyHeader, r.token)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	var body struct {
		Sessions []codegw.SessionInfo `json:"sessions"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&body); err != nil {
		return nil, err
	}
	return body.Sessions, nil
}
