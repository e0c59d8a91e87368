package cluster

// Routing between the instances of a multi-instance deployment: where a
// session is, and the session listing across instances. The proxying of
// HTTP requests and websockets to the holder is the gateway's (it speaks
// HTTP); it asks the Router where to go.
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
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

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
	// ProxyDialTimeout bounds a connection to a peer: a live one answers at
	// once; a dead one must not stall.
	ProxyDialTimeout = 2 * time.Second
)

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
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Router locates sessions held by other instances and lists sessions
// across instances. It is safe for concurrent use.
type Router struct {
	st     RouteStore
	self   string
	token  string
	log    *slog.Logger
	client *http.Client
}

// NewRouter returns a Router that locates sessions in st.
func NewRouter(st RouteStore, cfg RouterConfig) *Router {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tr := &http.Transport{
		DialContext:         PeerDialer(),
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // pass the holder's encoding through untouched
		ForceAttemptHTTP2:   false,
	}
	return &Router{
		st: st, self: cfg.Instance, token: ProxyToken(cfg.Secret), log: cfg.Logger,
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
}

// PeerDialer dials other instances: ProxyDialTimeout, TCP keep-alives.
func PeerDialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return (&net.Dialer{Timeout: ProxyDialTimeout, KeepAlive: 30 * time.Second}).DialContext
}

// Token is the value of ProxyHeader on the requests this instance
// forwards.
func (r *Router) Token() string { return r.token }

// Client is the HTTP client for requests to other instances: pooled
// connections, no redirects followed, encodings passed through.
func (r *Router) Client() *http.Client { return r.client }

// Forwarded reports whether a request whose ProxyHeader is v was
// forwarded by another instance (v is ProxyToken of the same secret).
func (r *Router) Forwarded(v string) bool {
	return v != "" && hmac.Equal([]byte(v), []byte(r.token))
}

// Locate finds the instance holding session id on behalf of owner, for a
// request this instance cannot serve itself (forwarded says another
// instance sent it here). The error is the answer: 404 for a missing
// session or another owner's, 410 for a lost one (the store error wraps
// store.ErrPaused for a paused one), 503 when the store cannot be
// reached or the record names an instance that forwarded it here.
func (r *Router) Locate(id, owner string, forwarded bool) (store.Instance, error) {
	notFound := codegw.Errorf(codegw.ENOTFOUND, "session %q not found", id)
	ctx, cancel := context.WithTimeout(context.Background(), storeCallTimeout)
	rec, inst, err := store.Locate(ctx, r.st, id)
	cancel()
	switch code := codegw.ErrorCode(err); {
	case code == codegw.ENOTFOUND:
		return inst, notFound
	case rec.ID == "" && err != nil: // the store failed before finding the record
		return inst, err
	case rec.Owner != owner:
		return inst, notFound // never reveal another key's session
	case err != nil: // ELOST names the session and its instance
		return inst, err
	case inst.ID == r.self:
		return inst, codegw.Errorf(codegw.ELOST, "session %s lost: instance %s no longer holds it (it restarted)", id, inst.ID)
	case forwarded:
		return inst, codegw.Errorf(codegw.EUNAVAILABLE, "session %s: instance %s at %s forwarded it here, but this is instance %s", id, inst.ID, inst.Addr, r.self)
	}
	return inst, nil
}

// Unreachable is the answer when a live holder does not answer.
func Unreachable(id string, inst store.Instance, err error) error {
	return codegw.WrapError(codegw.EUNAVAILABLE, err,
		"session %s: instance %s holding it does not answer; try again (the session is lost if the instance does not come back)", id, inst.ID)
}

// BaseURL turns a registry address (a URL or host:port) into a base URL
// with scheme (http or ws; https or wss for an https:// address).
func BaseURL(addr, scheme string) string {
	if secure(addr) {
		scheme += "s"
	}
	addr = strings.TrimSuffix(addr, "/")
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
	}
	return scheme + "://" + addr
}

func secure(addr string) bool { return strings.HasPrefix(addr, "https://") }

// Sessions lists owner's sessions on every instance: the store says which
// exist and where; each holder is asked once for the details of its own
// (local lists this instance's). A session whose instance is gone is listed
// with state "lost". A listing forwarded by another instance gets the local
// sessions only. peer is the request's query and credentials, sent on to
// the other instances.
func (r *Router) Sessions(owner string, forwarded bool, peer PeerRequest, local func(owner string) []codegw.SessionInfo) ([]codegw.SessionInfo, error) {
	if forwarded {
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
			list, err := r.peerSessions(peer, in)
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

// PeerRequest is what a session listing passes on to other instances.
type PeerRequest struct {
	Query         string // the raw query, without "?"
	Authorization string // the caller's Authorization header
}

// peerSessions asks one instance for the caller's sessions it holds.
func (r *Router) peerSessions(p PeerRequest, in store.Instance) ([]codegw.SessionInfo, error) {
	target := BaseURL(in.Addr, "http") + "/api/v1/sessions"
	if p.Query != "" {
		target += "?" + p.Query
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	if p.Authorization != "" {
		req.Header.Set("Authorization", p.Authorization)
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
