package kernel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/go-zeromq/zmq4"
)

// Errors that end calls on a Client.
var (
	// ErrDied is wrapped by every error caused by the kernel's death: process
	// exit, a kill, or missed heartbeats.
	ErrDied = errors.New("kernel died")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("kernel client closed")
)

// ClientOptions tunes a Client. The zero value uses the defaults.
type ClientOptions struct {
	// HeartbeatInterval is how often the heartbeat is pinged (default 250ms).
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long without a pong before the kernel is
	// declared dead and killed (default 2s: a kernel that exits is noticed
	// at once through its process; this catches a frozen one, and must not
	// fire for a live kernel starved of CPU on a busy machine). Negative
	// disables heartbeat monitoring.
	HeartbeatTimeout time.Duration
	// Bound, when not nil, is closed once the kernel has bound its sockets
	// (see Binder): Dial then connects at once. Without it, or when it
	// does not come within boundWait, Dial retries with a backoff.
	Bound <-chan struct{}
	// Logger receives decode errors and other oddities (default slog.Default()).
	Logger *slog.Logger
}

func (o *ClientOptions) defaults() {
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 250 * time.Millisecond
	}
	if o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Client speaks the Jupyter messaging protocol to one kernel over ZeroMQ.
// Each socket has one reader goroutine that routes messages by their parent
// msg_id to the call waiting for them, so a call only ever sees its own
// events. All methods are safe for concurrent use.
type Client struct {
	info    ConnectionInfo
	session string
	opts    ClientOptions

	ctx    context.Context // ends when the Client is closed
	cancel context.CancelFunc
	wg     sync.WaitGroup

	sockets // hb included
	// one is a one-shot kernel's connection (see DialOneShot); the
	// ZeroMQ sockets are then nil.
	one net.Conn

	sendMu sync.Mutex // guards signer (not safe for concurrent use) and sends
	signer *Signer

	quitting atomic.Bool // a shutdown_request was sent: the kernel exits by itself

	ping     chan struct{} // the heartbeat scheduler asks for a ping
	lastPong atomic.Int64  // unix nanoseconds of the last pong (or of the watch's start)

	mu      sync.Mutex
	pending map[string]*call // by msg_id of the request
	deadErr error            // set once when the kernel is found dead
	dead    chan struct{}    // closed with deadErr
}

// call is one request waiting for its reply and the iopub messages it caused.
type call struct {
	ch   chan *Message // replies, iopub and stdin messages, in arrival order
	gone chan struct{} // closed when nobody waits any more
}

func newCall(ch chan *Message) *call {
	return &call{ch: ch, gone: make(chan struct{})}
}

// newClient returns a Client of info with no connection yet (Dial and
// DialOneShot connect it).
func newClient(info ConnectionInfo, opts ClientOptions) *Client {
	cctx, cancel := context.WithCancel(context.Background())
	return &Client{
		info:    info,
		session: codegw.NewID(),
		opts:    opts,
		ctx:     cctx,
		cancel:  cancel,
		signer:  NewSigner(info.Key),
		pending: make(map[string]*call),
		dead:    make(chan struct{}),
		ping:    make(chan struct{}, 1),
	}
}

// Dial connects to the kernel at info and returns a Client. It does not wait
// for the kernel to be ready; call WaitReady. It does not watch the
// heartbeat either; call Heartbeat(true).
//
// A kernel binds its sockets some time after its process starts. When
// opts.Bound is given, Dial waits for it and connects once; otherwise (a
// kernel that gives no signal) it retries each socket with a backoff from
// 10 ms to half a second.
func Dial(ctx context.Context, info ConnectionInfo, opts ClientOptions) (*Client, error) {
	opts.defaults()
	c := newClient(info, opts)
	// zmq4 dials block with their own retry loop; tie them to ctx.
	stop := context.AfterFunc(ctx, c.cancel)
	defer stop()

	socks, err := newSockets(c.ctx, codegw.NewID(), true, opts.Logger)
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("kernel: %w", err)
	}
	c.sockets = socks
	if opts.Bound != nil {
		t := time.NewTimer(boundWait)
		select {
		case <-opts.Bound:
		case <-t.C:
			opts.Logger.Debug("kernel: no bound signal; dialling with retries", "after", boundWait)
		case <-ctx.Done():
		}
		t.Stop()
	}
	if err := c.dial(ctx, info); err != nil {
		// The dial's error is the one to report; closing what was
		// dialled so far can only add noise.
		_ = c.Close()
		return nil, fmt.Errorf("kernel: %w", err)
	}
	for _, s := range c.list() {
		if s.channel != HB { // the heartbeat has its own goroutine
			c.wg.Add(1)
			go c.read(s.sock, s.channel)
		}
	}
	if opts.HeartbeatTimeout > 0 {
		c.wg.Add(1)
		go c.pinger()
	}
	return c, nil
}

