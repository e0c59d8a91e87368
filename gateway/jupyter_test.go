package gateway_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const v1Protocol = "v1.kernel.websocket.jupyter.org"

// jmsg is a Jupyter message as the websocket carries it.
type jmsg struct {
	Header       map[string]any  `json:"header"`
	ParentHeader map[string]any  `json:"parent_header"`
	Metadata     map[string]any  `json:"metadata"`
	Content      map[string]any  `json:"content"`
	Channel      string          `json:"channel"`
	MsgType      string          `json:"msg_type"`
	Error        string          `json:"error"`
	Buffers      json.RawMessage `json:"buffers"`
}

func (m jmsg) parent() string { s, _ := m.ParentHeader["msg_id"].(string); return s }

// jupyterClient is one kernel websocket in the legacy (text JSON) framing.
type jupyterClient struct {
	t    *testing.T
	conn *websocket.Conn
	n    atomic.Int64
}

func (e *env) jupyterDial(t *testing.T, id, query string, hdr http.Header, protos ...string) (*jupyterClient, *http.Response, error) {
	t.Helper()
	u := "ws" + strings.TrimPrefix(e.base, "http") + "/api/kernels/" + id + "/channels" + query
	d := websocket.Dialer{Subprotocols: protos, HandshakeTimeout: 30 * time.Second}
	conn, resp, err := d.Dial(u, hdr)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { conn.Close() })
	return &jupyterClient{t: t, conn: conn}, resp, nil
}

// send sends a message on channel ("" leaves the field out) and returns its
// msg_id.
func (c *jupyterClient) send(channel, msgType string, content any, parent map[string]any) string {
	c.t.Helper()
	id := fmt.Sprintf("m%d-%d", time.Now().UnixNano(), c.n.Add(1))
	m := map[string]any{
		"header":        map[string]any{"msg_id": id, "msg_type": msgType, "session": "tsess", "username": "t", "date": "", "version": "5.3"},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": content,
	}
	if parent != nil {
		m["parent_header"] = parent
	}
	if channel != "" {
		m["channel"] = channel
	}
	if err := c.conn.WriteJSON(m); err != nil {
		c.t.Fatal(err)
	}
	return id
}

func (c *jupyterClient) read() jmsg {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	kind, data, err := c.conn.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	if kind == websocket.BinaryMessage {
		n := binary.BigEndian.Uint32(data)
		start, end := binary.BigEndian.Uint32(data[4:]), uint32(len(data))
		if n > 1 {
			end = binary.BigEndian.Uint32(data[8:])
		}
		data = data[start:end]
	}
	var m jmsg
	if err := json.Unmarshal(data, &m); err != nil {
		c.t.Fatalf("frame %q: %v", truncate(string(data), 200), err)
	}
	return m
}

// until reads until pred holds, returning every message read.
func (c *jupyterClient) until(pred func(jmsg) bool) []jmsg {
	c.t.Helper()
	var all []jmsg
	for {
		m := c.read()
		all = append(all, m)
		if pred(m) {
			return all
		}
	}
}

func idleOf(id string) func(jmsg) bool {
	return func(m jmsg) bool {
		return m.Channel == "iopub" && m.MsgType == "status" && m.parent() == id && m.Content["execution_state"] == "idle"
	}
}

// execute runs code and returns its messages up to the reply and idle.
func (c *jupyterClient) execute(code string) []jmsg {
	c.t.Helper()
	id := c.send("shell", "execute_request", map[string]any{"code": code, "silent": false, "store_history": true,
		"user_expressions": map[string]any{}, "allow_stdin": true, "stop_on_error": true}, nil)
	var reply, idle bool
	var mine []jmsg
	for _, m := range c.until(func(m jmsg) bool {
		if m.parent() == id && m.MsgType == "execute_reply" {
			reply = true
		}
		if idleOf(id)(m) {
			idle = true
		}
		return reply && idle
	}) {
		if m.parent() == id {
			mine = append(mine, m)
		}
	}
	return mine
}

// readError reads until an error frame about the client's own message.
func (c *jupyterClient) readError() string {
	c.t.Helper()
	m := c.until(func(m jmsg) bool { return m.Error != "" })
	return m[len(m)-1].Error
}

