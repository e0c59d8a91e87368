package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"mime/multipart"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/strutil"
	"github.com/codegw/codegw/session"
)

type createBody struct {
	IdleTimeout float64           `json:"idle_timeout"`
	Env         map[string]string `json:"env"`
	// FromSession or FromSnapshot start the session from a snapshot
	// (branching): a session's latest state, or a checkpoint's.
	FromSession  string `json:"from_session"`
	FromSnapshot string `json:"from_snapshot"`
}

// parseSessionOptions decodes the body of POST /sessions.
func parseSessionOptions(b []byte) (session.CreateOptions, error) {
	var body createBody
	if len(b) > 0 {
		if err := json.Unmarshal(b, &body); err != nil {
			return session.CreateOptions{}, codegw.Errorf(codegw.EINVALID, "invalid session options: %v", err)
		}
	}
	if body.FromSession != "" && body.FromSnapshot != "" {
		return session.CreateOptions{}, codegw.Errorf(codegw.EINVALID, "give from_session or from_snapshot, not both")
	}
	return session.CreateOptions{IdleTimeout: seconds(body.IdleTimeout), Env: body.Env, From: body.FromSession + body.FromSnapshot}, nil
}

// seconds converts a client's number of seconds to a duration, saturating:
// a conversion out of int64's range is the implementation's choice (huge
// idle timeouts came out negative and were refused as such).
func seconds(f float64) time.Duration {
	switch ns := f * float64(time.Second); {
	case math.IsNaN(ns):
		return 0
	case ns >= math.MaxInt64:
		return math.MaxInt64
	case ns <= math.MinInt64:
		return math.MinInt64
	default:
		return time.Duration(ns)
	}
}

func (s *Server) createSession(c *fiber.Ctx) error {
	opts, err := parseSessionOptions(c.Body())
	if err != nil {
		return err
	}
	if s.draining.Load() {
		return drainingError(c)
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Minute)
	defer cancel()
	sess, err := s.cfg.Manager.Create(ctx, owner(c), opts)
	if err != nil {
		return err
	}
	c.Locals(localSession, sess.ID())
	if r := sess.Restored(); r != nil {
		return c.Status(fiber.StatusCreated).JSON(struct {
			codegw.SessionInfo
			Restored *codegw.Restored `json:"restored"`
		}{sess.Info(), r})
	}
	return c.Status(fiber.StatusCreated).JSON(sess.Info())
}

func (s *Server) listSessions(c *fiber.Ctx) error {
	if s.cfg.Router == nil {
		return c.JSON(fiber.Map{"sessions": s.cfg.Manager.List(owner(c))})
	}
	list, err := s.cfg.Router.Sessions(c, owner(c), s.cfg.Manager.List)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"sessions": list})
}

// sessionIDKey is the Locals key under which a route that names sessions
// otherwise (Jupyter kernel ids) leaves the session id.
const sessionIDKey = "session_id"

// sessionID is the session the path names.
func sessionID(c *fiber.Ctx) string {
	if id, ok := c.Locals(sessionIDKey).(string); ok {
		return id
	}
	return c.Params("id")
}

func (s *Server) session(c *fiber.Ctx) (*session.Session, error) {
	return s.cfg.Manager.Get(sessionID(c), owner(c))
}

func (s *Server) getSession(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	return c.JSON(sess.Info())
}

func (s *Server) deleteSession(c *fiber.Ctx) error {
	if err := s.cfg.Manager.Delete(sessionID(c), owner(c)); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (s *Server) sessionExecute(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	return s.answerExecute(c, func(ctx context.Context, req codegw.ExecuteRequest, emit func(codegw.Event)) (string, func() (*codegw.ExecuteResult, error), error) {
		return sess.Start(ctx, req, session.Submission{Emit: emit})
	})
}

func (s *Server) interrupt(c *fiber.Ctx) error {
	if err := s.interruptSession(c); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"status": "interrupted"})
}

// interruptSession interrupts the session (or Jupyter kernel) of the path.
func (s *Server) interruptSession(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return sess.Interrupt(ctx)
}

func (s *Server) restart(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := sess.Restart(ctx); err != nil {
		return err
	}
	return c.JSON(fiber.Map{"status": "restarted", "state_lost": true, "session": sess.Info()})
}

