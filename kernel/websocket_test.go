package kernel

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

// legacyFrame builds a legacy binary frame from a JSON message and buffers,
// as Jupyter's serialize_binary_message does.
func legacyFrame(msg []byte, bufs ...[]byte) []byte {
	parts := append([][]byte{msg}, bufs...)
	n := len(parts)
	out := binary.BigEndian.AppendUint32(nil, uint32(n))
	off := 4 * (n + 1)
	for _, p := range parts {
		out = binary.BigEndian.AppendUint32(out, uint32(off))
		off += len(p)
	}
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// v1Frame builds a v1.kernel.websocket.jupyter.org frame as Jupyter
// Server's serialize_msg_to_ws_v1 does.
func v1Frame(parts ...[]byte) []byte {
	n := len(parts) + 1
	out := binary.LittleEndian.AppendUint64(nil, uint64(n))
	off := 8 * (n + 1)
	out = binary.LittleEndian.AppendUint64(out, uint64(off))
	for _, p := range parts {
		off += len(p)
		out = binary.LittleEndian.AppendUint64(out, uint64(off))
	}
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var sampleMsg = []byte(`{"header":{"msg_id":"m1","msg_type":"execute_request","session":"s","username":"u","version":"5.3","date":""},"parent_header":{},"metadata":{},"content":{"code":"1+1"},"channel":"shell"}`)

func TestSplitFrames(t *testing.T) {
	// The frame from the crash report: 14 bytes announcing 2 parts at
	// offsets 12 and 4096.
	crash := []byte{0, 0, 0, 2, 0, 0, 0, 12, 0, 0, 0x10, 0, 'x', 'y'}
	good := legacyFrame(sampleMsg, []byte("buf1"), nil, []byte("b3"))
	tests := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"valid with buffers", good, true},
		{"valid without buffers", legacyFrame(sampleMsg), true},
		{"offset past the frame", crash, false},
		{"earlier offset past the frame", func() []byte {
			b := append([]byte(nil), good...)
			binary.BigEndian.PutUint32(b[8:], uint32(len(b)+100))
			return b
		}(), false},
		{"first offset inside the table", func() []byte {
			b := append([]byte(nil), good...)
			binary.BigEndian.PutUint32(b[4:], 4)
			return b
		}(), false},
		{"first offset after a gap", func() []byte {
			b := append([]byte(nil), good...)
			binary.BigEndian.PutUint32(b[4:], binary.BigEndian.Uint32(b[4:])+1)
			return b
		}(), false},
		{"offsets going backwards", func() []byte {
			b := append([]byte(nil), good...)
			binary.BigEndian.PutUint32(b[12:], 21)
			return b
		}(), false},
		{"count past the table", []byte{0, 0, 0, 9, 0, 0, 0, 8}, false},
		{"zero parts", []byte{0, 0, 0, 0, 0, 0, 0, 0}, false},
		{"huge count", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, false},
		{"short", []byte{0, 0, 0, 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts, err := splitLegacy(tt.data)
			if (err == nil) != tt.ok {
				t.Fatalf("splitLegacy: err %v, want ok=%v", err, tt.ok)
			}
			if tt.ok {
				total := 4 * (len(parts) + 1)
				for _, p := range parts {
					total += len(p)
				}
				if total != len(tt.data) {
					t.Fatalf("parts cover %d bytes of %d", total, len(tt.data))
				}
			}
		})
	}

	hdr := []byte(`{"msg_id":"m","msg_type":"execute_request"}`)
	v1 := v1Frame([]byte("shell"), hdr, []byte("{}"), []byte("{}"), []byte(`{"code":"1"}`), []byte("buf"))
	v1Tests := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"valid", v1, true},
		{"trailing bytes", append(append([]byte(nil), v1...), 'z'), false},
		{"offset past the frame", func() []byte {
			b := append([]byte(nil), v1...)
			binary.LittleEndian.PutUint64(b[16:], uint64(len(b)+1))
			return b
		}(), false},
		{"huge offset", func() []byte {
			b := append([]byte(nil), v1...)
			binary.LittleEndian.PutUint64(b[16:], 1<<63)
			return b
		}(), false},
		{"first offset inside the table", func() []byte {
			b := append([]byte(nil), v1...)
			binary.LittleEndian.PutUint64(b[8:], 8)
			return b
		}(), false},
		{"count overflowing", func() []byte {
			b := append([]byte(nil), v1...)
			binary.LittleEndian.PutUint64(b, 1<<62)
			return b
		}(), false},
	}
	for _, tt := range v1Tests {
		t.Run("v1 "+tt.name, func(t *testing.T) {
			_, err := splitV1(tt.data)
			if (err == nil) != tt.ok {
				t.Fatalf("splitV1: err %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// FuzzDecodeClient feeds arbitrary websocket frames, in every framing, to
// the Jupyter channels decoder: it returns a message or an error, never
// panics, and what it accepts re-encodes.
func FuzzDecodeClient(f *testing.F) {
	hdr := []byte(`{"msg_id":"m","msg_type":"execute_request"}`)
	f.Add(uint8(0), sampleMsg)
	f.Add(uint8(1), legacyFrame(sampleMsg, []byte("buf")))
	f.Add(uint8(1), []byte{0, 0, 0, 2, 0, 0, 0, 12, 0, 0, 0x10, 0, 'x', 'y'})
	f.Add(uint8(2), v1Frame([]byte("shell"), hdr, []byte("{}"), []byte("{}"), []byte(`{"code":"1"}`)))
	f.Add(uint8(3), []byte(`{"header":{"msg_id":"a","msg_type":"kernel_info_request"},"content":{}}`))
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		v1 := mode&2 != 0
		ch, m, ids, err := DecodeWebsocket(data, mode%2 == 1, v1)
		if err != nil {
			return
		}
		if ch == "" || m == nil || ids.MsgID == "" || ids.MsgType == "" {
			t.Fatalf("accepted a message without channel or ids: %q %+v", ch, ids)
		}
		if !json.Valid(m.Header) {
			t.Fatalf("accepted a header that is not JSON: %q", m.Header)
		}
		EncodeWebsocket(ch, ids, m, v1)
	})
}

// fuzzFrameSep separates the ZeroMQ frames of one fuzz input.
var fuzzFrameSep = []byte{0xff, 0xfe, 0xfd}

// FuzzKernelToClient feeds arbitrary validly signed frame sets, as a
// kernel running untrusted code can send them, through the path to a
// Jupyter websocket client: the raw decode, the routing ids, and the
// client's framing (JSON text, legacy binary, v1). Nothing panics, and
// every frame a client gets is one it can parse.
func FuzzKernelToClient(f *testing.F) {
	b, err := os.ReadFile("testdata/golden_frames.json")
	if err != nil {
		f.Fatal(err)
	}
	var golden map[string][]string
	if err := json.Unmarshal(b, &golden); err != nil {
		f.Fatal(err)
	}
	for _, hexed := range golden {
		var parts [][]byte
		for _, h := range hexed {
			fr, err := hex.DecodeString(h)
			if err != nil {
				f.Fatal(err)
			}
			parts = append(parts, fr)
		}
		for i, p := range parts { // keep what follows the signature
			if string(p) == "<IDS|MSG>" {
				parts = parts[i+2:]
				break
			}
		}
		f.Add(uint8(0), bytes.Join(parts, fuzzFrameSep))
	}
	f.Add(uint8(1), bytes.Join([][]byte{[]byte(`{"msg_id":"a","msg_type":"stream"}`), []byte(`{}`), []byte(`{}`), []byte(`{"name":"stdout","text":"x"}`)}, fuzzFrameSep))
	f.Add(uint8(2), bytes.Join([][]byte{[]byte(`{"msg_id":"a","msg_type":"status"}`), nil, []byte(`{"a":`), []byte(`1},"channel":"shell","x":{`), []byte("buf")}, fuzzFrameSep))
	signer := NewSigner(goldenKey)
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		// The parts after the signature, signed here: the fuzzer explores
		// what a kernel holding the key can send, not the signature check.
		parts := bytes.Split(data, fuzzFrameSep)
		mac := hmac.New(sha256.New, []byte(goldenKey))
		for _, p := range parts[:min(4, len(parts))] {
			mac.Write(p)
		}
		frames := append([][]byte{[]byte("<IDS|MSG>"), []byte(hex.EncodeToString(mac.Sum(nil)))}, parts...)
		m, err := signer.DecodeRaw(frames)
		if err != nil {
			return
		}
		ids, err := m.IDs()
		if err != nil {
			return
		}
		v1 := mode&1 != 0
		out, isBinary := EncodeWebsocket(IOPub, ids, m, v1)
		switch {
		case v1:
			parts, err := splitV1(out)
			if err != nil || len(parts) < 5 {
				t.Fatalf("v1 frame does not split: %v", err)
			}
			for i, p := range parts[1:5] {
				if !json.Valid(p) {
					t.Fatalf("v1 part %d is not JSON: %q", i+1, p)
				}
			}
		case isBinary:
			parts, err := splitLegacy(out)
			if err != nil {
				t.Fatalf("legacy frame does not split: %v", err)
			}
			if !json.Valid(parts[0]) {
				t.Fatalf("legacy frame's message is not JSON: %q", parts[0])
			}
		default:
			if !json.Valid(out) {
				t.Fatalf("text frame is not JSON: %q", out)
			}
		}
	})
}
