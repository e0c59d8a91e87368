package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/internal/testcheck"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session"
)

// syncBuffer is a log sink the server writes from many goroutines.
type syncBuffer struct{ testcheck.Buffer }

// lines parses the JSON log lines written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// scrape fetches /metrics with auth (a bearer token, or none) and parses
// it with the Prometheus text parser.
func scrape(t *testing.T, e *env, auth string) (int, map[string]*dto.MetricFamily) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.base+"/metrics", nil)
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return resp.StatusCode, nil
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return resp.StatusCode, fams
}

// sample sums the values of family name over the series whose labels
// include want (counters, gauges, and histogram counts).
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	var sum float64
	found := false
next:
	for _, m := range f.Metric {
		for k, v := range want {
			ok := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					ok = true
				}
			}
			if !ok {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

// TestMetricsAndRequestLogs runs real executions, then scrapes /metrics
// (behind METRICS_KEY) and reads the JSON request lines.
func TestMetricsAndRequestLogs(t *testing.T) {
	logs := &syncBuffer{}
	e := newEnv(t, envOptions{keys: []string{"secret-key-1"}, tune: func(c *app.Config) {
		c.MetricsKey = "scrape-me"
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}})
	if r := e.exec(map[string]any{"code": "print(6*7)"}); r.Status != codegw.StatusOK {
		t.Fatalf("ok run: %+v", r)
	}
	if r := e.exec(map[string]any{"code": "1/0"}); r.Status != codegw.StatusError {
		t.Fatalf("error run: %+v", r)
	}
	var sess codegw.SessionInfo
	if st := e.do("POST", "/api/v1/sessions", map[string]any{}, &sess); st != 201 {
		t.Fatalf("create session: %d", st)
	}
	var res codegw.ExecuteResult
	req, _ := json.Marshal(map[string]any{"code": "x = 41\nprint(x + 1)"})
	hreq, _ := http.NewRequest("POST", e.base+"/api/v1/sessions/"+sess.ID+"/execute", bytes.NewReader(req))
	hreq.Header.Set("Authorization", "Bearer secret-key-1")
	hreq.Header.Set("X-Request-Id", "req-ops-42")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(res.Stdout) != "42" {
		t.Fatalf("session execute: %d %+v", resp.StatusCode, res)
	}
	if got := resp.Header.Get("X-Request-Id"); got != "req-ops-42" {
		t.Errorf("X-Request-Id back = %q; want the one sent", got)
	}
	// NDJSON streams, session and stateless: the request line names the
	// execution the events carry.
	ndjsonExec := map[string]string{}
	for rid, path := range map[string]string{"req-ndjson-s": "/api/v1/sessions/" + sess.ID + "/execute", "req-ndjson-x": "/api/v1/execute"} {
		hreq, _ := http.NewRequest("POST", e.base+path+"?stream=1", strings.NewReader(`{"code":"import time; time.sleep(0.5); print(7)"}`))
		hreq.Header.Set("Authorization", "Bearer secret-key-1")
		hreq.Header.Set("X-Request-Id", rid)
		resp, err := http.DefaultClient.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev codegw.Event
			json.Unmarshal(sc.Bytes(), &ev)
			if ev.Type == codegw.EventDone {
				ndjsonExec[rid] = ev.ExecutionID
			}
		}
		resp.Body.Close()
		if ndjsonExec[rid] == "" {
			t.Fatalf("%s: no done event with an execution id", path)
		}
	}
	st, hdr, _ := e.get("/healthz")
	if id := hdr.Get("X-Request-Id"); st != 200 || len(id) < 16 {
		t.Errorf("healthz: status %d, made request id %q", st, id)
	}

	t.Run("auth", func(t *testing.T) {
		for _, auth := range []string{"", "wrong", "secret-key-1"} {
			if st, _ := scrape(t, e, auth); st != 401 {
				t.Errorf("/metrics with %q: status %d; want 401", auth, st)
			}
		}
	})
	t.Run("content", func(t *testing.T) {
		st, fams := scrape(t, e, "scrape-me")
		if st != 200 {
			t.Fatalf("/metrics: %d", st)
		}
		checks := []struct {
			name   string
			labels map[string]string
			min    float64
		}{
			{"codegw_executions_total", map[string]string{"status": "ok", "executor": "local"}, 2},
			{"codegw_executions_total", map[string]string{"status": "error"}, 1},
			{"codegw_execution_duration_seconds", nil, 3},
			{"codegw_kernel_start_duration_seconds", map[string]string{"outcome": "ok"}, 1},
			{"http_request_duration_seconds", map[string]string{"method": "POST", "handler": "/api/v1/sessions/:id/execute", "status_code": "200"}, 1},
			{"http_request_duration_seconds", map[string]string{"method": "POST", "handler": "/api/v1/execute", "status_code": "200"}, 2},
			{"codegw_sessions_open", nil, 1},
			{"kernel_currently_running_total", map[string]string{"type": "python3"}, 1},
			{"codegw_pool_ready", nil, 0},
			{"codegw_queue_depth", nil, 0},
			{"codegw_websocket_connections", nil, 0},
			{"go_goroutines", nil, 1},
			{"process_resident_memory_bytes", nil, 1},
		}
		for _, c := range checks {
			v, ok := sample(fams, c.name, c.labels)
			if !ok || v < c.min {
				if c.name == "http_request_duration_seconds" {
					for _, m := range fams[c.name].GetMetric() {
						t.Logf("series %v", m.Label)
					}
				}
				t.Errorf("%s%v = %v (present %v); want at least %v", c.name, c.labels, v, ok, c.min)
			}
		}
		for _, m := range fams["http_request_duration_seconds"].GetMetric() {
			for _, l := range m.Label {
				if l.GetName() == "handler" && strings.Contains(l.GetValue(), sess.ID) {
					t.Errorf("handler label %q is a raw path, not the route pattern", l.GetValue())
				}
			}
		}
	})
	t.Run("request log", func(t *testing.T) {
		var line, kernelLine map[string]any
		for _, l := range logs.lines(t) {
			if l["request_id"] != "req-ops-42" {
				continue
			}
			switch l["msg"] {
			case "request":
				line = l
			case "execution finished":
				kernelLine = l
			}
		}
		if line == nil {
			t.Fatal("no request line with request_id req-ops-42")
		}
		want := map[string]any{"route": "/api/v1/sessions/:id/execute", "method": "POST", "status": float64(200), "session": sess.ID}
		for k, v := range want {
			if line[k] != v {
				t.Errorf("request line %s = %v; want %v (line %v)", k, line[k], v, line)
			}
		}
		if k, _ := line["key_id"].(string); !strings.HasPrefix(k, "key_") {
			t.Errorf("key_id = %q; want a key hash", k)
		}
		exec, _ := line["execution"].(string)
		if exec == "" || line["duration"] == nil {
			t.Errorf("request line lacks the execution id or duration: %v", line)
		}
		if kernelLine == nil || kernelLine["execution"] != exec || kernelLine["session"] != sess.ID || kernelLine["kernel"] == nil {
			t.Errorf("execution line %v does not carry the request's ids (execution %q)", kernelLine, exec)
		}
		// A stream's line is written when the stream ends, just after the
		// client read its last line.
		testwait.Until(t, 10*time.Second, "the NDJSON request's log line", func() bool {
			return strings.Contains(logs.String(), `"request_id":"req-ndjson-x","method"`)
		})
		for _, l := range logs.lines(t) {
			rid, _ := l["request_id"].(string)
			if want, ok := ndjsonExec[rid]; ok && l["msg"] == "request" {
				if l["execution"] != want {
					t.Errorf("NDJSON request line %v: execution %v; want %q", l, l["execution"], want)
				}
				if d, _ := l["duration"].(float64); d < 0.5e9 {
					t.Errorf("NDJSON request line %v: duration %v ns; want the whole stream's (over 0.5 s)", l, l["duration"])
				}
				delete(ndjsonExec, rid)
			}
		}
		if len(ndjsonExec) > 0 {
			t.Errorf("no request line for the NDJSON requests %v", ndjsonExec)
		}
		if strings.Contains(logs.String(), "secret-key-1") {
			t.Error("the API key appears in the logs")
		}
	})
}

