package kernel

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/codegw/codegw"
)

// A one-shot kernel (executor-image/zygote.py, run_oneshot) is a child of
// the zygote that runs stateless cells in the zygote's prepared IPython
// shell, without ZeroMQ or an ipykernel kernel object. It listens on one
// stream socket at its shell endpoint's address (ipc: that path; tcp: that
// port) and speaks the Jupyter messages over it as frames: a 4-byte
// big-endian length, then a JSON object with the message's channel,
// header, parent_header, metadata and content. Its Client is the same
// Client, so a Kernel, its deadlines and everything above it serve both
// kinds of kernel alike; only the wire differs.

// OneShotter is implemented by processes that may be one-shot kernels.
type OneShotter interface {
	// OneShot reports whether the process is a one-shot kernel (a
	// provisioner that cannot make one starts a full kernel instead).
	OneShot() bool
}

// frameHeaderBytes is the length prefix of a frame.
const frameHeaderBytes = 4

// oneShotWriteTimeout bounds one frame's write to a one-shot kernel, which
// reads every request at once: a kernel that stops reading is not waited
// on forever.
const oneShotWriteTimeout = 10 * time.Second

// frame is a one-shot kernel message on the wire.
type frame struct {
	Channel      string          `json:"channel"`
	Header       Header          `json:"header"`
	ParentHeader Header          `json:"parent_header"`
	Metadata     json.RawMessage `json:"metadata,omitempty"`
	Content      json.RawMessage `json:"content"`
}

// ErrBadFrame wraps a one-shot frame that is not a message. The stream
// stays in step (the length was read), so the frame is dropped.
var ErrBadFrame = errors.New("kernel: malformed one-shot frame")

// ReadFrame reads one frame of a one-shot kernel and returns its channel
// and message. A frame announced longer than max is ErrFrameTooLarge,
// refused before anything is allocated; one that is not a message wraps
// ErrBadFrame and can be skipped; any other error ends the stream.
func ReadFrame(r io.Reader, max int) (string, *Message, error) {
	var head [frameHeaderBytes]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return "", nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if uint64(n) > uint64(max) {
		return "", nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return "", nil, err
	}
	var f frame
	if err := json.Unmarshal(body, &f); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if f.Header.MsgType == "" {
		return "", nil, fmt.Errorf("%w: no msg_type", ErrBadFrame)
	}
	if len(f.Content) == 0 || f.Content[0] != '{' {
		return "", nil, fmt.Errorf("%w: content is not an object", ErrBadFrame)
	}
	return f.Channel, &Message{Header: f.Header, ParentHeader: f.ParentHeader, Metadata: f.Metadata, Content: f.Content}, nil
}

// AppendFrame appends msg on channel as a frame to b.
func AppendFrame(b []byte, channel string, msg *Message) ([]byte, error) {
	f := frame{Channel: channel, Header: msg.Header, ParentHeader: msg.ParentHeader, Metadata: msg.Metadata, Content: msg.Content}
	if len(f.Metadata) == 0 {
		f.Metadata = json.RawMessage("{}")
	}
	body, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	if len(body) > MaxFrameBytes {
		return nil, fmt.Errorf("kernel: message of %d bytes is over the frame limit", len(body))
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...), nil
}

// oneShotAddr is the network and address of a one-shot kernel's socket.
func oneShotAddr(info ConnectionInfo) (string, string) {
	if info.Transport == "ipc" {
		return "unix", info.IP + "-" + strconv.Itoa(info.ShellPort)
	}
	return "tcp", net.JoinHostPort(info.IP, strconv.Itoa(info.ShellPort))
}

// DialOneShot connects to the one-shot kernel at info and returns its
// Client, which has no heartbeat (the kernel's process exit tells its
// death). As with Dial, call WaitReady next. The first frame proves the
// gateway knows the connection's key.
func DialOneShot(ctx context.Context, info ConnectionInfo, opts ClientOptions) (*Client, error) {
	opts.defaults()
	if bound := opts.Bound; bound != nil {
		t := time.NewTimer(boundWait)
		select {
		case <-bound:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	network, addr := oneShotAddr(info)
	var (
		conn    net.Conn
		err     error
		d       net.Dialer
		backoff = 10 * time.Millisecond
	)
	for {
		conn, err = d.DialContext(ctx, network, addr)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("kernel: dial one-shot kernel: %w", ctx.Err())
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("kernel: dial one-shot kernel: %w", ctx.Err())
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
	c := newClient(info, opts)
	c.one = conn
	hello, err := NewMessage(c.session, "hello", map[string]string{"key": info.Key})
	if err == nil {
		err = c.transmit(Shell, hello)
	}
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("kernel: dial one-shot kernel: %w", err)
	}
	c.wg.Add(1)
	go c.readFrames()
	return c, nil
}

// writeFrame sends msg as a frame; c.sendMu is held.
func (c *Client) writeFrame(channel string, msg *Message) error {
	b, err := AppendFrame(nil, channel, msg)
	if err != nil {
		return err
	}
	c.one.SetWriteDeadline(time.Now().Add(oneShotWriteTimeout))
	_, err = c.one.Write(b)
	return err
}

// readFrames is a one-shot kernel's one reader: it routes each message to
// the call waiting for it, as the ZeroMQ readers do.
func (c *Client) readFrames() {
	defer c.wg.Done()
	defer codegw.Recover(c.ctx, "kernel one-shot reader", func(err error) { c.Fail(err) })
	br := bufio.NewReaderSize(c.one, 64<<10)
	for {
		_, msg, err := ReadFrame(br, MaxFrameBytes)
		if errors.Is(err, ErrBadFrame) {
			c.opts.Logger.Warn("kernel: dropping bad message", "channel", "one-shot", "err", err)
			continue
		}
		if err != nil {
			if c.ctx.Err() == nil {
				c.Fail(fmt.Errorf("one-shot channel: %w", err))
			}
			return
		}
		if !c.deliver(msg) {
			return
		}
	}
}
