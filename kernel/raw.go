package kernel

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/codegw/codegw"
)

// RawMessage is a Jupyter message kept as the bytes its sender wrote: the
// header and parent header are not decoded, so fields this package does not
// know (epoch-float dates, subshell ids) pass through intact. It is what
// the Jupyter kernel websocket carries.
type RawMessage struct {
	Header       json.RawMessage
	ParentHeader json.RawMessage
	Metadata     json.RawMessage
	Content      json.RawMessage
	Buffers      [][]byte
}

// RawIDs are the parts of a header routing needs.
type RawIDs struct {
	MsgID   string `json:"msg_id"`
	MsgType string `json:"msg_type"`
}

// IDs decodes the msg_id and msg_type of the message's header.
func (m *RawMessage) IDs() (RawIDs, error) {
	var ids RawIDs
	if err := json.Unmarshal(m.Header, &ids); err != nil {
		return ids, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	return ids, nil
}

// ParentID decodes the msg_id of the message's parent header ("" when there
// is none).
func (m *RawMessage) ParentID() string {
	var ids RawIDs
	if len(m.ParentHeader) > 0 {
		json.Unmarshal(m.ParentHeader, &ids)
	}
	return ids.MsgID
}

// RawConn is a connection of its own to a kernel for callers that speak the
// Jupyter protocol themselves (the Jupyter kernel websocket): it signs and
// sends their messages on shell, control and stdin as they are, and hands
// every message the kernel sends on shell, control, stdin and iopub to one
// receiver. It does not watch the heartbeat: the Kernel's Client does. It
// lives beside the Kernel's Client, whose calls it never disturbs; replies
// to its requests come to its own sockets only.
type RawConn struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	sockets // no heartbeat

	sendMu sync.Mutex
	signer *Signer
	key    string

	mu   sync.Mutex
	err  error
	done chan struct{}
}

// DialRaw connects to the kernel at info and returns once the iopub
// subscription is live (a kernel_info_request's idle status came back), so
// no output of the caller's first request is lost. deliver receives every
// later message with its channel, from one goroutine per channel; it must
// not block for long.
func DialRaw(ctx context.Context, info ConnectionInfo, deliver func(channel string, m *RawMessage)) (*RawConn, error) {
	cctx, cancel := context.WithCancel(context.Background())
	r := &RawConn{ctx: cctx, cancel: cancel, signer: NewSigner(info.Key), key: info.Key, done: make(chan struct{})}
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	// A fresh message's random id names this connection: its sockets'
	// identity and its probes' session.
	first, err := NewMessage("", "kernel_info_request", json.RawMessage("{}"))
	if err != nil {
		cancel()
		return nil, err
	}
	self := first.Header.MsgID
	socks, err := newSockets(cctx, self, false, slog.Default())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("kernel: raw: %w", err)
	}
	r.sockets = socks
	if err := r.dial(ctx, info); err != nil {
		r.Close()
		return nil, fmt.Errorf("kernel: raw: %w", err)
	}
	// Until the handshake ends, messages go to ready; then to deliver.
	probes := map[string]bool{}
	var probeMu sync.Mutex
	ready := make(chan struct{})
	var readyOnce sync.Once
	handshake := func(channel string, m *RawMessage) bool {
		select {
		case <-ready:
			return false
		default:
		}
		probeMu.Lock()
		mine := probes[m.ParentID()]
		probeMu.Unlock()
		if !mine {
			return false
		}
		if channel == IOPub && isIdle(m.Content) {
			readyOnce.Do(func() { close(ready) })
		}
		return true // a probe's own traffic is not the caller's
	}
	for _, s := range r.list() {
		r.wg.Add(1)
		go r.read(s.sock, s.channel, func(channel string, m *RawMessage) {
			if !handshake(channel, m) {
				deliver(channel, m)
			}
		})
	}
	probe := func() error {
		msg, err := NewMessage(self, "kernel_info_request", json.RawMessage("{}"))
		if err != nil {
			return err
		}
		probeMu.Lock()
		probes[msg.Header.MsgID] = true
		probeMu.Unlock()
		h, _ := json.Marshal(msg.Header)
		return r.Send(Shell, &RawMessage{Header: h, Content: msg.Content})
	}
	if err := probe(); err != nil {
		r.Close()
		return nil, err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ready:
			return r, nil
		case <-tick.C:
			if err := probe(); err != nil {
				r.Close()
				return nil, err
			}
		case <-ctx.Done():
			r.Close()
			return nil, fmt.Errorf("kernel: raw: wait ready: %w", ctx.Err())
		case <-r.done:
			r.Close()
			return nil, fmt.Errorf("kernel: raw: wait ready: %w", r.Err())
		}
	}
}

