package deploy

// The chart on a real cluster (scripts/k8s-up.sh): installed with helm,
// driven through the Service's ClusterIP from the host. Runs when
// CODEGW_K8S_E2E=1, with KUBECONFIG and K8S_BIN from k8s-up.sh;
// scripts/test.sh runs it (step "Kubernetes").

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const (
	e2eNS  = "codegw-e2e"
	e2eKey = "e2e-key"
)

type cluster struct {
	t    *testing.T
	bin  string
	base string // http://<cluster IP>:14564
}

func needCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv("CODEGW_K8S_E2E") != "1" {
		if os.Getenv("CI") == "true" && os.Getenv("CODEGW_K8S_E2E") != "" {
			t.Fatalf("CODEGW_K8S_E2E=%q: 1 runs it", os.Getenv("CODEGW_K8S_E2E"))
		}
		t.Skip("CODEGW_K8S_E2E=1 runs it on the cluster of scripts/k8s-up.sh")
	}
	bin := os.Getenv("K8S_BIN")
	if bin == "" || os.Getenv("KUBECONFIG") == "" {
		t.Fatal("K8S_BIN and KUBECONFIG must be set (eval \"$(scripts/k8s-up.sh)\")")
	}
	return &cluster{t: t, bin: bin}
}

// with returns a copy of c reporting to t.
func (c *cluster) with(t *testing.T) *cluster {
	d := *c
	d.t = t
	return &d
}

