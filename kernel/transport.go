package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// The kernel runs untrusted code, which can write anything to its own
// sockets. zmq4 allocates whatever frame size the peer announces, so a
// forged 2^60-byte frame header would crash the gateway. Our endpoints use
// transports that wrap each connection in a guard that parses ZMTP framing
// as bytes arrive and fails the connection on an oversized frame; the
// Client then reports the kernel dead and the Kernel kills it.
const (
	guardedIPC = "codegw-ipc"
	guardedTCP = "codegw-tcp"
)

// ErrFrameTooLarge is the cause when a kernel sends a frame over the limit.
var ErrFrameTooLarge = errors.New("kernel sent a message frame over the size limit")

// MaxFrameBytes is the largest frame accepted from a kernel. A 20 MB plot is
// 27 MB of base64; stdout arrives in chunks of about 1 MB (see launch.py).
const MaxFrameBytes = 64 << 20

func init() {
	if err := zmq4.RegisterTransport(guardedIPC, guardTransport{transport.New("unix")}); err != nil {
		panic(err)
	}
	if err := zmq4.RegisterTransport(guardedTCP, guardTransport{transport.New("tcp")}); err != nil {
		panic(err)
	}
}

type guardTransport struct{ transport.Transport }

func (g guardTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	c, err := g.Transport.Dial(ctx, d, addr)
	if err != nil {
		return nil, err
	}
	return &frameGuard{Conn: c, br: bufio.NewReaderSize(c, 16<<10), max: MaxFrameBytes}, nil
}

// frameGuard checks the ZMTP 3 framing of the bytes it reads: a 64-byte
// greeting, then frames of a flags byte, a 1- or 8-byte size and a body.
// It also saves system calls: reads are buffered (zmq4 reads each frame
// header and body with its own read(2)), and writes are gathered until a
// message's last frame is complete, then sent with one write(2) (zmq4 writes
// each header and body apart, 12 writes for an execute_request).
type frameGuard struct {
	net.Conn
	br   *bufio.Reader
	max  uint64
	in   zmtpScanner
	out  zmtpScanner
	wbuf []byte
}

func (g *frameGuard) Read(p []byte) (int, error) {
	n, err := g.br.Read(p)
	for b := p[:n]; len(b) > 0; {
		k, _, serr := g.in.advance(b, g.max)
		if serr != nil {
			g.Conn.Close()
			return 0, serr
		}
		b = b[k:]
	}
	return n, err
}

func (g *frameGuard) Write(p []byte) (int, error) {
	for b := p; len(b) > 0; {
		k, boundary, err := g.out.advance(b, 1<<62)
		if err != nil {
			return 0, err
		}
		g.wbuf = append(g.wbuf, b[:k]...)
		b = b[k:]
		if boundary {
			_, err := g.Conn.Write(g.wbuf)
			g.wbuf = g.wbuf[:0]
			if cap(g.wbuf) > 1<<20 {
				g.wbuf = nil // do not keep a big message's buffer
			}
			if err != nil {
				return 0, err
			}
		}
	}
	return len(p), nil
}

// zmtpScanner follows ZMTP 3 framing through a byte stream.
type zmtpScanner struct {
	started  bool
	greeting int    // greeting bytes still to pass
	sizeLeft int    // size bytes still to read
	size     uint64 // size being assembled
	body     uint64 // body bytes still to pass
	more     bool   // the current frame is not its message's last
}

// advance consumes b up to the end of the greeting or of a message,
// returning how many bytes it took and whether it stopped at such a
// boundary. A frame announced larger than max is an error.
func (s *zmtpScanner) advance(b []byte, max uint64) (int, bool, error) {
	if !s.started {
		s.started, s.greeting = true, 64
	}
	n := 0
	for n < len(b) {
		switch {
		case s.greeting > 0:
			k := min(s.greeting, len(b)-n)
			s.greeting -= k
			n += k
			if s.greeting == 0 {
				return n, true, nil
			}
		case s.body > 0:
			k := uint64(len(b) - n)
			if k > s.body {
				k = s.body
			}
			s.body -= k
			n += int(k)
			if s.body == 0 && !s.more {
				return n, true, nil
			}
		case s.sizeLeft > 0:
			s.size = s.size<<8 | uint64(b[n])
			n++
			s.sizeLeft--
			if s.sizeLeft == 0 {
				if s.size > max {
					return n, false, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, s.size, max)
				}
				s.body = s.size
				if s.body == 0 && !s.more {
					return n, true, nil
				}
			}
		default: // flags byte
			flags := b[n]
			n++
			s.more = flags&0x01 != 0
			s.size, s.sizeLeft = 0, 1
			if flags&0x02 != 0 { // long frame: 8-byte size
				s.sizeLeft = 8
			}
		}
	}
	return n, false, nil
}