func (s *Server) upload(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	form, err := c.MultipartForm()
	if err != nil {
		return codegw.Errorf(codegw.EINVALID, "send the files as multipart/form-data: %v", err)
	}
	saved, err := saveForm(form, s.cfg.UploadLimit, sess.Upload)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"files": saved})
}

// saveForm saves every file of an upload form with save, each at most
// limit bytes.
func saveForm(form *multipart.Form, limit int64, save func(name string, r io.Reader, limit int64) (session.FileInfo, error)) ([]session.FileInfo, error) {
	var saved []session.FileInfo
	for _, fhs := range form.File {
		for _, fh := range fhs {
			if fh.Size > limit {
				return nil, codegw.Errorf(codegw.ETOOLARGE, "file %q is larger than %d bytes", fh.Filename, limit)
			}
			f, err := fh.Open()
			if err != nil {
				return nil, codegw.Errorf(codegw.EINVALID, "read upload %q: %v", fh.Filename, err)
			}
			info, err := save(fh.Filename, f, limit)
			f.Close()
			if err != nil {
				return nil, err
			}
			info.URL = ""
			saved = append(saved, info)
		}
	}
	if len(saved) == 0 {
		return nil, codegw.Errorf(codegw.EINVALID, "no file in the upload")
	}
	return saved, nil
}

func (s *Server) listOutputs(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	list, err := sess.Outputs()
	if err != nil {
		return err
	}
	for i := range list {
		list[i].URL = "/api/v1/sessions/" + sess.ID() + "/files/" + list[i].Name
	}
	return c.JSON(fiber.Map{"files": list})
}

func (s *Server) downloadOutput(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	f, fi, err := sess.OpenOutput(c.Params("name"))
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderContentType, "application/octet-stream")
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set(fiber.HeaderContentDisposition, contentDisposition(fi.Name()))
	return c.SendStream(f, int(fi.Size()))
}

// clientMessage is what a websocket client sends.
type clientMessage struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	codegw.ExecuteRequest
	Value string `json:"value"`
}

// websocket upgrades GET /sessions/{id}/ws. ?last_seq=N replays the events
// after N still buffered (a "gap" event says when some were lost).
func (s *Server) websocket(c *fiber.Ctx) error {
	sess, err := s.session(c)
	if err != nil {
		return err
	}
	if !websocket.IsWebSocketUpgrade(c) {
		return codegw.Errorf(codegw.EINVALID, "this endpoint needs a websocket upgrade")
	}
	var (
		after  uint64
		replay bool
	)
	if v := c.Query("last_seq"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return codegw.Errorf(codegw.EINVALID, "last_seq must be a non-negative integer")
		}
		after, replay = n, true
	}
	return websocket.New(func(conn *websocket.Conn) {
		s.serveSocket(conn, sess, after, replay)
	}, websocket.Config{EnableCompression: false, ReadBufferSize: 4 << 10, WriteBufferSize: 16 << 10})(c)
}

// errSocketGone is what a write after the websocket's handler returned gets.
var errSocketGone = errors.New("websocket closed")

