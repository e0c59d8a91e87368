package gateway_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
)

// syncBuffer is a log sink the server writes from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines parses the JSON log lines written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
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
	var sess codegw.Session
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
		logs.mu.Lock()
		leaked := strings.Contains(logs.b.String(), "secret-key-1")
		logs.mu.Unlock()
		if leaked {
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
	deadline := time.Now().Add(30 * time.Second)
	for e.mgr.Stats().Stateless == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
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
