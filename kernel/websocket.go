package kernel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"

	"github.com/codegw/codegw"
)

// The framing of Jupyter's kernel websocket (GET /api/kernels/{id}/channels
// in Jupyter Server), which the gateway speaks to Notebook, JupyterLab and
// every other Jupyter client.

// WebsocketV1 is Jupyter Server's binary websocket subprotocol; it is used
// only when the client offers it.
const WebsocketV1 = "v1.kernel.websocket.jupyter.org"

// clientMsg is a message as Jupyter clients send it in JSON.
type clientMsg struct {
	Header       json.RawMessage `json:"header"`
	ParentHeader json.RawMessage `json:"parent_header"`
	Metadata     json.RawMessage `json:"metadata"`
	Content      json.RawMessage `json:"content"`
	Channel      *string         `json:"channel"`
}

var errBadFrame = errors.New("bad frame")

// DecodeWebsocket parses one frame a Jupyter websocket client sent: JSON
// text (legacy), the legacy binary layout for messages with buffers
// (isBinary), or the v1 subprotocol's layout (v1 and isBinary). It returns the
// channel (shell when a legacy message names none), the message and its
// routing ids, or an EINVALID error saying what is wrong; it never panics.
func DecodeWebsocket(data []byte, isBinary, v1 bool) (string, *RawMessage, RawIDs, error) {
	var (
		channel = Shell
		m       = &RawMessage{}
		ids     RawIDs
	)
	bad := func(format string, args ...any) (string, *RawMessage, RawIDs, error) {
		return "", nil, ids, codegw.Errorf(codegw.EINVALID, format, args...)
	}
	switch {
	case v1 && isBinary:
		parts, err := splitV1(data)
		if err != nil || len(parts) < 5 {
			return bad("malformed v1.kernel.websocket.jupyter.org frame")
		}
		channel = string(parts[0])
		m.Header, m.ParentHeader, m.Metadata, m.Content = parts[1], parts[2], parts[3], parts[4]
		m.Buffers = parts[5:]
		for _, p := range parts[1:5] {
			if len(p) > 0 && !json.Valid(p) {
				return bad("malformed message: a part is not JSON")
			}
		}
	default:
		body := data
		if isBinary {
			parts, err := splitLegacy(data)
			if err != nil {
				return bad("malformed binary message: %v", err)
			}
			body, m.Buffers = parts[0], parts[1:]
		}
		var in clientMsg
		if err := json.Unmarshal(body, &in); err != nil {
			return bad("malformed message: %v", err)
		}
		if in.Channel != nil {
			channel = *in.Channel
		}
		m.Header, m.ParentHeader, m.Metadata, m.Content = in.Header, in.ParentHeader, in.Metadata, in.Content
	}
	for _, p := range []*json.RawMessage{&m.ParentHeader, &m.Metadata, &m.Content} {
		if t := bytes.TrimSpace(*p); len(t) == 0 || string(t) == "null" {
			*p = nil
		} else if t[0] != '{' {
			return bad("malformed message: parent_header, metadata and content must be objects")
		}
	}
	if err := json.Unmarshal(m.Header, &ids); err != nil || ids.MsgID == "" || ids.MsgType == "" {
		return bad("malformed message: the header needs msg_id and msg_type")
	}
	switch channel {
	case Shell, Control, Stdin:
	default:
		return bad("no channel %q: send on shell, control or stdin", channel)
	}
	return channel, m, ids, nil
}

// splitLegacy splits Jupyter's legacy binary frame: a big-endian u32 count,
// that many u32 offsets, then the JSON message and its buffers. The first
// offset must point just past the offset table, every offset must lie within
// the frame and none may go backwards, so the parts cover the frame exactly.
func splitLegacy(data []byte) ([][]byte, error) {
	if len(data) < 8 {
		return nil, errBadFrame
	}
	n := uint64(binary.BigEndian.Uint32(data))
	if n < 1 || n > 1024 || uint64(len(data)) < 4*(n+1) {
		return nil, errBadFrame
	}
	return splitOffsets(data, int(n), 4*(n+1), func(i int) uint64 {
		return uint64(binary.BigEndian.Uint32(data[4*(i+1):]))
	})
}

