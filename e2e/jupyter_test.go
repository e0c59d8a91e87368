package e2e_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw/store/redis/redistest"
)

// TestJupyterCluster serves a Jupyter kernel held by instance a through
// instance b: REST (model, list, interrupt, restart, delete) and the
// channels websocket.
func TestJupyterCluster(t *testing.T) {
	rs := redistest.Start(t)
	a, b := start(t, "ja", rs.URL()), start(t, "jb", rs.URL())
	tok := []string{"Authorization", "token " + key1}

	var k struct {
		ID             string `json:"id"`
		ExecutionState string `json:"execution_state"`
	}
	if err := json.Unmarshal(a.must(t, "POST", "/api/kernels", "", map[string]any{"name": "python3"}, 201, tok...).body, &k); err != nil || k.ID == "" {
		t.Fatalf("start on a: %v %+v", err, k)
	}
	var got struct{ ID string }
	json.Unmarshal(b.must(t, "GET", "/api/kernels/"+k.ID, "", nil, 200, tok...).body, &got)
	if got.ID != k.ID {
		t.Errorf("model through b: %+v", got)
	}
	var list []struct{ ID string }
	json.Unmarshal(b.must(t, "GET", "/api/kernels", "", nil, 200, tok...).body, &list)
	if len(list) != 1 || list[0].ID != k.ID {
		t.Errorf("list through b: %+v", list)
	}
	b.must(t, "GET", "/api/kernels/"+k.ID, key2, nil, 404) // another key's kernel

	// The websocket through b, with ?token= as Open WebUI sends it.
	u := strings.Replace(b.base, "http://", "ws://", 1) + "/api/kernels/" + k.ID + "/channels?token=" + key1
	conn, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("websocket through b: %v", err)
	}
	defer conn.Close()
	run := func(code, msgID string) (result string) {
		t.Helper()
		conn.WriteJSON(map[string]any{
			"header":        map[string]any{"msg_id": msgID, "msg_type": "execute_request", "session": "e2e", "username": "t", "date": "", "version": "5.3"},
			"parent_header": map[string]any{}, "metadata": map[string]any{}, "channel": "shell",
			"content": map[string]any{"code": code, "silent": false, "store_history": true, "user_expressions": map[string]any{}, "allow_stdin": false},
		})
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		for {
			var m struct {
				MsgType      string         `json:"msg_type"`
				ParentHeader map[string]any `json:"parent_header"`
				Content      map[string]any `json:"content"`
			}
			if err := conn.ReadJSON(&m); err != nil {
				t.Fatalf("read through b: %v", err)
			}
			if m.ParentHeader["msg_id"] != msgID {
				continue
			}
			if m.MsgType == "execute_result" {
				result = m.Content["data"].(map[string]any)["text/plain"].(string)
			}
			if m.MsgType == "status" && m.Content["execution_state"] == "idle" {
				return result
			}
		}
	}
	if r := run("x = 6\nx * 7", "e1"); r != "42" {
		t.Fatalf("execute through b: %q", r)
	}
	// The v1 subprotocol, offered through b, is chosen by a.
	d := websocket.Dialer{Subprotocols: []string{"v1.kernel.websocket.jupyter.org"}}
	v1, resp, err := d.Dial(u, nil)
	if err != nil {
		t.Fatalf("v1 websocket through b: %v", err)
	}
	v1.Close()
	if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != "v1.kernel.websocket.jupyter.org" {
		t.Errorf("subprotocol through b = %q", p)
	}
	b.must(t, "POST", "/api/kernels/"+k.ID+"/interrupt", "", map[string]any{}, 204, tok...)
	b.must(t, "POST", "/api/kernels/"+k.ID+"/restart", "", map[string]any{}, 200, tok...)
	if r := run("'x' in dir()", "e2"); r != "False" {
		t.Errorf("after restart through b: %q", r)
	}
	b.must(t, "DELETE", "/api/kernels/"+k.ID, "", nil, 204, tok...)
	a.must(t, "GET", "/api/kernels/"+k.ID, "", nil, 404, tok...)
}
