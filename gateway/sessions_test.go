package gateway_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
)

// wsClient is a gorilla/websocket client of a session's event stream.
type wsClient struct {
	t      *testing.T
	conn   *websocket.Conn
	events chan codegw.Event
	raw    chan map[string]any
	pings  chan struct{}
	closed chan struct{}
	mu     sync.Mutex
	close  *websocket.CloseError
}

func (e *env) dial(t *testing.T, id, query string, key string) (*wsClient, *http.Response, error) {
	t.Helper()
	u := strings.Replace(e.base, "http://", "ws://", 1) + "/api/v1/sessions/" + id + "/ws" + query
	hdr := http.Header{}
	if key != "" {
		hdr.Set("Authorization", "Bearer "+key)
	}
	conn, resp, err := websocket.DefaultDialer.Dial(u, hdr)
	if err != nil {
		return nil, resp, err
	}
	w := &wsClient{t: t, conn: conn, events: make(chan codegw.Event, 4096), raw: make(chan map[string]any, 64), pings: make(chan struct{}, 64), closed: make(chan struct{})}
	conn.SetPingHandler(func(string) error {
		select {
		case w.pings <- struct{}{}:
		default:
		}
		return conn.WriteControl(websocket.PongMessage, nil, time.Now().Add(time.Second))
	})
	go func() {
		defer close(w.closed)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				if ce, ok := err.(*websocket.CloseError); ok {
					w.mu.Lock()
					w.close = ce
					w.mu.Unlock()
				}
				return
			}
			var m map[string]any
			json.Unmarshal(data, &m)
			if m["type"] == "error_response" {
				w.raw <- m
				continue
			}
			var ev codegw.Event
			if err := json.Unmarshal(data, &ev); err != nil {
				t.Errorf("bad event %s: %v", data, err)
				return
			}
			w.events <- ev
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return w, resp, nil
}

func (e *env) mustDial(t *testing.T, id, query string) *wsClient {
	t.Helper()
	key := ""
	if len(e.keys) > 0 {
		key = e.keys[0]
	}
	w, _, err := e.dial(t, id, query, key)
	if err != nil {
		t.Fatalf("dial websocket: %v", err)
	}
	// The server greets every connection; replayed events come before it.
	return w
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	if err := w.conn.WriteJSON(v); err != nil {
		w.t.Fatalf("websocket write: %v", err)
	}
}

// until collects events until stop returns true for one of them.
func (w *wsClient) until(stop func(codegw.Event) bool, timeout time.Duration) []codegw.Event {
	w.t.Helper()
	var got []codegw.Event
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-w.events:
			got = append(got, ev)
			if stop(ev) {
				return got
			}
		case <-deadline:
			w.t.Fatalf("no matching event within %v; got %s", timeout, eventTypes(got))
			return nil
		case <-w.closed:
			w.t.Fatalf("websocket closed while waiting; got %s", eventTypes(got))
			return nil
		}
	}
}

func doneFor(id string) func(codegw.Event) bool {
	return func(ev codegw.Event) bool { return ev.Type == codegw.EventDone && ev.ExecutionID == id }
}

func eventTypes(evs []codegw.Event) string {
	var s []string
	for _, ev := range evs {
		s = append(s, fmt.Sprintf("%d:%s/%s", ev.Seq, ev.Type, ev.State+ev.Name+string(ev.Status)))
	}
	return strings.Join(s, " ")
}

func (e *env) createSession(t *testing.T, body any) codegw.SessionInfo {
	t.Helper()
	var s codegw.SessionInfo
	if st := e.do("POST", "/api/v1/sessions", body, &s); st != 201 || s.ID == "" {
		t.Fatalf("create session: %d %+v", st, s)
	}
	return s
}

func (e *env) sexec(t *testing.T, id string, req map[string]any) codegw.ExecuteResult {
	t.Helper()
	var res codegw.ExecuteResult
	if st := e.do("POST", "/api/v1/sessions/"+id+"/execute", req, &res); st != 200 {
		t.Fatalf("session execute: status %d", st)
	}
	return res
}