// TestQuotas checks the per-key concurrency and rate limits: the key over
// its limit gets 429 with Retry-After and the limit code, the other key is
// served, and the refusals show in /metrics (open on loopback without a
// METRICS_KEY).
func TestQuotas(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"key-a", "key-b"}, tune: func(c *app.Config) {
		c.RateLimit, c.RateBurst, c.MaxExecutionsPerKey = 2, 4, 1
	}})
	asB := []string{"Authorization", "Bearer key-b"}
	slow := make(chan int, 1)
	go func() {
		slow <- e.do("POST", "/api/v1/execute", map[string]any{"code": "import time; time.sleep(3)"}, nil)
	}()
	testwait.Until(t, 30*time.Second, "the slow stateless execution to run", func() bool { return e.mgr.Stats().Stateless > 0 })
	check429 := func(what string, st int, hdr http.Header, body []byte) {
		t.Helper()
		var ae apiError
		json.Unmarshal(body, &ae)
		if st != 429 || ae.Code != codegw.ELIMIT || hdr.Get("Retry-After") == "" {
			t.Errorf("%s: status %d, code %q, Retry-After %q; want 429, %q and a Retry-After", what, st, ae.Code, hdr.Get("Retry-After"), codegw.ELIMIT)
		}
	}
	st, hdr, body := rawDo(t, e, "POST", "/api/v1/execute", `{"code":"print(1)"}`, "key-a")
	check429("second execution of key a", st, hdr, body)
	// A request that is wrong is told so even at the limit: validation
	// comes before the quota.
	for _, bad := range []string{`{"code":""}`, `{"code":"print(1)","timeout":-1}`} {
		st, _, body := rawDo(t, e, "POST", "/api/v1/execute", bad, "key-a")
		var ae apiError
		json.Unmarshal(body, &ae)
		if st != 400 || ae.Code != codegw.EINVALID {
			t.Errorf("invalid execution %s of key a at its limit: %d %s; want 400 %q", bad, st, body, codegw.EINVALID)
		}
	}
	var res codegw.ExecuteResult
	if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print(2)"}, &res, asB...); st != 200 || res.Status != codegw.StatusOK {
		t.Errorf("key b while key a is at its limit: %d %+v", st, res)
	}
	if st := <-slow; st != 200 {
		t.Errorf("the slow execution: %d", st)
	}

	time.Sleep(2 * time.Second) // the bucket refills
	refused := 0
	for range 12 {
		st, hdr, body := rawDo(t, e, "GET", "/api/v1/sessions", "", "key-a")
		if st == 429 {
			refused++
			check429("flood of key a", st, hdr, body)
		}
	}
	if refused < 6 {
		t.Errorf("%d of 12 quick requests refused; want at least 6 past a burst of 4", refused)
	}
	if st := e.do("GET", "/api/v1/sessions", nil, nil, asB...); st != 200 {
		t.Errorf("key b during key a's flood: %d", st)
	}
	_, fams := scrape(t, e, "")
	for _, limit := range []string{"rate", "concurrency"} {
		if v, _ := sample(fams, "codegw_limit_refusals_total", map[string]string{"limit": limit}); v < 1 {
			t.Errorf("codegw_limit_refusals_total{limit=%q} = %v; want at least 1", limit, v)
		}
	}
}