// boundWait bounds Dial's wait for a kernel's bound signal: a kernel whose
// launcher predates the signal (an old executor image) still gets dialled.
const boundWait = 3 * time.Second

// Close closes every socket and ends every waiting call with ErrClosed. It
// does not stop the kernel. It returns the sockets' close errors, joined;
// a connection that was already closed (the kernel went first) is not one.
func (c *Client) Close() error {
	beats.unwatch(c)
	c.cancel()
	var errs []error
	if c.one != nil {
		if err := c.one.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("kernel: close one-shot connection: %w", err))
		}
	}
	if err := c.close(); err != nil {
		errs = append(errs, fmt.Errorf("kernel: %w", err))
	}
	c.wg.Wait()
	c.Fail(ErrClosed)
	return errors.Join(errs...)
}

// Fail marks the kernel dead with err (wrapped in ErrDied unless it is
// ErrClosed) and ends every waiting call. Provisioners' process watchers call
// it when the kernel process exits. Only the first failure is kept.
func (c *Client) Fail(err error) {
	if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrDied) {
		err = fmt.Errorf("%w: %w", ErrDied, err)
	}
	c.mu.Lock()
	if c.deadErr != nil {
		c.mu.Unlock()
		return
	}
	c.deadErr = err
	close(c.dead)
	c.mu.Unlock()
	beats.unwatch(c)
}

// Dead is closed when the kernel is found dead or the Client is closed.
func (c *Client) Dead() <-chan struct{} { return c.dead }

// Err returns why the Client stopped working, or nil while it works.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadErr
}

// Session is the Jupyter session id this Client signs its messages with.
func (c *Client) Session() string { return c.session }

func (c *Client) read(sock zmq4.Socket, channel string) {
	defer c.wg.Done()
	defer codegw.Recover(c.ctx, "kernel "+channel+" reader", func(err error) { c.Fail(err) })
	signer := NewSigner(c.info.Key) // one per reader: a Signer is not concurrent
	for {
		zm, err := sock.Recv()
		if err != nil {
			if c.ctx.Err() == nil {
				c.Fail(fmt.Errorf("%s channel: %w", channel, err))
			}
			return
		}
		msg, err := signer.Decode(zm.Frames)
		if err != nil {
			c.opts.Logger.Warn("kernel: dropping bad message", "channel", channel, "err", err)
			continue
		}
		if !c.deliver(msg) {
			return
		}
	}
}

