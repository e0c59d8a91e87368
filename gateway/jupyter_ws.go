package gateway

// The Jupyter kernel websocket (/api/kernels/{id}/channels): messages pass
// both ways with their headers, parent headers, metadata and content as
// the client and kernel wrote them. Each kernel has one bridge: a
// kernel.RawConn of its own beside the session's queue, shared by every
// websocket on the kernel. Replies go to the websocket whose request they
// answer (by the parent msg_id), iopub to all of them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/session"
)

// jconnQueue is how many messages, and jconnQueueBytes how many bytes of
// them, may wait for a slow websocket before it is closed with a reason
// (its peers and the kernel go on): a client that stops reading while its
// kernel prints costs the gateway at most about jconnQueueBytes.
const (
	jconnQueue      = 4096
	jconnQueueBytes = 4 << 20
)

// bridges holds this instance's bridges by session id.
type bridges struct {
	mu sync.Mutex
	m  map[string]*bridge
}

func (bs *bridges) get(id string) *bridge {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.m[id]
}

// open returns the session's bridge, creating it on first use.
func (bs *bridges) open(s *Server, sess *session.Session) *bridge {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.m == nil {
		bs.m = map[string]*bridge{}
	}
	if b := bs.m[sess.ID()]; b != nil {
		return b
	}
	b := &bridge{s: s, sess: sess, conns: map[*jconn]bool{}, routes: map[string]*jconn{}, holds: map[string]hold{}}
	bs.m[sess.ID()] = b
	go func() {
		defer codegw.Recover(context.Background(), "jupyter bridge keeper", func(error) {
			bs.mu.Lock()
			delete(bs.m, sess.ID())
			bs.mu.Unlock()
			b.close()
		})
		// A kernel busy for Jupyter clients is active even when its code
		// prints nothing for longer than the idle timeout; the session's
		// end ends the bridge.
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for done := false; !done; {
			select {
			case <-t.C:
				if state, _ := b.stats(); state == "busy" {
					sess.Touch()
				}
			case <-sess.Done():
				done = true
			}
		}
		bs.mu.Lock()
		delete(bs.m, sess.ID())
		bs.mu.Unlock()
		b.close()
	}()
	return b
}

// bridge connects a session's kernel to its Jupyter websockets.
type bridge struct {
	s    *Server
	sess *session.Session

	dialMu sync.Mutex // one (re)dial at a time

	mu     sync.Mutex
	raw    *kernel.RawConn
	client *kernel.Client // the Kernel's Client when raw was dialed: a new one means a restart
	conns  map[*jconn]bool
	routes map[string]*jconn // request msg_id -> the websocket that sent it
	// holds are the execute_requests counted against the key's executions
	// (and the drain) until their execute_reply, by msg_id.
	holds  map[string]hold
	state  string // the latest execution_state on iopub
	closed bool
}

// hold is one execute_request's place among its key's executions.
type hold struct {
	from    *jconn
	release func()
}

// releaseHolds gives back the places of the execute_requests that will
// not be answered (the kernel died or restarted, the bridge closed), or,
// with from set, those of one websocket that left. Called with b.mu held.
func (b *bridge) releaseHolds(from *jconn) {
	for id, h := range b.holds {
		if from == nil || h.from == from {
			h.release()
			delete(b.holds, id)
		}
	}
}

func (b *bridge) stats() (string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, len(b.conns)
}

