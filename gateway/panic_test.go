package gateway_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/gateway"
)

// armFault makes the goroutine that next reaches the fault point where
// panic, once.
func armFault(t *testing.T, where string) {
	t.Helper()
	var once sync.Once
	gateway.SetFaultHook(func(w string) {
		if w != where {
			return
		}
		fire := false
		once.Do(func() { fire = true })
		if fire {
			panic("injected fault in " + where)
		}
	})
	t.Cleanup(func() { gateway.SetFaultHook(nil) })
}

// TestPanicsEndOnlyTheirConnection injects a panic in each kind of
// goroutine that serves a client: the panic ends that connection or
// execution with an internal error, is counted, and the instance goes on
// serving the other sessions with nothing held (the key's one execution
// slot, websockets).
func TestPanicsEndOnlyTheirConnection(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"k1"}, poolSize: 1, tune: func(c *app.Config) { c.MaxExecutionsPerKey = 1 }})
	other := e.createSession(t, map[string]any{})
	var res codegw.ExecuteResult
	if st := e.do("POST", "/api/v1/sessions/"+other.ID+"/execute", map[string]any{"code": "x = 41"}, &res); st != 200 || res.Status != "ok" {
		t.Fatalf("set up the other session: %d %+v", st, res)
	}
	victim := e.createSession(t, map[string]any{})

	// serving checks the instance serves on and that the panic was counted
	// where it was recovered.
	serving := func(t *testing.T, where string) {
		t.Helper()
		var res codegw.ExecuteResult
		if st := e.do("POST", "/api/v1/sessions/"+other.ID+"/execute", map[string]any{"code": "print(x + 1)"}, &res); st != 200 || strings.TrimSpace(res.Result) != "42" {
			t.Fatalf("the other session after a panic in %s: %d %+v", where, st, res)
		}
		// One execution slot per key: a stateless call gets it, so the
		// panicking execution gave it back.
		if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print('still')"}, &res); st != 200 || strings.TrimSpace(res.Result) != "still" {
			t.Fatalf("stateless call after a panic in %s: %d %+v", where, st, res)
		}
		_, _, body := e.get("/metrics")
		if !strings.Contains(string(body), `codegw_panics_total{where="`+where+`"} 1`) {
			t.Fatalf("codegw_panics_total for %q is not 1:\n%s", where, grepLines(string(body), "codegw_panics_total"))
		}
	}
	closedWith := func(t *testing.T, w *wsClient) {
		t.Helper()
		select {
		case <-w.closed:
		case <-time.After(60 * time.Second):
			t.Fatal("the websocket stayed open after its goroutine panicked")
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.close == nil || w.close.Code != websocket.CloseInternalServerErr {
			t.Fatalf("close %+v, want %d", w.close, websocket.CloseInternalServerErr)
		}
	}

	t.Run("session websocket reader", func(t *testing.T) {
		armFault(t, "session websocket reader")
		w := e.mustDial(t, victim.ID, "")
		w.send(map[string]any{"type": "execute", "id": "a", "code": "1"})
		closedWith(t, w)
		serving(t, "session websocket reader")
	})
	t.Run("session websocket writer", func(t *testing.T) {
		w := e.mustDial(t, victim.ID, "")
		w.until(func(ev codegw.Event) bool { return ev.Type == codegw.EventStatus && ev.State == "connected" }, 30*time.Second)
		armFault(t, "session websocket writer")
		w.send(map[string]any{"type": "execute", "id": "b", "code": "print('hi')"})
		closedWith(t, w)
		serving(t, "session websocket writer")
		// The session itself lives on: a new websocket runs code in it.
		w2 := e.mustDial(t, victim.ID, "")
		w2.send(map[string]any{"type": "execute", "id": "c", "code": "print('again')"})
		w2.until(doneFor("c"), 60*time.Second)
	})
	for _, where := range []string{"jupyter websocket reader", "jupyter websocket writer"} {
		t.Run(where, func(t *testing.T) {
			var k struct{ ID string }
			if st := e.do("POST", "/api/kernels", map[string]any{"name": "python3"}, &k, "Authorization", "token k1"); st != 201 {
				t.Fatalf("create kernel: %d", st)
			}
			c, _, err := e.jupyterDial(t, k.ID, "", http.Header{"Authorization": {"token k1"}})
			if err != nil {
				t.Fatal(err)
			}
			armFault(t, where)
			c.send("shell", "kernel_info_request", map[string]any{}, nil)
			c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			for {
				_, _, err := c.conn.ReadMessage()
				if err == nil {
					continue
				}
				ce, ok := err.(*websocket.CloseError)
				if !ok || ce.Code != websocket.CloseInternalServerErr {
					t.Fatalf("read: %v, want a close %d", err, websocket.CloseInternalServerErr)
				}
				break
			}
			serving(t, where)
			// The kernel serves a new connection.
			c2, _, err := e.jupyterDial(t, k.ID, "", http.Header{"Authorization": {"token k1"}})
			if err != nil {
				t.Fatal(err)
			}
			c2.execute("1+1")
		})
	}
	t.Run("stateless execution", func(t *testing.T) {
		armFault(t, "stateless execution")
		var out struct{ Error, Code string }
		if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print(1)"}, &out); st != 500 || out.Code != codegw.EINTERNAL {
			t.Fatalf("JSON call: %d %+v, want 500 internal", st, out)
		}
		serving(t, "http handler")
	})
	t.Run("stateless execution streamed", func(t *testing.T) {
		armFault(t, "stateless execution")
		req, _ := http.NewRequest("POST", e.base+"/api/v1/execute", strings.NewReader(`{"code":"print(1)"}`))
		req.Header.Set("Authorization", "Bearer k1")
		req.Header.Set("Accept", "application/x-ndjson")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var last map[string]any
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			json.Unmarshal(sc.Bytes(), &last)
		}
		if last["type"] != "error_response" || last["code"] != codegw.EINTERNAL {
			t.Fatalf("last NDJSON line %v, want an internal error_response", last)
		}
		serving(t, "execution stream")
	})
	t.Run("mcp handler", func(t *testing.T) {
		armFault(t, "mcp handler")
		req, _ := http.NewRequest("POST", e.base+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`))
		req.Header.Set("Authorization", "Bearer k1")
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 500 {
			t.Fatalf("mcp: %d, want 500", resp.StatusCode)
		}
		serving(t, "mcp handler")
	})
	_, _, body := e.get("/metrics")
	if !strings.Contains(string(body), "codegw_websocket_connections 0") {
		t.Errorf("websockets left open:\n%s", grepLines(string(body), "codegw_websocket_connections"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
