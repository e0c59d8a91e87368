package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	gws "github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/cluster"
	"github.com/codegw/codegw/gateway"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/redis"
	"github.com/codegw/codegw/store/redis/redistest"
)

const clusterSecret = "test-secret"

// serveFiber runs app on a loopback port until t ends and returns its base URL.
func serveFiber(t *testing.T, app *fiber.App) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() { app.Shutdown() })
	return "http://" + ln.Addr().String()
}

// errorsAsJSON answers errors as {"code"} with a status, as the gateway
// does, so that tests see which error Forward returned.
func errorsAsJSON(c *fiber.Ctx, err error) error {
	status := map[string]int{codegw.ENOTFOUND: 404, codegw.ELOST: 410, codegw.EUNAVAILABLE: 503}[codegw.ErrorCode(err)]
	if status == 0 {
		status = 500
	}
	return c.Status(status).JSON(fiber.Map{"code": codegw.ErrorCode(err), "error": codegw.ErrorMessage(err)})
}

// fakeHolder is the instance that holds the sessions: it echoes what it got.
func fakeHolder(t *testing.T) string {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Post("/api/v1/sessions/:id/echo", func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"id": c.Params("id"), "body": string(c.Body()), "proxied": c.Get(cluster.ProxyHeader) == cluster.ProxyToken(clusterSecret), "query": c.Query("q")})
	})
	app.Get("/api/v1/sessions/:id/stream", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, "application/x-ndjson")
		c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
			for i := range 3 {
				json.NewEncoder(w).Encode(fiber.Map{"n": i})
				w.Flush()
			}
		})
		return nil
	})
	app.Get("/api/v1/sessions/:id/ws", websocket.New(func(c *websocket.Conn) {
		for {
			kind, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(kind, append([]byte("echo:"), msg...))
		}
	}))
	app.Get("/api/v1/sessions", func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"sessions": []codegw.SessionInfo{{ID: "s1", State: "idle", Instance: "b"}}})
	})
	return serveFiber(t, app)
}

// frontInstance is the instance a request reaches first: it holds local sessions
// only and forwards the rest. The owner is the X-Owner header.
func frontInstance(t *testing.T, cr *cluster.Router, local ...codegw.SessionInfo) string {
	r := gateway.NewForwarder(cr, 0)
	app := fiber.New(fiber.Config{DisableStartupMessage: true, ErrorHandler: errorsAsJSON})
	app.Get("/api/v1/sessions", func(c *fiber.Ctx) error {
		list, err := r.Sessions(c, c.Get("X-Owner"), func(string) []codegw.SessionInfo { return local })
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"sessions": list})
	})
	app.Use("/api/v1/sessions/:id", func(c *fiber.Ctx) error {
		return r.Forward(c, c.Params("id"), c.Get("X-Owner"))
	})
	return serveFiber(t, app)
}

type forwardFixture struct {
	st    *redis.Store
	front string
}

