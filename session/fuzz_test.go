package session

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"path"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/strutil"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/session/artifact"
)

// fuzzMsgTypes are the iopub message types a kernel sends, picked by the
// first byte of each fuzzed message.
var fuzzMsgTypes = []string{"stream", "display_data", "execute_result", "update_display_data", "error", "clear_output", "status", "comm_msg"}

// fuzzSep separates the messages of one fuzz input.
const fuzzSep = 0xff

func fuzzMessages(msgs ...string) []byte {
	var b []byte
	for i, m := range msgs {
		if i > 0 {
			b = append(b, fuzzSep)
		}
		typ := strings.Index(strings.Join(fuzzMsgTypes, " ")+" ", m[:strings.IndexByte(m, ' ')]+" ")
		b = append(b, byte(strings.Count(strings.Join(fuzzMsgTypes, " ")[:typ], " ")))
		b = append(b, m[strings.IndexByte(m, ' ')+1:]...)
	}
	return b
}

// tinyPNG is a 1x1 PNG, as matplotlib's display_data carries them.
const tinyPNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

// FuzzKernelOutput feeds arbitrary iopub messages, as a kernel running
// untrusted code may send them (validly signed), to the execution that
// turns them into events and the answer: nothing panics, and the text the
// answer and its events carry never exceeds the output budget.
func FuzzKernelOutput(f *testing.F) {
	f.Add(uint16(1<<10), false, fuzzMessages(
		`stream {"name":"stdout","text":"hello\n"}`,
		`display_data {"data":{"text/plain":"<Figure>","image/png":"`+tinyPNG+`"},"metadata":{},"transient":{"display_id":"d1"}}`,
		`execute_result {"data":{"text/plain":"42","text/html":"<b>42</b>"},"execution_count":1}`,
		`error {"ename":"ValueError","evalue":"bad","traceback":["\u001b[0;31mValueError\u001b[0m: bad"]}`))
	f.Add(uint16(200), true, fuzzMessages(
		`display_data {"data":{"image/svg+xml":"<svg/>","text/plain":"svg"}}`,
		`display_data {"data":{"image/jpeg":"not base64!","application/json":{"a":[1,2]}}}`,
		`update_display_data {"data":{"text/markdown":"# x"},"transient":{"display_id":"`+strings.Repeat("d", 300)+`"}}`,
		`stream {"name":"stderr","text":"\ud800 \u2028 <&>"}`))
	f.Add(uint16(0), false, fuzzMessages(`stream {"name":"stdout","text":"x"}`, `clear_output {"wait":true}`, `error {"traceback":null}`))
	f.Add(uint16(40), false, fuzzMessages(`display_data {"data":{"image/png":{"nested":1},"text/latex":"$x$"}}`, `status {"execution_state":"idle"}`))
	dir := f.TempDir()
	images := &artifact.Store{Dir: dir, URLPrefix: "/images"}
	if err := images.Init(); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, max uint16, inline bool, data []byte) {
		m := &Manager{cfg: Config{MaxOutputBytes: int(max), MaxImages: 2, MaxImageBytes: 1 << 10, Images: images}}
		var events []codegw.Event
		x := m.newExecution("e1", codegw.ExecuteRequest{InlineImages: inline}, "", func(ev codegw.Event) { events = append(events, ev) })
		x.log = slog.New(slog.NewTextHandler(io.Discard, nil))
		for _, part := range bytes.Split(data, []byte{fuzzSep}) {
			if len(part) == 0 {
				continue
			}
			typ := fuzzMsgTypes[int(part[0])%len(fuzzMsgTypes)]
			x.onMessage(&kernel.Message{Header: kernel.Header{MsgType: typ}, Content: json.RawMessage(part[1:])})
		}
		reply := &kernel.ExecuteReply{Status: "ok"}
		if x.res.EName != "" {
			reply = &kernel.ExecuteReply{Status: "error", EName: x.res.EName, EValue: x.res.EValue}
		}
		x.finish(outcome{reply: reply})
		res := &x.res
		for _, u := range res.Images {
			images.Remove(path.Base(u))
		}
		if len(res.Images) > m.cfg.MaxImages {
			t.Fatalf("%d images stored; the limit is %d", len(res.Images), m.cfg.MaxImages)
		}
		// Stored images are not text: they pay for their text and display
		// id only (see budget).
		n := answerText(res)
		for _, o := range res.Outputs {
			n += jsonLen(o.DisplayID)
			if o.URL != "" {
				n -= jsonLen(o.Data) + outputFrame
			}
		}
		if n > int(max) {
			t.Fatalf("the answer carries %d bytes of text; the budget is %d", n, max)
		}
		streamed := 0
		for _, ev := range events {
			streamed += jsonLen(ev.Text)
			if ev.Output != nil && ev.Output.URL == "" {
				streamed += jsonLen(ev.Output.Data) + jsonLen(ev.Output.Text)
			}
		}
		if streamed > int(max) {
			t.Fatalf("the events carry %d bytes of text; the budget is %d", streamed, max)
		}
	})
}

