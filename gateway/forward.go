package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	gws "github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/cluster"
	"github.com/codegw/codegw/store"
)

// Forwarding requests for sessions that other instances hold: the cluster
// Router says where a session is; a REST call (NDJSON streams, uploads and
// downloads included) goes on through an HTTP reverse proxy that flushes
// as bytes arrive, a websocket by dialing the holder's websocket and
// pumping frames both ways. The load balancer in front therefore needs no
// sticky sessions.

const (
	maxProxyDuration = time.Hour // a forwarded request; executions have their own deadlines
	bufferedLimit    = 1 << 20   // upstream bodies up to this size are sent in one piece
)

// hopHeaders are the hop-by-hop headers a proxy must not forward (RFC 9110
// 7.6.1), plus those the proxy sets itself.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true, cluster.ProxyHeader: true,
}

// Forwarder is the Router of a multi-instance deployment: it forwards to
// the holder found by a cluster.Router.
type Forwarder struct {
	r      *cluster.Router
	ping   time.Duration
	dialer *gws.Dialer
}

// NewForwarder returns a Forwarder over r; ping is the holder's websocket
// keep-alive interval (default 20s): a forwarded websocket whose holder
// sends nothing for three intervals is cut.
func NewForwarder(r *cluster.Router, ping time.Duration) *Forwarder {
	if ping <= 0 {
		ping = 20 * time.Second
	}
	return &Forwarder{r: r, ping: ping,
		dialer: &gws.Dialer{NetDialContext: cluster.PeerDialer(), HandshakeTimeout: 5 * time.Second, ReadBufferSize: 16 << 10, WriteBufferSize: 4 << 10}}
}

func (f *Forwarder) forwarded(c *fiber.Ctx) bool { return f.r.Forwarded(c.Get(cluster.ProxyHeader)) }

// Forward serves a request for session id, which this instance does not
// hold, on behalf of owner: it forwards the request to the holder, or
// returns the error to answer with (see cluster.Router.Locate).
func (f *Forwarder) Forward(c *fiber.Ctx, id, owner string) error {
	inst, err := f.r.Locate(id, owner, f.forwarded(c))
	if err != nil {
		return err
	}
	if websocket.IsWebSocketUpgrade(c) {
		return f.proxySocket(c, id, inst)
	}
	return f.proxyHTTP(c, id, inst)
}

// Sessions lists owner's sessions on every instance (see
// cluster.Router.Sessions).
func (f *Forwarder) Sessions(c *fiber.Ctx, owner string, local func(owner string) []codegw.SessionInfo) ([]codegw.SessionInfo, error) {
	return f.r.Sessions(owner, f.forwarded(c), cluster.PeerRequest{
		Query: string(c.Context().QueryArgs().QueryString()), Authorization: c.Get(fiber.HeaderAuthorization),
	}, local)
}

// proxyHTTP forwards a REST call and streams the answer back as it
// arrives: each read from the holder is flushed to the client at once, so
// NDJSON events are not held back.
func (f *Forwarder) proxyHTTP(c *fiber.Ctx, id string, inst store.Instance) error {
	target := cluster.BaseURL(inst.Addr, "http") + c.OriginalURL()
	ctx, cancel := context.WithTimeout(context.Background(), maxProxyDuration)
	var body io.Reader
	if b := c.Body(); len(b) > 0 {
		body = strings.NewReader(string(b)) // copied: fasthttp reuses its buffers after the handler
	}
	req, err := http.NewRequestWithContext(ctx, c.Method(), target, body)
	if err != nil {
		cancel()
		return codegw.WrapError(codegw.EINTERNAL, err, "build proxied request")
	}
	c.Request().Header.VisitAll(func(k, v []byte) {
		if name := string(k); !hopHeaders[http.CanonicalHeaderKey(name)] {
			req.Header.Add(name, string(v))
		}
	})
	req.Header.Set(cluster.ProxyHeader, f.r.Token())
	req.Header.Set("X-Forwarded-For", forwardedFor(c))
	resp, err := f.r.Client().Do(req)
	if err != nil {
		cancel()
		return cluster.Unreachable(id, inst, err)
	}
	c.Status(resp.StatusCode)
	for k, vs := range resp.Header {
		if hopHeaders[k] {
			continue
		}
		for i, v := range vs {
			if i == 0 {
				c.Response().Header.Set(k, v)
			} else {
				c.Response().Header.Add(k, v)
			}
		}
	}
	ndjson := strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson")
	if !ndjson && resp.ContentLength >= 0 && resp.ContentLength <= bufferedLimit {
		defer cancel()
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, resp.ContentLength))
		if err != nil {
			return cluster.Unreachable(id, inst, err)
		}
		return c.Send(b)
	}
	if !ndjson && resp.ContentLength > 0 {
		// A large download of known size: fasthttp copies it and closes it.
		c.Context().SetBodyStream(&cancelCloser{resp.Body, cancel}, int(resp.ContentLength))
		return nil
	}
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		defer resp.Body.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				if w.Flush() != nil {
					return // the client went away; closing the body tells the holder
				}
			}
			if err == io.EOF {
				return
			} else if err != nil {
				if ndjson { // the holder died mid-stream: say so on the last line
					line, _ := json.Marshal(fiber.Map{"type": "error_response", "code": codegw.EUNAVAILABLE,
						"error": fmt.Sprintf("session %s: the connection to instance %s holding it broke", id, inst.ID)})
					w.Write(append([]byte("\n"), append(line, '\n')...))
					w.Flush()
				}
				return
			}
		}
	})
	return nil
}

// cancelCloser ends the request's context when fasthttp closes the body.
type cancelCloser struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelCloser) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

