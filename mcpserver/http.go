package mcpserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type ownerKey struct{}

// WithOwner returns ctx carrying the owner id the gateway resolved from the
// request's API key; Handler serves each MCP session for one owner.
func WithOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

func ownerOf(ctx context.Context) (string, bool) {
	o, ok := ctx.Value(ownerKey{}).(string)
	return o, ok
}

// Handler serves MCP over streamable HTTP. Requests must carry an owner
// (WithOwner); an MCP session is only reachable by the owner that opened
// it, and its kernel is deleted when it ends (DELETE, or SessionTimeout
// without requests).
type Handler struct {
	cfg *Config
	h   *mcp.StreamableHTTPHandler
	// BaseURL makes the download links of a request absolute; nil uses
	// the request's Host.
	baseURL string

	mu     sync.Mutex
	owners map[string]string // MCP session id -> owner
}

// HandlerOptions tune the HTTP handler.
type HandlerOptions struct {
	// SessionTimeout ends MCP sessions idle this long (default 30m).
	SessionTimeout time.Duration
	// BaseURL, e.g. "https://ci.example.com", prefixes relative links;
	// empty derives it from the request.
	BaseURL string
}

// NewHandler returns the streamable HTTP handler of cfg.
func NewHandler(cfg *Config, opts HandlerOptions) *Handler {
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = 30 * time.Minute
	}
	h := &Handler{cfg: cfg, baseURL: strings.TrimRight(opts.BaseURL, "/"), owners: map[string]string{}}
	h.h = mcp.NewStreamableHTTPHandler(h.server, &mcp.StreamableHTTPOptions{
		SessionTimeout:             opts.SessionTimeout,
		DisableLocalhostProtection: true, // the gateway authenticates every request with an API key
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	owner, ok := ownerOf(r.Context())
	if !ok {
		http.Error(w, "unauthenticated", http.StatusUnauthorized)
		return
	}
	if id := r.Header.Get("Mcp-Session-Id"); id != "" {
		h.mu.Lock()
		o, known := h.owners[id]
		h.mu.Unlock()
		if known && o != owner {
			http.Error(w, "session not found", http.StatusNotFound)
			return
		}
	}
	h.h.ServeHTTP(w, r)
}

// Sessions is the number of open MCP sessions.
func (h *Handler) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.owners)
}

// server makes the MCP server of a new session.
func (h *Handler) server(r *http.Request) *mcp.Server {
	owner, _ := ownerOf(r.Context())
	base := h.baseURL
	if base == "" {
		scheme := "http"
		if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	resolve := func(u string) string {
		if h.cfg.Resolve != nil {
			u = h.cfg.Resolve(u)
		}
		if strings.HasPrefix(u, "/") {
			return base + u
		}
		return u
	}
	// The session id is made here so the owner is known before the first
	// request that carries it.
	b := make([]byte, 16)
	rand.Read(b)
	id := hex.EncodeToString(b)
	h.mu.Lock()
	h.owners[id] = owner
	h.mu.Unlock()
	s, _ := newServer(h.cfg, owner, resolve, func() {
		h.mu.Lock()
		delete(h.owners, id)
		h.mu.Unlock()
	}, id)
	return s
}
