package gateway

import (
	"io"
	"net"
	"sync"
	"time"
)

// Lingering close: when the server ends a connection while the client is
// still sending (a request refused with 431 before its body was read), a
// plain close resets it and the client loses the answer. As Go's net/http
// does, the connection's write side is shut first and what the client still
// sends is read and dropped, for a bounded time and size, before the close.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 256 << 10
)

// lingerListener wraps each accepted TCP connection in a lingerConn.
type lingerListener struct{ net.Listener }

func (l lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		return &lingerConn{TCPConn: tc}, nil
	}
	return c, nil
}

// lingerConn closes its TCP connection as described above, once.
type lingerConn struct {
	*net.TCPConn
	once sync.Once
}

func (c *lingerConn) Close() error {
	c.once.Do(func() {
		if c.TCPConn.CloseWrite() != nil {
			c.TCPConn.Close()
			return
		}
		go func() {
			c.TCPConn.SetReadDeadline(time.Now().Add(lingerTime))
			io.CopyN(io.Discard, c.TCPConn, lingerBytes)
			c.TCPConn.Close()
		}()
	})
	return nil
}