func (s *Server) serveSocket(conn *websocket.Conn, sess *session.Session, after uint64, replay bool) {
	ctx := codegw.WithLogAttrs(context.Background(), "session", sess.ID())
	defer codegw.Recover(ctx, "session websocket writer", func(error) {
		closeInternal(conn)
	})
	s.cfg.Metrics.Websocket(1)
	defer s.cfg.Metrics.Websocket(-1)
	sub, missed, gap := sess.Subscribe(after, replay)
	defer sub.Close()
	var (
		wmu  sync.Mutex
		gone bool // the handler returned: conn went back to Fiber's pool
	)
	write := func(v any) error {
		wmu.Lock()
		defer wmu.Unlock()
		if gone {
			return errSocketGone
		}
		conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return conn.WriteJSON(v)
	}
	if gap {
		write(codegw.Event{Type: codegw.EventGap, Reason: "some events after last_seq are no longer buffered"})
	}
	for _, ev := range missed {
		if write(ev) != nil {
			return
		}
	}
	write(codegw.Event{Type: codegw.EventStatus, State: "connected", Reason: "session " + sess.ID()})

	readDone := make(chan struct{})
	conn.SetReadLimit(8 << 20)
	conn.SetPongHandler(func(string) error {
		conn.SetReadDeadline(time.Now().Add(3 * s.cfg.PingInterval))
		return nil
	})
	go func() {
		defer close(readDone)
		defer codegw.Recover(ctx, "session websocket reader", func(error) {
			wmu.Lock()
			closeInternal(conn)
			wmu.Unlock()
		})
		conn.SetReadDeadline(time.Now().Add(3 * s.cfg.PingInterval))
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			conn.SetReadDeadline(time.Now().Add(3 * s.cfg.PingInterval))
			fault("session websocket reader")
			fail := func(err error, id string) { write(errorFrame(err, id)) }
			if err := s.handleClientMessage(sess, data, fail); err != nil {
				fail(err, messageID(data))
			}
		}
	}()
	// The reader, and interrupts or restarts running aside, must be done
	// with conn before the handler returns it to Fiber.
	defer func() {
		wmu.Lock()
		gone = true
		wmu.Unlock()
		conn.Close()
		<-readDone
	}()
	ping := time.NewTicker(s.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case ev, ok := <-sub.C:
			if !ok {
				reason := sub.Reason()
				wmu.Lock()
				conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, strutil.TruncateUTF8(reason, 120)))
				wmu.Unlock()
				return
			}
			fault("session websocket writer")
			if write(ev) != nil {
				return
			}
		case <-ping.C:
			wmu.Lock()
			err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second))
			wmu.Unlock()
			if err != nil {
				return
			}
		case <-readDone:
			return
		}
	}
}

// errorFrame is the answer to a client message that was refused: the
// connection stays open. id is the message's own id, when it had one; a
// quota's refusal names the limit and when to try again.
func errorFrame(err error, id string) fiber.Map {
	f := fiber.Map{"type": "error_response", "error": codegw.ErrorMessage(err), "code": codegw.ErrorCode(err)}
	if id != "" {
		f["id"] = id
	}
	var le *session.LimitError
	if errors.As(err, &le) {
		f["limit"] = le.Limit
		f["retry_after"] = max(1, int(math.Ceil(le.RetryAfter.Seconds())))
	}
	return f
}

// messageID is the id of a client message, if it has one.
func messageID(data []byte) string {
	var m struct {
		ID string `json:"id"`
	}
	json.Unmarshal(data, &m)
	if len(m.ID) > 64 {
		return ""
	}
	return m.ID
}

// parseClientMessage decodes one message of a session websocket and checks
// its type and id.
func parseClientMessage(data []byte) (clientMessage, error) {
	var m clientMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return m, codegw.Errorf(codegw.EINVALID, "message is not JSON: %v", err)
	}
	// Every id is echoed in the answers (an interrupt's or restart's
	// failure too): bound it on every message, not only on executions.
	if len(m.ID) > 64 {
		return m, codegw.Errorf(codegw.EINVALID, "id is longer than 64 characters")
	}
	switch m.Type {
	case "execute", "interrupt", "restart", "input_reply", "ping":
	case "":
		return m, codegw.Errorf(codegw.EINVALID, "message has no type")
	default:
		return m, codegw.Errorf(codegw.EINVALID, "unknown message type %q", m.Type)
	}
	return m, nil
}

// handleClientMessage acts on one message of a session websocket. Each
// execution counts against its key's quotas and is refused while the
// instance drains, like a REST one: the refusal is an error_response frame.
func (s *Server) handleClientMessage(sess *session.Session, data []byte, fail func(error, string)) error {
	m, err := parseClientMessage(data)
	if err != nil {
		return err
	}
	switch m.Type {
	case "execute":
		// The answer reaches the client as events; a refusal after the
		// queue (input download, no worker) as a "rejected" done event.
		_, _, err := sess.Start(context.Background(), m.ExecuteRequest, session.Submission{ID: m.ID, Stdin: true})
		return err
	case "interrupt", "restart":
		// These take a while (a restart starts a kernel): run them aside so
		// the read loop keeps answering pings; failures reach the client.
		go func() {
			defer codegw.Recover(context.Background(), "session websocket "+m.Type, func(err error) { fail(codegw.PanicErr(err), m.ID) })
			var err error
			if m.Type == "interrupt" {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err = sess.Interrupt(ctx)
				cancel()
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				err = sess.Restart(ctx)
				cancel()
			}
			if err != nil {
				fail(err, m.ID)
			}
		}()
		return nil
	case "input_reply":
		return sess.Reply(m.Value)
	}
	return nil // "ping"
}
