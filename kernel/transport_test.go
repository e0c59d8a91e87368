package kernel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
)

// frames builds a ZMTP stream: the greeting, then frames of the given sizes.
func zmtpStream(sizes ...uint64) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 64))
	for _, n := range sizes {
		if n < 256 {
			b.WriteByte(0x00)
			b.WriteByte(byte(n))
		} else {
			b.WriteByte(0x02)
			var sz [8]byte
			binary.BigEndian.PutUint64(sz[:], n)
			b.Write(sz[:])
		}
		if n < 1<<20 {
			b.Write(make([]byte, n))
		}
	}
	return b.Bytes()
}

func readThroughGuard(t *testing.T, stream []byte, max uint64, chunk int) error {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		for len(stream) > 0 {
			k := min(chunk, len(stream))
			if _, err := a.Write(stream[:k]); err != nil {
				return
			}
			stream = stream[k:]
		}
		a.Close()
	}()
	g := &frameGuard{Conn: b, br: bufio.NewReader(b), max: max}
	_, err := io.Copy(io.Discard, g)
	return err
}

func TestFrameGuard(t *testing.T) {
	for _, chunk := range []int{1, 3, 7, 4096} {
		if err := readThroughGuard(t, zmtpStream(0, 5, 255, 256, 1000, 70000), 1<<20, chunk); err != nil {
			t.Errorf("chunk %d: legitimate frames refused: %v", chunk, err)
		}
		err := readThroughGuard(t, zmtpStream(10, 1<<40), 1<<20, chunk)
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("chunk %d: forged 1 TiB frame: err = %v", chunk, err)
		}
		err = readThroughGuard(t, zmtpStream(2<<20), 1<<20, chunk)
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("chunk %d: 2 MiB frame over a 1 MiB limit: err = %v", chunk, err)
		}
	}
}

// countingConn counts writes.
type countingConn struct {
	net.Conn
	writes int
	buf    bytes.Buffer
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	return c.buf.Write(p)
}

func TestFrameGuardGathersWrites(t *testing.T) {
	cc := &countingConn{}
	g := &frameGuard{Conn: cc}
	var want bytes.Buffer
	write := func(b []byte) {
		want.Write(b)
		if _, err := g.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	write(make([]byte, 64)) // greeting
	if cc.writes != 1 {
		t.Fatalf("greeting: %d writes", cc.writes)
	}
	// A three-frame message written header by header, body by body.
	frames := [][]byte{[]byte("<IDS|MSG>"), make([]byte, 300), []byte("{}")}
	for i, f := range frames {
		flags := byte(0)
		if i < len(frames)-1 {
			flags |= 0x01
		}
		if len(f) > 255 {
			var hdr [9]byte
			hdr[0] = flags | 0x02
			binary.BigEndian.PutUint64(hdr[1:], uint64(len(f)))
			write(hdr[:])
		} else {
			write([]byte{flags, byte(len(f))})
		}
		write(f)
	}
	if cc.writes != 2 {
		t.Errorf("a three-frame message took %d writes, want 1", cc.writes-1)
	}
	// An empty last frame ends a message too.
	write([]byte{0x01, 1, 'x', 0x00, 0})
	if cc.writes != 3 || !bytes.Equal(cc.buf.Bytes(), want.Bytes()) {
		t.Errorf("writes %d; bytes equal %v", cc.writes, bytes.Equal(cc.buf.Bytes(), want.Bytes()))
	}
}
