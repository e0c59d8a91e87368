package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// zmtpOversized is a reference reading of ZMTP 3 framing: whether a frame
// of data, after the 64-byte greeting, announces more than max bytes.
func zmtpOversized(data []byte, max uint64) bool {
	if len(data) <= 64 {
		return false
	}
	b := data[64:]
	for len(b) > 0 {
		flags := b[0]
		b = b[1:]
		var size uint64
		if flags&0x02 != 0 {
			if len(b) < 8 {
				return false
			}
			size, b = binary.BigEndian.Uint64(b), b[8:]
		} else {
			if len(b) < 1 {
				return false
			}
			size, b = uint64(b[0]), b[1:]
		}
		if size > max {
			return true
		}
		if uint64(len(b)) < size {
			return false
		}
		b = b[size:]
	}
	return false
}

// FuzzZMTPGuard feeds arbitrary byte streams, as a kernel's code can write
// them to its own sockets, cut into arbitrary reads, to the guard that
// follows ZMTP framing before zmq4 allocates what a frame announces: it
// fails the stream exactly when a frame announces more than the limit,
// however the stream is cut.
func FuzzZMTPGuard(f *testing.F) {
	greeting := append([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0}, make([]byte, 52)...)
	frame := func(more bool, body []byte) []byte {
		flags := byte(0)
		if more {
			flags |= 1
		}
		if len(body) > 255 {
			return append(binary.BigEndian.AppendUint64([]byte{flags | 2}, uint64(len(body))), body...)
		}
		return append([]byte{flags, byte(len(body))}, body...)
	}
	msg := bytes.Join([][]byte{greeting, frame(true, []byte("<IDS|MSG>")), frame(true, []byte("sig")), frame(false, bytes.Repeat([]byte("x"), 300))}, nil)
	f.Add(msg, uint8(7), uint16(512))
	f.Add(msg, uint8(0), uint16(100))
	f.Add(append(append([]byte(nil), greeting...), 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0), uint8(3), uint16(1024))
	f.Add(append(append([]byte(nil), greeting...), 0x04, 0x05, 'R', 'E', 'A', 'D', 'Y'), uint8(255), uint16(4))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, max uint16) {
		var s zmtpScanner
		failed := false
		for rest := data; len(rest) > 0 && !failed; {
			b := rest[:min(len(rest), int(chunk)+1)]
			rest = rest[len(b):]
			for len(b) > 0 {
				k, _, err := s.advance(b, uint64(max))
				if err != nil {
					if !errors.Is(err, ErrFrameTooLarge) {
						t.Fatalf("error %v", err)
					}
					failed = true
					break
				}
				if k <= 0 || k > len(b) {
					t.Fatalf("advance took %d of %d bytes", k, len(b))
				}
				b = b[k:]
			}
		}
		if want := zmtpOversized(data, uint64(max)); failed != want {
			t.Fatalf("guard failed=%v, reference oversized=%v (chunk %d, max %d)", failed, want, int(chunk)+1, max)
		}
	})
}
