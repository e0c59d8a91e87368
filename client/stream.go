package client

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw"
)

// Handler receives the events of a streamed execution, one callback per
// kind; nil callbacks are skipped. Callbacks run on the connection's reader
// and must not block for long (Input is the exception: it runs aside).
type Handler struct {
	// Stdout and Stderr receive the text the code prints, as it is printed.
	Stdout func(text string)
	Stderr func(text string)
	// Display receives rich outputs (plots, tables, markdown) and the value
	// of a final expression, with images decoded.
	Display func(Display)
	// Error receives the exception the code raised (traceback without
	// colours).
	Error func(ename, evalue string, traceback []string)
	// File receives each file the code wrote to /code/output, with its
	// download URL, as soon as the file is complete (closed after writing,
	// or renamed into place); a file rewritten during the run comes again
	// with a new URL.
	File func(codegw.OutputFile)
	// Input answers input() in the code (websocket only). Without it,
	// input() gets an empty line.
	Input func(prompt string, password bool) (string, error)
	// Status receives every other event: status changes ("busy",
	// "queued", "restarted", "truncated"...), replay gaps, the session's
	// end.
	Status func(codegw.Event)
}

// Display is one rich output.
type Display struct {
	codegw.Output
	// Result is true for the value of a final expression (execute_result).
	Result bool
	// Image holds the decoded bytes of an image output (png, jpeg, svg).
	Image []byte
}

func (h Handler) wantsImages() bool { return h.Display != nil }

// dispatch hands ev to the callback of its kind.
func (h Handler) dispatch(ev codegw.Event) {
	switch ev.Type {
	case codegw.EventStream:
		if ev.Name == "stderr" {
			if h.Stderr != nil {
				h.Stderr(ev.Text)
			}
		} else if h.Stdout != nil {
			h.Stdout(ev.Text)
		}
	case codegw.EventDisplay, codegw.EventResult:
		if h.Display != nil && ev.Output != nil {
			d := Display{Output: *ev.Output, Result: ev.Type == codegw.EventResult}
			if strings.HasPrefix(d.MIME, "image/") && d.Data != "" {
				if b, err := base64.StdEncoding.DecodeString(d.Data); err == nil {
					d.Image = b
				}
			}
			h.Display(d)
		}
	case codegw.EventError:
		if h.Error != nil {
			h.Error(ev.EName, ev.EValue, ev.Traceback)
		}
	case codegw.EventFile:
		if h.File != nil && ev.File != nil {
			h.File(*ev.File)
		}
	case codegw.EventInputRequest, codegw.EventDone:
		// handled by the run
	default:
		if h.Status != nil {
			h.Status(ev)
		}
	}
}

// ConnectOptions configure a websocket connection to a session.
type ConnectOptions struct {
	// Events receives the events that belong to no Run of this connection:
	// other clients' executions, restarts, the session's end.
	Events func(codegw.Event)
	// ReconnectFor is how long a dropped connection is retried (with
	// ?last_seq= replay, so nothing is lost) before Run fails; default 30s.
	ReconnectFor time.Duration
}

// Conn is a websocket connection to a session's event stream. Run executes
// code with streamed events; a dropped connection is re-established with
// replay of the events missed. Close it when done.
type Conn struct {
	s    *Session
	opts ConnectOptions

	runMu sync.Mutex // one Run at a time

	mu      sync.Mutex
	ws      *websocket.Conn
	lastSeq uint64
	cur     *run
	ended   error // set when the session ended or the connection is closed for good
	closed  bool

	wmu  sync.Mutex // serialises writes on ws
	done chan struct{}
}

// run is one execution in progress on a Conn.
type run struct {
	id     string
	h      Handler
	res    codegw.ExecuteResult
	stdout strings.Builder
	stderr strings.Builder
	result string
	seen   bool
	fin    chan error // receives once: nil on done, or the failure
}

// Connect opens the session's websocket.
func (s *Session) Connect(ctx context.Context, opts ConnectOptions) (*Conn, error) {
	if opts.ReconnectFor <= 0 {
		opts.ReconnectFor = 30 * time.Second
	}
	c := &Conn{s: s, opts: opts, done: make(chan struct{})}
	ws, err := c.dial(ctx, false)
	if err != nil {
		return nil, err
	}
	c.ws = ws
	go c.read()
	return c, nil
}