// rawDo sends a request with key and returns the status, headers and body.
func rawDo(t *testing.T, e *env, method, path, body, key string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header, b.Bytes()
}

// checkRefusal checks a 429 with the limit code and the Retry-After want
// ("" for any).
func checkRefusal(t *testing.T, what string, st int, hdr http.Header, body []byte, retry string) {
	t.Helper()
	var ae apiError
	json.Unmarshal(body, &ae)
	if st != 429 || ae.Code != codegw.ELIMIT || hdr.Get("Retry-After") == "" || retry != "" && hdr.Get("Retry-After") != retry {
		t.Errorf("%s: status %d, code %q, Retry-After %q (%s); want 429, %q and Retry-After %q", what, st, ae.Code, hdr.Get("Retry-After"), ae.Error, codegw.ELIMIT, retry)
	}
}

// TestKernelMemoryQuota checks MAX_KERNEL_MEMORY_PER_KEY on forked kernels
// limited to KERNEL_MEMORY: each session and each stateless execution
// reserves one kernel's limit; past the key's total both are refused with
// 429 (REST and NDJSON alike), another key is served, and the reservation
// ends with the session (deleted, expired) but not with a restart or the
// kernel's death. A memory bomb in a reserved kernel ends as "oom".
func TestKernelMemoryQuota(t *testing.T) {
	prov, err := local.New(local.Config{StateDir: shortDir(t, "cgwm"), Memory: 256 << 20})
	if err != nil {
		t.Fatalf("local provisioner: %v", err)
	}
	t.Cleanup(func() { prov.Close() }) // after the app's Close, registered later
	tune := func(c *app.Config) { c.MemoryBytes, c.MaxKernelMemoryPerKey = 256<<20, 512<<20 }
	if prov.LimitMode() == "none" {
		cfg := app.DefaultConfig()
		cfg.Provisioner, cfg.ImageStorePath, cfg.FileStorePath, cfg.SnapshotDir = prov, t.TempDir(), t.TempDir(), t.TempDir()
		tune(&cfg)
		if a, err := app.Open(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "MAX_KERNEL_MEMORY_PER_KEY") {
			if a != nil {
				a.Close()
			}
			t.Fatalf("Open with spawned kernels (no memory limit) and MAX_KERNEL_MEMORY_PER_KEY: %v; want a refusal", err)
		}
		t.Skip("spawned kernels have no memory limit (not root): the setting is refused, as checked")
	}
	e := newEnv(t, envOptions{keys: []string{"key-a", "key-b"}, prov: prov, poolSize: 2, tune: tune})
	asB := []string{"Authorization", "Bearer key-b"}
	s1 := e.createSession(t, nil)
	s2 := e.createSession(t, nil)
	if u := e.mgr.Usage(ownerOf("key-a")); u.Kernels != 2 || u.KernelMemory != 512<<20 {
		t.Errorf("usage with two sessions: %+v", u)
	}

	st, hdr, body := rawDo(t, e, "POST", "/api/v1/execute", `{"code":"print(1)"}`, "key-a")
	checkRefusal(t, "stateless execution past the total", st, hdr, body, "30")
	st, hdr, body = rawDo(t, e, "POST", "/api/v1/execute?stream=1", `{"code":"print(1)"}`, "key-a")
	checkRefusal(t, "NDJSON execution past the total", st, hdr, body, "30")
	st, hdr, body = rawDo(t, e, "POST", "/api/v1/sessions", `{}`, "key-a")
	checkRefusal(t, "third session", st, hdr, body, "")
	var res codegw.ExecuteResult
	if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print(2)"}, &res, asB...); st != 200 || res.Status != codegw.StatusOK {
		t.Errorf("key b while key a is at its total: %d %+v", st, res)
	}
	if r := e.sexec(t, s1.ID, map[string]any{"code": "print(3)"}); r.Status != codegw.StatusOK {
		t.Errorf("a session of the full key still runs: %+v", r)
	}

	t.Run("restart keeps it", func(t *testing.T) {
		if st := e.do("POST", "/api/v1/sessions/"+s2.ID+"/restart", map[string]any{}, nil); st != 200 {
			t.Fatalf("restart: %d", st)
		}
		st, hdr, body := rawDo(t, e, "POST", "/api/v1/sessions", `{}`, "key-a")
		checkRefusal(t, "session after a restart", st, hdr, body, "")
	})
	t.Run("delete frees it", func(t *testing.T) {
		if st := e.do("DELETE", "/api/v1/sessions/"+s1.ID, nil, nil); st != 204 {
			t.Fatalf("delete: %d", st)
		}
		r := e.exec(map[string]any{"code": "x = []\nwhile True: x.append(b'x' * (16 << 20))"})
		if r.Status != codegw.StatusOOM {
			t.Errorf("memory bomb past KERNEL_MEMORY: status %q (%v); want oom", r.Status, r.Error)
		}
	})
	t.Run("a running stateless execution holds it", func(t *testing.T) {
		done := make(chan int, 1)
		go func() {
			var r codegw.ExecuteResult
			st, _ := e.post("/api/v1/execute", map[string]any{"code": "import time; time.sleep(3)"}, &r)
			done <- st
		}()
		testwait.Until(t, 30*time.Second, "the slow stateless execution to run", func() bool { return e.mgr.Stats().Stateless > 0 })
		st, hdr, body := rawDo(t, e, "POST", "/api/v1/sessions", `{}`, "key-a")
		checkRefusal(t, "session while a stateless execution holds the rest", st, hdr, body, "1")
		if st := <-done; st != 200 {
			t.Errorf("the stateless execution: %d", st)
		}
		s3 := e.createSession(t, nil)
		e.do("DELETE", "/api/v1/sessions/"+s3.ID, nil, nil)
	})
	t.Run("expiry frees it", func(t *testing.T) {
		s4 := e.createSession(t, map[string]any{"idle_timeout": 1})
		testwait.Until(t, 20*time.Second, "the idle session to expire", func() bool { return e.do("GET", "/api/v1/sessions/"+s4.ID, nil, nil) == 404 })
		s5 := e.createSession(t, nil)
		e.do("DELETE", "/api/v1/sessions/"+s5.ID, nil, nil)
	})
	t.Run("a dead kernel holds it until the session ends", func(t *testing.T) {
		if r := e.sexec(t, s2.ID, map[string]any{"code": "import os; os._exit(1)"}); r.Status != codegw.StatusDied {
			t.Errorf("exit: %+v", r)
		}
		s6 := e.createSession(t, nil)
		st, hdr, body := rawDo(t, e, "POST", "/api/v1/sessions", `{}`, "key-a")
		checkRefusal(t, "session while a dead kernel's session is open", st, hdr, body, "")
		for _, id := range []string{s2.ID, s6.ID} {
			if st := e.do("DELETE", "/api/v1/sessions/"+id, nil, nil); st != 204 {
				t.Errorf("delete %s: %d", id, st)
			}
		}
	})
	if u := e.mgr.Usage(ownerOf("key-a")); u != (session.KeyUsage{}) {
		t.Errorf("key a holds %+v after every session ended; want nothing", u)
	}
	_, fams := scrape(t, e, "")
	if v, _ := sample(fams, "codegw_limit_refusals_total", map[string]string{"limit": "memory"}); v < 5 {
		t.Errorf("codegw_limit_refusals_total{limit=memory} = %v; want at least 5", v)
	}
}