// ensure makes sure a live RawConn talks to the kernel's current process.
func (b *bridge) ensure(ctx context.Context) error {
	b.dialMu.Lock()
	defer b.dialMu.Unlock()
	k := b.sess.Kernel()
	c := k.Client()
	b.mu.Lock()
	old, oldClient, closed := b.raw, b.client, b.closed
	b.mu.Unlock()
	if closed {
		return codegw.Errorf(codegw.ENOTFOUND, "kernel %q has ended", b.sess.ID())
	}
	if old != nil && oldClient == c && old.Err() == nil {
		return nil
	}
	if old != nil {
		old.Close()
	}
	if c == nil || c.Err() != nil {
		return codegw.Errorf(codegw.EUNAVAILABLE, "kernel %q is dead; restart it", b.sess.ID())
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := kernel.DialRaw(ctx, k.Process().ConnectionInfo(), b.deliver)
	if err != nil {
		return codegw.WrapError(codegw.EUNAVAILABLE, err, "could not connect to kernel %q", b.sess.ID())
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		raw.Close()
		return codegw.Errorf(codegw.ENOTFOUND, "kernel %q has ended", b.sess.ID())
	}
	b.raw, b.client = raw, c
	b.mu.Unlock()
	go b.watch(raw, c)
	return nil
}

// watch announces the kernel's death to the websockets and redials when the
// kernel restarts (through either API) or the RawConn broke: zmq sockets do
// not survive their peer's restart.
func (b *bridge) watch(raw *kernel.RawConn, c *kernel.Client) {
	defer codegw.Recover(context.Background(), "jupyter bridge watch", func(error) { b.close() })
	select {
	case <-b.sess.Done():
		return
	case <-raw.Done():
	case <-c.Dead():
	}
	select { // the RawConn may notice first: wait for the Kernel's verdict
	case <-c.Dead():
	case <-time.After(3 * time.Second):
	}
	if errors.Is(c.Err(), kernel.ErrDied) { // not a restart: the gateway closes the old Client first
		b.broadcastStatus("dead")
	}
	if c.Err() != nil { // dead or restarted: the requests sent to it get no reply
		b.mu.Lock()
		b.releaseHolds(nil)
		b.mu.Unlock()
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-b.sess.Done():
			return
		case <-t.C:
		}
		b.mu.Lock()
		current, closed := b.raw, b.closed
		b.mu.Unlock()
		if closed || current != raw {
			return // closed, or someone else redialed
		}
		if nc := b.sess.Kernel().Client(); nc != nil && nc.Err() == nil && (nc != c || raw.Err() != nil) {
			if err := b.ensure(context.Background()); err != nil {
				b.s.log.Warn("jupyter: reconnect after restart", "kernel", b.sess.ID(), "err", err)
			}
			return
		}
	}
}

func (b *bridge) close() {
	b.mu.Lock()
	b.closed = true
	b.releaseHolds(nil)
	raw := b.raw
	conns := make([]*jconn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	b.mu.Unlock()
	if raw != nil {
		raw.Close()
	}
	for _, c := range conns {
		c.end(websocket.CloseGoingAway, "kernel ended")
	}
}

// deliver routes one message from the kernel.
func (b *bridge) deliver(channel string, m *kernel.RawMessage) {
	b.sess.Touch()
	ids, err := m.IDs()
	if err != nil {
		return
	}
	out := outMsg{channel: channel, ids: ids, m: m}
	b.mu.Lock()
	defer b.mu.Unlock()
	if channel == kernel.IOPub {
		if ids.MsgType == "status" {
			var st struct {
				State string `json:"execution_state"`
			}
			if json.Unmarshal(m.Content, &st) == nil && st.State != "" {
				b.state = st.State
			}
			// The execution is over at its idle or its reply, whichever a
			// client sees first: a client that waits for idle and sends
			// its next request at once must find the key's slot free.
			if st.State == "idle" {
				if h, ok := b.holds[m.ParentID()]; ok {
					h.release()
					delete(b.holds, m.ParentID())
				}
			}
		}
		for c := range b.conns {
			c.push(out)
		}
		return
	}
	parent := m.ParentID()
	c := b.routes[parent]
	if c == nil {
		return // a reply to a request of a websocket that left
	}
	if channel != kernel.Stdin && strings.HasSuffix(ids.MsgType, "_reply") {
		delete(b.routes, parent)
		if h, ok := b.holds[parent]; ok {
			h.release()
			delete(b.holds, parent)
		}
	}
	c.push(out)
}

// broadcastStatus tells every websocket the kernel's state, as Jupyter
// Server does around restarts.
func (b *bridge) broadcastStatus(state string) {
	msg, err := kernel.NewMessage(b.sess.ID(), "status", map[string]string{"execution_state": state})
	if err != nil {
		return
	}
	h, _ := json.Marshal(msg.Header)
	out := outMsg{channel: kernel.IOPub, ids: kernel.RawIDs{MsgID: msg.Header.MsgID, MsgType: "status"},
		m: &kernel.RawMessage{Header: h, ParentHeader: json.RawMessage("{}"), Metadata: json.RawMessage("{}"), Content: msg.Content}}
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		c.push(out)
	}
}

