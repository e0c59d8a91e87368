package gateway_test

import (
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestJupyterSlowConsumerBounded: a Jupyter websocket client that stops
// reading while its kernel prints 100 MB costs the gateway a few MiB, not
// the flood: the connection is closed with a reason once 4 MiB wait, and
// the kernel and the instance go on.
func TestJupyterSlowConsumerBounded(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"k1"}, poolSize: 1})
	auth := http.Header{"Authorization": {"token k1"}}
	var k struct{ ID string }
	if st := e.do("POST", "/api/kernels", map[string]any{"name": "python3"}, &k, "Authorization", "token k1"); st != 201 {
		t.Fatalf("create kernel: %d", st)
	}
	c, _, err := e.jupyterDial(t, k.ID, "", auth)
	if err != nil {
		t.Fatal(err)
	}
	c.execute("1") // the bridge is up
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	// 100 MB of output, and then the client reads nothing.
	c.send("shell", "execute_request", map[string]any{"code": "import sys\nline = 'x' * 999 + '\\n'\nfor _ in range(100_000):\n    sys.stdout.write(line)\nsys.stdout.flush()",
		"silent": false, "store_history": false, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true}, nil)
	var peak uint64
	sawBusy := false
	deadline := time.Now().Add(5 * time.Minute)
	for tick := time.NewTicker(100 * time.Millisecond); ; <-tick.C {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		var model struct {
			State string `json:"execution_state"`
		}
		e.do("GET", "/api/kernels/"+k.ID, nil, &model, "Authorization", "token k1")
		if model.State == "busy" {
			sawBusy = true
		} else if sawBusy && model.State == "idle" {
			tick.Stop()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel did not finish printing 100 MB in 5 minutes (state %q)", model.State)
		}
	}
	if grew := int64(peak) - int64(base); grew > 20<<20 {
		t.Errorf("the gateway's heap grew by %d MiB for a client that does not read (want < 20)", grew>>20)
	} else {
		t.Logf("heap growth during a 100 MB flood to a client that does not read: %.1f MiB", float64(grew)/(1<<20))
	}
	// The slow connection was closed with its reason.
	c.conn.SetReadDeadline(time.Now().Add(90 * time.Second))
	for {
		_, _, err := c.conn.ReadMessage()
		if err == nil {
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != websocket.CloseTryAgainLater {
			t.Fatalf("slow client ended with %v; want close %d (client too slow)", err, websocket.CloseTryAgainLater)
		}
		t.Logf("slow client closed: %d %s", ce.Code, ce.Text)
		break
	}
	// The kernel serves a new connection.
	c2, _, err := e.jupyterDial(t, k.ID, "", auth)
	if err != nil {
		t.Fatal(err)
	}
	c2.execute("1+1")
}