// deliver hands msg to the call waiting for it, if any; false means the
// Client is closing.
func (c *Client) deliver(msg *Message) bool {
	c.mu.Lock()
	cl := c.pending[msg.ParentHeader.MsgID]
	c.mu.Unlock()
	if cl == nil {
		return true // another request's, or a broadcast before we asked
	}
	select {
	case cl.ch <- msg:
		return true
	case <-cl.gone:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// transmit signs and sends msg on channel's socket, or as a frame on a
// one-shot kernel's connection.
func (c *Client) transmit(channel string, msg *Message) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.one != nil {
		return c.writeFrame(channel, msg)
	}
	var sock zmq4.Socket
	switch channel {
	case Shell:
		sock = c.shell
	case Control:
		sock = c.control
	case Stdin:
		sock = c.stdin
	default:
		return fmt.Errorf("kernel: no socket to send on %s", channel)
	}
	frames, err := c.signer.Encode(msg)
	if err != nil {
		return err
	}
	return sock.SendMulti(zmq4.NewMsgFrom(frames...))
}

// send signs and sends a request on sock, registering a call for its replies
// first so that none is missed.
func (c *Client) send(channel string, msg *Message) (*call, error) {
	cl := newCall(make(chan *Message, 16))
	c.mu.Lock()
	if c.deadErr != nil {
		err := c.deadErr
		c.mu.Unlock()
		return nil, err
	}
	c.pending[msg.Header.MsgID] = cl
	c.mu.Unlock()

	if err := c.transmit(channel, msg); err != nil {
		c.done(msg.Header.MsgID)
		return nil, fmt.Errorf("kernel: send %s: %w", msg.Header.MsgType, err)
	}
	return cl, nil
}

func (c *Client) done(msgID string) {
	c.mu.Lock()
	if cl := c.pending[msgID]; cl != nil {
		delete(c.pending, msgID)
		close(cl.gone)
	}
	c.mu.Unlock()
}

// wait returns the next message of cl, or why there is none.
func (c *Client) wait(ctx context.Context, cl *call) (*Message, error) {
	select {
	case m := <-cl.ch:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.dead:
		return nil, c.Err()
	}
}

// request sends a request and returns its reply on the same channel, ignoring
// iopub traffic.
func (c *Client) request(ctx context.Context, channel string, msgType string, content any) (*Message, error) {
	msg, err := NewMessage(c.session, msgType, content)
	if err != nil {
		return nil, err
	}
	cl, err := c.send(channel, msg)
	if err != nil {
		return nil, err
	}
	defer c.done(msg.Header.MsgID)
	want := replyType(msgType)
	for {
		m, err := c.wait(ctx, cl)
		if err != nil {
			return nil, err
		}
		if m.Header.MsgType == want {
			return m, nil
		}
	}
}

func replyType(requestType string) string {
	return requestType[:len(requestType)-len("request")] + "reply"
}

// KernelInfo is the part of kernel_info_reply the gateway uses.
type KernelInfo struct {
	Status                string `json:"status"`
	ProtocolVersion       string `json:"protocol_version"`
	Implementation        string `json:"implementation"`
	ImplementationVersion string `json:"implementation_version"`
	LanguageInfo          struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"language_info"`
}

// WaitReady returns once the kernel answered kernel_info_request on shell AND
// published that request's idle status on iopub, which proves the iopub
// subscription is live. It asks once. It asks again only when the answer is
// incomplete: a reply whose idle status did not follow within
// readyIdleWait (the subscription reached the kernel after the status was
// published), or no reply at all after a backoff from one second (a kernel
// that lost the request), a few times.
func (c *Client) WaitReady(ctx context.Context) (*KernelInfo, error) {
	var (
		info    *KernelInfo
		pending []string
		merged  = make(chan *Message, 64)
	)
	defer func() {
		for _, id := range pending {
			c.done(id)
		}
	}()
	ask := func() error {
		msg, err := NewMessage(c.session, "kernel_info_request", json.RawMessage("{}"))
		if err != nil {
			return err
		}
		cl := newCall(merged)
		c.mu.Lock()
		if c.deadErr != nil {
			err := c.deadErr
			c.mu.Unlock()
			return err
		}
		c.pending[msg.Header.MsgID] = cl
		c.mu.Unlock()
		pending = append(pending, msg.Header.MsgID)
		return c.transmit(Shell, msg)
	}
	if err := ask(); err != nil {
		return nil, fmt.Errorf("kernel: wait ready: %w", err)
	}
	backoff := time.Second
	retry := time.NewTimer(backoff)
	defer retry.Stop()
	idle := false
	for info == nil || !idle {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kernel: wait ready: %w", ctx.Err())
		case <-c.dead:
			return nil, fmt.Errorf("kernel: wait ready: %w", c.Err())
		case <-retry.C:
			if len(pending) >= readyAsksMax {
				continue // the start timeout ends the wait
			}
			if err := ask(); err != nil {
				return nil, fmt.Errorf("kernel: wait ready: %w", err)
			}
			if info == nil {
				backoff = min(backoff*2, 5*time.Second)
				retry.Reset(backoff)
			} else {
				retry.Reset(readyIdleWait)
			}
		case m := <-merged:
			switch m.Header.MsgType {
			case "kernel_info_reply":
				if info == nil {
					info = new(KernelInfo)
					if err := json.Unmarshal(m.Content, info); err != nil {
						return nil, fmt.Errorf("kernel: kernel_info_reply: %w", err)
					}
					if !idle {
						retry.Reset(readyIdleWait)
					}
				}
			case "status":
				if isIdle(m.Content) {
					idle = true
				}
			}
		}
	}
	return info, nil
}

// readyIdleWait is how long WaitReady waits for the idle status that
// follows a kernel_info_reply (published by another thread of the kernel)
// before it asks again.
const readyIdleWait = 100 * time.Millisecond

// readyAsksMax bounds WaitReady's kernel_info_requests.
const readyAsksMax = 20

func isIdle(content []byte) bool {
	return bytes.Contains(content, []byte(`"idle"`))
}

// Interrupt asks the kernel to interrupt the running code with an
// interrupt_request on the control channel, which works across process and
// container boundaries, and waits for the reply.
func (c *Client) Interrupt(ctx context.Context) error {
	if _, err := c.request(ctx, Control, "interrupt_request", json.RawMessage("{}")); err != nil {
		return fmt.Errorf("kernel: interrupt: %w", err)
	}
	return nil
}

// Shutdown asks the kernel to exit and waits for the reply.
func (c *Client) Shutdown(ctx context.Context) error {
	c.quitting.Store(true)
	if _, err := c.request(ctx, Control, "shutdown_request", map[string]bool{"restart": false}); err != nil {
		return fmt.Errorf("kernel: shutdown: %w", err)
	}
	return nil
}

// ExecuteOptions are the optional parts of an execute_request.
type ExecuteOptions struct {
	Silent       bool
	StoreHistory bool
	StopOnError  bool
	// OnMessage receives every iopub message of this execution except
	// status, in order: stream, display_data, update_display_data,
	// clear_output, execute_input, execute_result, error. It runs on the
	// caller's goroutine; a slow callback slows the kernel down.
	OnMessage func(*Message)
	// OnInput answers input_request. Nil means the kernel is told stdin is
	// not allowed, so input() raises at once.
	OnInput func(ctx context.Context, req InputRequest) (string, error)
	// OutputLimit, when positive, asks a one-shot kernel to send no more
	// than this many characters (and one, to show the cut) of stream
	// text: what is past the caller's budget is dropped in the kernel,
	// not carried to the gateway. Full kernels ignore it.
	OutputLimit int
}

// InputRequest is the content of an input_request.
type InputRequest struct {
	Prompt   string `json:"prompt"`
	Password bool   `json:"password"`
}

// ExecuteReply is the content of an execute_reply.
type ExecuteReply struct {
	Status         string   `json:"status"` // "ok", "error" or "aborted"
	ExecutionCount int      `json:"execution_count"`
	EName          string   `json:"ename"`
	EValue         string   `json:"evalue"`
	Traceback      []string `json:"traceback"`
}

// ErrNoReply is Execute's error when the kernel went idle and never sent
// the request's execute_reply: ipykernel drops the reply when an interrupt
// (KeyboardInterrupt) reaches its handler outside the cell, just before or
// after the code runs, and then ignores interrupts (it is idle). Without
// this the call would wait for its deadline.
var ErrNoReply = errors.New("kernel: the kernel went idle without answering the request")

// idleGrace bounds the wait for iopub idle after the execute_reply: if the
// idle status was lost (a PUB socket drops at its high-water mark) the call
// still ends.
const idleGrace = 3 * time.Second

// Execute runs code and returns its reply once both the execute_reply and the
// request's iopub idle status arrived, so every output has been delivered to
// OnMessage. If ctx ends first it returns ctx.Err() and the code keeps
// running; interrupting it is the caller's choice (see Kernel.Execute).
func (c *Client) Execute(ctx context.Context, code string, opts ExecuteOptions) (*ExecuteReply, error) {
	req := executeRequest{
		Code: code, Silent: opts.Silent, StoreHistory: opts.StoreHistory,
		UserExpressions: struct{}{}, AllowStdin: opts.OnInput != nil, StopOnError: opts.StopOnError,
	}
	if c.one != nil {
		req.OutputLimit = opts.OutputLimit
	}
	msg, err := NewMessage(c.session, "execute_request", req)
	if err != nil {
		return nil, err
	}
	cl, err := c.send(Shell, msg)
	if err != nil {
		return nil, err
	}
	defer c.done(msg.Header.MsgID)

	var (
		reply   *ExecuteReply
		idle    bool
		linger  <-chan time.Time
		noReply <-chan time.Time
	)
	// input() is answered aside, so that the loop keeps reading: when the
	// code is interrupted (or killed) while it waits for input, the reply
	// arrives and the pending answer is abandoned.
	inputCtx, cancelInput := context.WithCancel(ctx)
	var inputs sync.WaitGroup
	defer func() {
		cancelInput()
		inputs.Wait()
	}()
	for reply == nil || !idle {
		var m *Message
		select {
		case m = <-cl.ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.dead:
			// Deliver what already arrived before reporting the death.
			select {
			case m = <-cl.ch:
			default:
				return reply, c.Err()
			}
		case <-linger:
			c.opts.Logger.Warn("kernel: iopub idle never came; ending the execution on its reply", "msg_id", msg.Header.MsgID)
			return reply, nil
		case <-noReply:
			c.opts.Logger.Warn("kernel: idle without an execute_reply; ending the execution", "msg_id", msg.Header.MsgID)
			return nil, ErrNoReply
		}
		switch m.Header.MsgType {
		case "status":
			if isIdle(m.Content) {
				idle = true
				if reply == nil {
					noReply = time.After(idleGrace)
				}
			}
		case "execute_reply":
			reply = new(ExecuteReply)
			if err := json.Unmarshal(m.Content, reply); err != nil {
				return nil, fmt.Errorf("kernel: execute_reply: %w", err)
			}
			cancelInput() // the code no longer waits for input
			linger = time.After(idleGrace)
		case "input_request":
			inputs.Add(1)
			go func(req *Message) {
				defer inputs.Done()
				defer codegw.Recover(ctx, "kernel input request", func(err error) { c.Fail(err) })
				if err := c.answerInput(inputCtx, req, opts.OnInput); err != nil && inputCtx.Err() == nil {
					c.opts.Logger.Warn("kernel: input request not answered", "err", err)
				}
			}(m)
		default:
			if opts.OnMessage != nil {
				opts.OnMessage(m)
			}
		}
	}
	return reply, nil
}

type executeRequest struct {
	Code            string   `json:"code"`
	Silent          bool     `json:"silent"`
	StoreHistory    bool     `json:"store_history"`
	UserExpressions struct{} `json:"user_expressions"`
	AllowStdin      bool     `json:"allow_stdin"`
	StopOnError     bool     `json:"stop_on_error"`
	// OutputLimit is a one-shot kernel's: it sends no more stream text
	// than this many characters and one.
	OutputLimit int `json:"codegw_output_limit,omitempty"`
}

func (c *Client) answerInput(ctx context.Context, req *Message, onInput func(context.Context, InputRequest) (string, error)) error {
	var ir InputRequest
	if err := json.Unmarshal(req.Content, &ir); err != nil {
		return fmt.Errorf("kernel: input_request: %w", err)
	}
	value := ""
	if onInput != nil {
		v, err := onInput(ctx, ir)
		if err != nil {
			return fmt.Errorf("kernel: answer input: %w", err)
		}
		value = v
	}
	reply, err := NewMessage(c.session, "input_reply", map[string]string{"value": value})
	if err != nil {
		return err
	}
	reply.ParentHeader = req.Header
	reply.Identities = req.Identities
	if err := c.transmit(Stdin, reply); err != nil {
		return fmt.Errorf("kernel: send input_reply: %w", err)
	}
	return nil
}

// slogLogger adapts l for zmq4, which logs through a *log.Logger.
func slogLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelDebug)
}
