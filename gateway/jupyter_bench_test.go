package gateway_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw/kernel"
)

// TestJupyterOverhead measures `1+1` (execute_request until execute_reply
// and iopub idle) over the Jupyter websocket through the gateway against
// the same kernel over ZeroMQ directly, interleaved so load hits both
// alike. JUPYTER_BENCH_N sets the rounds (default 100).
func TestJupyterOverhead(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"jk"}, poolSize: 1})
	var k map[string]any
	if st := e.do("POST", "/api/kernels", map[string]any{}, &k); st != 201 {
		t.Fatalf("start: %d", st)
	}
	id := k["id"].(string)
	sess, err := e.mgr.Get(strings.ReplaceAll(id, "-", ""), ownerOf("jk"))
	if err != nil {
		t.Fatal(err)
	}
	ws, _, err := e.jupyterDial(t, id, "?token=jk", nil)
	if err != nil {
		t.Fatal(err)
	}
	direct := sess.Kernel().Client()
	n := 100
	if v := os.Getenv("JUPYTER_BENCH_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	var viaWS, viaZMQ []time.Duration
	for i := 0; i < n+10; i++ {
		t0 := time.Now()
		if r := leanExecute(t, ws, i); r != `"2"` {
			t.Fatalf("websocket 1+1 = %q", r)
		}
		d1 := time.Since(t0)
		t0 = time.Now()
		if _, err := direct.Execute(context.Background(), "1+1", kernel.ExecuteOptions{StoreHistory: true}); err != nil {
			t.Fatal(err)
		}
		d2 := time.Since(t0)
		if i >= 10 { // warm-up rounds are not counted
			viaWS, viaZMQ = append(viaWS, d1), append(viaZMQ, d2)
		}
	}
	p50 := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	w, z := p50(viaWS), p50(viaZMQ)
	ratio := float64(w) / float64(z)
	t.Logf("1+1 p50 over %d rounds: Jupyter websocket via gateway %v, ZeroMQ direct %v, ratio %.3f", n, w, z, ratio)
	if ratio > 1.5 {
		t.Errorf("websocket p50 %v is %.2fx the direct %v", w, ratio, z)
	}
}

// ownerOf is the owner id the gateway derives from an API key.
func ownerOf(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key_" + hex.EncodeToString(sum[:8])
}

// leanExecute runs 1+1 over the websocket decoding what the direct client
// decodes (headers; the result's text), and returns the result.
func leanExecute(t *testing.T, c *jupyterClient, i int) string {
	t.Helper()
	id := "bench-" + strconv.Itoa(i)
	req := []byte(`{"header":{"msg_id":"` + id + `","msg_type":"execute_request","session":"b","username":"b","date":"","version":"5.3"},` +
		`"parent_header":{},"metadata":{},"channel":"shell","content":{"code":"1+1","silent":false,"store_history":true,"user_expressions":{},"allow_stdin":false}}`)
	if err := c.conn.WriteMessage(websocket.TextMessage, req); err != nil {
		t.Fatal(err)
	}
	var result string
	var reply, idle bool
	for !reply || !idle {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			MsgType string `json:"msg_type"`
			Parent  struct {
				MsgID string `json:"msg_id"`
			} `json:"parent_header"`
			Content struct {
				State string `json:"execution_state"`
				Data  struct {
					Text json.RawMessage `json:"text/plain"`
				} `json:"data"`
			} `json:"content"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		if m.Parent.MsgID != id {
			continue
		}
		switch m.MsgType {
		case "execute_reply":
			reply = true
		case "execute_result":
			result = string(m.Content.Data.Text)
		case "status":
			idle = idle || m.Content.State == "idle"
		}
	}
	return result
}