func TestSessionREST(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 2})
	s := e.createSession(t, map[string]any{"idle_timeout": 600, "env": map[string]string{"GREETING": "héllo \"world\""}})
	if s.State != "idle" || time.Duration(s.IdleTimeout) != 10*time.Minute {
		t.Errorf("created = %+v", s)
	}
	var got codegw.SessionInfo
	if st := e.do("GET", "/api/v1/sessions/"+s.ID, nil, &got); st != 200 || got.ID != s.ID {
		t.Errorf("get: %d %+v", st, got)
	}
	var list struct{ Sessions []codegw.SessionInfo }
	if e.do("GET", "/api/v1/sessions", nil, &list); len(list.Sessions) != 1 || list.Sessions[0].ID != s.ID {
		t.Errorf("list = %+v", list)
	}

	// State persists; env is set.
	e.sexec(t, s.ID, map[string]any{"code": "import os\nx = 20"})
	if res := e.sexec(t, s.ID, map[string]any{"code": "print(x + 1, os.environ['GREETING'])"}); res.Result != `21 héllo "world"` || res.ExecutionCount != 2 {
		t.Errorf("state or env lost: %+v", res)
	}

	// Upload into /code/input, read it, write an output, list and download it.
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("file", "data.csv")
	fw.Write([]byte("a,b\n1,2\n"))
	mw.Close()
	var up struct{ Files []map[string]any }
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/files", buf.Bytes(), &up, "Content-Type", mw.FormDataContentType()); st != 201 || len(up.Files) != 1 {
		t.Fatalf("upload: %d %+v", st, up)
	}
	res := e.sexec(t, s.ID, map[string]any{"code": "import pandas as pd\ndf = pd.read_csv('/code/input/data.csv')\ndf.to_csv('/code/output/out.csv', index=False)\nprint(df.b.sum())"})
	if res.Result != "2" || len(res.Files) != 1 || res.Files[0].OriginalName != "out.csv" {
		t.Fatalf("execute with upload: %+v %s", res, strOr(res.Error))
	}
	// An unchanged output file is not reported again.
	if res := e.sexec(t, s.ID, map[string]any{"code": "1"}); len(res.Files) != 0 {
		t.Errorf("unchanged file reported again: %+v", res.Files)
	}
	var outs struct {
		Files []struct {
			Name string `json:"name"`
			Size int64  `json:"size_bytes"`
			URL  string `json:"url"`
		}
	}
	if st := e.do("GET", "/api/v1/sessions/"+s.ID+"/files", nil, &outs); st != 200 || len(outs.Files) != 1 || outs.Files[0].Name != "out.csv" {
		t.Fatalf("list outputs: %d %+v", st, outs)
	}
	st, hdr, body := e.get(outs.Files[0].URL)
	if st != 200 || string(body) != "a,b\n1,2\n" || !strings.Contains(hdr.Get("Content-Disposition"), "out.csv") {
		t.Errorf("download: %d %q %v", st, body, hdr)
	}
	for _, bad := range []string{"nope.csv", "..%2Finput%2Fdata.csv"} {
		if st, _, _ := e.get("/api/v1/sessions/" + s.ID + "/files/" + bad); st != 404 {
			t.Errorf("download %s: %d", bad, st)
		}
	}
	// A symlink in /code/output is not served.
	e.sexec(t, s.ID, map[string]any{"code": "import os; os.symlink('/etc/passwd', '/code/output/link.txt')"})
	if st, _, _ := e.get("/api/v1/sessions/" + s.ID + "/files/link.txt"); st != 404 {
		t.Errorf("symlink served: %d", st)
	}

	// Interrupt over REST, once the code runs (a websocket watches).
	watch := e.mustDial(t, s.ID, "")
	resc := make(chan codegw.ExecuteResult, 1)
	go func() {
		var r codegw.ExecuteResult
		if st, err := e.post("/api/v1/sessions/"+s.ID+"/execute", map[string]any{"code": "import time; print('sleeping', flush=True); time.sleep(100)"}, &r); st != 200 || err != nil {
			t.Errorf("slow execute: %d %v", st, err)
		}
		resc <- r
	}()
	watch.until(streamEv("sleeping"), 30*time.Second)
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/interrupt", nil, nil); st != 200 {
		t.Errorf("interrupt: %d", st)
	}
	select {
	case r := <-resc:
		if r.Status != codegw.StatusInterrupted || r.Error == nil {
			t.Errorf("interrupted execution: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("interrupt did not end the execution")
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": "print(x)"}); res.Result != "20" {
		t.Errorf("state lost by interrupt: %+v", res)
	}

	// Restart: state lost (and said so), files kept, env set again.
	var rs map[string]any
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/restart", nil, &rs); st != 200 || rs["state_lost"] != true {
		t.Errorf("restart: %d %v", st, rs)
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": "print(x)"}); res.EName != "NameError" {
		t.Errorf("state survived restart: %+v", res)
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": "import os; print(open('/code/input/data.csv').read().count(','), os.environ['GREETING'][:5])"}); res.Result != "2 héllo" {
		t.Errorf("after restart: %+v %s", res, strOr(res.Error))
	}

	// Delete: gone, and calls on it are 404.
	if st := e.do("DELETE", "/api/v1/sessions/"+s.ID, nil, nil); st != 204 {
		t.Errorf("delete: %d", st)
	}
	var ae apiError
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/execute", map[string]any{"code": "1"}, &ae); st != 404 || ae.Code != codegw.ENOTFOUND {
		t.Errorf("execute after delete: %d %+v", st, ae)
	}
}