// dial opens the websocket, asking for replay after lastSeq when replay.
func (c *Conn) dial(ctx context.Context, replay bool) (*websocket.Conn, error) {
	cl := c.s.c
	u := *cl.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path = strings.TrimRight(cl.base.Path, "/") + c.s.path("/ws")
	if replay {
		c.mu.Lock()
		u.RawQuery = url.Values{"last_seq": {strconv.FormatUint(c.lastSeq, 10)}}.Encode()
		c.mu.Unlock()
	}
	hdr := http.Header{}
	if cl.key != "" {
		hdr.Set("Authorization", "Bearer "+cl.key)
	}
	d := websocket.Dialer{HandshakeTimeout: 15 * time.Second, Proxy: http.ProxyFromEnvironment}
	ws, resp, err := d.DialContext(ctx, u.String(), hdr)
	if err != nil {
		if resp != nil {
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusSwitchingProtocols {
				return nil, decodeError(resp)
			}
		}
		return nil, fmt.Errorf("client: connect to session %s: %w", c.s.ID, err)
	}
	ws.SetReadLimit(256 << 20)
	// The server pings every 20 s: three missed pings mean a dead peer.
	ws.SetReadDeadline(time.Now().Add(time.Minute))
	ws.SetPingHandler(func(data string) error {
		ws.SetReadDeadline(time.Now().Add(time.Minute))
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	return ws, nil
}

// read is the connection's reader: it dispatches events and reconnects
// after a drop until the session ends or Close is called.
func (c *Conn) read() {
	defer close(c.done)
	for {
		c.mu.Lock()
		ws := c.ws
		c.mu.Unlock()
		_, data, err := ws.ReadMessage()
		if err == nil {
			ws.SetReadDeadline(time.Now().Add(time.Minute))
			c.handle(data)
			continue
		}
		c.mu.Lock()
		closed, ended := c.closed, c.ended
		c.mu.Unlock()
		if closed || ended != nil {
			c.finish(ended)
			return
		}
		if err := c.reconnect(); err != nil {
			c.finish(err)
			return
		}
	}
}

// reconnect redials with replay, retrying with a growing pause for up to
// ReconnectFor.
func (c *Conn) reconnect() error {
	deadline := time.Now().Add(c.opts.ReconnectFor)
	pause := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		ws, err := c.dial(ctx, true)
		cancel()
		if err == nil {
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				ws.Close()
				return errClosed
			}
			c.ws.Close()
			c.ws = ws
			c.mu.Unlock()
			return nil
		}
		var apiErr *Error
		if errors.As(err, &apiErr) { // the server answered: the session is gone or not ours
			return err
		}
		if time.Now().Add(pause).After(deadline) {
			return fmt.Errorf("client: connection to session %s lost and not re-established within %v: %w", c.s.ID, c.opts.ReconnectFor, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 2*time.Second)
	}
}

var errClosed = errors.New("client: connection closed")

// finish ends the connection for good, failing the run in progress.
func (c *Conn) finish(err error) {
	if err == nil {
		err = errClosed
	}
	c.mu.Lock()
	if c.ended == nil {
		c.ended = err
	}
	r := c.cur
	c.cur = nil
	c.mu.Unlock()
	if r != nil {
		r.fin <- err
	}
}

// handle decodes one message and routes it.
func (c *Conn) handle(data []byte) {
	var head struct {
		Type  string `json:"type"`
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(data, &head) != nil {
		return
	}
	if head.Type == "error_response" {
		c.mu.Lock()
		r := c.cur
		if r != nil && !r.seen { // the execute itself was refused
			c.cur = nil
		} else {
			r = nil
		}
		c.mu.Unlock()
		if r != nil {
			r.fin <- &Error{Code: head.Code, Message: head.Error}
		} else if c.opts.Events != nil {
			c.opts.Events(codegw.Event{Type: head.Type, Error: head.Error, Reason: head.Code})
		}
		return
	}
	var ev codegw.Event
	if json.Unmarshal(data, &ev) != nil {
		return
	}
	c.mu.Lock()
	if ev.Seq != 0 {
		if ev.Seq <= c.lastSeq { // already seen before a reconnect
			c.mu.Unlock()
			return
		}
		c.lastSeq = ev.Seq
	}
	r := c.cur
	if r != nil && ev.ExecutionID != r.id {
		r = nil
	}
	if ev.Type == codegw.EventClosed {
		c.ended = &Error{Code: codegw.ENOTFOUND, Message: "session ended: " + ev.Reason}
	}
	c.mu.Unlock()
	if r == nil {
		if c.opts.Events != nil {
			c.opts.Events(ev)
		}
		if ev.Type == codegw.EventClosed {
			c.finish(c.ended)
		}
		return
	}
	r.seen = true
	r.h.dispatch(ev)
	r.collect(ev)
	switch ev.Type {
	case codegw.EventInputRequest:
		go c.answer(r, ev)
	case codegw.EventDone:
		c.mu.Lock()
		if c.cur == r {
			c.cur = nil
		}
		c.mu.Unlock()
		if ev.Status == codegw.StatusRejected {
			r.fin <- &Error{Code: ev.Reason, Message: ev.Error}
		} else {
			r.fin <- nil
		}
	}
}

// answer asks the handler for input and replies.
func (c *Conn) answer(r *run, ev codegw.Event) {
	value := ""
	if r.h.Input != nil {
		v, err := r.h.Input(ev.Prompt, ev.Password)
		if err != nil {
			c.send(map[string]any{"type": "interrupt"})
			return
		}
		value = v
	}
	c.send(map[string]any{"type": "input_reply", "value": value})
}

// collect adds ev to the answer being assembled.
func (r *run) collect(ev codegw.Event) {
	res := &r.res
	switch ev.Type {
	case codegw.EventStream:
		if ev.Name == "stderr" {
			r.stderr.WriteString(ev.Text)
		} else {
			r.stdout.WriteString(ev.Text)
		}
	case codegw.EventDisplay, codegw.EventResult:
		if ev.Output == nil {
			return
		}
		res.Outputs = append(res.Outputs, *ev.Output)
		if ev.Output.URL != "" && strings.HasPrefix(ev.Output.MIME, "image/") {
			res.Images = append(res.Images, ev.Output.URL)
		}
		if ev.Type == codegw.EventResult {
			r.result = ev.Output.Text
		}
	case codegw.EventError:
		res.EName, res.EValue, res.Traceback = ev.EName, ev.EValue, ev.Traceback
	case codegw.EventFile:
		if ev.File == nil {
			return
		}
		// A file rewritten during the run comes again: the answer lists
		// its last version, in name order as the server's does.
		i, found := slices.BinarySearchFunc(res.Files, ev.File.OriginalName, func(f codegw.OutputFile, name string) int {
			return strings.Compare(f.OriginalName, name)
		})
		if found {
			res.Files[i] = *ev.File
		} else {
			res.Files = slices.Insert(res.Files, i, *ev.File)
		}
	case codegw.EventStatus:
		if ev.State == "truncated" {
			res.Truncated = true
		}
	case codegw.EventDone:
		res.Status, res.ExecutionTime, res.ExecutionCount = ev.Status, ev.Duration, ev.ExecutionCount
		res.Truncated = res.Truncated || ev.Truncated
		if ev.Error != "" {
			msg := ev.Error
			res.Error = &msg
		}
	}
}

// answer returns the assembled answer, in the shape of the REST one.
func (r *run) answer() *codegw.ExecuteResult {
	res := r.res
	res.Stdout, res.Stderr = r.stdout.String(), r.stderr.String()
	res.Result = strings.TrimSpace(res.Stdout)
	if r.result != "" {
		if res.Result != "" {
			res.Result += "\n"
		}
		res.Result += r.result
	}
	if len(res.Images) > 0 {
		res.ImageURL = &res.Images[0]
	}
	if res.Images == nil {
		res.Images = []string{}
	}
	if res.Outputs == nil {
		res.Outputs = []codegw.Output{}
	}
	if res.Files == nil {
		res.Files = []codegw.OutputFile{}
	}
	if res.Inputs == nil {
		res.Inputs = []codegw.InputFile{}
	}
	return &res
}

// send writes one JSON message.
func (c *Conn) send(v any) error {
	c.mu.Lock()
	ws, ended := c.ws, c.ended
	c.mu.Unlock()
	if ended != nil {
		return ended
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	ws.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := ws.WriteJSON(v); err != nil {
		return fmt.Errorf("client: send to session %s: %w", c.s.ID, err)
	}
	return nil
}

// Run executes req in the session, streaming its events to h, and returns
// the answer assembled from them (the same fields as Session.Execute's,
// but for inputs). input() is answered by h.Input. When ctx ends first the
// code is interrupted and ctx's error returned. Runs on one Conn are one at
// a time.
func (c *Conn) Run(ctx context.Context, req codegw.ExecuteRequest, h Handler) (*codegw.ExecuteResult, error) {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	r := &run{id: "x" + rand.Text()[:15], h: h, fin: make(chan error, 1)}
	c.mu.Lock()
	if c.ended != nil {
		err := c.ended
		c.mu.Unlock()
		return nil, err
	}
	c.cur = r
	c.mu.Unlock()
	msg := map[string]any{"type": "execute", "id": r.id, "code": req.Code}
	if len(req.Files) > 0 {
		msg["files"] = req.Files
	}
	if req.Timeout > 0 {
		msg["timeout"] = req.Timeout
	}
	if req.InlineImages || h.wantsImages() {
		msg["inline_images"] = true
	}
	clear := func() {
		c.mu.Lock()
		if c.cur == r {
			c.cur = nil
		}
		c.mu.Unlock()
	}
	if err := c.send(msg); err != nil {
		clear()
		return nil, err
	}
	select {
	case err := <-r.fin:
		if err != nil {
			return nil, err
		}
		return r.answer(), nil
	case <-ctx.Done():
		clear()
		c.send(map[string]any{"type": "interrupt"})
		return nil, ctx.Err()
	}
}

// Interrupt interrupts the session's running code.
func (c *Conn) Interrupt() error { return c.send(map[string]any{"type": "interrupt"}) }

// Restart restarts the session's kernel (variables lost, files kept).
func (c *Conn) Restart() error { return c.send(map[string]any{"type": "restart"}) }

// Close closes the connection (the session lives on) and waits for its
// reader to stop.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	ws := c.ws
	c.mu.Unlock()
	c.wmu.Lock()
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.wmu.Unlock()
	err := ws.Close()
	<-c.done
	return err
}