// splitV1 splits a v1 subprotocol frame: a little-endian u64 count of
// offsets, the u64 offsets, then the channel, header, parent header,
// metadata, content and buffers between consecutive offsets. The first
// offset must point just past the offset table and the last one at the
// frame's end.
func splitV1(data []byte) ([][]byte, error) {
	if len(data) < 8 {
		return nil, errBadFrame
	}
	n := binary.LittleEndian.Uint64(data)
	if n < 2 || n > 1024 || uint64(len(data)) < 8*(n+1) {
		return nil, errBadFrame
	}
	off := func(i int) uint64 { return binary.LittleEndian.Uint64(data[8*(i+1):]) }
	if off(int(n)-1) != uint64(len(data)) {
		return nil, errBadFrame
	}
	return splitOffsets(data, int(n)-1, 8*(n+1), off)
}

// splitOffsets cuts data into parts at the offsets off(0..parts), where
// off(parts) is taken as len(data) when parts == the number of offsets read
// (the legacy layout has no final offset). Every offset is checked against
// the frame before it is used: the first must equal start, each must be
// within the frame and no smaller than the one before.
func splitOffsets(data []byte, parts int, start uint64, off func(i int) uint64) ([][]byte, error) {
	size := uint64(len(data))
	out := make([][]byte, parts)
	prev := start
	for i := 0; i < parts; i++ {
		o := off(i)
		if (i == 0 && o != start) || o < prev || o > size {
			return nil, errBadFrame
		}
		prev = o
	}
	for i := 0; i < parts; i++ {
		end := size
		if i+1 < parts {
			end = off(i + 1)
		}
		out[i] = data[off(i):end]
	}
	return out, nil
}

// EncodeWebsocket renders m, received on channel, for a Jupyter websocket
// client: the v1 subprotocol's layout (v1), else JSON text, or the legacy
// binary layout when m has buffers; isBinary says how to send the frame.
func EncodeWebsocket(channel string, ids RawIDs, m *RawMessage, v1 bool) (data []byte, isBinary bool) {
	if v1 {
		parts := [][]byte{[]byte(channel), m.Header, orEmpty(m.ParentHeader), orEmpty(m.Metadata), orEmpty(m.Content)}
		parts = append(parts, m.Buffers...)
		n := len(parts) + 1
		size := 8 * (n + 1)
		for _, p := range parts {
			size += len(p)
		}
		out := make([]byte, 8*(n+1), size)
		binary.LittleEndian.PutUint64(out, uint64(n))
		off := 8 * (n + 1)
		for i, p := range parts {
			binary.LittleEndian.PutUint64(out[8*(i+1):], uint64(off))
			off += len(p)
		}
		binary.LittleEndian.PutUint64(out[8*n:], uint64(off))
		for _, p := range parts {
			out = append(out, p...)
		}
		return out, true
	}
	js := make([]byte, 0, 128+len(m.Header)+len(m.ParentHeader)+len(m.Metadata)+len(m.Content))
	js = append(js, `{"header":`...)
	js = append(js, m.Header...)
	js = append(js, `,"parent_header":`...)
	js = append(js, orEmpty(m.ParentHeader)...)
	js = append(js, `,"metadata":`...)
	js = append(js, orEmpty(m.Metadata)...)
	js = append(js, `,"content":`...)
	js = append(js, orEmpty(m.Content)...)
	js = append(js, `,"channel":`...)
	js = appendJSONString(js, channel)
	js = append(js, `,"msg_id":`...)
	js = appendJSONString(js, ids.MsgID)
	js = append(js, `,"msg_type":`...)
	js = appendJSONString(js, ids.MsgType)
	if len(m.Buffers) == 0 {
		js = append(js, `,"buffers":[]}`...)
		return js, false
	}
	js = append(js, '}')
	n := len(m.Buffers) + 1
	size := 4*(n+1) + len(js)
	for _, b := range m.Buffers {
		size += len(b)
	}
	out := make([]byte, 4*(n+1), size)
	binary.BigEndian.PutUint32(out, uint32(n))
	off := 4 * (n + 1)
	binary.BigEndian.PutUint32(out[4:], uint32(off))
	off += len(js)
	for i, b := range m.Buffers {
		binary.BigEndian.PutUint32(out[4*(i+2):], uint32(off))
		off += len(b)
	}
	out = append(out, js...)
	for _, b := range m.Buffers {
		out = append(out, b...)
	}
	return out, true
}

func orEmpty(b []byte) []byte {
	if len(bytes.TrimSpace(b)) == 0 {
		return []byte("{}")
	}
	return b
}

func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}