func TestSessionDeathAndRestart(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1})
	s := e.createSession(t, nil)
	res := e.sexec(t, s.ID, map[string]any{"code": "import os; os._exit(3)"})
	if res.Status != codegw.StatusDied || res.Error == nil {
		t.Fatalf("died: %+v", res)
	}
	var got codegw.SessionInfo
	e.do("GET", "/api/v1/sessions/"+s.ID, nil, &got)
	if got.State != "dead" {
		t.Errorf("state after death = %q", got.State)
	}
	start := time.Now()
	if res := e.sexec(t, s.ID, map[string]any{"code": "1"}); res.Status != codegw.StatusDied || time.Since(start) > 3*time.Second {
		t.Errorf("execute on a dead kernel: %+v after %v", res.Status, time.Since(start))
	}
	if st := e.do("POST", "/api/v1/sessions/"+s.ID+"/restart", nil, nil); st != 200 {
		t.Fatalf("restart: %d", st)
	}
	if res := e.sexec(t, s.ID, map[string]any{"code": "print('alive')"}); res.Result != "alive" {
		t.Errorf("after restart: %+v", res)
	}
}

func TestSessionWebsocket(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 2})
	s := e.createSession(t, nil)
	w := e.mustDial(t, s.ID, "")
	w.until(func(ev codegw.Event) bool { return ev.Type == codegw.EventStatus && ev.State == "connected" }, 10*time.Second)

	t.Run("events arrive as they happen", func(t *testing.T) {
		w.t = t
		w.send(map[string]any{"type": "execute", "id": "live", "code": "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)"})
		var at []time.Time
		var lines []string
		evs := w.until(func(ev codegw.Event) bool {
			if ev.Type == codegw.EventStream {
				at = append(at, time.Now())
				lines = append(lines, ev.Text)
			}
			return doneFor("live")(ev)
		}, 30*time.Second)
		if strings.Join(lines, "") != "0\n1\n2\n" || len(at) != 3 {
			t.Fatalf("stream = %q (%s)", lines, eventTypes(evs))
		}
		for i := 1; i < 3; i++ {
			// About 1s apart: not batched at the end (a loaded CI machine
			// may stretch the gap, never shrink it to nothing).
			if gap := at[i].Sub(at[i-1]); gap < 500*time.Millisecond || gap > 3*time.Second {
				t.Errorf("line %d came %v after the previous one, want about 1s", i, gap)
			}
		}
		var last uint64
		for _, ev := range evs {
			if ev.Seq <= last || ev.ExecutionID != "live" {
				t.Errorf("event %+v: seq not increasing or wrong execution", ev)
			}
			last = ev.Seq
		}
		done := evs[len(evs)-1]
		if done.Status != codegw.StatusOK || done.Duration < 2.5 || done.ExecutionCount != 1 {
			t.Errorf("done = %+v", done)
		}
	})

	t.Run("queued comes before busy, and only behind another execution", func(t *testing.T) {
		w.t = t
		// The session is idle: a lone execution is not queued.
		w.send(map[string]any{"type": "execute", "id": "alone", "code": "pass"})
		for _, ev := range w.until(doneFor("alone"), 30*time.Second) {
			if ev.Type == codegw.EventStatus && ev.State == "queued" {
				t.Errorf("an execution on an idle session was announced as queued")
			}
		}
		// Back to back: each sent the moment the previous one is done, when
		// the session is finishing it (the playground's test once saw the
		// "queued" of such an execution after its "busy").
		for i := 0; i < 15; i++ {
			id := fmt.Sprintf("next%d", i)
			w.send(map[string]any{"type": "execute", "id": id, "code": "pass"})
			busy := false
			for _, ev := range w.until(doneFor(id), 30*time.Second) {
				if ev.Type == codegw.EventStatus && ev.ExecutionID == id {
					if ev.State == "busy" {
						busy = true
					} else if ev.State == "queued" && busy {
						t.Errorf("%s: queued came after busy", id)
					}
				}
			}
		}
		// A burst: each one but the first waits behind another, and says
		// so before its own busy.
		const n = 6
		for i := 0; i < n; i++ {
			w.send(map[string]any{"type": "execute", "id": fmt.Sprintf("burst%d", i), "code": "import time; time.sleep(0.05)"})
		}
		evs := w.until(doneFor(fmt.Sprintf("burst%d", n-1)), 60*time.Second)
		queued, busy := map[string]int{}, map[string]int{}
		for i, ev := range evs {
			if ev.Type != codegw.EventStatus {
				continue
			}
			switch ev.State {
			case "queued":
				queued[ev.ExecutionID] = i + 1
			case "busy":
				if busy[ev.ExecutionID] == 0 {
					busy[ev.ExecutionID] = i + 1
				}
			}
		}
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("burst%d", i)
			if busy[id] == 0 {
				t.Errorf("%s: no busy in %s", id, eventTypes(evs))
			}
			if q := queued[id]; q != 0 && q > busy[id] {
				t.Errorf("%s: queued came after busy", id)
			}
			if i > 0 && queued[id] == 0 {
				t.Errorf("%s was sent behind another execution but not announced as queued", id)
			}
		}
	})

	t.Run("images, results, errors and files", func(t *testing.T) {
		w.t = t
		w.send(map[string]any{"type": "execute", "id": "rich", "inline_images": true, "code": "import matplotlib.pyplot as plt\nplt.plot([1,2]); plt.show()\nopen('/code/output/r.txt','w').write('r')\n41+1"})
		evs := w.until(doneFor("rich"), 30*time.Second)
		var img, result, file bool
		for _, ev := range evs {
			switch ev.Type {
			case codegw.EventDisplay:
				img = ev.Output != nil && ev.Output.MIME == "image/png" && ev.Output.URL != "" && ev.Output.Data != ""
			case codegw.EventResult:
				result = ev.Output != nil && ev.Output.Text == "42"
			case codegw.EventFile:
				file = ev.File != nil && ev.File.OriginalName == "r.txt" && ev.File.URL != ""
			}
		}
		if !img || !result || !file {
			t.Errorf("image %v result %v file %v in %s", img, result, file, eventTypes(evs))
		}
		w.send(map[string]any{"type": "execute", "id": "err", "code": "raise ValueError('bad')"})
		evs = w.until(doneFor("err"), 30*time.Second)
		var errEv *codegw.Event
		for i := range evs {
			if evs[i].Type == codegw.EventError {
				errEv = &evs[i]
			}
		}
		if errEv == nil || errEv.EName != "ValueError" || errEv.EValue != "bad" || len(errEv.Traceback) == 0 || evs[len(evs)-1].Status != codegw.StatusError {
			t.Errorf("error events: %s", eventTypes(evs))
		}
	})

	t.Run("input", func(t *testing.T) {
		w.t = t
		w.send(map[string]any{"type": "execute", "id": "ask", "code": "name = input('who? ')\nprint('hi ' + name)"})
		evs := w.until(func(ev codegw.Event) bool { return ev.Type == codegw.EventInputRequest }, 30*time.Second)
		if p := evs[len(evs)-1].Prompt; p != "who? " {
			t.Errorf("prompt = %q", p)
		}
		w.send(map[string]any{"type": "input_reply", "value": "Ada"})
		evs = w.until(doneFor("ask"), 30*time.Second)
		var out string
		for _, ev := range evs {
			out += ev.Text
		}
		if !strings.Contains(out, "hi Ada") {
			t.Errorf("output = %q", out)
		}
		// A reply nobody waits for is an error, not a crash.
		w.send(map[string]any{"type": "input_reply", "value": "stray"})
		select {
		case m := <-w.raw:
			if m["code"] != codegw.ECONFLICT {
				t.Errorf("stray reply: %v", m)
			}
		case <-time.After(5 * time.Second):
			t.Error("no error for a stray input_reply")
		}
	})

	t.Run("interrupt and restart over the socket", func(t *testing.T) {
		w.t = t
		w.send(map[string]any{"type": "execute", "id": "slow", "code": "keep = 1\nimport time; print('sleeping', flush=True); time.sleep(100)"})
		w.until(streamEv("sleeping"), 30*time.Second)
		w.send(map[string]any{"type": "interrupt"})
		evs := w.until(doneFor("slow"), 30*time.Second)
		if st := evs[len(evs)-1].Status; st != codegw.StatusInterrupted {
			t.Errorf("interrupted status = %s", st)
		}
		w.send(map[string]any{"type": "restart"})
		evs = w.until(func(ev codegw.Event) bool { return ev.Type == codegw.EventStatus && ev.State == "restarted" }, 60*time.Second)
		if !strings.Contains(evs[len(evs)-1].Reason, "lost") {
			t.Errorf("restart event does not say state was lost: %+v", evs[len(evs)-1])
		}
		w.send(map[string]any{"type": "execute", "id": "after", "code": "keep"})
		evs = w.until(doneFor("after"), 30*time.Second)
		if evs[len(evs)-1].Status != codegw.StatusError {
			t.Errorf("state survived restart: %s", eventTypes(evs))
		}
	})

	t.Run("refused inputs end with a rejected done", func(t *testing.T) {
		w.t = t
		w.send(map[string]any{"type": "execute", "id": "refused", "code": "print(1)", "files": []string{"http://10.1.2.3/x.csv"}})
		evs := w.until(doneFor("refused"), 30*time.Second)
		done := evs[len(evs)-1]
		if done.Status != codegw.StatusRejected || done.Reason != codegw.EFORBIDDEN || !strings.Contains(done.Error, "10.1.2.3") {
			t.Errorf("done = %+v", done)
		}
	})

	t.Run("bad messages", func(t *testing.T) {
		w.t = t
		for _, msg := range []string{`not json`, `{"type":"fly"}`, `{}`, `{"type":"execute","code":""}`} {
			w.conn.WriteMessage(websocket.TextMessage, []byte(msg))
			select {
			case m := <-w.raw:
				if m["code"] != codegw.EINVALID || m["error"] == "" {
					t.Errorf("%s: %v", msg, m)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("%s: no error", msg)
			}
		}
		w.send(map[string]any{"type": "execute", "id": "ok", "code": "1"})
		w.until(doneFor("ok"), 30*time.Second)
	})

	t.Run("pings keep an idle connection open", func(t *testing.T) {
		w.t = t
		n := 0
		timeout := time.After(8 * time.Second)
		for n < 3 {
			select {
			case <-w.pings:
				n++
			case <-timeout:
				t.Fatalf("%d pings in 8s with a 1s interval", n)
			}
		}
	})
}