// setupForward registers instance b (the holder) and a front instance a, and
// records sessions: s1 (key1) on b, gone1 (key1) on c, which is not
// registered, and mine (key1) on a itself.
func setupForward(t *testing.T) forwardFixture {
	t.Helper()
	srv := redistest.Start(t)
	ctx := context.Background()
	st, err := redis.New(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Heartbeat(ctx, store.Instance{ID: "b", Addr: fakeHolder(t)}, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, rec := range []store.SessionRecord{
		{ID: "s1", Owner: "key1", Instance: "b"},
		{ID: "gone1", Owner: "key1", Instance: "c"},
		{ID: "mine", Owner: "key1", Instance: "a"},
	} {
		if err := st.CreateSession(ctx, rec, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	r := cluster.NewRouter(st, cluster.RouterConfig{Instance: "a", Secret: clusterSecret})
	return forwardFixture{st: st, front: frontInstance(t, r, codegw.SessionInfo{ID: "local1", State: "idle", Instance: "a"})}
}

func callAs(t *testing.T, method, url, owner, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Owner", owner)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestForward(t *testing.T) {
	f := setupForward(t)
	cases := []struct {
		name, method, path, owner, body string
		hdr                             []string
		status                          int
		want                            string
	}{
		{"to the holder, body and query intact", "POST", "/api/v1/sessions/s1/echo?q=x", "key1", "hello", nil, 200, `"body":"hello","id":"s1","proxied":true,"query":"x"`},
		{"a stream, line by line", "GET", "/api/v1/sessions/s1/stream", "key1", "", nil, 200, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"},
		{"another owner's session is missing", "POST", "/api/v1/sessions/s1/echo", "key2", "", nil, 404, `"code":"not_found"`},
		{"a missing session", "POST", "/api/v1/sessions/nope/echo", "key1", "", nil, 404, `"code":"not_found"`},
		{"another owner's lost session is missing", "POST", "/api/v1/sessions/gone1/echo", "key2", "", nil, 404, `"code":"not_found"`},
		{"the holder is gone", "POST", "/api/v1/sessions/gone1/echo", "key1", "", nil, 410, `"code":"session_lost"`},
		{"a record naming this instance", "POST", "/api/v1/sessions/mine/echo", "key1", "", nil, 410, `"code":"session_lost"`},
		{"never forwarded twice", "POST", "/api/v1/sessions/s1/echo", "key1", "", []string{cluster.ProxyHeader, cluster.ProxyToken(clusterSecret)}, 503, `"code":"unavailable"`},
		{"a forged proxy header is ignored", "POST", "/api/v1/sessions/s1/echo", "key1", "", []string{cluster.ProxyHeader, "forged"}, 200, `"proxied":true`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := callAs(t, tc.method, f.front+tc.path, tc.owner, tc.body, tc.hdr...)
			if status != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("%s %s: %d %s; want %d with %s", tc.method, tc.path, status, body, tc.status, tc.want)
			}
		})
	}
}

func TestForwardToADeadHolder(t *testing.T) {
	f := setupForward(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // registered, but nothing answers
	ctx := context.Background()
	if err := f.st.Heartbeat(ctx, store.Instance{ID: "d", Addr: dead}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := f.st.CreateSession(ctx, store.SessionRecord{ID: "s2", Owner: "key1", Instance: "d"}, 0, 0); err != nil {
		t.Fatal(err)
	}
	if status, body := callAs(t, "POST", f.front+"/api/v1/sessions/s2/echo", "key1", ""); status != 503 || !strings.Contains(body, "does not answer") {
		t.Errorf("a registered holder that does not answer: %d %s; want 503", status, body)
	}
}

func TestForwardWebsocket(t *testing.T) {
	f := setupForward(t)
	hdr := http.Header{"X-Owner": {"key1"}}
	conn, _, err := gws.DefaultDialer.Dial("ws"+strings.TrimPrefix(f.front, "http")+"/api/v1/sessions/s1/ws", hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := conn.WriteMessage(gws.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "echo:hi" {
		t.Fatalf("through the forwarded websocket: %q, %v", msg, err)
	}
	// The holder's refusal (here: no such route) reaches the client as an
	// HTTP answer.
	_, resp, err := gws.DefaultDialer.Dial("ws"+strings.TrimPrefix(f.front, "http")+"/api/v1/sessions/s1/nows", hdr)
	if err == nil || resp == nil || resp.StatusCode != 404 {
		t.Fatalf("a websocket the holder refuses: %v %v; want 404", resp, err)
	}
}

func TestSessionsAcrossInstances(t *testing.T) {
	f := setupForward(t)
	status, body := callAs(t, "GET", f.front+"/api/v1/sessions", "key1", "")
	if status != 200 {
		t.Fatalf("list: %d %s", status, body)
	}
	var got struct{ Sessions []codegw.SessionInfo }
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, s := range got.Sessions {
		states[s.ID] = s.State
	}
	// The store knows s1 (on b: asked), gone1 (on c: gone) and mine (on a,
	// this instance, but not held: lost); local1 is not in the store.
	want := map[string]string{"s1": "idle", "gone1": "lost", "mine": "lost"}
	if len(states) != len(want) {
		t.Errorf("sessions %v, want %v", states, want)
	}
	for id, st := range want {
		if states[id] != st {
			t.Errorf("session %s: state %q, want %q (all: %v)", id, states[id], st, states)
		}
	}
	// A listing forwarded by another instance is this instance's only.
	_, body = callAs(t, "GET", f.front+"/api/v1/sessions", "key1", "", cluster.ProxyHeader, cluster.ProxyToken(clusterSecret))
	if !strings.Contains(body, `"local1"`) || strings.Contains(body, `"s1"`) {
		t.Errorf("forwarded listing: %s; want the local session only", body)
	}
}