func forwardedFor(c *fiber.Ctx) string {
	if prev := c.Get("X-Forwarded-For"); prev != "" {
		return prev + ", " + c.IP()
	}
	return c.IP()
}

// proxySocket dials the holder's websocket first, so that its refusal
// (404, 410, 401) reaches the client as an HTTP answer, then upgrades the
// client and pumps frames both ways.
func (f *Forwarder) proxySocket(c *fiber.Ctx, id string, inst store.Instance) error {
	target := cluster.BaseURL(inst.Addr, "ws") + c.OriginalURL()
	hdr := http.Header{}
	for _, k := range []string{"Authorization", "Origin", "User-Agent"} {
		if v := c.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	hdr.Set(cluster.ProxyHeader, f.r.Token())
	hdr.Set("X-Forwarded-For", forwardedFor(c))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	// Subprotocols the client offers (Jupyter's v1 kernel protocol) are
	// offered to the holder, and its choice is the client's.
	dialer := f.dialer
	if offered := c.Get("Sec-WebSocket-Protocol"); offered != "" {
		d := *f.dialer
		for _, p := range strings.Split(offered, ",") {
			d.Subprotocols = append(d.Subprotocols, strings.TrimSpace(p))
		}
		dialer = &d
	}
	up, resp, err := dialer.DialContext(ctx, target, hdr)
	cancel()
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != "" {
				c.Set(fiber.HeaderContentType, ct)
			}
			return c.Status(resp.StatusCode).Send(b)
		}
		return cluster.Unreachable(id, inst, err)
	}
	cfg := websocket.Config{EnableCompression: false, ReadBufferSize: 4 << 10, WriteBufferSize: 16 << 10}
	if p := up.Subprotocol(); p != "" {
		cfg.Subprotocols = []string{p}
	}
	err = websocket.New(func(conn *websocket.Conn) {
		f.pumpSocket(conn, up)
	}, cfg)(c)
	if err != nil { // not upgraded: the pump never runs
		up.Close()
	}
	return err
}

// pumpSocket copies frames between the client and the holder until either
// side ends, forwarding close codes and reasons, pings and pongs, so the
// holder's keep-alive covers the whole path.
func (f *Forwarder) pumpSocket(client *websocket.Conn, up *gws.Conn) {
	var wmu sync.Mutex // the client is written by the copy below and by closeClient
	done := make(chan struct{})
	copying := false
	// After a panic the copy from the holder must be done with client
	// before the handler returns it to Fiber.
	defer codegw.Recover(context.Background(), "proxy websocket client to holder", func(error) {
		wmu.Lock()
		closeInternal(client)
		wmu.Unlock()
		up.Close()
		if copying {
			<-done
		}
	})
	liveFor := 3 * f.ping
	ctl := func(conn interface {
		WriteControl(int, []byte, time.Time) error
	}, kind int) func(string) error {
		return func(data string) error {
			err := conn.WriteControl(kind, []byte(data), time.Now().Add(10*time.Second))
			if errors.Is(err, gws.ErrCloseSent) {
				return nil
			}
			return err
		}
	}
	client.SetReadLimit(8 << 20)
	up.SetReadLimit(64 << 20)
	up.SetReadDeadline(time.Now().Add(liveFor))
	toClientPing := ctl(client, websocket.PingMessage)
	up.SetPingHandler(func(data string) error {
		up.SetReadDeadline(time.Now().Add(liveFor))
		return toClientPing(data)
	})
	up.SetPongHandler(ctl(client, websocket.PongMessage))
	client.SetPingHandler(ctl(up, gws.PingMessage))
	client.SetPongHandler(ctl(up, gws.PongMessage))

	copying = true
	go func() { // holder -> client
		defer close(done)
		defer codegw.Recover(context.Background(), "proxy websocket holder to client", func(error) {
			wmu.Lock()
			closeInternal(client)
			wmu.Unlock()
			client.SetReadDeadline(time.Now()) // ends the copy to the holder
			up.Close()
		})
		for {
			kind, msg, err := up.ReadMessage()
			if err != nil {
				code, text := websocket.CloseGoingAway, "the connection to the instance holding the session broke"
				var ce *gws.CloseError
				if errors.As(err, &ce) {
					code, text = ce.Code, ce.Text
					if code == gws.CloseNoStatusReceived || code == gws.CloseAbnormalClosure {
						code = websocket.CloseGoingAway
					}
				}
				wmu.Lock()
				client.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(5*time.Second))
				wmu.Unlock()
				client.SetReadDeadline(time.Now().Add(5 * time.Second)) // wait briefly for the client's close
				return
			}
			up.SetReadDeadline(time.Now().Add(liveFor))
			wmu.Lock()
			client.SetWriteDeadline(time.Now().Add(30 * time.Second))
			err = client.WriteMessage(kind, msg)
			wmu.Unlock()
			if err != nil {
				up.Close()
				return
			}
		}
	}()
	for { // client -> holder
		kind, msg, err := client.ReadMessage()
		if err != nil {
			code, text := websocket.CloseNormalClosure, ""
			var ce *fws.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseNoStatusReceived && ce.Code != websocket.CloseAbnormalClosure {
				code, text = ce.Code, ce.Text
			}
			up.WriteControl(gws.CloseMessage, gws.FormatCloseMessage(code, text), time.Now().Add(5*time.Second))
			break
		}
		up.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if up.WriteMessage(kind, msg) != nil {
			break
		}
	}
	select { // let the holder answer the close, then cut it
	case <-done:
	case <-time.After(5 * time.Second):
	}
	up.Close()
	<-done
}