func TestSessionReconnectAndFanOut(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 2})
	s := e.createSession(t, nil)
	a := e.mustDial(t, s.ID, "")
	b := e.mustDial(t, s.ID, "")
	for _, c := range []*wsClient{a, b} {
		c.until(func(ev codegw.Event) bool { return ev.State == "connected" }, 10*time.Second)
	}
	a.send(map[string]any{"type": "execute", "id": "one", "code": "for i in range(5): print(i)"})
	evA := a.until(doneFor("one"), 30*time.Second)
	evB := b.until(doneFor("one"), 30*time.Second)
	if eventTypes(evA) != eventTypes(evB) {
		t.Errorf("two clients saw different events:\n%s\n%s", eventTypes(evA), eventTypes(evB))
	}
	// a goes away after its first event of the next execution; b runs it.
	lastSeen := evA[len(evA)-1].Seq
	a.conn.Close()
	b.send(map[string]any{"type": "execute", "id": "two", "code": "for i in range(5): print('x', i)"})
	evB = b.until(doneFor("two"), 30*time.Second)
	// a reconnects with the last seq it saw and gets exactly what it missed.
	a2 := e.mustDial(t, s.ID, fmt.Sprintf("?last_seq=%d", lastSeen))
	replayed := a2.until(doneFor("two"), 10*time.Second)
	if eventTypes(replayed) != eventTypes(evB) {
		t.Errorf("replay after reconnect:\n got %s\nwant %s", eventTypes(replayed), eventTypes(evB))
	}
	if replayed[0].Seq != lastSeen+1 {
		t.Errorf("replay starts at seq %d, want %d", replayed[0].Seq, lastSeen+1)
	}
}

