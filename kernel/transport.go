package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

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

// maxFrameBytes is the largest frame accepted from a kernel. A 20 MB plot is
// 27 MB of base64; stdout arrives in chunks of about 1 MB (see launch.py).
var maxFrameBytes atomic.Int64

// DefaultMaxFrameBytes is the default frame size limit.
const DefaultMaxFrameBytes = 64 << 20

func init() {
	maxFrameBytes.Store(DefaultMaxFrameBytes)
	if err := zmq4.RegisterTransport(guardedIPC, guardTransport{transport.New("unix")}); err != nil {
		panic(err)
	}
	if err := zmq4.RegisterTransport(guardedTCP, guardTransport{transport.New("tcp")}); err != nil {
		panic(err)
	}
}

// SetMaxFrameBytes changes the frame size limit for new connections.
func SetMaxFrameBytes(n int64) { maxFrameBytes.Store(n) }

type guardTransport struct{ transport.Transport }

func (g guardTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	c, err := g.Transport.Dial(ctx, d, addr)
	if err != nil {
		return nil, err
	}
	return &frameGuard{Conn: c, br: bufio.NewReaderSize(c, 64<<10), max: uint64(maxFrameBytes.Load()), greeting: 64}, nil
}

// frameGuard checks the ZMTP 3 framing of the bytes it reads: a 64-byte
// greeting, then frames of a flags byte, a 1- or 8-byte size and a body.
// It also buffers reads: zmq4 reads each frame header and body with its own
// read(2), about 70 system calls per execution without the buffer.
type frameGuard struct {
	net.Conn
	br       *bufio.Reader
	max      uint64
	greeting int    // greeting bytes still to pass
	sizeLeft int    // size bytes still to read (0: at a flags byte or in a body)
	size     uint64 // size being assembled
	body     uint64 // body bytes still to pass
	inSize   bool
}

func (g *frameGuard) Read(p []byte) (int, error) {
	n, err := g.br.Read(p)
	if n > 0 {
		if gerr := g.scan(p[:n]); gerr != nil {
			g.Conn.Close()
			return 0, gerr
		}
	}
	return n, err
}

func (g *frameGuard) scan(b []byte) error {
	for len(b) > 0 {
		switch {
		case g.greeting > 0:
			k := min(g.greeting, len(b))
			g.greeting -= k
			b = b[k:]
		case g.body > 0:
			k := uint64(len(b))
			if k > g.body {
				k = g.body
			}
			g.body -= k
			b = b[k:]
		case g.inSize:
			g.size = g.size<<8 | uint64(b[0])
			b = b[1:]
			g.sizeLeft--
			if g.sizeLeft == 0 {
				g.inSize = false
				if g.size > g.max {
					return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, g.size, g.max)
				}
				g.body = g.size
			}
		default: // flags byte
			flags := b[0]
			b = b[1:]
			g.inSize, g.size = true, 0
			g.sizeLeft = 1
			if flags&0x02 != 0 { // long frame: 8-byte size
				g.sizeLeft = 8
			}
		}
	}
	return nil
}
