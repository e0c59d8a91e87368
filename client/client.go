// Package client is the Go SDK of codegw: stateless executions, sessions
// over REST, and streamed executions over the session websocket with a
// callback per event kind, input() answered by a callback, interrupt,
// restart, uploads, downloads and reconnection with replay. Every error the
// API returns is an *Error whose code can be matched with errors.Is against
// the sentinels (ErrNotFound, ErrLimit...).
//
// It speaks the public HTTP API only, so it works against any codegw
// instance, including one behind a load balancer.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/codegw/codegw"
)

// Client talks to one codegw server. It is safe for concurrent use.
type Client struct {
	base *url.URL
	key  string
	http *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithKey sets the API key sent as a bearer token.
func WithKey(key string) Option { return func(c *Client) { c.key = key } }

// WithHTTPClient sets the HTTP client used for REST calls (default: one
// without an overall timeout, since executions may run for minutes; bound
// calls with their context).
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// New returns a Client for the server at baseURL, e.g.
// "http://127.0.0.1:14564".
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q must be http(s)://host[:port]", baseURL)
	}
	c := &Client{base: u, http: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Error is an error answered by the server: its HTTP status, the API's
// machine code (codegw.ENOTFOUND...) and its message. RetryAfter is set on
// 429 and 503 answers that carry a Retry-After header.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

// Error returns the server's message with its code.
func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("codegw: %s (%s)", e.Message, e.Code)
	}
	return fmt.Sprintf("codegw: %s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// Is reports whether target is a sentinel of the same code, so that
// errors.Is(err, client.ErrNotFound) works for any answer with that code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == 0 && t.Message == "" && t.Code == e.Code
}

// Sentinels, one per code of the API, for errors.Is.
var (
	ErrInvalid      = &Error{Code: codegw.EINVALID}
	ErrNotFound     = &Error{Code: codegw.ENOTFOUND}
	ErrUnauthorized = &Error{Code: codegw.EUNAUTHORIZED}
	ErrForbidden    = &Error{Code: codegw.EFORBIDDEN}
	ErrTooLarge     = &Error{Code: codegw.ETOOLARGE}
	ErrLimit        = &Error{Code: codegw.ELIMIT}
	ErrBusy         = &Error{Code: codegw.EBUSY}
	ErrConflict     = &Error{Code: codegw.ECONFLICT}
	ErrUnavailable  = &Error{Code: codegw.EUNAVAILABLE}
	ErrSessionLost  = &Error{Code: codegw.ELOST}
	ErrFetchFailed  = &Error{Code: codegw.EFETCH}
	ErrInternal     = &Error{Code: codegw.EINTERNAL}
)

// url resolves a path (or an absolute URL the server gave) against the base.
func (c *Client) url(path string, query url.Values) string {
	u := *c.base
	if p, err := url.Parse(path); err == nil && p.IsAbs() {
		u = *p
	} else {
		u.Path = strings.TrimRight(c.base.Path, "/") + path
	}
	if query != nil {
		u.RawQuery = query.Encode()
	}
	return u.String()
}

// do sends a request and returns the response when its status is 2xx; any
// other answer is decoded into an *Error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body io.Reader, contentType string, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, query), body)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

// decodeError turns a non-2xx answer into an *Error.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	var body struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(b, &body) == nil && body.Code != "" {
		e.Code, e.Message = body.Code, body.Error
	} else {
		e.Code, e.Message = codeOfStatus(resp.StatusCode), strings.TrimSpace(string(b))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// codeOfStatus guesses the code of an answer that did not come from codegw
// itself (a proxy in front of it, say).
func codeOfStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return codegw.EINVALID
	case http.StatusUnauthorized:
		return codegw.EUNAUTHORIZED
	case http.StatusForbidden:
		return codegw.EFORBIDDEN
	case http.StatusNotFound:
		return codegw.ENOTFOUND
	case http.StatusRequestEntityTooLarge:
		return codegw.ETOOLARGE
	case http.StatusTooManyRequests:
		return codegw.ELIMIT
	case http.StatusGone:
		return codegw.ELOST
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return codegw.EUNAVAILABLE
	}
	return codegw.EINTERNAL
}

// call sends a JSON body (when in is not nil) and decodes a JSON answer
// into out (when not nil).
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: encode request: %w", err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, nil, body, ct, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("client: decode answer of %s %s: %w", method, path, err)
	}
	return nil
}