// send passes a websocket's message to the kernel. An execute_request
// counts against its key's executions until its reply; one refused (the
// quota, the drain) is answered as the kernel would answer an error, to
// the sender only, and the websocket stays open.
func (b *bridge) send(from *jconn, channel string, m *kernel.RawMessage, ids kernel.RawIDs) error {
	if err := b.ensure(context.Background()); err != nil {
		return err
	}
	var release func()
	if channel == kernel.Shell && ids.MsgType == "execute_request" {
		var err error
		if release, err = b.s.cfg.Manager.HoldExecution(b.sess.Owner()); err != nil {
			b.refuse(from, m, err)
			return nil
		}
	}
	b.mu.Lock()
	raw := b.raw
	if channel != kernel.Stdin {
		b.routes[ids.MsgID] = from
	}
	if release != nil {
		if old, ok := b.holds[ids.MsgID]; ok { // a client reusing a msg_id
			old.release()
		}
		b.holds[ids.MsgID] = hold{from: from, release: release}
	}
	b.mu.Unlock()
	b.sess.Touch()
	if err := raw.Send(channel, m); err != nil {
		b.mu.Lock()
		delete(b.routes, ids.MsgID)
		if h, ok := b.holds[ids.MsgID]; ok {
			h.release()
			delete(b.holds, ids.MsgID)
		}
		b.mu.Unlock()
		return codegw.WrapError(codegw.EUNAVAILABLE, err, "kernel %q did not take the message", b.sess.ID())
	}
	return nil
}