func TestSessionReplayGap(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1, replay: 8})
	s := e.createSession(t, nil)
	res := e.sexec(t, s.ID, map[string]any{"code": "import sys\nfor i in range(30): print(i, flush=True); sys.stdout.flush()"})
	if res.Status != codegw.StatusOK {
		t.Fatal(res)
	}
	w := e.mustDial(t, s.ID, "?last_seq=1")
	evs := w.until(func(ev codegw.Event) bool { return ev.State == "connected" }, 10*time.Second)
	if evs[0].Type != codegw.EventGap || len(evs) != 10 { // gap, 8 buffered, connected
		t.Errorf("reconnect past the buffer: %s", eventTypes(evs))
	}
}

func TestSessionNDJSONAndOrder(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 2})
	s := e.createSession(t, nil)
	for _, path := range []string{"/api/v1/sessions/" + s.ID + "/execute", "/api/v1/execute"} {
		req, _ := http.NewRequest("POST", e.base+path, strings.NewReader(`{"code": "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.5)"}`))
		req.Header.Set("Accept", "application/x-ndjson")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
			t.Errorf("%s: content type %q", path, ct)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var types []string
		var times []time.Time
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
			}
			types = append(types, m["type"].(string))
			if m["type"] == "stream" {
				times = append(times, time.Now())
			}
			if m["type"] == "response" && m["stdout"] != "0\n1\n2\n" {
				t.Errorf("%s: response %v", path, m)
			}
		}
		resp.Body.Close()
		if len(types) < 6 || types[len(types)-1] != "response" || types[len(types)-2] != "done" {
			t.Errorf("%s: lines %v", path, types)
		}
		if len(times) == 3 && times[2].Sub(times[0]) < 700*time.Millisecond {
			t.Errorf("%s: stream lines were not sent as they happened (%v)", path, times[2].Sub(times[0]))
		}
	}

	// Executions in one session run one at a time, in order.
	var wg sync.WaitGroup
	results := make([]codegw.ExecuteResult, 3)
	for i := 0; i < 3; i++ {
		// Sent in order: each once the one before is submitted.
		testwait.Until(t, 30*time.Second, fmt.Sprintf("execution %d to be submitted", i-1), func() bool { return e.mgr.Stats().Executions == i })
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if st, err := e.post("/api/v1/sessions/"+s.ID+"/execute", map[string]any{"code": fmt.Sprintf("import time\nstart = time.time(); time.sleep(0.5)\nprint(%d, round(start, 2))", i)}, &results[i]); st != 200 || err != nil {
				t.Errorf("execute %d: %d %v", i, st, err)
			}
		}(i)
	}
	wg.Wait()
	var starts []float64
	for i, r := range results {
		var n int
		var st float64
		fmt.Sscanf(r.Result, "%d %f", &n, &st)
		if n != i {
			t.Errorf("result %d = %q", i, r.Result)
		}
		starts = append(starts, st)
	}
	for i := 1; i < 3; i++ {
		if starts[i]-starts[i-1] < 0.45 {
			t.Errorf("executions overlapped: starts %v", starts)
		}
	}
}

