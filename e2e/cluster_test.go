package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store/redis"
	"github.com/codegw/codegw/store/redis/redistest"
)

// binary is the codegw command built once by TestMain, with buildFlags.
var (
	binary     string
	buildFlags []string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cgwbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "codegw")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	build := exec.Command(goBin, append(append([]string{"build"}, buildFlags...), "-o", binary, "./cmd/codegw")...)
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build codegw:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	key1   = "key-one"
	key2   = "key-two"
	ttl    = 1500 * time.Millisecond
	secret = "cluster-test-secret"
)

// instance is one codegw process on a loopback port.
type instance struct {
	t     *testing.T
	name  string
	base  string
	state string // STATE_DIR: every kernel's command line names it
	log   string
	cmd   *exec.Cmd
	done  chan struct{}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs an instance against redisURL and waits until it serves.
// Settings in env come last, so they override the defaults above them.
func start(t *testing.T, name, redisURL string, env ...string) *instance {
	t.Helper()
	port := freePort(t)
	state, err := os.MkdirTemp("", "cgc"+name) // ipc socket paths must be short
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	in := &instance{t: t, name: name, base: fmt.Sprintf("http://127.0.0.1:%d", port), state: state,
		log: filepath.Join(work, "codegw.log"), done: make(chan struct{})}
	logf, err := os.Create(in.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary)
	cmd.Dir = work // no .env from the repository
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LANG=C.UTF-8",
		"HOST=127.0.0.1", "PORT=" + strconv.Itoa(port),
		"REDIS_URL=" + redisURL, "INSTANCE_TTL=" + strconv.FormatFloat(ttl.Seconds(), 'f', -1, 64),
		"CLUSTER_SECRET=" + secret, "EXECUTOR_INSTANCE_ID=" + name,
		"API_KEYS=" + key1 + "," + key2,
		"EXECUTOR=local", "POOL_SIZE=1", "EXECUTOR_PRELOAD=", "STATE_DIR=" + state, "STATELESS_KERNEL=oneshot",
		"IMAGE_STORE_PATH=" + filepath.Join(work, "images"), "FILE_STORE_PATH=" + filepath.Join(work, "files"), "SNAPSHOT_DIR=" + filepath.Join(work, "snapshots"),
		"SESSION_IDLE_TIMEOUT=600", "LOG_LEVEL=info",
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in.cmd = cmd
	go func() { cmd.Wait(); logf.Close(); close(in.done) }()
	t.Cleanup(func() {
		in.stop()
		if t.Failed() {
			b, _ := os.ReadFile(in.log)
			lines := 40
			if n, err := strconv.Atoi(os.Getenv("CODEGW_E2E_LOG_LINES")); err == nil {
				lines = n
			}
			t.Logf("log of instance %s:\n%s", name, tail(string(b), lines))
		}
		os.RemoveAll(state)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(in.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return in
			}
		}
		select {
		case <-in.done:
			b, _ := os.ReadFile(in.log)
			t.Fatalf("instance %s exited at start:\n%s", name, tail(string(b), 30))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s did not serve within 30s", name)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stop ends the instance gracefully (SIGTERM), killing it after 20s.
func (in *instance) stop() {
	select {
	case <-in.done:
		return
	default:
	}
	in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(20 * time.Second):
		in.t.Errorf("instance %s ignored SIGTERM for 20s: killed", in.name)
		in.cmd.Process.Kill()
		<-in.done
	}
}

// kill9 kills the instance at once, like a crash.
func (in *instance) kill9() {
	in.cmd.Process.Kill()
	<-in.done
}

// processesUnder lists live processes whose command line names dir (the
// instance's kernels, their sandboxes).
func processesUnder(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		out = append(out, e.Name()+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	return out
}

// kernelsUnder counts the kernel processes of the instance whose state
// directory is dir: spawned kernels run launch.py; forked ones are children
// of the zygote and share its command line (zygote.py), so the zygote
// itself is taken off. bwrap and the lifeline shell name the scripts too.
func kernelsUnder(dir string) int {
	spawned, zygote := 0, 0
	for _, p := range processesUnder(dir) {
		_, cmd, _ := strings.Cut(p, ": ")
		if strings.Contains(cmd, "bwrap") || strings.HasPrefix(cmd, "/bin/sh") {
			continue
		}
		switch {
		case strings.Contains(cmd, "launch.py"):
			spawned++
		case strings.Contains(cmd, "zygote.py"):
			zygote++
		}
	}
	return spawned + max(zygote-1, 0)
}

type answer struct {
	status  int
	body    []byte
	elapsed time.Duration
}

func (a answer) String() string { return fmt.Sprintf("%d %s", a.status, tail(string(a.body), 5)) }

func (a answer) apiErr() (code, msg string) {
	var e struct{ Error, Code string }
	json.Unmarshal(a.body, &e)
	return e.Code, e.Error
}

// call sends a request with key's bearer token; goroutine-safe (no t.Fatal).
func (in *instance) call(method, path, key string, body any, hdr ...string) (answer, error) {
	var r io.Reader
	ct := "application/json"
	switch b := body.(type) {
	case nil:
	case *multipart.Writer:
		return answer{}, fmt.Errorf("use upload")
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, in.base+path, r)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", ct)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	t0 := time.Now()
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, b, time.Since(t0)}, err
}

func (in *instance) must(t *testing.T, method, path, key string, body any, want int, hdr ...string) answer {
	t.Helper()
	a, err := in.call(method, path, key, body, hdr...)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, in.name, path, err)
	}
	if a.status != want {
		t.Fatalf("%s %s%s: got %s, want status %d", method, in.name, path, a, want)
	}
	return a
}

func (in *instance) create(t *testing.T, key string) string {
	t.Helper()
	var s codegw.SessionInfo
	a := in.must(t, "POST", "/api/v1/sessions", key, map[string]any{}, 201)
	if err := json.Unmarshal(a.body, &s); err != nil || s.ID == "" {
		t.Fatalf("create on %s: %s", in.name, a)
	}
	if s.Instance != in.name {
		t.Fatalf("session %s created through %s is held by %q", s.ID, in.name, s.Instance)
	}
	return s.ID
}

func (in *instance) exec(t *testing.T, id, code string) codegw.ExecuteResult {
	t.Helper()
	var res codegw.ExecuteResult
	a := in.must(t, "POST", "/api/v1/sessions/"+id+"/execute", key1, map[string]any{"code": code}, 200)
	if err := json.Unmarshal(a.body, &res); err != nil {
		t.Fatalf("execute through %s: %s", in.name, a)
	}
	if res.Status != codegw.StatusOK {
		t.Fatalf("execute %q through %s: status %s, error %v", code, in.name, res.Status, res.Error)
	}
	return res
}

func (in *instance) stateless(t *testing.T) {
	t.Helper()
	var res codegw.ExecuteResult
	a := in.must(t, "POST", "/api/v1/execute", key1, map[string]any{"code": "print(6*7)"}, 200)
	if json.Unmarshal(a.body, &res); res.Result != "42" {
		t.Fatalf("stateless execute through %s: %s", in.name, a)
	}
}

func list(t *testing.T, in *instance, key string) map[string]codegw.SessionInfo {
	t.Helper()
	var body struct{ Sessions []codegw.SessionInfo }
	a := in.must(t, "GET", "/api/v1/sessions", key, nil, 200)
	if err := json.Unmarshal(a.body, &body); err != nil {
		t.Fatal(err)
	}
	out := map[string]codegw.SessionInfo{}
	for _, s := range body.Sessions {
		out[s.ID] = s
	}
	return out
}

// wsConn is a websocket client of a session, reading in the background.
type wsConn struct {
	conn   *websocket.Conn
	events chan map[string]any
	closed chan struct{}
	code   int
	reason string
}

func dialWS(t *testing.T, in *instance, id, query string, hdr http.Header) *wsConn {
	t.Helper()
	u := strings.Replace(in.base, "http://", "ws://", 1) + "/api/v1/sessions/" + id + "/ws" + query
	conn, resp, err := websocket.DefaultDialer.Dial(u, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s through %s: %v (status %d)", id, in.name, err, status)
	}
	w := &wsConn{conn: conn, events: make(chan map[string]any, 1024), closed: make(chan struct{})}
	go func() {
		defer close(w.closed)
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				if ce, ok := err.(*websocket.CloseError); ok {
					w.code, w.reason = ce.Code, ce.Text
				}
				return
			}
			var ev map[string]any
			json.Unmarshal(msg, &ev)
			w.events <- ev
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return w
}

func (w *wsConn) send(t *testing.T, v any) {
	t.Helper()
	if err := w.conn.WriteJSON(v); err != nil {
		t.Fatalf("websocket write: %v", err)
	}
}

// next returns the next event for which match is true.
func (w *wsConn) next(t *testing.T, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-w.events:
			if match(ev) {
				return ev
			}
		case <-w.closed:
			t.Fatalf("websocket closed (%d %q) while waiting for %s", w.code, w.reason, what)
		case <-timeout:
			t.Fatalf("no %s within 30s", what)
		}
	}
}