// Execute runs code on a fresh kernel (POST /api/v1/execute) and returns
// the whole answer. Code that raises is not an error: see res.Status.
func (c *Client) Execute(ctx context.Context, req codegw.ExecuteRequest) (*codegw.ExecuteResult, error) {
	var res codegw.ExecuteResult
	if err := c.call(ctx, http.MethodPost, "/api/v1/execute", req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ExecuteStream runs code on a fresh kernel and streams its events to h as
// they happen (NDJSON), then returns the whole answer. Input requests
// cannot be answered on a stateless call: input() fails in the code.
func (c *Client) ExecuteStream(ctx context.Context, req codegw.ExecuteRequest, h Handler) (*codegw.ExecuteResult, error) {
	return c.stream(ctx, "/api/v1/execute", req, h)
}

// stream posts req to path asking for NDJSON, dispatches each event to h
// and returns the final answer.
func (c *Client) stream(ctx context.Context, path string, req codegw.ExecuteRequest, h Handler) (*codegw.ExecuteResult, error) {
	if h.wantsImages() {
		req.InlineImages = true
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("client: encode request: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, path, nil, bytes.NewReader(b), "application/json", "application/x-ndjson")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var head struct {
			Type  string `json:"type"`
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			return nil, fmt.Errorf("client: bad stream line: %w", err)
		}
		switch head.Type {
		case "response":
			var res codegw.ExecuteResult
			if err := json.Unmarshal(line, &res); err != nil {
				return nil, fmt.Errorf("client: decode answer: %w", err)
			}
			return &res, nil
		case "error_response":
			return nil, &Error{Status: resp.StatusCode, Code: head.Code, Message: head.Error}
		}
		var ev codegw.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return nil, fmt.Errorf("client: bad event: %w", err)
		}
		h.dispatch(ev)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("client: read stream: %w", err)
	}
	return nil, errors.New("client: the stream ended without an answer")
}

// Download writes the file or image at url (a URL from an answer, absolute
// or relative to the server, e.g. "/files/abc.csv") to w.
func (c *Client) Download(ctx context.Context, url string, w io.Writer) (int64, error) {
	resp, err := c.do(ctx, http.MethodGet, url, nil, nil, "", "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("client: download %s: %w", url, err)
	}
	return n, nil
}

// SessionOptions are the settings of a new session.
type SessionOptions struct {
	// IdleTimeout ends the session after this long without activity
	// (0: the server's default; capped by the server).
	IdleTimeout time.Duration
	// Env is set in the kernel's environment.
	Env map[string]string
	// FromSession or FromSnapshot start the session from a snapshot of
	// another of the caller's sessions (branching): that session's latest
	// state, or a checkpoint's (ck_...).
	FromSession, FromSnapshot string
}

// CreateSession starts a session: a kernel that keeps its state across
// executions until it is deleted or idles out.
func (c *Client) CreateSession(ctx context.Context, opts SessionOptions) (*Session, error) {
	body := map[string]any{}
	if opts.IdleTimeout > 0 {
		body["idle_timeout"] = opts.IdleTimeout.Seconds()
	}
	if len(opts.Env) > 0 {
		body["env"] = opts.Env
	}
	if opts.FromSession != "" {
		body["from_session"] = opts.FromSession
	}
	if opts.FromSnapshot != "" {
		body["from_snapshot"] = opts.FromSnapshot
	}
	var info struct {
		codegw.SessionInfo
		Restored *codegw.Restored `json:"restored"`
	}
	if err := c.call(ctx, http.MethodPost, "/api/v1/sessions", body, &info); err != nil {
		return nil, err
	}
	return &Session{c: c, ID: info.ID, Info: info.SessionInfo, Restored: info.Restored}, nil
}

// Session returns a handle on an existing session, without a call.
func (c *Client) Session(id string) *Session { return &Session{c: c, ID: id} }

// ListSessions lists the caller's sessions.
func (c *Client) ListSessions(ctx context.Context) ([]codegw.SessionInfo, error) {
	var out struct {
		Sessions []codegw.SessionInfo `json:"sessions"`
	}
	if err := c.call(ctx, http.MethodGet, "/api/v1/sessions", nil, &out); err != nil {
		return nil, err
	}
	return out.Sessions, nil
}

// Session is a handle on one session. Its REST methods are safe for
// concurrent use; executions queue on the server and run one at a time.
type Session struct {
	c *Client
	// ID is the session's id.
	ID string
	// Info is what the server said when the session was created.
	Info codegw.SessionInfo
	// Restored is, for a session started from a snapshot, what it got
	// back.
	Restored *codegw.Restored
}

// Client is the client the session was made with.
func (s *Session) Client() *Client { return s.c }

func (s *Session) path(suffix string) string {
	return "/api/v1/sessions/" + url.PathEscape(s.ID) + suffix
}

// Get describes the session.
func (s *Session) Get(ctx context.Context) (codegw.SessionInfo, error) {
	var info codegw.SessionInfo
	err := s.c.call(ctx, http.MethodGet, s.path(""), nil, &info)
	return info, err
}

// Delete ends the session and destroys its kernel.
func (s *Session) Delete(ctx context.Context) error {
	return s.c.call(ctx, http.MethodDelete, s.path(""), nil, nil)
}

// Execute runs code in the session's kernel (state kept) and returns the
// whole answer.
func (s *Session) Execute(ctx context.Context, req codegw.ExecuteRequest) (*codegw.ExecuteResult, error) {
	var res codegw.ExecuteResult
	if err := s.c.call(ctx, http.MethodPost, s.path("/execute"), req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ExecuteStream runs code in the session's kernel and streams its events to
// h over NDJSON. input() fails in the code; use Connect to answer it.
func (s *Session) ExecuteStream(ctx context.Context, req codegw.ExecuteRequest, h Handler) (*codegw.ExecuteResult, error) {
	return s.c.stream(ctx, s.path("/execute"), req, h)
}

// Interrupt interrupts the running code.
func (s *Session) Interrupt(ctx context.Context) error {
	return s.c.call(ctx, http.MethodPost, s.path("/interrupt"), struct{}{}, nil)
}

// Restart restarts the kernel: variables are lost, files are kept.
func (s *Session) Restart(ctx context.Context) error {
	return s.c.call(ctx, http.MethodPost, s.path("/restart"), struct{}{}, nil)
}

// Pause snapshots the session's state (variables, working directory,
// environment, /code) and frees its kernel; its next use, or Resume,
// restores it, on any instance.
func (s *Session) Pause(ctx context.Context) (codegw.Snapshot, error) {
	var out struct {
		Snapshot codegw.Snapshot `json:"snapshot"`
	}
	err := s.c.call(ctx, http.MethodPost, s.path("/pause"), struct{}{}, &out)
	return out.Snapshot, err
}

// Resume brings a paused session back and says what was restored and
// skipped (nil when the session was not paused).
func (s *Session) Resume(ctx context.Context) (*codegw.Restored, error) {
	var out struct {
		Restored *codegw.Restored `json:"restored"`
	}
	err := s.c.call(ctx, http.MethodPost, s.path("/resume"), struct{}{}, &out)
	return out.Restored, err
}

// Checkpoint snapshots the session's state and leaves it running; the
// snapshot's id starts new sessions (SessionOptions.FromSnapshot).
func (s *Session) Checkpoint(ctx context.Context) (codegw.Snapshot, error) {
	var snap codegw.Snapshot
	err := s.c.call(ctx, http.MethodPost, s.path("/checkpoint"), struct{}{}, &snap)
	return snap, err
}

// Snapshots lists the session's snapshots, newest first.
func (s *Session) Snapshots(ctx context.Context) ([]codegw.Snapshot, error) {
	var out struct {
		Snapshots []codegw.Snapshot `json:"snapshots"`
	}
	err := s.c.call(ctx, http.MethodGet, s.path("/snapshots"), nil, &out)
	return out.Snapshots, err
}

// FileInfo describes a file in the session's /code/input or /code/output.
type FileInfo struct {
	Name     string    `json:"name"`
	Size     int64     `json:"size_bytes"`
	Modified time.Time `json:"modified"`
	// URL downloads it (output files only).
	URL string `json:"url,omitempty"`
}

// Upload writes r into /code/input/name in the session's kernel.
func (s *Session) Upload(ctx context.Context, name string, r io.Reader) (FileInfo, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		fw, err := mw.CreateFormFile("file", name)
		if err == nil {
			_, err = io.Copy(fw, r)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	resp, err := s.c.do(ctx, http.MethodPost, s.path("/files"), nil, pr, mw.FormDataContentType(), "application/json")
	pr.Close()
	if err != nil {
		return FileInfo{}, err
	}
	defer resp.Body.Close()
	var out struct {
		Files []FileInfo `json:"files"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || len(out.Files) == 0 {
		return FileInfo{}, fmt.Errorf("client: decode upload answer: %v", err)
	}
	return out.Files[0], nil
}

// Files lists the regular files in the session's /code/output.
func (s *Session) Files(ctx context.Context) ([]FileInfo, error) {
	var out struct {
		Files []FileInfo `json:"files"`
	}
	if err := s.c.call(ctx, http.MethodGet, s.path("/files"), nil, &out); err != nil {
		return nil, err
	}
	return out.Files, nil
}

// Download writes /code/output/name to w.
func (s *Session) Download(ctx context.Context, name string, w io.Writer) (int64, error) {
	return s.c.Download(ctx, s.path("/files/"+url.PathEscape(name)), w)
}