// refuse answers a refused execute_request in the protocol: iopub status
// busy, an error (ename LimitError for a quota, Unavailable otherwise),
// status idle, and an execute_reply with status error, all with the
// request as parent, so a client waiting for the reply or for idle stops.
func (b *bridge) refuse(to *jconn, req *kernel.RawMessage, err error) {
	ename := "Unavailable"
	if codegw.ErrorCode(err) == codegw.ELIMIT {
		ename = "LimitError"
	}
	evalue := codegw.ErrorMessage(err)
	failure := map[string]any{"ename": ename, "evalue": evalue, "traceback": []string{ename + ": " + evalue}}
	reply := map[string]any{"status": "error", "execution_count": nil, "ename": ename, "evalue": evalue, "traceback": failure["traceback"]}
	msgs := []struct {
		channel, typ string
		content      any
	}{
		{kernel.IOPub, "status", map[string]string{"execution_state": "busy"}},
		{kernel.IOPub, "error", failure},
		{kernel.IOPub, "status", map[string]string{"execution_state": "idle"}},
		{kernel.Shell, "execute_reply", reply},
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, x := range msgs {
		msg, err := kernel.NewMessage(b.sess.ID(), x.typ, x.content)
		if err != nil {
			return
		}
		h, _ := json.Marshal(msg.Header)
		to.push(outMsg{channel: x.channel, ids: kernel.RawIDs{MsgID: msg.Header.MsgID, MsgType: x.typ},
			m: &kernel.RawMessage{Header: h, ParentHeader: req.Header, Metadata: json.RawMessage("{}"), Content: msg.Content}})
	}
}

func (b *bridge) join(c *jconn) {
	b.mu.Lock()
	b.conns[c] = true
	b.mu.Unlock()
}

func (b *bridge) leave(c *jconn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.releaseHolds(c)
	for id, rc := range b.routes {
		if rc == c {
			delete(b.routes, id)
		}
	}
	b.mu.Unlock()
}

// outMsg is one message for a websocket.
type outMsg struct {
	channel string
	ids     kernel.RawIDs
	m       *kernel.RawMessage
	errText string // an error about the client's own message, instead of m
	errCode string
}

// jconn is one Jupyter websocket.
type jconn struct {
	ws     *websocket.Conn
	v1     bool
	out    chan outMsg
	queued atomic.Int64 // bytes of the messages in out
	closed chan struct{}
	once   sync.Once
	code   int
	reason string
}

// push queues m; a websocket too slow to keep up is dropped. Called with
// the bridge's lock held.
func (c *jconn) push(m outMsg) {
	n := m.size()
	if c.queued.Load()+n > jconnQueueBytes {
		c.end(websocket.CloseTryAgainLater, fmt.Sprintf("client too slow: over %d MiB waiting", jconnQueueBytes>>20))
		return
	}
	select {
	case c.out <- m:
		c.queued.Add(n)
	case <-c.closed:
	default:
		c.end(websocket.CloseTryAgainLater, "client too slow: too many messages waiting")
	}
}

// size is about what m holds in memory.
func (m outMsg) size() int64 {
	n := int64(len(m.errText) + 64)
	if m.m != nil {
		n += int64(len(m.m.Header) + len(m.m.ParentHeader) + len(m.m.Metadata) + len(m.m.Content))
		for _, b := range m.m.Buffers {
			n += int64(len(b))
		}
	}
	return n
}

func (c *jconn) end(code int, reason string) {
	c.once.Do(func() {
		c.code, c.reason = code, reason
		close(c.closed)
	})
}

// kernelChannels upgrades GET /api/kernels/{id}/channels.
func (s *Server) kernelChannels(c *fiber.Ctx) error {
	if !websocket.IsWebSocketUpgrade(c) {
		return codegw.Errorf(codegw.EINVALID, "this endpoint needs a websocket upgrade")
	}
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	b := s.jup.open(s, sess)
	if err := b.ensure(context.Background()); err != nil {
		return err
	}
	return websocket.New(func(ws *websocket.Conn) {
		s.serveChannels(ws, b)
	}, websocket.Config{Subprotocols: []string{kernel.WebsocketV1}, EnableCompression: false,
		ReadBufferSize: 16 << 10, WriteBufferSize: 16 << 10})(c)
}

func (s *Server) serveChannels(ws *websocket.Conn, b *bridge) {
	c := &jconn{ws: ws, v1: ws.Subprotocol() == kernel.WebsocketV1, out: make(chan outMsg, jconnQueue), closed: make(chan struct{})}
	b.join(c)
	defer b.leave(c)
	// The reader must be done with ws before the handler returns it to
	// Fiber, after a panic too.
	readDone := make(chan struct{})
	reading := false
	defer codegw.Recover(context.Background(), "jupyter websocket writer", func(error) {
		closeInternal(ws)
		if reading {
			ws.SetReadDeadline(time.Now())
			<-readDone
		}
	})
	ws.SetReadLimit(int64(s.cfg.BodyLimit))
	// Clients that answer pings only while they read (websocket-client)
	// may not read for minutes: a broken peer is found by failed pings.
	live := max(3*s.cfg.PingInterval, 10*time.Minute)
	ws.SetReadDeadline(time.Now().Add(live))
	ws.SetPongHandler(func(string) error {
		ws.SetReadDeadline(time.Now().Add(live))
		return nil
	})
	reading = true
	go func() {
		defer close(readDone)
		defer codegw.Recover(context.Background(), "jupyter websocket reader", func(error) {
			c.end(websocket.CloseInternalServerErr, "internal error")
		})
		for {
			kind, data, err := ws.ReadMessage()
			if err != nil {
				if strings.Contains(err.Error(), "read limit") {
					c.end(websocket.CloseMessageTooBig, "message over "+strconv.Itoa(s.cfg.BodyLimit)+" bytes")
				} else {
					c.end(websocket.CloseNormalClosure, "")
				}
				return
			}
			ws.SetReadDeadline(time.Now().Add(live))
			fault("jupyter websocket reader")
			channel, m, ids, err := decodeClient(kind, data, c.v1)
			if err == nil {
				err = b.send(c, channel, m, ids)
			}
			if err != nil {
				select {
				case c.out <- outMsg{errText: codegw.ErrorMessage(err), errCode: codegw.ErrorCode(err)}:
				default:
				}
			}
		}
	}()
	ping := time.NewTicker(s.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case m := <-c.out:
			c.queued.Add(-m.size())
			fault("jupyter websocket writer")
			kind, data := encodeClient(m, c.v1)
			ws.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if err := ws.WriteMessage(kind, data); err != nil {
				c.end(websocket.CloseNormalClosure, "")
			}
		case <-ping.C:
			if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second)); err != nil {
				c.end(websocket.CloseNormalClosure, "")
			}
		case <-c.closed:
			ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(c.code, c.reason), time.Now().Add(5*time.Second))
			ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			<-readDone
			return
		}
	}
}

// decodeClient parses one websocket frame of a Jupyter client.
func decodeClient(kind int, data []byte, v1 bool) (string, *kernel.RawMessage, kernel.RawIDs, error) {
	return kernel.DecodeWebsocket(data, kind == websocket.BinaryMessage, v1)
}

// encodeClient renders one message for a websocket: an error about the
// client's own message as JSON text, else the kernel's message in the
// connection's framing.
func encodeClient(o outMsg, v1 bool) (int, []byte) {
	if o.errText != "" {
		b, _ := json.Marshal(fiber.Map{"error": o.errText, "code": o.errCode})
		return websocket.TextMessage, b
	}
	data, binary := kernel.EncodeWebsocket(o.channel, o.ids, o.m, v1)
	if binary {
		return websocket.BinaryMessage, data
	}
	return websocket.TextMessage, data
}