// TestWebsocketQuotasAndDrain checks that executions over the session
// websocket and the Jupyter websocket count against MAX_EXECUTIONS_PER_KEY
// with REST ones, and are refused while the instance drains, each with an
// answer in its protocol on a connection that stays usable.
func TestWebsocketQuotasAndDrain(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"wk"}, poolSize: 2, tune: func(c *app.Config) { c.MaxExecutionsPerKey = 1 }})
	sess := e.createSession(t, nil)
	w := e.mustDial(t, sess.ID, "")
	var k map[string]any
	if st := e.do("POST", "/api/kernels", map[string]any{}, &k); st != 201 {
		t.Fatalf("start a Jupyter kernel: %d", st)
	}
	j, _, err := e.jupyterDial(t, k["id"].(string), "?token=wk", nil)
	if err != nil {
		t.Fatal(err)
	}
	refusal := func(want, code string) map[string]any {
		t.Helper()
		select {
		case m := <-w.raw:
			if m["id"] != want || m["code"] != code {
				t.Errorf("error frame %v; want id %q, code %q", m, want, code)
			}
			return m
		case <-time.After(30 * time.Second):
			t.Fatalf("no error frame for %q", want)
		}
		return nil
	}
	jupyterRefusal := func(id, ename string) {
		t.Helper()
		var reply, idle bool
		j.until(func(m jmsg) bool {
			if m.parent() == id && m.MsgType == "execute_reply" {
				reply = true
				if m.Content["status"] != "error" || m.Content["ename"] != ename || fmt.Sprint(m.Content["evalue"]) == "" {
					t.Errorf("refused execute_reply %v; want status error, ename %s", m.Content, ename)
				}
			}
			idle = idle || idleOf(id)(m)
			return reply && idle
		})
	}
	execRequest := func(code string) string {
		return j.send("shell", "execute_request", map[string]any{"code": code, "silent": false, "store_history": true,
			"user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true}, nil)
	}

	t.Run("quota", func(t *testing.T) {
		w.send(map[string]any{"type": "execute", "id": "slow", "code": "import time; time.sleep(2); print('slow')"})
		w.send(map[string]any{"type": "execute", "id": "fast", "code": "print(1)"})
		if m := refusal("fast", codegw.ELIMIT); m != nil && (m["limit"] != "concurrency" || m["retry_after"] != float64(1)) {
			t.Errorf("refusal frame %v; want limit concurrency, retry_after 1", m)
		}
		st, hdr, body := rawDo(t, e, "POST", "/api/v1/sessions/"+sess.ID+"/execute", `{"code":"print(2)"}`, "wk")
		checkRefusal(t, "REST execution while the websocket's runs", st, hdr, body, "1")
		jupyterRefusal(execRequest("1+1"), "LimitError")
		evs := w.until(doneFor("slow"), 60*time.Second)
		if last := evs[len(evs)-1]; last.Status != codegw.StatusOK {
			t.Errorf("slow: %+v", last)
		}
		w.send(map[string]any{"type": "execute", "id": "after", "code": "print(3)"})
		if evs := w.until(doneFor("after"), 60*time.Second); evs[len(evs)-1].Status != codegw.StatusOK {
			t.Errorf("the websocket after a refusal: %s", eventTypes(evs))
		}
		// A Jupyter execution holds the key's slot until its reply.
		slowJ := execRequest("import time; time.sleep(2); 6*7")
		testwait.Until(t, 30*time.Second, "the execution to start", func() bool { return e.mgr.Stats().Executions > 0 })
		w.send(map[string]any{"type": "execute", "id": "while-jupyter", "code": "print(4)"})
		refusal("while-jupyter", codegw.ELIMIT)
		msgs := j.until(func(m jmsg) bool { return idleOf(slowJ)(m) })
		if r := resultText(msgs); r != "42" {
			t.Errorf("the Jupyter execution: %q", r)
		}
		if r := j.execute("1+1"); resultText(r) != "2" {
			t.Errorf("Jupyter execution after the slot came back: %v", r)
		}
	})
	t.Run("drain", func(t *testing.T) {
		w.send(map[string]any{"type": "execute", "id": "long", "code": "import time; time.sleep(2); print('long')"})
		testwait.Until(t, 30*time.Second, "the execution to start", func() bool { return e.mgr.Stats().Executions > 0 })
		drained := make(chan bool, 1)
		go func() { drained <- e.app.Drain(60 * time.Second) }()
		testwait.Until(t, 10*time.Second, "/readyz to fail while draining", func() bool { st, _, _ := e.get("/readyz"); return st == 503 })
		w.send(map[string]any{"type": "execute", "id": "late", "code": "print(5)"})
		refusal("late", codegw.EUNAVAILABLE)
		jupyterRefusal(execRequest("1+1"), "Unavailable")
		evs := w.until(doneFor("long"), 60*time.Second)
		if last := evs[len(evs)-1]; last.Status != codegw.StatusOK {
			t.Errorf("the execution running at the drain: %+v", last)
		}
		select {
		case ok := <-drained:
			if !ok {
				t.Error("Drain reported a timeout")
			}
		case <-time.After(30 * time.Second):
			t.Error("Drain did not return after the last execution")
		}
		if u := e.mgr.Usage(ownerOf("wk")); u.Executions != 0 {
			t.Errorf("executions held after the drain: %+v", u)
		}
	})
}

// bearer adds an API key to every request of an HTTP client.
type bearer struct{ key string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

// TestMCPQuotaAndDrain checks that MCP tool calls count against
// MAX_EXECUTIONS_PER_KEY with REST ones, fresh (stateless) and in the MCP
// session's kernel alike, and are refused while the instance drains: the
// refusal is an error result the model can read, and the MCP session
// stays usable.
func TestMCPQuotaAndDrain(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"mk"}, poolSize: 2, tune: func(c *app.Config) { c.MaxExecutionsPerKey = 1 }})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "ops-test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: e.base + "/mcp",
		HTTPClient: &http.Client{Transport: bearer{"mk"}}, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatalf("MCP connect: %v", err)
	}
	defer cs.Close()
	call := func(code string, fresh bool) (string, bool) {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "execute_python", Arguments: map[string]any{"code": code, "fresh": fresh}})
		if err != nil {
			t.Fatalf("execute_python: %v", err)
		}
		var text strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				text.WriteString(tc.Text)
			}
		}
		return text.String(), res.IsError
	}
	if text, isErr := call("print(6*7)", false); isErr || !strings.Contains(text, "42") {
		t.Fatalf("first call: %q (error %v)", text, isErr)
	}
	slow := make(chan int, 1)
	go func() {
		st, _ := e.post("/api/v1/execute", map[string]any{"code": "import time; time.sleep(3)"}, &codegw.ExecuteResult{})
		slow <- st
	}()
	testwait.Until(t, 30*time.Second, "the REST execution to start", func() bool { return e.mgr.Stats().Executions > 0 })
	for _, fresh := range []bool{false, true} {
		if text, isErr := call("print(1)", fresh); !isErr || !strings.Contains(text, "at most 1 executions at once per key") {
			t.Errorf("MCP call (fresh %v) while the key's REST execution runs: %q (error %v); want the quota's refusal", fresh, text, isErr)
		}
	}
	if st := <-slow; st != 200 {
		t.Errorf("the REST execution: %d", st)
	}
	if text, isErr := call("print(7*6)", false); isErr || !strings.Contains(text, "42") {
		t.Errorf("MCP call after the slot came back: %q (error %v)", text, isErr)
	}
	if !e.app.Drain(30 * time.Second) {
		t.Error("Drain timed out with nothing running")
	}
	if text, isErr := call("print(1)", false); !isErr || !strings.Contains(text, "shutting down") {
		t.Errorf("MCP call while draining: %q (error %v); want the drain's refusal", text, isErr)
	}
}