// Send signs m and sends it on channel (shell, control or stdin).
func (r *RawConn) Send(channel string, m *RawMessage) error {
	var sock zmq4.Socket
	switch channel {
	case Shell:
		sock = r.shell
	case Control:
		sock = r.control
	case Stdin:
		sock = r.stdin
	default:
		return fmt.Errorf("kernel: raw: no channel %q to send on", channel)
	}
	if err := r.Err(); err != nil {
		return err
	}
	parent := orEmptyObject(m.ParentHeader)
	meta := orEmptyObject(m.Metadata)
	content := orEmptyObject(m.Content)
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	sig := hex.EncodeToString(r.signer.sum(m.Header, parent, meta, content))
	frames := make([][]byte, 0, 6+len(m.Buffers))
	frames = append(frames, delimiter, []byte(sig), m.Header, parent, meta, content)
	frames = append(frames, m.Buffers...)
	if err := sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil {
		return fmt.Errorf("kernel: raw: send on %s: %w", channel, err)
	}
	return nil
}

func (r *RawConn) read(sock zmq4.Socket, channel string, deliver func(string, *RawMessage)) {
	defer r.wg.Done()
	defer codegw.Recover(context.Background(), "kernel "+channel+" raw reader", func(err error) { r.fail(err) })
	signer := NewSigner(r.key)
	for {
		zm, err := sock.Recv()
		if err != nil {
			r.fail(fmt.Errorf("%w: %s channel: %v", ErrDied, channel, err))
			return
		}
		m, err := signer.DecodeRaw(zm.Frames)
		if err != nil {
			continue // a forged or broken message is nobody's
		}
		deliver(channel, m)
	}
}

// DecodeRaw verifies the frames of one message and returns its parts as
// sent.
func (s *Signer) DecodeRaw(frames [][]byte) (*RawMessage, error) {
	_, rest, err := s.verify(frames)
	if err != nil {
		return nil, err
	}
	// The parts are spliced as they are into the JSON a Jupyter client
	// gets: one that is not JSON would break it, or add fields of the
	// kernel's choosing. Empty ones stand for {}.
	for _, p := range rest[2:5] {
		if len(bytes.TrimSpace(p)) > 0 && !json.Valid(p) {
			return nil, fmt.Errorf("%w: parent header, metadata or content is not JSON", ErrMalformed)
		}
	}
	m := &RawMessage{Header: rest[1], ParentHeader: rest[2], Metadata: rest[3], Content: rest[4]}
	if len(rest) > 5 {
		m.Buffers = rest[5:]
	}
	return m, nil
}

func (r *RawConn) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return
	}
	if r.ctx.Err() != nil {
		err = ErrClosed
	}
	r.err = err
	close(r.done)
}

// Done is closed when the connection broke (the kernel died or restarted)
// or was closed.
func (r *RawConn) Done() <-chan struct{} { return r.done }

// Err is why the connection stopped, or nil while it works.
func (r *RawConn) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Close closes the sockets. It does not stop the kernel.
func (r *RawConn) Close() error {
	r.cancel()
	r.close()
	r.wg.Wait()
	r.fail(ErrClosed)
	return nil
}
