package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/internal/testcheck"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store/redis"
	"github.com/codegw/codegw/store/redis/redistest"
)

// buildBinary builds codegw once for the tests that run it as a process.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "codegw")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
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

func TestRefusesBadStarts(t *testing.T) {
	bin := buildBinary(t)
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"open on a public address", []string{"HOST=0.0.0.0"}, "API_KEYS"},
		{"bad number", []string{"PORT=abc"}, `PORT="abc" is not an integer`},
		{"bad executor", []string{"EXECUTOR=vm"}, "EXECUTOR must be local, docker or zygote"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin)
			cmd.Dir = t.TempDir()
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), tc.want) {
				t.Errorf("exit %v, output %q; want exit 1 mentioning %q", err, out, tc.want)
			}
		})
	}
}

// TestServeAndShutdown runs the binary as a user would (JSON logs, Redis
// registry), serves one execution, and drains on SIGTERM: /readyz fails at
// once, new work is refused, an execution in flight completes, the
// session's websocket is closed with the reason, the instance leaves the
// registry, and no kernel process or file is left.
func TestServeAndShutdown(t *testing.T) {
	bin := buildBinary(t)
	redisURL := redistest.URL(t)
	instance := "drain-" + strconv.Itoa(os.Getpid())
	state, err := os.MkdirTemp("", "cgm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	port := freePort(t)
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	var logs testcheck.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "STATE_DIR="+state, "POOL_SIZE=2",
		"LOG_FORMAT=json", "DRAIN_TIMEOUT=60", "REDIS_URL="+redisURL, "EXECUTOR_INSTANCE_ID="+instance,
		"IMAGE_STORE_PATH="+filepath.Join(cmd.Dir, "img"), "FILE_STORE_PATH="+filepath.Join(cmd.Dir, "files"), "SNAPSHOT_DIR="+filepath.Join(cmd.Dir, "snapshots"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitReady(t, base, 60*time.Second, &logs)
	resp, err := http.Post(base+"/api/v1/execute", "application/json", strings.NewReader(`{"code": "import os\nprint(os.getcwd())"}`))
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]any
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if res["result"] != "/code" || res["status"] != "ok" {
		t.Fatalf("execute: %v", res)
	}
	// /capabilities tells the truth about the kernel, probed in one.
	testwait.For(t, 60*time.Second, "/capabilities to list python and pandas", func() string {
		var caps struct {
			Python   *string  `json:"python_version"`
			Packages []string `json:"packages"`
		}
		resp, err := http.Get(base + "/capabilities")
		if err != nil {
			return err.Error()
		}
		json.NewDecoder(resp.Body).Decode(&caps)
		resp.Body.Close()
		if caps.Python != nil && strings.HasPrefix(*caps.Python, "3.") && hasPrefix(caps.Packages, "pandas==") {
			return ""
		}
		return fmt.Sprintf("%+v", caps)
	})
	// A session holds a kernel of its own at shutdown.
	resp, err = http.Post(base+"/api/v1/sessions", "application/json", nil)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create session: %v %v", err, resp)
	}
	var sess struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/api/v1/sessions/%s/ws", port, sess.ID), nil)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer ws.Close()
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	// An execution in flight when SIGTERM comes.
	type answer struct {
		status int
		res    map[string]any
		err    error
	}
	long := make(chan answer, 1)
	go func() {
		resp, err := http.Post(base+"/api/v1/execute", "application/json", strings.NewReader(`{"code": "import time\ntime.sleep(4)\nprint('finished')"}`))
		if err != nil {
			long <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		var res map[string]any
		json.NewDecoder(resp.Body).Decode(&res)
		long <- answer{status: resp.StatusCode, res: res}
	}()
	testwait.Until(t, 30*time.Second, "the long execution to start", func() bool { return busy(base) })

	cmd.Process.Signal(syscall.SIGTERM)
	signalled := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testwait.For(t, 2*time.Second, "/readyz to answer 503 after SIGTERM", func() string { return readyz(base, 503) })
	t.Logf("/readyz answered 503 %v after SIGTERM", time.Since(signalled).Round(time.Millisecond))
	if resp, err := http.Post(base+"/api/v1/execute", "application/json", strings.NewReader(`{"code": "1"}`)); err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("new execution while draining: %v %v; want 503 with Retry-After", err, resp)
	} else {
		resp.Body.Close()
	}
	a := <-long
	if a.err != nil || a.status != 200 || a.res["status"] != "ok" || !strings.Contains(fmt.Sprint(a.res["stdout"]), "finished") {
		t.Errorf("the execution in flight at SIGTERM: %+v; want it completed", a)
	}
	select {
	case err := <-closed:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "shutting down") {
			t.Errorf("websocket ended with %v; want a going-away close saying the server is shutting down", err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("websocket not closed 60s after SIGTERM")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("still running 60s after SIGTERM\n%s", logs.String())
	}
	// The instance left the registry.
	rs, err := redis.New(context.Background(), redisURL)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if _, err := rs.GetInstance(context.Background(), instance); err == nil {
		t.Errorf("instance %s still registered after shutdown", instance)
	}
	// The logs are JSON, one line per request, with the request id.
	requests := 0
	for _, line := range bytes.Split([]byte(logs.String()), []byte("\n")) {
		var m map[string]any
		if len(line) == 0 {
			continue
		}
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("log line %q is not JSON", line)
			continue
		}
		if m["msg"] == "request" && m["request_id"] != "" && m["route"] != nil {
			requests++
		}
	}
	if requests < 3 {
		t.Errorf("%d request lines; want one per request", requests)
	}
	// No kernel process and no kernel directory is left.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(state)) {
			t.Errorf("process left after shutdown: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	kernels, _ := os.ReadDir(filepath.Join(state, "k"))
	if len(kernels) != 0 {
		t.Errorf("%d kernel directories left after shutdown", len(kernels))
	}
}

// busy reports whether an execution is running (/readyz's stats).
func busy(base string) bool {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var r struct {
		Stats struct {
			Busy int `json:"busy_workers"`
		} `json:"stats"`
	}
	json.NewDecoder(resp.Body).Decode(&r)
	return r.Stats.Busy > 0
}

func hasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func TestParseConfig(t *testing.T) {
	def := app.DefaultConfig()
	cases := []struct {
		name  string
		env   []string
		check func(app.Config) bool
		errs  []string // each must appear in the error; none: no error
	}{
		{"defaults", nil, func(c app.Config) bool {
			return c.Port == 14564 && c.Preload == nil && c.MemoryBytes == 1<<30 && c.ExecutionTimeout == def.ExecutionTimeout
		}, nil},
		{"seconds as a number", []string{"EXECUTION_TIMEOUT=1.5", "QUEUE_TIMEOUT= 30 "}, func(c app.Config) bool {
			return c.ExecutionTimeout == 1500*time.Millisecond && c.QueueTimeout == 30*time.Second
		}, nil},
		{"a Go duration", []string{"SESSION_IDLE_TIMEOUT=2m", "INSTANCE_TTL=500ms"}, func(c app.Config) bool {
			return c.SessionIdle == 2*time.Minute && c.InstanceTTL == 500*time.Millisecond
		}, nil},
		{"sizes with units", []string{"KERNEL_MEMORY=512m"}, func(c app.Config) bool { return c.MemoryBytes == 512<<20 }, nil},
		{"a plain byte count", []string{"KERNEL_MEMORY=1000"}, func(c app.Config) bool { return c.MemoryBytes == 1000 }, nil},
		{"lists drop blanks", []string{"API_KEYS= a, ,b ", "INPUT_ALLOW_CIDRS=10.0.0.0/8"}, func(c app.Config) bool {
			return slices.Equal(c.APIKeys, []string{"a", "b"}) && slices.Equal(c.InputAllowCIDRs, []string{"10.0.0.0/8"})
		}, nil},
		{"empty preload means nothing", []string{"EXECUTOR_PRELOAD="}, func(c app.Config) bool {
			return c.Preload != nil && len(c.Preload) == 0
		}, nil},
		{"empty snapshot dir turns snapshots off", []string{"SNAPSHOT_DIR="}, func(c app.Config) bool {
			return c.SnapshotDir == ""
		}, nil},
		{"empty value keeps the default", []string{"PORT=", "HOST=  "}, func(c app.Config) bool {
			return c.Port == 14564 && c.Host == "127.0.0.1"
		}, nil},
		{"scalars", []string{"PORT=8080", "ALLOW_OPEN=true", "KERNEL_CPUS=0.5", "DOCKER_PIDS_LIMIT=64", "EXECUTOR=docker"}, func(c app.Config) bool {
			return c.Port == 8080 && c.AllowOpen && c.CPUs == 0.5 && c.PidsLimit == 64 && c.Executor == "docker"
		}, nil},
		{"every bad value named at once", []string{"PORT=abc", "KERNEL_MEMORY=lots", "QUEUE_TIMEOUT=soon", "ALLOW_OPEN=maybe", "KERNEL_CPUS=x"}, nil, []string{
			`PORT="abc" is not an integer`, `KERNEL_MEMORY="lots" is not a byte count`, `QUEUE_TIMEOUT="soon" is not a number of seconds or a duration`,
			`ALLOW_OPEN="maybe" is not a boolean`, `KERNEL_CPUS="x" is not a number`,
		}},
		{"every bad setting named at once", []string{"EXECUTOR=vm", "MAX_WORKERS=0", "INSTANCE_TTL=0.1", "LOG_LEVEL=loud"}, nil, []string{
			`EXECUTOR must be local, docker or zygote, not "vm"`, "MAX_WORKERS must be at least 1", "INSTANCE_TTL must be at least 0.3 seconds", "LOG_LEVEL",
		}},
		{"port out of range", []string{"PORT=70000"}, nil, []string{"PORT 70000 out of range"}},
		{"operations", []string{"RATE_LIMIT=2.5", "RATE_BURST=10", "MAX_EXECUTIONS_PER_KEY=3", "DRAIN_TIMEOUT=45", "LOG_FORMAT=json", "METRICS_KEY=m"}, func(c app.Config) bool {
			return c.RateLimit == 2.5 && c.RateBurst == 10 && c.MaxExecutionsPerKey == 3 && c.DrainTimeout == 45*time.Second && c.LogFormat == "json" && c.MetricsKey == "m"
		}, nil},
		{"kernel memory per key", []string{"MAX_KERNEL_MEMORY_PER_KEY=4g", "KERNEL_MEMORY=512m"}, func(c app.Config) bool {
			return c.MaxKernelMemoryPerKey == 4<<30 && c.MemoryBytes == 512<<20
		}, nil},
		{"kernel memory per key without a kernel limit", []string{"MAX_KERNEL_MEMORY_PER_KEY=4g", "KERNEL_MEMORY=0"}, nil, []string{
			"MAX_KERNEL_MEMORY_PER_KEY needs KERNEL_MEMORY",
		}},
		{"kernel memory per key below one kernel", []string{"MAX_KERNEL_MEMORY_PER_KEY=256m", "KERNEL_MEMORY=1g"}, nil, []string{
			"MAX_KERNEL_MEMORY_PER_KEY (268435456 bytes) is less than one kernel's KERNEL_MEMORY",
		}},
		{"Dify and LibreChat", []string{"DIFY_NETWORK=offline", "DIFY_TIMEOUT=30", "LIBRECHAT_STORE_PATH=/srv/lc"}, func(c app.Config) bool {
			return c.DifyNetwork == "offline" && c.DifyTimeout == 30*time.Second && c.LibreChatStorePath == "/srv/lc"
		}, nil},
		{"Dify defaults", nil, func(c app.Config) bool {
			return c.DifyNetwork == "refuse" && c.DifyTimeout == 15*time.Second && c.LibreChatStorePath == "./data/librechat"
		}, nil},
		{"bad Dify settings", []string{"DIFY_NETWORK=sometimes", "DIFY_TIMEOUT=-1"}, nil, []string{
			`DIFY_NETWORK must be refuse, offline or allow, not "sometimes"`, "DIFY_TIMEOUT must not be negative",
		}},
		{"Dify network without a kernel network", []string{"DIFY_NETWORK=allow"}, nil, []string{"DIFY_NETWORK=allow needs kernels with a network"}},
		{"bad operations settings", []string{"LOG_FORMAT=xml", "RATE_LIMIT=-1", "DRAIN_TIMEOUT=-5"}, nil, []string{
			`LOG_FORMAT must be text or json, not "xml"`, "RATE_LIMIT must not be negative", "DRAIN_TIMEOUT must not be negative",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.env)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("parseConfig(%q): %v", tc.env, err)
				}
				if !tc.check(c) {
					t.Errorf("parseConfig(%q) = %+v", tc.env, c)
				}
				return
			}
			if err == nil {
				t.Fatalf("parseConfig(%q) = nil error, want %q", tc.env, tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// TestDrainTimeoutInterrupts: executions still running when DRAIN_TIMEOUT
// passes after SIGTERM are interrupted and answered — a stateless call
// with status interrupted and an error naming the shutdown, a session's
// execution with its done event before the websocket's going-away close —
// and the process exits leaving no kernel process, directory or container.
func TestDrainTimeoutInterrupts(t *testing.T) {
	forEachExecutor(t, drainTimeoutInterrupts)
}

func drainTimeoutInterrupts(t *testing.T, executor string) {
	bin := buildBinary(t)
	state, err := os.MkdirTemp("", "cgd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	instance := fmt.Sprintf("drainto-%s-%d", executor, os.Getpid())
	port := freePort(t)
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	var logs testcheck.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "STATE_DIR="+state, "POOL_SIZE=1",
		"EXECUTOR="+executor, "DRAIN_TIMEOUT=2", "EXECUTOR_INSTANCE_ID="+instance,
		"IMAGE_STORE_PATH="+filepath.Join(cmd.Dir, "img"), "FILE_STORE_PATH="+filepath.Join(cmd.Dir, "files"), "SNAPSHOT_DIR="+filepath.Join(cmd.Dir, "snapshots"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitReady(t, base, 120*time.Second, &logs)
	// A session running a long cell, watched over its websocket.
	resp, err := http.Post(base+"/api/v1/sessions", "application/json", nil)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create session: %v %v", err, resp)
	}
	var sess struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/api/v1/sessions/%s/ws", port, sess.ID), nil)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer ws.Close()
	type wsEnd struct {
		done  map[string]any
		close error
	}
	wsEnded := make(chan wsEnd, 1)
	started := make(chan struct{}, 2)
	go func() {
		var end wsEnd
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				end.close = err
				wsEnded <- end
				return
			}
			var ev map[string]any
			json.Unmarshal(data, &ev)
			if ev["type"] == "status" && ev["state"] == "busy" {
				started <- struct{}{}
			}
			if ev["type"] == "done" {
				end.done = ev
			}
		}
	}()
	ws.WriteJSON(map[string]any{"type": "execute", "id": "long", "code": "import time\ntime.sleep(300)"})
	// A stateless call running a long cell.
	type answer struct {
		status int
		res    map[string]any
		err    error
	}
	long := make(chan answer, 1)
	go func() {
		resp, err := http.Post(base+"/api/v1/execute?stream=1", "application/json", strings.NewReader(`{"code": "import time\nprint('started', flush=True)\ntime.sleep(300)"}`))
		if err != nil {
			long <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		var last map[string]any
		dec := json.NewDecoder(resp.Body)
		for {
			var ev map[string]any
			if err := dec.Decode(&ev); err != nil {
				break
			}
			if ev["type"] == "stream" {
				started <- struct{}{}
			}
			last = ev
		}
		long <- answer{status: resp.StatusCode, res: last}
	}()
	for i := 0; i < 2; i++ {
		select {
		case <-started:
		case <-time.After(120 * time.Second):
			t.Fatalf("the long executions never started\n%s", logs.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var a answer
	select {
	case a = <-long:
	case <-time.After(90 * time.Second):
		t.Fatalf("the stateless call was not answered 90s after SIGTERM\n%s", logs.String())
	}
	if a.err != nil || a.status != 200 || a.res["type"] != "response" || a.res["status"] != "interrupted" ||
		!strings.Contains(fmt.Sprint(a.res["error"]), "shutting down") {
		t.Errorf("the stateless call at the drain's end: %+v; want status interrupted naming the shutdown", a)
	}
	select {
	case end := <-wsEnded:
		if end.done == nil || end.done["status"] != "interrupted" || !strings.Contains(fmt.Sprint(end.done["error"]), "shutting down") {
			t.Errorf("the session's execution ended with %v; want done interrupted naming the shutdown", end.done)
		}
		var ce *websocket.CloseError
		if !errors.As(end.close, &ce) || ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "shutting down") {
			t.Errorf("websocket ended with %v; want a going-away close saying the server is shutting down", end.close)
		}
	case <-time.After(90 * time.Second):
		t.Errorf("websocket not closed 90s after SIGTERM")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("still running 90s after SIGTERM\n%s", logs.String())
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(state)) {
			t.Errorf("process left after shutdown: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	if kernels, _ := os.ReadDir(filepath.Join(state, "k")); len(kernels) != 0 {
		t.Errorf("%d kernel directories left after shutdown", len(kernels))
	}
	if executor == "docker" {
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=codegw.instance="+instance).Output()
		if len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("containers left after shutdown: %s", out)
		}
	}
}

// readyz returns "" when base's /readyz answers want, else what it answered.
func readyz(base string, want int) string {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Sprint("status ", resp.StatusCode)
	}
	return ""
}

// waitReady waits for base's /readyz to answer 200, failing with the
// server's logs.
func waitReady(t *testing.T, base string, within time.Duration, logs fmt.Stringer) {
	t.Helper()
	testwait.For(t, within, "/readyz to answer 200", func() string {
		if msg := readyz(base, 200); msg != "" {
			return msg + "\n" + logs.String()
		}
		return ""
	})
}

// forEachExecutor runs test as a subtest for the local executor and the
// Docker one; without a Docker engine the latter skips (fails under CI).
func forEachExecutor(t *testing.T, test func(t *testing.T, executor string)) {
	for _, executor := range []string{"local", "docker"} {
		t.Run(executor, func(t *testing.T) {
			if executor == "docker" {
				if err := exec.Command("docker", "info").Run(); err != nil {
					if os.Getenv("CI") == "true" {
						t.Fatalf("no Docker engine under CI: %v", err)
					}
					t.Skip("no Docker engine")
				}
			}
			test(t, executor)
		})
	}
}