// TestLeave checks that after Leave (SIGUSR1, a pod's preStop) every answer
// closes its connection while executions are served as before, and that a
// websocket upgrade still succeeds.
func TestLeave(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"lk"}, poolSize: 1})
	get := func() *http.Response {
		t.Helper()
		resp, err := http.Get(e.base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if r := get(); r.Close || r.Header.Get("Connection") == "close" {
		t.Fatalf("before Leave: Connection %q", r.Header.Get("Connection"))
	}
	e.app.Leave()
	if r := get(); !r.Close {
		t.Errorf("after Leave: Connection %q, want close", r.Header.Get("Connection"))
	}
	var res map[string]any
	if st := e.do("POST", "/api/v1/execute", map[string]any{"code": "print(6*7)"}, &res); st != 200 || res["stdout"] != "42\n" {
		t.Errorf("execute after Leave: %d %v", st, res)
	}
	sess := e.createSession(t, nil)
	e.mustDial(t, sess.ID, "")
}

// TestKeySlotFreeAtDone: with one execution at a time per key, an
// execution's slot is free by the time its done event goes out (and so
// before its answer): the key's next execution, sent the moment the client
// sees the end, is admitted and not refused "concurrency". Both kinds: a
// session's and a stateless one.
func TestKeySlotFreeAtDone(t *testing.T) {
	e := newEnv(t, envOptions{poolSize: 1, tune: func(c *app.Config) { c.MaxExecutionsPerKey = 1 }})
	m := e.app.Manager
	const owner = "anonymous"
	admittedAtDone := func(t *testing.T) func(codegw.Event) {
		return func(ev codegw.Event) {
			if ev.Type != codegw.EventDone {
				return
			}
			r, err := m.Reserve(owner, codegw.ExecuteRequest{Code: "1"})
			if err != nil {
				t.Errorf("the next execution, sent at the done event: %v", err)
				return
			}
			r.Release()
		}
	}
	t.Run("session", func(t *testing.T) {
		info := e.createSession(t, nil)
		s, err := m.Get(info.ID, owner)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Execute(context.Background(), codegw.ExecuteRequest{Code: "print(6 * 7)"}, admittedAtDone(t))
		if err != nil || res.Stdout != "42\n" {
			t.Fatalf("%v %+v", err, res)
		}
	})
	t.Run("stateless", func(t *testing.T) {
		r, err := m.Reserve(owner, codegw.ExecuteRequest{Code: "print(6 * 7)"})
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.Execute(context.Background(), admittedAtDone(t))
		if err != nil || res.Stdout != "42\n" {
			t.Fatalf("%v %+v", err, res)
		}
	})
}