func resultText(msgs []jmsg) string {
	for _, m := range msgs {
		if m.MsgType == "execute_result" {
			d, _ := m.Content["data"].(map[string]any)
			s, _ := d["text/plain"].(string)
			return s
		}
	}
	return ""
}

func TestJupyterREST(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"jk"}, poolSize: 1})
	var ver map[string]string
	if st := e.do("GET", "/api", nil, &ver, "Authorization", ""); st != 200 || ver["version"] == "" {
		t.Fatalf("GET /api: %d %v", st, ver)
	}
	// Auth: the three ways Jupyter clients send the key, and a wrong one.
	for _, h := range [][]string{{"Authorization", "token jk"}, {"Authorization", "Bearer jk"}} {
		if st := e.do("GET", "/api/kernelspecs", nil, nil, h...); st != 200 {
			t.Errorf("%v: %d", h, st)
		}
	}
	if st := e.do("GET", "/api/kernelspecs?token=jk", nil, nil, "Authorization", ""); st != 200 {
		t.Errorf("?token=: %d", st)
	}
	if st := e.do("GET", "/api/kernelspecs", nil, nil, "Authorization", "token nope"); st != 401 {
		t.Errorf("wrong key: %d", st)
	}
	var specs struct {
		Default     string `json:"default"`
		Kernelspecs map[string]struct {
			Name      string            `json:"name"`
			Spec      map[string]any    `json:"spec"`
			Resources map[string]string `json:"resources"`
		} `json:"kernelspecs"`
	}
	e.do("GET", "/api/kernelspecs", nil, &specs)
	py, ok := specs.Kernelspecs[specs.Default]
	if !ok || py.Spec["language"] != "python" || py.Resources["logo-64x64"] == "" {
		t.Fatalf("kernelspecs = %+v", specs)
	}
	if st, hdr, body := e.get(py.Resources["logo-64x64"]); st != 200 || hdr.Get("Content-Type") != "image/png" || len(body) < 50 {
		t.Errorf("logo: %d %s %d bytes", st, hdr.Get("Content-Type"), len(body))
	}
	if st := e.do("GET", "/api/kernelspecs/"+specs.Default, nil, nil); st != 200 {
		t.Errorf("one spec: %d", st)
	}
	if st := e.do("GET", "/api/kernelspecs/ruby", nil, nil); st != 404 {
		t.Errorf("unknown spec: %d", st)
	}
	if st := e.do("POST", "/api/kernels", map[string]any{"name": "ruby"}, nil); st != 404 {
		t.Errorf("start unknown spec: %d", st)
	}

	var k map[string]any
	if st := e.do("POST", "/api/kernels", map[string]any{"name": "python3", "env": map[string]string{"KERNEL_USERNAME": "ann"}}, &k); st != 201 {
		t.Fatalf("start: %d %v", st, k)
	}
	id, _ := k["id"].(string)
	for _, f := range []string{"id", "name", "last_activity", "execution_state", "connections"} {
		if _, ok := k[f]; !ok {
			t.Errorf("kernel model lacks %q: %v", f, k)
		}
	}
	if la, _ := k["last_activity"].(string); !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`).MatchString(la) {
		t.Errorf("last_activity %q is not %%Y-%%m-%%dT%%H:%%M:%%S.%%fZ", la)
	}
	var list []map[string]any
	e.do("GET", "/api/kernels", nil, &list)
	if len(list) != 1 || list[0]["id"] != id {
		t.Errorf("list = %v", list)
	}
	// Jupyter clients route ids shaped like UUIDs; the session API sees
	// the same kernel under the id without dashes, and its env was set.
	if !regexp.MustCompile(`^\w+-\w+-\w+-\w+-\w+$`).MatchString(id) {
		t.Errorf("kernel id %q does not match Jupyter's \\w+-\\w+-\\w+-\\w+-\\w+", id)
	}
	sid := strings.ReplaceAll(id, "-", "")
	var sess map[string]any
	if st := e.do("GET", "/api/v1/sessions/"+sid, nil, &sess); st != 200 {
		t.Errorf("session API does not see kernel %s: %d", id, st)
	}
	var res struct {
		Stdout string `json:"stdout"`
	}
	e.do("POST", "/api/v1/sessions/"+sid+"/execute", map[string]any{"code": "import os; print(os.environ['KERNEL_USERNAME'])"}, &res)
	if res.Stdout != "ann\n" {
		t.Errorf("KERNEL_USERNAME in the kernel = %q", res.Stdout)
	}
	if st := e.do("POST", "/api/kernels/"+id+"/interrupt", map[string]any{}, nil); st != 204 {
		t.Errorf("interrupt: %d", st)
	}
	if st := e.do("DELETE", "/api/kernels/"+id, nil, nil); st != 204 {
		t.Errorf("delete: %d", st)
	}
	if st := e.do("GET", "/api/kernels/"+id, nil, nil); st != 404 {
		t.Errorf("get after delete: %d", st)
	}
}

func TestJupyterWebsocket(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"jk"}, poolSize: 1})
	var k map[string]any
	if st := e.do("POST", "/api/kernels", map[string]any{}, &k); st != 201 {
		t.Fatalf("start: %d", st)
	}
	id := k["id"].(string)
	if _, resp, err := e.jupyterDial(t, id, "", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("websocket without a key: %v %v", err, resp)
	}
	a, _, err := e.jupyterDial(t, id, "?session_id=abc", http.Header{"Authorization": {"token jk"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := e.jupyterDial(t, id, "?token=jk", nil)
	if err != nil {
		t.Fatal(err)
	}

	// Execute end to end; the other websocket sees the iopub, not the reply.
	msgs := a.execute("import pandas as pd; x = 41")
	for _, m := range msgs {
		if m.MsgType == "execute_reply" && m.Content["status"] != "ok" {
			t.Fatalf("reply: %v", m.Content)
		}
	}
	msgs = a.execute("x + 1")
	if r := resultText(msgs); r != "42" {
		t.Fatalf("x + 1 = %q (%d messages)", r, len(msgs))
	}
	var reply jmsg
	for _, m := range msgs {
		if m.MsgType == "execute_reply" {
			reply = m
		}
	}
	if reply.Channel != "shell" || reply.Header["msg_id"] == "" || reply.ParentHeader["session"] != "tsess" {
		t.Errorf("reply header/parent not intact: %+v", reply)
	}
	var sawResult bool
	for _, m := range b.until(func(m jmsg) bool { return m.MsgType == "execute_result" }) {
		if m.MsgType == "execute_reply" {
			t.Error("the other websocket got the reply")
		}
		sawResult = true
	}
	if !sawResult {
		t.Error("the other websocket missed iopub")
	}

	// The kernel is busy while code runs and the model says so.
	busyID := a.send("", "execute_request", map[string]any{"code": "import time; time.sleep(1.5)", "silent": false}, nil)
	a.until(func(m jmsg) bool {
		return m.MsgType == "status" && m.Content["execution_state"] == "busy" && m.parent() == busyID
	})
	var model map[string]any
	e.do("GET", "/api/kernels/"+id, nil, &model)
	if model["execution_state"] != "busy" || model["connections"] != float64(2) {
		t.Errorf("model while running: %v", model)
	}
	// The session API runs code on the same kernel meanwhile: it waits
	// its turn in the kernel and gets its own output only.
	var rest struct {
		Stdout string `json:"stdout"`
	}
	if st := e.do("POST", "/api/v1/sessions/"+strings.ReplaceAll(id, "-", "")+"/execute", map[string]any{"code": "print(x)"}, &rest); st != 200 || rest.Stdout != "41\n" {
		t.Errorf("session execute beside a Jupyter one: %d %q", st, rest.Stdout)
	}
	a.until(idleOf(busyID))

	// input() through stdin.
	execID := a.send("shell", "execute_request", map[string]any{"code": "v = input('name? ')\nprint('hi', v)", "silent": false, "allow_stdin": true}, nil)
	req := a.until(func(m jmsg) bool { return m.MsgType == "input_request" })
	ir := req[len(req)-1]
	if ir.Channel != "stdin" || ir.Content["prompt"] != "name? " {
		t.Fatalf("input_request: %+v", ir)
	}
	a.send("stdin", "input_reply", map[string]any{"value": "bob"}, ir.Header)
	var out string
	a.until(func(m jmsg) bool {
		if m.MsgType == "stream" && m.parent() == execID {
			out += m.Content["text"].(string)
		}
		return idleOf(execID)(m)
	})
	if out != "hi bob\n" {
		t.Errorf("stdout after input = %q", out)
	}

	// Completion, inspection and a comm, each answered to its sender.
	cid := b.send("shell", "complete_request", map[string]any{"code": "pd.DataF", "cursor_pos": 8}, nil)
	cr := b.until(func(m jmsg) bool { return m.MsgType == "complete_reply" && m.parent() == cid })
	if ms, _ := cr[len(cr)-1].Content["matches"].([]any); len(ms) == 0 || !strings.HasSuffix(fmt.Sprint(ms[0]), "DataFrame") {
		t.Errorf("completion: %v", cr[len(cr)-1].Content)
	}
	iid := b.send("shell", "inspect_request", map[string]any{"code": "len", "cursor_pos": 3, "detail_level": 0}, nil)
	if r := b.until(func(m jmsg) bool { return m.MsgType == "inspect_reply" && m.parent() == iid }); r[len(r)-1].Content["found"] != true {
		t.Errorf("inspect: %v", r[len(r)-1].Content)
	}
	a.execute("from ipykernel.comm import Comm\nseen = []\ndef _t(comm, msg):\n    @comm.on_msg\n    def _r(m):\n        seen.append(m['content']['data'])\n        comm.send({'echo': m['content']['data']})\nget_ipython().kernel.comm_manager.register_target('t', _t)")
	a.send("shell", "comm_open", map[string]any{"comm_id": "c1", "target_name": "t", "data": map[string]any{}}, nil)
	a.send("shell", "comm_msg", map[string]any{"comm_id": "c1", "data": map[string]any{"n": 7.0}}, nil)
	echo := a.until(func(m jmsg) bool { return m.MsgType == "comm_msg" && m.Channel == "iopub" })
	if d, _ := echo[len(echo)-1].Content["data"].(map[string]any); fmt.Sprint(d["echo"]) != "map[n:7]" {
		t.Errorf("comm echo: %v", echo[len(echo)-1].Content)
	}

	// Bad input: errors for this websocket only, the kernel lives on.
	a.conn.WriteMessage(websocket.TextMessage, []byte("{not json"))
	if e := a.readError(); !strings.Contains(e, "malformed") {
		t.Errorf("malformed message: %q", e)
	}
	a.send("iopub", "execute_request", map[string]any{"code": "1"}, nil)
	if e := a.readError(); !strings.Contains(e, "iopub") {
		t.Errorf("message for iopub: %q", e)
	}
	a.conn.WriteMessage(websocket.TextMessage, []byte(`{"header":{"msg_type":"execute_request"},"channel":"shell","content":{}}`))
	if e := a.readError(); !strings.Contains(e, "msg_id") {
		t.Errorf("header without msg_id: %q", e)
	}
	if r := resultText(a.execute("x * 2")); r != "82" {
		t.Errorf("after bad input: %q", r)
	}

	// A control message: kernel_info on control.
	kid := b.send("control", "kernel_info_request", map[string]any{}, nil)
	if r := b.until(func(m jmsg) bool { return m.MsgType == "kernel_info_reply" && m.parent() == kid }); r[len(r)-1].Channel != "control" {
		t.Errorf("control reply on %q", r[len(r)-1].Channel)
	}

	// Interrupt a sleep through REST.
	sid := a.send("shell", "execute_request", map[string]any{"code": "import time; time.sleep(100)", "silent": false}, nil)
	a.until(func(m jmsg) bool { return m.MsgType == "execute_input" && m.parent() == sid })
	if st := e.do("POST", "/api/kernels/"+id+"/interrupt", map[string]any{}, nil); st != 204 {
		t.Fatalf("interrupt: %d", st)
	}
	var ename string
	a.until(func(m jmsg) bool {
		if m.MsgType == "error" && m.parent() == sid {
			ename, _ = m.Content["ename"].(string)
		}
		return idleOf(sid)(m)
	})
	if ename != "KeyboardInterrupt" {
		t.Errorf("interrupted sleep: ename %q", ename)
	}

	// Restart: state lost, the same websockets keep working.
	if st := e.do("POST", "/api/kernels/"+id+"/restart", map[string]any{}, &model); st != 200 || model["id"] != id {
		t.Fatalf("restart: %d %v", st, model)
	}
	msgs = a.execute("'x' in dir()")
	if r := resultText(msgs); r != "False" {
		t.Errorf("after restart, x defined? %q", r)
	}
	if r := resultText(b.execute("2 * 21")); r != "42" {
		t.Errorf("second websocket after restart: %q", r)
	}

	// A kernel that dies is announced and reported dead; a restart
	// revives it for the same websockets.
	a.send("shell", "execute_request", map[string]any{"code": "import os; os._exit(1)", "silent": false}, nil)
	a.until(func(m jmsg) bool { return m.MsgType == "status" && m.Content["execution_state"] == "dead" })
	e.do("GET", "/api/kernels/"+id, nil, &model)
	if model["execution_state"] != "dead" {
		t.Errorf("model after the kernel died: %v", model)
	}
	if st := e.do("POST", "/api/kernels/"+id+"/restart", map[string]any{}, &model); st != 200 || model["execution_state"] == "dead" {
		t.Fatalf("restart of a dead kernel: %d %v", st, model)
	}
	if r := resultText(a.execute("7 * 6")); r != "42" {
		t.Errorf("after reviving: %q", r)
	}

	// An oversized frame closes that websocket only.
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = 'a'
	}
	// The close frame is what counts: the default handler's reply may
	// fail (the server hung up already) and would hide it.
	b.conn.SetCloseHandler(func(code int, text string) error { return &websocket.CloseError{Code: code, Text: text} })
	b.conn.WriteMessage(websocket.TextMessage, big)
	b.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := b.conn.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseMessageTooBig {
				t.Errorf("oversized frame: %v", err)
			}
			break
		}
	}
	if r := resultText(a.execute("3 * 14")); r != "42" {
		t.Errorf("peer after an oversized frame: %q", r)
	}

	if st := e.do("DELETE", "/api/kernels/"+id, nil, nil); st != 204 {
		t.Errorf("delete: %d", st)
	}
	a.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := a.conn.ReadMessage(); err != nil {
			break // closed by the kernel's end
		}
	}
}

// v1Frame builds a v1.kernel.websocket.jupyter.org frame.
func v1Frame(channel string, parts ...[]byte) []byte {
	parts = append([][]byte{[]byte(channel)}, parts...)
	n := len(parts) + 1
	out := make([]byte, 8*(n+1))
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
	return out
}

// splitV1Frame parses a v1 frame into its channel and parts.
func splitV1Frame(t *testing.T, data []byte) (string, [][]byte) {
	t.Helper()
	n := int(binary.LittleEndian.Uint64(data))
	offs := make([]int, n)
	for i := range offs {
		offs[i] = int(binary.LittleEndian.Uint64(data[8*(i+1):]))
	}
	var parts [][]byte
	for i := 0; i+1 < n; i++ {
		parts = append(parts, data[offs[i]:offs[i+1]])
	}
	return string(parts[0]), parts[1:]
}

// legacyFrame builds Jupyter's legacy binary frame for a message with
// buffers.
func legacyFrame(msg []byte, bufs ...[]byte) []byte {
	all := append([][]byte{msg}, bufs...)
	n := len(all)
	out := make([]byte, 4*(n+1))
	binary.BigEndian.PutUint32(out, uint32(n))
	off := 4 * (n + 1)
	for i, b := range all {
		binary.BigEndian.PutUint32(out[4*(i+1):], uint32(off))
		off += len(b)
	}
	for _, b := range all {
		out = append(out, b...)
	}
	return out
}

func TestJupyterFraming(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"jk"}, poolSize: 1})
	var k map[string]any
	if st := e.do("POST", "/api/kernels?token=jk", map[string]any{}, &k, "Authorization", ""); st != 201 {
		t.Fatalf("start: %d", st)
	}
	id := k["id"].(string)
	hdr := http.Header{"Authorization": {"token jk"}}

	// Legacy framing: no subprotocol unless offered; buffers in binary
	// frames both ways (a comm echoing its buffers).
	a, resp, err := e.jupyterDial(t, id, "", hdr)
	if err != nil {
		t.Fatal(err)
	}
	if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != "" {
		t.Errorf("subprotocol %q chosen though none was offered", p)
	}
	a.execute("def _t(comm, msg):\n    @comm.on_msg\n    def _r(m):\n        comm.send({'n': len(m['buffers'])}, buffers=[bytes(b)[::-1] for b in m['buffers']])\nget_ipython().kernel.comm_manager.register_target('rev', _t)")
	a.send("shell", "comm_open", map[string]any{"comm_id": "c2", "target_name": "rev", "data": map[string]any{}}, nil)
	msg, _ := json.Marshal(map[string]any{
		"header":        map[string]any{"msg_id": "bin-1", "msg_type": "comm_msg", "session": "s", "username": "u", "date": "", "version": "5.3"},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "channel": "shell",
		"content": map[string]any{"comm_id": "c2", "data": map[string]any{}},
	})
	if err := a.conn.WriteMessage(websocket.BinaryMessage, legacyFrame(msg, []byte("abc"), []byte{0, 1, 2})); err != nil {
		t.Fatal(err)
	}
	a.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		kind, data, err := a.conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if kind != websocket.BinaryMessage {
			continue
		}
		n := int(binary.BigEndian.Uint32(data))
		if n != 3 {
			t.Fatalf("binary frame with %d parts, want the message and 2 buffers", n)
		}
		o1, o2 := binary.BigEndian.Uint32(data[8:]), binary.BigEndian.Uint32(data[12:])
		var m jmsg
		if err := json.Unmarshal(data[binary.BigEndian.Uint32(data[4:]):o1], &m); err != nil || m.MsgType != "comm_msg" || m.Channel != "iopub" {
			t.Fatalf("binary message: %v %+v", err, m)
		}
		if string(data[o1:o2]) != "cba" || string(data[o2:]) != "\x02\x01\x00" {
			t.Errorf("buffers %q %q", data[o1:o2], data[o2:])
		}
		break
	}

	// The v1 subprotocol when offered: every frame binary, parts as sent.
	v, resp, err := e.jupyterDial(t, id, "", hdr, v1Protocol)
	if err != nil {
		t.Fatal(err)
	}
	if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != v1Protocol {
		t.Fatalf("subprotocol = %q", p)
	}
	header := []byte(`{"msg_id":"v1-1","msg_type":"execute_request","session":"s","username":"u","date":1700000000.25,"version":"5.3"}`)
	content := []byte(`{"code":"6*7","silent":false,"store_history":true,"user_expressions":{},"allow_stdin":false}`)
	v.conn.WriteMessage(websocket.BinaryMessage, v1Frame("shell", header, []byte("{}"), []byte("{}"), content))
	var result, reply bool
	v.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for !result || !reply {
		kind, data, err := v.conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if kind != websocket.BinaryMessage {
			t.Fatalf("text frame under v1: %q", data)
		}
		ch, parts := splitV1Frame(t, data)
		if len(parts) < 4 {
			t.Fatalf("v1 frame with %d parts", len(parts))
		}
		var h, p struct {
			MsgType string `json:"msg_type"`
			MsgID   string `json:"msg_id"`
			Date    any    `json:"date"`
		}
		json.Unmarshal(parts[0], &h)
		json.Unmarshal(parts[1], &p)
		if p.MsgID != "v1-1" {
			continue
		}
		switch {
		case ch == "iopub" && h.MsgType == "execute_result":
			result = strings.Contains(string(parts[3]), `"42"`)
		case ch == "shell" && h.MsgType == "execute_reply":
			reply = true
			if p.Date != 1700000000.25 {
				t.Errorf("parent header date not intact: %v", p.Date)
			}
		}
	}
	if !result {
		t.Error("no execute_result 42 under v1")
	}
}