func typed(typ string) func(map[string]any) bool {
	return func(ev map[string]any) bool { return ev["type"] == typ }
}

// TestCluster runs three instances on one redis-server with real kernels:
// routing of REST, NDJSON, uploads/downloads and websockets between them,
// the loss of an instance (kill -9) and Redis outages.
func TestCluster(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	st, err := redis.New(ctx, rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	a, b, c := start(t, "a", rs.URL()), start(t, "b", rs.URL()), start(t, "c", rs.URL())
	testwait.For(t, 30*time.Second, "three instances registered", func() string {
		l, err := st.ListInstances(ctx)
		if err != nil || len(l) != 3 {
			return fmt.Sprintf("%v %v", l, err)
		}
		return ""
	})

	var s1 string
	if !t.Run("rest", func(t *testing.T) {
		s1 = a.create(t, key1)
		a.exec(t, s1, "x = 1")
		if r := b.exec(t, s1, "print(x)"); r.Stdout != "1\n" {
			t.Fatalf("print(x) through b: stdout %q", r.Stdout)
		}
		if r := c.exec(t, s1, "x += 1\nprint(x)"); r.Stdout != "2\n" {
			t.Fatalf("through c: stdout %q", r.Stdout)
		}
		var info codegw.SessionInfo
		json.Unmarshal(c.must(t, "GET", "/api/v1/sessions/"+s1, key1, nil, 200).body, &info)
		if info.Instance != "a" || info.Executions != 3 {
			t.Fatalf("GET through c: %+v", info)
		}
		if l := list(t, b, key1); l[s1].Executions != 3 || l[s1].State != "idle" {
			t.Fatalf("list through b: %+v", l)
		}
		// Another key gets 404 everywhere, and an empty list.
		for _, in := range []*instance{a, b, c} {
			in.must(t, "GET", "/api/v1/sessions/"+s1, key2, nil, 404)
			in.must(t, "POST", "/api/v1/sessions/"+s1+"/execute", key2, map[string]any{"code": "x"}, 404)
			if l := list(t, in, key2); len(l) != 0 {
				t.Fatalf("key2 lists %v through %s", l, in.name)
			}
		}
		b.must(t, "GET", "/api/v1/sessions/s_doesnotexist", key1, nil, 404)
		b.must(t, "GET", "/api/v1/sessions/"+s1, "", nil, 401)
		// A forged proxy header changes nothing: the request is still forwarded.
		if r := b.must(t, "POST", "/api/v1/sessions/"+s1+"/execute", key1, map[string]any{"code": "print(x)"}, 200, "X-Codegw-Proxy", "forged"); !strings.Contains(string(r.body), `"stdout":"2\n"`) {
			t.Fatalf("forged header: %s", r)
		}
	}) {
		return
	}

	t.Run("ndjson", func(t *testing.T) {
		body, _ := json.Marshal(map[string]any{"code": "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.4)"})
		req, _ := http.NewRequest("POST", c.base+"/api/v1/sessions/"+s1+"/execute", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key1)
		req.Header.Set("Accept", "application/x-ndjson")
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var first, last time.Duration
		var final map[string]any
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				t.Fatalf("not JSON: %q", sc.Text())
			}
			if ev["type"] == "stream" && first == 0 {
				first = time.Since(t0)
			}
			if ev["type"] == "response" {
				last, final = time.Since(t0), ev
			}
		}
		if final == nil || final["status"] != "ok" || !strings.Contains(final["stdout"].(string), "tick 2") {
			t.Fatalf("final line: %v", final)
		}
		if first == 0 || last-first < 600*time.Millisecond {
			t.Fatalf("events were not streamed through the proxy: first stream event at %v, answer at %v", first, last)
		}
	})

	t.Run("files", func(t *testing.T) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "data.csv")
		fw.Write([]byte("a,b\n1,2\n"))
		mw.Close()
		req, _ := http.NewRequest("POST", b.base+"/api/v1/sessions/"+s1+"/files", &buf)
		req.Header.Set("Authorization", "Bearer "+key1)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("upload through b: %d", resp.StatusCode)
		}
		r := c.exec(t, s1, "s = open('/code/input/data.csv').read()\nopen('/code/output/out.txt', 'w').write(s.upper() * 40000)\nprint(len(s))")
		if r.Stdout != "8\n" {
			t.Fatalf("read upload through c: %q", r.Stdout)
		}
		var files struct{ Files []struct{ Name string } }
		json.Unmarshal(b.must(t, "GET", "/api/v1/sessions/"+s1+"/files", key1, nil, 200).body, &files)
		if len(files.Files) != 1 || files.Files[0].Name != "out.txt" {
			t.Fatalf("files through b: %+v", files)
		}
		dl := c.must(t, "GET", "/api/v1/sessions/"+s1+"/files/out.txt", key1, nil, 200)
		if want := strings.Repeat("A,B\n1,2\n", 40000); string(dl.body) != want {
			t.Fatalf("download through c: %d bytes, want %d", len(dl.body), len(want))
		}
	})

	t.Run("websocket", func(t *testing.T) {
		hdr := http.Header{"Authorization": {"Bearer " + key1}}
		w := dialWS(t, b, s1, "", hdr)
		w.next(t, "connected", func(ev map[string]any) bool { return ev["state"] == "connected" })
		w.send(t, map[string]any{"type": "execute", "id": "e1", "code": "name = input('who? ')\nprint('hi', name, x)"})
		ir := w.next(t, "input_request", typed("input_request"))
		if ir["prompt"] != "who? " {
			t.Fatalf("input_request: %v", ir)
		}
		w.send(t, map[string]any{"type": "input_reply", "value": "bob"})
		st := w.next(t, "stream", typed("stream"))
		if !strings.Contains(st["text"].(string), "hi bob 2") {
			t.Fatalf("stream: %v", st)
		}
		if d := w.next(t, "done", typed("done")); d["status"] != "ok" {
			t.Fatalf("done: %v", d)
		}
		// A browser-style client through c, with ?token= and a replay.
		w2 := dialWS(t, c, s1, "?token="+key1+"&last_seq=0", nil)
		w2.next(t, "the replayed input_request", typed("input_request"))
		// Another key cannot dial it: the owner's refusal comes back as HTTP.
		u := strings.Replace(c.base, "http://", "ws://", 1) + "/api/v1/sessions/" + s1 + "/ws?token=" + key2
		if _, resp, err := websocket.DefaultDialer.Dial(u, nil); err == nil || resp == nil || resp.StatusCode != 404 {
			t.Fatalf("key2 dial: %v %v", resp, err)
		}
		// Deleting the session through c closes both sockets with the reason.
		c.must(t, "DELETE", "/api/v1/sessions/"+s1, key1, nil, 204)
		for _, ws := range []*wsConn{w, w2} {
			select {
			case <-ws.closed:
			case <-time.After(10 * time.Second):
				t.Fatalf("socket not closed after the delete")
			}
			if !strings.Contains(ws.reason, "deleted") {
				t.Fatalf("close reason %d %q", ws.code, ws.reason)
			}
		}
		b.must(t, "GET", "/api/v1/sessions/"+s1, key1, nil, 404)
	})

	var sB string
	if !t.Run("instance loss", func(t *testing.T) {
		sA := a.create(t, key1)
		a.exec(t, sA, "y = 1")
		sB = b.create(t, key1)
		b.exec(t, sB, "z = 5")
		// Kill a when its kernels are up (sA's, the warm one and the warm
		// one-shot kernel of stateless calls): bwrap
		// 0.8's --die-with-parent has a start-up window (it sets its
		// parent-death signal without checking whether the parent is
		// already gone), so a sandbox killed in its first ~30 ms can
		// outlive the gateway. That is the local provisioner's to close;
		// this test checks that started kernels die with their instance.
		testwait.For(t, 20*time.Second, "a's three kernels running", func() string {
			n := kernelsUnder(a.state)
			if n != 3 {
				return fmt.Sprintf("%d kernel processes", n)
			}
			return ""
		})
		killed := time.Now()
		a.kill9()
		// Until a's entry expires its sessions answer 503 at once; then 410.
		var last answer
		testwait.For(t, ttl+3*time.Second, "410 for a's session", func() string {
			r, err := b.call("POST", "/api/v1/sessions/"+sA+"/execute", key1, map[string]any{"code": "y"})
			if err != nil {
				return err.Error()
			}
			if r.elapsed > 3*time.Second {
				t.Fatalf("a request for a lost session took %v", r.elapsed)
			}
			last = r
			if r.status == 410 {
				return ""
			}
			if r.status != 503 {
				t.Fatalf("before expiry: %s", r)
			}
			return r.String()
		})
		t.Logf("a's session reported lost %v after kill -9 (ttl %v)", time.Since(killed).Round(10*time.Millisecond), ttl)
		code, msg := last.apiErr()
		if code != codegw.ELOST || !strings.Contains(msg, sA) || !strings.Contains(msg, "instance a") {
			t.Fatalf("lost answer: %s", last)
		}
		r := c.must(t, "GET", "/api/v1/sessions/"+sA+"/ws", key1, nil, 410)
		if code, _ := r.apiErr(); code != codegw.ELOST {
			t.Fatalf("ws through c: %s", r)
		}
		if l := list(t, c, key1); l[sA].State != "lost" || l[sB].State != "idle" {
			t.Fatalf("list through c: %+v", l)
		}
		// The others keep serving.
		if r := c.exec(t, sB, "print(z)"); r.Stdout != "5\n" {
			t.Fatalf("b's session through c: %q", r.Stdout)
		}
		c.stateless(t)
		b.stateless(t)
		testwait.For(t, 30*time.Second, "a's kernels gone", func() string {
			if p := processesUnder(a.state); len(p) > 0 {
				return strings.Join(p, "\n")
			}
			return ""
		})
	}) {
		return
	}

	var sC string
	t.Run("redis paused", func(t *testing.T) {
		sC = c.create(t, key1)
		rs.Pause()
		paused := true
		defer func() {
			if paused {
				rs.Resume()
			}
		}()
		r, err := b.call("POST", "/api/v1/sessions", key1, map[string]any{})
		if err != nil {
			t.Fatal(err)
		}
		if code, msg := r.apiErr(); r.status != 503 || code != codegw.EUNAVAILABLE || msg != "session store unavailable" || r.elapsed > 5*time.Second {
			t.Fatalf("create during the outage: %s after %v", r, r.elapsed)
		}
		if r := b.exec(t, sB, "z += 1\nprint(z)"); r.Stdout != "6\n" { // local to b: no store needed
			t.Fatalf("b's session through b: %q", r.Stdout)
		}
		r = c.must(t, "POST", "/api/v1/sessions/"+sB+"/execute", key1, map[string]any{"code": "z"}, 503)
		if code, _ := r.apiErr(); code != codegw.EUNAVAILABLE {
			t.Fatalf("remote session during the outage: %s", r)
		}
		c.must(t, "GET", "/api/v1/sessions", key1, nil, 503)
		c.stateless(t)
		c.must(t, "DELETE", "/api/v1/sessions/"+sC, key1, nil, 204) // its record cannot be deleted yet
		rs.Resume()
		paused = false
		testwait.For(t, 30*time.Second, "the record of the session deleted during the outage deleted", func() string {
			if _, err := st.GetSession(ctx, sC); codegw.ErrorCode(err) != codegw.ENOTFOUND {
				return fmt.Sprintf("GetSession: %v", err)
			}
			return ""
		})
		b.must(t, "GET", "/api/v1/sessions/"+sC, key1, nil, 404)
		if r := c.exec(t, sB, "print(z)"); r.Stdout != "6\n" {
			t.Fatalf("b's session through c after the outage: %q", r.Stdout)
		}
	})

	t.Run("redis restarted empty", func(t *testing.T) {
		rs.Stop()
		c.must(t, "POST", "/api/v1/sessions", key1, map[string]any{}, 503)
		c.stateless(t)
		rs.Restart() // no data: registry and records are gone
		testwait.For(t, 3*ttl, "b and c registered again, b's session recorded again", func() string {
			l, err := st.ListInstances(ctx)
			if err != nil || len(l) != 2 {
				return fmt.Sprintf("instances %v %v", l, err)
			}
			if _, err := st.GetSession(ctx, sB); err != nil {
				return fmt.Sprintf("session %s: %v", sB, err)
			}
			return ""
		})
		if r := c.exec(t, sB, "print(z)"); r.Stdout != "6\n" {
			t.Fatalf("b's session through c after the restart: %q", r.Stdout)
		}
		sNew := c.create(t, key1)
		b.exec(t, sNew, "w = 3")
		if r := c.exec(t, sNew, "print(w)"); r.Stdout != "3\n" {
			t.Fatalf("new session: %q", r.Stdout)
		}
	})

	// A graceful stop removes the registry entry and the session records,
	// and leaves no kernel behind.
	b.stop()
	c.stop()
	for _, in := range []*instance{b, c} {
		if p := processesUnder(in.state); len(p) > 0 {
			t.Errorf("processes of %s left after its stop:\n%s", in.name, strings.Join(p, "\n"))
		}
	}
	if l, err := st.ListInstances(ctx); err != nil || len(l) != 0 {
		t.Errorf("registry after the stops: %v %v", l, err)
	}
	for _, in := range []*instance{b, c} {
		if l, err := st.ListInstanceSessions(ctx, in.name); err != nil || len(l) != 0 {
			t.Errorf("records of %s after its stop: %+v %v", in.name, l, err)
		}
	}
}