func TestSessionLimitsAndCulling(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 3, maxSess: 3, maxPerKey: 2, sessIdle: 3 * time.Second, keys: []string{"key-a", "key-b"}})
	e.waitPool(t, 3) // so that creating sessions takes less than the idle timeout
	a1 := e.createSession(t, nil)
	e.createSession(t, nil)
	var ae apiError
	if st := e.do("POST", "/api/v1/sessions", nil, &ae); st != 429 || ae.Code != codegw.ELIMIT {
		t.Errorf("third session for one key: %d %+v", st, ae)
	}
	if st := e.do("POST", "/api/v1/sessions", nil, nil, "Authorization", "Bearer key-b"); st != 201 {
		t.Errorf("first session of key b: %d", st)
	}
	if st := e.do("POST", "/api/v1/sessions", nil, &ae, "Authorization", "Bearer key-b"); st != 429 || ae.Code != codegw.ELIMIT {
		t.Errorf("session past the global maximum: %d %+v", st, ae)
	}

	// An idle session is culled and its connected clients are told why.
	w := e.mustDial(t, a1.ID, "")
	evs := w.until(func(ev codegw.Event) bool { return ev.Type == codegw.EventClosed }, 15*time.Second)
	if !strings.Contains(evs[len(evs)-1].Reason, "idle") {
		t.Errorf("closed event: %+v", evs[len(evs)-1])
	}
	select {
	case <-w.closed:
	case <-time.After(5 * time.Second):
		t.Error("websocket not closed after the session was culled")
	}
	if st := e.do("GET", "/api/v1/sessions/"+a1.ID, nil, nil); st != 404 {
		t.Errorf("culled session: %d", st)
	}
	// Culled sessions free their slots.
	testwait.Until(t, 15*time.Second, "culling to free the slots", func() bool { return e.do("POST", "/api/v1/sessions", nil, nil) == 201 })
}

