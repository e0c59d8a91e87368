package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame feeds arbitrary bytes from a one-shot kernel, which runs
// untrusted code and can write anything to its socket, to the frame reader:
// it must neither panic nor allocate past the limit, and every frame it
// accepts is a message with a type and an object for content, which
// encodes back to a frame that reads the same.
func FuzzReadFrame(f *testing.F) {
	frame := func(body string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	}
	f.Add(frame(`{"channel":"iopub","header":{"msg_id":"a","msg_type":"stream"},"parent_header":{"msg_id":"p"},"metadata":{},"content":{"name":"stdout","text":"2\n"}}`))
	f.Add(append(frame(`{"channel":"shell","header":{"msg_type":"execute_reply"},"parent_header":{},"content":{"status":"ok","execution_count":1}}`),
		frame(`{"channel":"iopub","header":{"msg_type":"status"},"content":{"execution_state":"idle"}}`)...))
	f.Add(frame(`{"header":{"msg_type":"x"},"content":[]}`))
	f.Add(frame(`{"header":{"msg_type":1},"content":{}}`))
	f.Add(frame(`not json`))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, '{'})
	f.Add([]byte{0, 0, 0, 9, '{'})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 1 << 16
		r := bytes.NewReader(data)
		for i := 0; ; i++ {
			if i > len(data) {
				t.Fatal("ReadFrame made no progress")
			}
			ch, msg, err := ReadFrame(r, max)
			if errors.Is(err, ErrBadFrame) {
				continue
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if msg.Header.MsgType == "" || len(msg.Content) == 0 || msg.Content[0] != '{' {
				t.Fatalf("accepted a frame that is not a message: %+v", msg)
			}
			b, err := AppendFrame(nil, ch, msg)
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			ch2, msg2, err := ReadFrame(bytes.NewReader(b), MaxFrameBytes)
			if err != nil || ch2 != ch || msg2.Header != msg.Header || msg2.ParentHeader != msg.ParentHeader {
				t.Fatalf("round trip: %q %+v %v", ch2, msg2, err)
			}
		}
	})
}
