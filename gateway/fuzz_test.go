package gateway

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"github.com/fasthttp/websocket"

	"github.com/codegw/codegw/kernel"
)

// fuzzFrameSep separates the ZeroMQ frames of one fuzz input.
var fuzzFrameSep = []byte{0xff, 0xfe, 0xfd}

// goldenKey signs kernel/testdata/golden_frames.json, which
// jupyter_client's Session produced.
const goldenKey = "0123456789abcdef0123456789abcdef"

// FuzzKernelToClient feeds arbitrary validly signed frame sets, as a
// kernel running untrusted code can send them, through the path to a
// Jupyter websocket client: the raw decode, the routing ids, and the
// client's framing (JSON text, legacy binary, v1). Nothing panics, and
// every frame a client gets is one it can parse.
func FuzzKernelToClient(f *testing.F) {
	b, err := os.ReadFile("../kernel/testdata/golden_frames.json")
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
	signer := kernel.NewSigner(goldenKey)
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
		kind, out := encodeClient(outMsg{channel: kernel.IOPub, ids: ids, m: m}, v1)
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
		case kind == websocket.BinaryMessage:
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