func TestAuth(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1, keys: []string{"key-a", "key-b"}})
	s := e.createSession(t, nil)
	var ae apiError
	if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "1"}, &ae, "Authorization", ""); st != 401 || ae.Code != codegw.EUNAUTHORIZED {
		t.Errorf("no key: %d %+v", st, ae)
	}
	if st := e.do("GET", "/api/v1/sessions", nil, &ae, "Authorization", "Bearer nope"); st != 401 {
		t.Errorf("wrong key: %d", st)
	}
	// Another key sees nothing of the session.
	other := []string{"Authorization", "Bearer key-b"}
	for _, c := range []struct{ method, path string }{
		{"GET", "/api/v1/sessions/" + s.ID},
		{"POST", "/api/v1/sessions/" + s.ID + "/execute"},
		{"POST", "/api/v1/sessions/" + s.ID + "/interrupt"},
		{"POST", "/api/v1/sessions/" + s.ID + "/restart"},
		{"GET", "/api/v1/sessions/" + s.ID + "/files"},
		{"GET", "/api/v1/sessions/" + s.ID + "/files/x.txt"},
		{"DELETE", "/api/v1/sessions/" + s.ID},
	} {
		var ae apiError
		if st := e.do(c.method, c.path, map[string]any{"code": "1"}, &ae, other...); st != 404 || ae.Code != codegw.ENOTFOUND {
			t.Errorf("%s %s with another key: %d %+v", c.method, c.path, st, ae)
		}
	}
	var list struct{ Sessions []codegw.SessionInfo }
	if e.do("GET", "/api/v1/sessions", nil, &list, other...); len(list.Sessions) != 0 {
		t.Errorf("other key lists %v", list.Sessions)
	}
	if _, resp, err := e.dial(t, s.ID, "", "key-b"); err == nil || resp == nil || resp.StatusCode != 404 {
		t.Errorf("websocket with another key: %v %v", err, resp)
	}
	if _, resp, err := e.dial(t, s.ID, "", ""); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Errorf("websocket without a key: %v", err)
	}
	// ?token= for browsers.
	w, _, err := e.dial(t, s.ID, "?token=key-a", "")
	if err != nil {
		t.Fatalf("websocket with ?token=: %v", err)
	}
	w.until(func(ev codegw.Event) bool { return ev.State == "connected" }, 10*time.Second)
	// The owner still works.
	if res := e.sexec(t, s.ID, map[string]any{"code": "print('mine')"}); res.Result != "mine" {
		t.Errorf("owner: %+v", res)
	}
}
