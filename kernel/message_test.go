package kernel

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"
)

const goldenKey = "0123456789abcdef0123456789abcdef"

// goldenFrames reads frames that jupyter_client's Session produced
// (testdata/gen_golden.py), the reference our codec must agree with.
func goldenFrames(t testing.TB) map[string][][]byte {
	t.Helper()
	b, err := os.ReadFile("testdata/golden_frames.json")
	if err != nil {
		t.Fatal(err)
	}
	var hexed map[string][]string
	if err := json.Unmarshal(b, &hexed); err != nil {
		t.Fatal(err)
	}
	out := make(map[string][][]byte)
	for name, fs := range hexed {
		for _, h := range fs {
			f, err := hex.DecodeString(h)
			if err != nil {
				t.Fatal(err)
			}
			out[name] = append(out[name], f)
		}
	}
	return out
}

func TestDecodeGolden(t *testing.T) {
	golden := goldenFrames(t)
	cases := []struct {
		name, msgType, content string
		idents, buffers        int
	}{
		{"stream", "stream", `"héllo 世界\n"`, 1, 0},
		{"execute_reply", "execute_reply", `"execution_count": 1`, 1, 0},
		{"display_data", "display_data", `"image/png": "iVBORw0KGgo="`, 1, 0},
		{"status_idle", "status", `"idle"`, 1, 0},
		{"with_buffers", "comm_msg", `"comm_id"`, 0, 1},
	}
	s := NewSigner(goldenKey)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := s.Decode(golden[tc.name])
			if err != nil {
				t.Fatal(err)
			}
			if m.Header.MsgType != tc.msgType || m.Header.Version != "5.3" || m.Header.Session != "golden-session" {
				t.Errorf("header = %+v", m.Header)
			}
			if m.ParentHeader.MsgID != "parent-1" {
				t.Errorf("parent = %+v", m.ParentHeader)
			}
			if !bytes.Contains(m.Content, []byte(tc.content)) {
				t.Errorf("content %s lacks %s", m.Content, tc.content)
			}
			if len(m.Identities) != tc.idents || len(m.Buffers) != tc.buffers {
				t.Errorf("identities %d buffers %d", len(m.Identities), len(m.Buffers))
			}
			if _, err := NewSigner("wrong key").Decode(golden[tc.name]); !errors.Is(err, ErrSignature) {
				t.Errorf("wrong key: err = %v", err)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	s := NewSigner(goldenKey)
	good := goldenFrames(t)["stream"]
	mutate := func(f func(fr [][]byte) [][]byte) [][]byte {
		cp := make([][]byte, len(good))
		for i := range good {
			cp[i] = append([]byte(nil), good[i]...)
		}
		return f(cp)
	}
	many := make([][]byte, 40)
	for i := range many {
		many[i] = []byte("id")
	}
	cases := []struct {
		name   string
		frames [][]byte
		want   error
	}{
		{"empty", nil, ErrMalformed},
		{"no delimiter", [][]byte{[]byte("a"), []byte("b")}, ErrMalformed},
		{"delimiter too deep", append(many, good[1:]...), ErrMalformed},
		{"too few frames", good[:4], ErrMalformed},
		{"tampered content", mutate(func(f [][]byte) [][]byte { f[6][2] ^= 1; return f }), ErrSignature},
		{"tampered header", mutate(func(f [][]byte) [][]byte { f[3][5] ^= 1; return f }), ErrSignature},
		{"bad signature hex", mutate(func(f [][]byte) [][]byte { f[2] = []byte("zz"); return f }), ErrSignature},
		{"empty signature", mutate(func(f [][]byte) [][]byte { f[2] = nil; return f }), ErrSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := s.Decode(tc.frames)
			if !errors.Is(err, tc.want) || m != nil {
				t.Fatalf("Decode = %v, %v; want %v", m, err, tc.want)
			}
		})
	}
	// Signed but not JSON: a forged-looking yet correctly signed message.
	bad := &Message{Header: Header{MsgID: "x", MsgType: "stream"}, Content: json.RawMessage(`{not json`)}
	fr, err := s.Encode(bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Decode(fr); !errors.Is(err, ErrMalformed) {
		t.Errorf("invalid JSON content: err = %v", err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	for _, key := range []string{goldenKey, ""} {
		s := NewSigner(key)
		m, err := NewMessage("sess", "execute_request", map[string]any{"code": "print('ü')"})
		if err != nil {
			t.Fatal(err)
		}
		m.Identities = [][]byte{[]byte("route")}
		m.Buffers = [][]byte{{1, 2, 3}}
		fr, err := s.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Decode(fr)
		if err != nil {
			t.Fatalf("key %q: %v", key, err)
		}
		if got.Header != m.Header || !bytes.Equal(got.Content, m.Content) || len(got.Buffers) != 1 || string(got.Identities[0]) != "route" {
			t.Errorf("round trip: %+v", got)
		}
	}
}

// FuzzDecode feeds arbitrary frame sets to the decoder: it must return an
// error or a message, never panic, and what it accepts must re-encode.
func FuzzDecode(f *testing.F) {
	sep := []byte{0xff, 0xfe, 0xfd}
	for _, fr := range goldenFrames(f) {
		f.Add(bytes.Join(fr, sep))
	}
	f.Add([]byte("<IDS|MSG>"))
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := bytes.Split(data, sep)
		for _, key := range []string{goldenKey, ""} {
			s := NewSigner(key)
			m, err := s.Decode(frames)
			if err != nil {
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrSignature) {
					t.Fatalf("untyped error %v", err)
				}
				continue
			}
			if _, err := s.Encode(m); err != nil {
				t.Fatalf("accepted message does not re-encode: %v", err)
			}
			if _, err := s.DecodeRaw(frames); err != nil {
				t.Fatalf("Decode accepts what DecodeRaw refuses: %v", err)
			}
		}
	})
}

// TestDecodeRawRefusesNonJSON checks that a kernel cannot have parts that
// are not JSON spliced into a Jupyter client's message (they broke the
// client's frame, or added fields of the kernel's choosing).
func TestDecodeRawRefusesNonJSON(t *testing.T) {
	s := NewSigner(goldenKey)
	hdr := []byte(`{"msg_id":"a","msg_type":"status"}`)
	for _, tc := range []struct {
		name                  string
		parent, meta, content string
		ok                    bool
	}{
		{"objects", `{}`, `{}`, `{"execution_state":"idle"}`, true},
		{"empty parts stand for {}", ``, ` `, `{}`, true},
		{"content breaks out", `{}`, `{"a":`, `1},"channel":"shell","x":{`, false},
		{"parent not JSON", `{`, `{}`, `{}`, false},
		{"content not JSON", `{}`, `{}`, `nope`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts := [][]byte{hdr, []byte(tc.parent), []byte(tc.meta), []byte(tc.content)}
			frames := append([][]byte{delimiter, []byte(hex.EncodeToString(s.sum(parts...)))}, parts...)
			_, err := s.DecodeRaw(frames)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrMalformed)) {
				t.Fatalf("DecodeRaw: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
