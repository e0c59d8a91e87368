package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/go-zeromq/zmq4"
)

// sockets are one connection's sockets to a kernel, one per channel; Dial
// (a Client) and DialRaw (a RawConn) make and dial them alike.
type sockets struct {
	// Shell and stdin share one identity: the kernel routes
	// input_request to the identity that sent the execute_request.
	shell, stdin, control, iopub zmq4.Socket
	// hb is nil for a connection without a heartbeat (RawConn).
	hb zmq4.Socket
}

// channelSocket is one of a connection's sockets and its channel's name.
type channelSocket struct {
	sock    zmq4.Socket
	channel string
}

// newSockets makes a connection's sockets, not yet dialled, with identity
// id for shell and stdin, iopub subscribed to everything and, with hb, a
// heartbeat socket; ctx ends them. On error it closes what it made.
func newSockets(ctx context.Context, id string, hb bool, log *slog.Logger) (sockets, error) {
	opts := []zmq4.Option{
		// One attempt per Dial: dialSocket retries, woken by the kernel's
		// signal rather than by a 25 ms sleep loop.
		zmq4.WithDialerMaxRetries(0),
		zmq4.WithLogger(slogLogger(log)),
	}
	sid := zmq4.SocketIdentity(id)
	s := sockets{
		shell:   zmq4.NewDealer(ctx, append(opts, zmq4.WithID(sid))...),
		stdin:   zmq4.NewDealer(ctx, append(opts, zmq4.WithID(sid))...),
		control: zmq4.NewDealer(ctx, opts...),
		iopub:   zmq4.NewSub(ctx, opts...),
	}
	if hb {
		s.hb = zmq4.NewReq(ctx, opts...)
	}
	if err := s.iopub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		// The subscription's error is the one to report; closing can
		// only add noise.
		_ = s.close()
		return sockets{}, fmt.Errorf("subscribe iopub: %w", err)
	}
	return s, nil
}

// list returns the sockets the connection has, with their channels.
func (s *sockets) list() []channelSocket {
	all := []channelSocket{{s.shell, Shell}, {s.stdin, Stdin}, {s.control, Control}, {s.iopub, IOPub}, {s.hb, HB}}
	out := all[:0]
	for _, c := range all {
		if c.sock != nil {
			out = append(out, c)
		}
	}
	return out
}

// dial connects every socket to its endpoint at info, retrying each until
// it connects or ctx ends (dialSocket).
func (s *sockets) dial(ctx context.Context, info ConnectionInfo) error {
	for _, c := range s.list() {
		if err := dialSocket(ctx, c.sock, info.Endpoint(c.channel)); err != nil {
			return fmt.Errorf("dial %s: %w", c.channel, err)
		}
	}
	return nil
}

// close closes every socket; it returns their close errors, joined. A
// socket whose connection already ended (the kernel went first, or the
// connection's context was cancelled) is not an error.
func (s *sockets) close() error {
	var errs []error
	for _, c := range s.list() {
		err := c.sock.Close()
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close %s socket: %w", c.channel, err))
		}
	}
	return errors.Join(errs...)
}

// dialSocket dials sock until it connects or ctx ends, with a backoff: one
// attempt when the kernel said its sockets are bound, a few while a kernel
// without the signal starts.
func dialSocket(ctx context.Context, sock zmq4.Socket, endpoint string) error {
	backoff := 10 * time.Millisecond
	for {
		err := sock.Dial(endpoint)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}