// run runs helm or kubectl and returns its output.
func (c *cluster) run(name string, args ...string) string {
	c.t.Helper()
	out, err := c.try(name, args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) try(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (c *cluster) kubectl(args ...string) string {
	c.t.Helper()
	return c.run("kubectl", append([]string{"-n", e2eNS}, args...)...)
}

func (c *cluster) helm(args ...string) string {
	c.t.Helper()
	return c.run("helm", append([]string{"-n", e2eNS}, args...)...)
}

// helmValues are the e2e's values: images imported by k8s-up.sh, small
// kernels, a short drain and preStop.
var helmValues = []string{
	"--set", "apiKeys={" + e2eKey + "}", "--set", "image.pullPolicy=Never",
	"--set", "kernels.poolSize=2", "--set", "kernels.preload=",
	"--set", "gateway.drainTimeout=10", "--set", "gateway.preStopSeconds=3",
	"--set", "zygote.resources.requests.memory=128Mi", "--set", "zygote.resources.requests.cpu=50m",
	"--set", "zygote.resources.limits.memory=2Gi", "--set", "kernels.memory=1Gi", "--set", "settings.MAX_SESSIONS_PER_KEY=60",
	"--set", "settings.INSTANCE_TTL=9",
}

type pod struct {
	name, ip string
	ready    bool
	deleting bool
	started  time.Time // the pod's start (scheduled to the node)
	readyAt  time.Time // its Ready condition's last transition
}

// gatewayPods lists the gateway pods.
func (c *cluster) gatewayPods() []pod {
	c.t.Helper()
	out := c.kubectl("get", "pods", "-l", "app.kubernetes.io/component=gateway", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.metadata.deletionTimestamp} {.status.startTime} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}{"\n"}{end}`)
	var pods []pod
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(l, " ")
		if len(f) != 6 || f[0] == "" {
			continue
		}
		p := pod{name: f[0], ip: f[1], deleting: f[2] != "", ready: f[4] == "True"}
		p.started, _ = time.Parse(time.RFC3339, f[3])
		p.readyAt, _ = time.Parse(time.RFC3339, f[5])
		pods = append(pods, p)
	}
	return pods
}

// readyPods returns the names of the gateway pods that are Ready and not
// being deleted.
func (c *cluster) readyPods() []string {
	c.t.Helper()
	var names []string
	for _, p := range c.gatewayPods() {
		if p.ready && !p.deleting {
			names = append(names, p.name)
		}
	}
	slices.Sort(names)
	return names
}

// waitPods waits until the Ready gateway pods are exactly n, none of them
// in not, and every gateway pod is Ready (none terminating).
func (c *cluster) waitPods(n int, not []string, within time.Duration) []string {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		all := c.gatewayPods()
		ready := c.readyPods()
		if len(ready) == n && len(all) == n && !slices.ContainsFunc(ready, func(p string) bool { return slices.Contains(not, p) }) {
			return ready
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d gateway pods (not %v) not ready within %v: %s", n, not, within, c.kubectl("get", "pods", "-o", "wide"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// registered lists the instances in the Redis registry (redis-cli in the
// chart's Redis pod).
func (c *cluster) registered() []string {
	c.t.Helper()
	out := c.kubectl("exec", "codegw-redis-0", "--", "redis-cli", "--scan", "--pattern", "codegw:instance:*")
	var ids []string
	for _, k := range strings.Fields(out) {
		ids = append(ids, strings.TrimPrefix(k, "codegw:instance:"))
	}
	slices.Sort(ids)
	return ids
}

// eventually retries check every 500ms until it returns "" or d passes.
func (c *cluster) eventually(d time.Duration, what string, check func() string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %v: %s", what, d, msg)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 120 * time.Second}

type answer struct {
	status int
	body   []byte
}

func (a answer) String() string { return fmt.Sprintf("%d %.300s", a.status, a.body) }

func (a answer) code() string {
	var e struct{ Code string }
	json.Unmarshal(a.body, &e)
	return e.Code
}

// do sends a request with the API key; goroutine-safe.
func (c *cluster) do(method, path string, body any) (answer, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Authorization", "Bearer "+e2eKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, data}, err
}

func (c *cluster) must(method, path string, body any, want int) answer {
	c.t.Helper()
	a, err := c.do(method, path, body)
	if err != nil || a.status != want {
		c.t.Fatalf("%s %s: %v %v, want %d", method, path, a, err, want)
	}
	return a
}

type execResult struct {
	Status string   `json:"status"`
	Stdout string   `json:"stdout"`
	Images []string `json:"images"`
	Files  []struct {
		Name string `json:"original_name"`
		URL  string `json:"url"`
	} `json:"files"`
	Error any `json:"error"`
}

// execute runs code (stateless at /api/v1/execute, or a session's); ok
// tells whether it answered 200 with status ok.
func (c *cluster) execute(path, code string) (execResult, answer, error) {
	var r execResult
	a, err := c.do("POST", path, map[string]any{"code": code})
	if err == nil && a.status == 200 {
		err = json.Unmarshal(a.body, &r)
	}
	return r, a, err
}

func (c *cluster) mustExecute(path, code string) execResult {
	c.t.Helper()
	r, a, err := c.execute(path, code)
	if err != nil || a.status != 200 || r.Status != "ok" {
		c.t.Fatalf("%s %q: %v %v", path, code, a, err)
	}
	return r
}

type session struct {
	ID       string `json:"id"`
	Instance string `json:"instance"`
}

func (c *cluster) create() session {
	c.t.Helper()
	var s session
	if err := json.Unmarshal(c.must("POST", "/api/v1/sessions", map[string]any{}, 201).body, &s); err != nil || s.ID == "" {
		c.t.Fatalf("create session: %v %+v", err, s)
	}
	return s
}

// wsExecute runs code in a session over its websocket (through the
// Service: any pod, forwarded to the session's) and returns the stdout.
func (c *cluster) wsExecute(id, code string) (string, error) {
	u := strings.Replace(c.base, "http://", "ws://", 1) + "/api/v1/sessions/" + id + "/ws"
	conn, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + e2eKey}})
	if err != nil {
		if resp != nil {
			return "", fmt.Errorf("dial: %v (status %d)", err, resp.StatusCode)
		}
		return "", fmt.Errorf("dial: %v", err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	if err := conn.WriteJSON(map[string]any{"type": "execute", "id": "w1", "code": code}); err != nil {
		return "", err
	}
	var out strings.Builder
	for {
		var ev map[string]any
		if err := conn.ReadJSON(&ev); err != nil {
			return out.String(), fmt.Errorf("read: %v", err)
		}
		switch ev["type"] {
		case "stream":
			text, _ := ev["text"].(string)
			out.WriteString(text)
		case "done":
			if ev["status"] != "ok" {
				return out.String(), fmt.Errorf("done: %v", ev)
			}
			return out.String(), nil
		}
	}
}

// jupyterRun runs code on a Jupyter kernel's channels websocket and
// returns its execute_result's text/plain.
func jupyterRun(t *testing.T, conn *websocket.Conn, code, msgID string) string {
	t.Helper()
	conn.WriteJSON(map[string]any{
		"header":        map[string]any{"msg_id": msgID, "msg_type": "execute_request", "session": "e2e", "username": "t", "date": "", "version": "5.3"},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "channel": "shell",
		"content": map[string]any{"code": code, "silent": false, "store_history": true, "user_expressions": map[string]any{}, "allow_stdin": false},
	})
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	result := ""
	for {
		var m struct {
			MsgType      string         `json:"msg_type"`
			ParentHeader map[string]any `json:"parent_header"`
			Content      map[string]any `json:"content"`
		}
		if err := conn.ReadJSON(&m); err != nil {
			t.Fatalf("jupyter channels: %v", err)
		}
		if m.ParentHeader["msg_id"] != msgID {
			continue
		}
		if m.MsgType == "execute_result" {
			if d, ok := m.Content["data"].(map[string]any); ok {
				result, _ = d["text/plain"].(string)
			}
		}
		if m.MsgType == "status" && m.Content["execution_state"] == "idle" {
			return result
		}
	}
}

// load runs workers that each send stateless executions one after the
// other until stop is closed, counting answers 200/ok and the others
// (logged, at most 10).
type load struct {
	ok, bad atomic.Int64
	other   atomic.Int64 // failures other than a drain's 503 unavailable
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []string
}

func (c *cluster) startLoad(workers int) *load {
	l := &load{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				r, a, err := c.execute("/api/v1/execute", "print(6*7)")
				if err == nil && a.status == 200 && r.Status == "ok" && r.Stdout == "42\n" {
					l.ok.Add(1)
					continue
				}
				l.bad.Add(1)
				if err != nil || a.status != 503 || a.code() != "unavailable" {
					l.other.Add(1)
				}
				l.mu.Lock()
				if len(l.errs) < 10 {
					l.errs = append(l.errs, fmt.Sprintf("%v %v", a, err))
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) end() (ok, bad int64, errs []string) {
	close(l.stop)
	l.wg.Wait()
	return l.ok.Load(), l.bad.Load(), l.errs
}

// throughput runs workers sending stateless executions to base for d and
// returns the answers per second (every answer must be 200/ok).
func throughput(t *testing.T, base string, workers int, d time.Duration) float64 {
	t.Helper()
	c := &cluster{t: t, base: base}
	begin := time.Now()
	l := c.startLoad(workers)
	time.Sleep(d)
	ok, bad, errs := l.end()
	if bad > 0 {
		t.Errorf("%s: %d of %d calls failed: %v", base, bad, ok+bad, errs)
	}
	return float64(ok) / time.Since(begin).Seconds()
}

func TestK8s(t *testing.T) {
	c := needCluster(t)
	c.try("kubectl", "delete", "namespace", e2eNS, "--wait=true", "--timeout=120s")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.try("kubectl", "-n", e2eNS, "get", "pods", "-o", "wide")
			t.Logf("pods:\n%s", out)
			out, _ = c.try("kubectl", "-n", e2eNS, "get", "events", "--sort-by=.lastTimestamp")
			t.Logf("events:\n%s", out)
			for _, p := range c.gatewayPods() {
				out, _ := c.try("kubectl", "-n", e2eNS, "logs", p.name, "--all-containers", "--tail", "30")
				t.Logf("%s:\n%s", p.name, out)
			}
		}
		c.try("helm", "-n", e2eNS, "uninstall", "codegw", "--wait", "--timeout", "3m")
		c.try("kubectl", "delete", "namespace", e2eNS, "--wait=true", "--timeout=120s")
	})

	begin := time.Now()
	c.helm(append([]string{"install", "codegw", chartDir, "--create-namespace", "--timeout", "5m",
		"--set", "replicaCount=1"}, helmValues...)...)
	ip := strings.TrimSpace(c.kubectl("get", "service", "codegw", "-o", "jsonpath={.spec.clusterIP}"))
	if !strings.HasPrefix(ip, "198.19.") {
		t.Fatalf("service IP %q is not in the service range 198.19.0.0/16", ip)
	}
	c.base = "http://" + ip + ":14564"
	c.eventually(5*time.Minute, "the first answer through the ClusterIP", func() string {
		r, a, err := c.execute("/api/v1/execute", "print(1+1)")
		if err != nil || r.Stdout != "2\n" {
			return fmt.Sprintf("%v %v", a, err)
		}
		return ""
	})
	t.Logf("figure: helm install -> first answer through the ClusterIP: %v", time.Since(begin).Round(100*time.Millisecond))
	pods := c.waitPods(1, nil, 3*time.Minute)

	t.Run("one pod", func(t *testing.T) {
		c := c.with(t)
		r := c.mustExecute("/api/v1/execute", "open('/code/output/r.txt','w').write('k8s')\nprint(6*7)")
		if r.Stdout != "42\n" || len(r.Files) != 1 || r.Files[0].Name != "r.txt" {
			t.Fatalf("execute with an output file: %+v", r)
		}
		if f := c.must("GET", r.Files[0].URL, nil, 200); string(f.body) != "k8s" {
			t.Errorf("output file %s: %q", r.Files[0].URL, f.body)
		}
		r = c.mustExecute("/api/v1/execute", "import matplotlib.pyplot as plt\nplt.plot([1,2,3])\nplt.show()")
		if len(r.Images) != 1 {
			t.Fatalf("no image: %+v", r)
		}
		if img := c.must("GET", r.Images[0], nil, 200); !bytes.HasPrefix(img.body, []byte("\x89PNG")) {
			t.Errorf("image %s: %.20q", r.Images[0], img.body)
		}

		// A session over REST, then over its websocket: the state is kept.
		s := c.create()
		if s.Instance != pods[0] {
			t.Errorf("session held by %q, want the pod %s", s.Instance, pods[0])
		}
		c.mustExecute("/api/v1/sessions/"+s.ID+"/execute", "x = 41")
		if r := c.mustExecute("/api/v1/sessions/"+s.ID+"/execute", "x += 1\nprint(x)"); r.Stdout != "42\n" {
			t.Errorf("session state over REST: %+v", r)
		}
		if out, err := c.wsExecute(s.ID, "x += 1\nprint(x)"); err != nil || out != "43\n" {
			t.Errorf("session over its websocket: %q %v", out, err)
		}
		c.must("DELETE", "/api/v1/sessions/"+s.ID, nil, 204)

		// A Jupyter-API kernel: REST and the channels websocket.
		var k struct{ ID string }
		if err := json.Unmarshal(c.must("POST", "/api/kernels", map[string]any{"name": "python3"}, 201).body, &k); err != nil || k.ID == "" {
			t.Fatalf("jupyter kernel: %v %+v", err, k)
		}
		u := strings.Replace(c.base, "http://", "ws://", 1) + "/api/kernels/" + k.ID + "/channels?token=" + e2eKey
		conn, _, err := websocket.DefaultDialer.Dial(u, nil)
		if err != nil {
			t.Fatalf("jupyter channels: %v", err)
		}
		if got := jupyterRun(t, conn, "y = 6\ny * 7", "j1"); got != "42" {
			t.Errorf("jupyter execute_result: %q", got)
		}
		conn.Close()
		c.must("DELETE", "/api/kernels/"+k.ID, nil, 204)
	})

	t.Run("throughput", func(t *testing.T) {
		// One pod through the ClusterIP beside the same images run by the
		// Docker engine (the gateway binary and the zygote, as the pod
		// runs them), on loopback, in the same run.
		// Two rounds each, alternating, against the machine's drift.
		const workers, d = 4, 6 * time.Second
		outside := outsideK8s(t)
		var inK8s, plain float64
		for range 2 {
			inK8s += throughput(t, c.base, workers, d) / 2
			plain += throughput(t, outside, workers, d) / 2
		}
		t.Logf("figure: stateless throughput, %d clients: one pod %.1f/s, the same images outside Kubernetes %.1f/s, ratio %.2f",
			workers, inK8s, plain, inK8s/plain)
	})

	t.Run("isolation", func(t *testing.T) {
		c := c.with(t)
		podIP := c.gatewayPods()[0].ip
		redisIP := strings.TrimSpace(c.kubectl("get", "service", "codegw-redis", "-o", "jsonpath={.spec.clusterIP}"))
		redisPod := strings.TrimSpace(c.kubectl("get", "pod", "codegw-redis-0", "-o", "jsonpath={.status.podIP}"))
		code := fmt.Sprintf(`import socket
res = []
for host, port in [("127.0.0.1", 14564), (%q, 14564), (%q, 14564), ("198.19.0.1", 443), (%q, 6379), (%q, 6379)]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        res.append("open")
    except OSError as e:
        res.append("closed")
print(",".join(res))`, podIP, ip, redisIP, redisPod)
		if r := c.mustExecute("/api/v1/execute", code); r.Stdout != "closed,closed,closed,closed,closed,closed\n" {
			t.Errorf("a kernel reached the gateway, the Service, the Kubernetes API, Redis or another pod: %q", r.Stdout)
		}
		// A memory bomb and a fork bomb end their own kernel; the pod
		// and a sibling session serve on.
		restarts := func() string {
			return c.kubectl("get", "pod", pods[0], "-o", `jsonpath={range .status.containerStatuses[*]}{.name}={.restartCount} {end}`)
		}
		restartsBefore := restarts()
		sib := c.create()
		c.mustExecute("/api/v1/sessions/"+sib.ID+"/execute", "z = 1")
		var wg sync.WaitGroup
		for _, bomb := range []string{"x = []\nwhile True:\n    x.append(bytearray(64 << 20))",
			"import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.do("POST", "/api/v1/execute", map[string]any{"code": bomb, "timeout": 15})
			}()
		}
		time.Sleep(2 * time.Second)
		if r := c.mustExecute("/api/v1/execute", "print('sibling')"); r.Stdout != "sibling\n" {
			t.Errorf("stateless call during the bombs: %+v", r)
		}
		if r := c.mustExecute("/api/v1/sessions/"+sib.ID+"/execute", "z += 1\nprint(z)"); r.Stdout != "2\n" {
			t.Errorf("sibling session during the bombs: %+v", r)
		}
		wg.Wait()
		c.mustExecute("/api/v1/execute", "print('after')")
		if r := c.mustExecute("/api/v1/sessions/"+sib.ID+"/execute", "z += 1\nprint(z)"); r.Stdout != "3\n" {
			t.Errorf("sibling session after the bombs: %+v", r)
		}
		c.must("DELETE", "/api/v1/sessions/"+sib.ID, nil, 204)
		if got := c.readyPods(); len(got) != 1 || got[0] != pods[0] {
			t.Errorf("pods after the bombs: %v, want %s", got, pods[0])
		}
		if after := restarts(); after != restartsBefore {
			t.Errorf("container restarts during the bombs: %s, before %s", after, restartsBefore)
		}
	})

	var pods3 []string
	var sessions []session
	if !t.Run("scale to 3, 30 sessions", func(t *testing.T) {
		c := c.with(t)
		c.helm(append([]string{"upgrade", "codegw", chartDir, "--timeout", "5m", "--set", "replicaCount=3"}, helmValues...)...)
		pods3 = c.waitPods(3, nil, 3*time.Minute)
		for _, p := range c.gatewayPods() {
			if p.name != pods[0] {
				t.Logf("figure: pod start -> Ready: %s %v", p.name, p.readyAt.Sub(p.started))
			}
		}
		c.eventually(time.Minute, "3 pods registered", func() string {
			if reg := c.registered(); !slices.Equal(reg, pods3) {
				return fmt.Sprintf("registered %v, pods %v", reg, pods3)
			}
			return ""
		})
		// The Service routes to every pod once kube-proxy has their
		// endpoints: sessions created through it land on each.
		seen := map[string]bool{}
		for i := 0; len(seen) < 3; i++ {
			if i == 60 {
				t.Fatalf("60 sessions created through the Service reached only %v", seen)
			}
			client.CloseIdleConnections() // a new connection: kube-proxy picks a pod
			s := c.create()
			seen[s.Instance] = true
			c.must("DELETE", "/api/v1/sessions/"+s.ID, nil, 204)
		}
		client.CloseIdleConnections()
		// 30 sessions through the Service, each used over REST and over
		// its websocket: whichever pod answers, the call reaches the
		// session's kernel.
		sessions = make([]session, 30)
		var wg sync.WaitGroup
		errs := make(chan string, 90)
		for i := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var s session
				a, err := c.do("POST", "/api/v1/sessions", map[string]any{})
				if err != nil || a.status != 201 || json.Unmarshal(a.body, &s) != nil {
					errs <- fmt.Sprintf("create %d: %v %v", i, a, err)
					return
				}
				sessions[i] = s
				if _, a, err := c.execute("/api/v1/sessions/"+s.ID+"/execute", fmt.Sprintf("v = %d", i)); err != nil || a.status != 200 {
					errs <- fmt.Sprintf("session %d: %v %v", i, a, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
		if t.Failed() {
			t.FailNow()
		}
		per := map[string]int{}
		for _, s := range sessions {
			per[s.Instance]++
		}
		t.Logf("30 sessions over the pods: %v", per)
		if len(per) < 3 {
			t.Errorf("30 sessions not spread over the 3 pods: %v", per)
		}
		for p := range per {
			if !slices.Contains(pods3, p) {
				t.Errorf("a session held by %q, not a pod of %v", p, pods3)
			}
		}
		for i, s := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r, a, err := c.execute("/api/v1/sessions/"+s.ID+"/execute", "v += 100\nprint(v)"); err != nil || r.Stdout != fmt.Sprintf("%d\n", i+100) {
					t.Errorf("session %d over REST: %v %+v %v", i, a, r, err)
				}
				if out, err := c.wsExecute(s.ID, "v += 100\nprint(v)"); err != nil || out != fmt.Sprintf("%d\n", i+200) {
					t.Errorf("session %d over its websocket: %q %v", i, out, err)
				}
			}()
		}
		wg.Wait()
	}) {
		return
	}

	if !t.Run("delete a pod under load", func(t *testing.T) {
		c := c.with(t)
		victim := sessions[0].Instance
		var lost, kept []session
		for _, s := range sessions {
			if s.Instance == victim {
				lost = append(lost, s)
			} else {
				kept = append(kept, s)
			}
		}
		l := c.startLoad(3)
		deleted := time.Now()
		c.kubectl("delete", "pod", victim, "--wait=false")
		// The pod drains (DRAIN_TIMEOUT) and its drain ends its sessions:
		// they answer 404 not_found from then on (docs/kubernetes.md); until
		// then they serve, or answer 503 unavailable while it drains.
		// The pod ends its sessions one after the other: each is waited for.
		for _, s := range lost {
			c.eventually(2*time.Minute, "the deleted pod's session "+s.ID+" ended", func() string {
				_, a, err := c.execute("/api/v1/sessions/"+s.ID+"/execute", "print(v)")
				switch {
				case err != nil:
					return err.Error()
				case a.status == 404 && a.code() == "not_found":
					return ""
				case a.status == 200 || a.status == 503:
					return a.String()
				}
				t.Fatalf("the deleted pod's session %s: %v", s.ID, a)
				return ""
			})
		}
		t.Logf("the deleted pod's sessions ended (404) %v after the deletion", time.Since(deleted).Round(100*time.Millisecond))
		// The others keep serving, their state kept.
		for _, s := range kept {
			if r, a, err := c.execute("/api/v1/sessions/"+s.ID+"/execute", "print(v >= 200)"); err != nil || r.Stdout != "True\n" {
				t.Errorf("session %s on %s after the deletion: %v %v", s.ID, s.Instance, a, err)
			}
		}
		// The Deployment replaces the pod; the new one joins.
		now := c.waitPods(3, []string{victim}, 3*time.Minute)
		ok, bad, errs := l.end()
		t.Logf("stateless calls while a pod was deleted: %d served, %d failed %v", ok, bad, errs)
		if ok == 0 {
			t.Error("no stateless call served while a pod was deleted")
		}
		// A call that reached the pod after its drain began is refused
		// with 503 unavailable and Retry-After (a client retries it);
		// nothing else fails.
		if n := l.other.Load(); n > 0 {
			t.Errorf("%d stateless calls failed otherwise than with the drain's 503: %v", n, errs)
		}
		var fresh string
		for _, p := range now {
			if !slices.Contains(pods3, p) {
				fresh = p
			}
		}
		for _, p := range c.gatewayPods() {
			if p.name == fresh {
				t.Logf("figure: replacement pod start -> Ready: %v (deletion -> replacement Ready %v)", p.readyAt.Sub(p.started), p.readyAt.Sub(deleted).Round(time.Second))
			}
		}
		c.eventually(time.Minute, "the replacement registered", func() string {
			if reg := c.registered(); !slices.Equal(reg, now) {
				return fmt.Sprintf("registered %v, pods %v", reg, now)
			}
			return ""
		})
		// New sessions land on the new pod too.
		var onFresh session
		for range 40 {
			client.CloseIdleConnections() // a new connection: kube-proxy picks a pod
			if s := c.create(); s.Instance == fresh {
				onFresh = s
				break
			}
		}
		if onFresh.ID == "" {
			t.Fatalf("40 new sessions, none on the replacement %s", fresh)
		}
		if r := c.mustExecute("/api/v1/sessions/"+onFresh.ID+"/execute", "print('fresh')"); r.Stdout != "fresh\n" {
			t.Errorf("session on the replacement: %+v", r)
		}
		pods3 = now
	}) {
		return
	}

	t.Run("rolling update under load", func(t *testing.T) {
		c := c.with(t)
		before := c.create()
		l := c.startLoad(3)
		c.helm(append([]string{"upgrade", "codegw", chartDir, "--timeout", "8m", "--set", "replicaCount=3",
			"--set", "gateway.logLevel=debug"}, helmValues...)...)
		now := c.waitPods(3, pods3, 5*time.Minute)
		ok, bad, errs := l.end()
		t.Logf("rolling update: %d stateless calls served, %d failed %v", ok, bad, errs)
		if bad > 0 {
			t.Errorf("%d stateless calls failed during the rolling update: %v", bad, errs)
		}
		// The sessions of the replaced pods ended with their drain.
		if _, a, err := c.execute("/api/v1/sessions/"+before.ID+"/execute", "print(1)"); err != nil || a.status != 404 || a.code() != "not_found" {
			t.Errorf("a session of a replaced pod: %v %v", a, err)
		}
		c.eventually(time.Minute, "the new pods registered", func() string {
			if reg := c.registered(); !slices.Equal(reg, now) {
				return fmt.Sprintf("registered %v, pods %v", reg, now)
			}
			return ""
		})
		s := c.create()
		if out, err := c.wsExecute(s.ID, "print('new')"); err != nil || out != "new\n" {
			t.Errorf("a session after the update: %q %v", out, err)
		}
	})
}

// outsideK8s runs the api and executor images with the Docker engine as
// the pod runs them (the zygote with the same capabilities, the gateway
// unprivileged, a shared directory), publishing the gateway on a loopback
// port, and returns its base URL. Without a Docker engine it skips (fails
// under CI=true).
func outsideK8s(t *testing.T) string {
	t.Helper()
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but no Docker engine answers: %v", err)
		}
		t.Skipf("no Docker engine for the outside-Kubernetes figure: %v", err)
	}
	dir, err := os.MkdirTemp("", "cgk8s")
	if err != nil {
		t.Fatal(err)
	}
	os.Chown(dir, 0, 10001)
	os.Chmod(dir, 0o770|os.ModeSetgid)
	name := fmt.Sprintf("codegw-k8s-bench-%d", os.Getpid())
	// The gateway on the host's network (the test engine may have no
	// bridge), on a free loopback port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	t.Cleanup(func() {
		exec.Command("docker", "rm", "-f", name+"-api", name+"-zygote").Run()
		os.RemoveAll(dir)
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("docker", append([]string{"run", "-d"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("docker run: %v\n%s", err, out)
		}
	}
	image := func(env, def string) string {
		if v := os.Getenv(env); v != "" {
			return v
		}
		return def
	}
	run("--name", name+"-zygote", "--user", "0:0", "--group-add", "10001", "--cap-drop", "ALL",
		"--cap-add", "SYS_ADMIN", "--cap-add", "SYS_CHROOT", "--cap-add", "NET_ADMIN", "--cap-add", "SETUID",
		"--cap-add", "SETGID", "--cap-add", "KILL", "--network", "none", "--read-only", "--tmpfs", "/tmp",
		"-v", dir+":/run/codegw", "-e", "EXECUTOR_ZYGOTE_SERVE=1", "-e", "EXECUTOR_ZYGOTE_SOCKET=/run/codegw/zygote.sock",
		"-e", "EXECUTOR_PRELOAD=", image("K8S_EXECUTOR_IMAGE", "codegw/executor:latest"), "python3", "/opt/executor/zygote.py")
	run("--name", name+"-api", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"--read-only", "--tmpfs", "/tmp", "--tmpfs", "/data:uid=10001,gid=10001", "-v", dir+":/run/codegw",
		"--network", "host", "-e", "HOST=127.0.0.1", "-e", "PORT="+strconv.Itoa(port), "-e", "EXECUTOR=zygote", "-e", "ZYGOTE_SOCKET=/run/codegw/zygote.sock",
		"-e", "EXECUTOR_PRELOAD=", "-e", "KERNEL_MEMORY=512M", "-e", "DOCKER_PIDS_LIMIT=256", "-e", "POOL_SIZE=2",
		"-e", "API_KEYS="+e2eKey, "-e", "LOG_FORMAT=json", "-e", "LOG_LEVEL=info",
		image("K8S_API_IMAGE", "codegw/api:latest"))
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	c := &cluster{t: t, base: base}
	c.eventually(2*time.Minute, "the gateway outside Kubernetes answering", func() string {
		r, a, err := c.execute("/api/v1/execute", "print(1)")
		if err != nil || r.Stdout != "1\n" {
			logs, _ := exec.Command("docker", "logs", "--tail", "5", name+"-api").CombinedOutput()
			return fmt.Sprintf("%v %v %s", a, err, logs)
		}
		return ""
	})
	return base
}