// FuzzPyString checks the quoting of a session's environment (names and
// values come from the client) into the Python code that sets it: the
// literal decodes back to the value, so nothing can break out of it.
func FuzzPyString(f *testing.F) {
	for _, s := range []string{"", "plain", `quote " and \ backslash`, "new\nline\r\x00\x7f", "数据 \u2028", "\xff\xfe invalid", `"; import os; os.system("x") #`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lit := pyString(s)
		got, ok := parsePyString(lit)
		if !ok {
			t.Fatalf("pyString(%q) = %s is not one Python string literal", s, lit)
		}
		// Invalid UTF-8 becomes U+FFFD, byte by byte, as ranging does.
		want := strings.Map(func(r rune) rune { return r }, s)
		if got != want {
			t.Fatalf("pyString(%q) = %s decodes to %q", s, lit, got)
		}
	})
}

// parsePyString decodes a double-quoted Python string literal made of the
// escapes pyString writes; ok is false when lit has anything else (an
// unescaped quote, backslash or line break, text after the closing quote).
func parsePyString(lit string) (string, bool) {
	if len(lit) < 2 || lit[0] != '"' || lit[len(lit)-1] != '"' {
		return "", false
	}
	body := lit[1 : len(lit)-1]
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '"' || c == '\n' || c == '\r':
			return "", false
		case c != '\\':
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(body) {
			return "", false
		}
		i++
		switch body[i] {
		case '"', '\\':
			b.WriteByte(body[i])
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 'x':
			if i+2 >= len(body) {
				return "", false
			}
			var v byte
			for _, h := range body[i+1 : i+3] {
				d := strings.IndexRune("0123456789abcdef", h)
				if d < 0 {
					return "", false
				}
				v = v<<4 | byte(d)
			}
			b.WriteByte(v)
			i += 2
		default:
			return "", false
		}
	}
	return b.String(), true
}

// FuzzReplay checks a websocket's ?last_seq=N (any uint64 a client sends)
// against a session's event buffer: the replay is exactly the buffered
// events after N, in order, and the gap is told exactly when events after N
// were already dropped.
func FuzzReplay(f *testing.F) {
	f.Add(uint8(4), uint8(6), uint64(0))
	f.Add(uint8(4), uint8(6), uint64(3))
	f.Add(uint8(0), uint8(3), uint64(1))
	f.Add(uint8(1), uint8(0), uint64(1<<64-1))
	f.Add(uint8(8), uint8(200), uint64(1<<63))
	f.Fuzz(func(t *testing.T, keep, published uint8, after uint64) {
		h := newHub(int(keep))
		for i := 0; i < int(published); i++ {
			h.publish(codegw.Event{Type: codegw.EventStream})
		}
		s, missed, gap := h.subscribe(after, true)
		defer s.Close()
		total := uint64(published)
		oldest := total - min(total, uint64(keep)) + 1 // first seq still buffered
		var want []uint64
		for seq := max(oldest, 1); seq <= total; seq++ {
			if seq > after {
				want = append(want, seq)
			}
		}
		if len(missed) != len(want) {
			t.Fatalf("keep %d, %d published, after %d: replayed %d events, want %d", keep, published, after, len(missed), len(want))
		}
		for i, ev := range missed {
			if ev.Seq != want[i] {
				t.Fatalf("replay[%d] is seq %d, want %d", i, ev.Seq, want[i])
			}
		}
		if wantGap := after < total && after+1 < oldest; gap != wantGap {
			t.Fatalf("keep %d, %d published, after %d: gap %v, want %v", keep, published, after, gap, wantGap)
		}
	})
}

// FuzzStripCodeFence checks the code-fence stripping of execute bodies and
// the UTF-8 truncation used on names and close reasons: both return a part
// of their input, never more, and never split a character.
func FuzzStripCodeFence(f *testing.F) {
	f.Add("```python\nprint(1)\n```", 10)
	f.Add("```\nx = 1```", 3)
	f.Add("````py\n```inner```\n````", 0)
	f.Add("  ```PYTHON3 \r\nimport os\r\n```  ", -1)
	f.Add("```\n", 1)
	f.Add("```js\nalert(1)\n```", 200)
	f.Add("数据数据", 4)
	f.Fuzz(func(t *testing.T, code string, n int) {
		out := stripCodeFence(code)
		if out != code && !strings.Contains(code, out) {
			t.Fatalf("stripCodeFence(%q) = %q, not a part of its input", code, out)
		}
		if out != code {
			// Backticks inside a line are code (a string may hold them);
			// a line that opens a fence is not.
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "```") {
					t.Fatalf("stripCodeFence(%q) = %q kept a fence line", code, out)
				}
			}
			if again := stripCodeFence(out); again != out {
				t.Fatalf("StripCodeFence is not idempotent: %q -> %q -> %q", code, out, again)
			}
		}
		if n < 0 {
			n = -n
		}
		n %= len(code) + 2
		cut := strutil.TruncateUTF8(code, n)
		if len(cut) > n || !strings.HasPrefix(code, cut) {
			t.Fatalf("TruncateUTF8(%q, %d) = %q", code, n, cut)
		}
		if utf8.ValidString(code) && !utf8.ValidString(cut) {
			t.Fatalf("TruncateUTF8(%q, %d) = %q split a character", code, n, cut)
		}
	})
}
