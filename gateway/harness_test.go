package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/artifact"
)

// env is one whole gateway on a loopback port with real kernels, built by
// app.Open as cmd/codegw builds it, with test-sized limits.
type env struct {
	t      testing.TB
	base   string
	mgr    *session.Manager
	pool   *kernel.Pool
	images *artifact.Store
	files  *artifact.Store
	keys   []string
	prov   kernel.Provisioner
	app    *app.App
}

type envOptions struct {
	keys       []string
	workers    int
	queue      int
	queueWait  time.Duration
	timeout    time.Duration
	maxOutput  int
	poolSize   int
	retention  time.Duration
	publicBase string
	sessIdle   time.Duration
	maxSess    int
	maxPerKey  int
	prov       kernel.Provisioner
	replay     int
	tune       func(*app.Config) // last word on the configuration
}

// provisionerFor returns the provisioner the suites run on: the local
// sandbox by default, Docker when CODEGW_TEST_EXECUTOR=docker.
var sharedProv kernel.Provisioner

func localProvisioner(t testing.TB) kernel.Provisioner {
	t.Helper()
	if sharedProv != nil {
		return sharedProv
	}
	p, err := local.New(local.Config{StateDir: shortDir(t, "cgwt")})
	if err != nil {
		t.Fatalf("local provisioner: %v", err)
	}
	sharedProv = p
	return p
}

// shortDir makes a directory under /tmp (ipc socket paths must be short)
// that outlives the test binary's temp dirs only until TestMain ends.
func shortDir(t testing.TB, prefix string) string {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	cleanupDirs = append(cleanupDirs, dir)
	return dir
}

var cleanupDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedProv != nil {
		sharedProv.Close()
	}
	for _, d := range cleanupDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	if o.workers == 0 {
		o.workers = 4
	}
	if o.poolSize == 0 {
		o.poolSize = 2
	}
	if o.timeout == 0 {
		o.timeout = 60 * time.Second
	}
	prov := o.prov
	if prov == nil {
		prov = currentProvisioner(t)
	}
	cfg := app.DefaultConfig()
	cfg.Provisioner, cfg.InstanceID, cfg.APIKeys = prov, "test", o.keys
	cfg.PoolSize, cfg.PoolStarts = o.poolSize, 0
	cfg.ImageStorePath, cfg.FileStorePath, cfg.LibreChatStorePath, cfg.SnapshotDir = t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	cfg.PublicBaseURL, cfg.Retention = o.publicBase, o.retention
	cfg.InputMaxFiles, cfg.InputFileMaxBytes, cfg.InputTotalBytes, cfg.InputTimeout = 3, 1<<20, 2<<20, 10*time.Second
	cfg.InputAllowCIDRs = []string{"127.0.0.1/32"}
	// Zero values below mean the session package's defaults, as before.
	cfg.ExecutionTimeout, cfg.InterruptGrace, cfg.MaxOutputBytes = o.timeout, time.Second, o.maxOutput
	cfg.MaxWorkers, cfg.MaxQueue, cfg.QueueTimeout = o.workers, o.queue, o.queueWait
	cfg.SessionIdle, cfg.MaxSessions, cfg.MaxSessionsPerKey, cfg.ReplayEvents = o.sessIdle, o.maxSess, o.maxPerKey, o.replay
	cfg.BodyLimit, cfg.UploadLimit, cfg.PingInterval = 1<<20, 1<<20, time.Second
	if k := os.Getenv("CODEGW_TEST_STATELESS_KERNEL"); k != "" {
		cfg.StatelessKernel = k
	}
	cfg.Capabilities = func() any { return map[string]any{"python_version": "3", "packages": []string{"pandas"}} }
	if o.tune != nil {
		o.tune(&cfg)
	}
	a, err := app.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go a.Serve(ln)
	e := &env{t: t, base: "http://" + ln.Addr().String(), mgr: a.Manager, pool: a.Pool, images: a.Images, files: a.Files, keys: o.keys, prov: prov, app: a}
	t.Cleanup(func() { a.Close() })
	return e
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (e *env) do(method, path string, body any, out any, hdr ...string) int {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.base+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if len(e.keys) > 0 {
		req.Header.Set("Authorization", "Bearer "+e.keys[0])
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: status %d, body %q is not JSON: %v", method, path, resp.StatusCode, truncate(string(data), 300), err)
		}
	}
	return resp.StatusCode
}

// exec runs code statelessly and returns the answer, failing on non-200.
func (e *env) exec(req map[string]any) codegw.ExecuteResult {
	e.t.Helper()
	var res codegw.ExecuteResult
	if st := e.do("POST", "/api/v1/execute", req, &res); st != 200 {
		e.t.Fatalf("execute %v: status %d", req, st)
	}
	return res
}

// get fetches path and returns status, content type and body.
func (e *env) get(path string) (int, http.Header, []byte) {
	e.t.Helper()
	if strings.HasPrefix(path, "http") {
		path = path[strings.Index(path[8:], "/")+8:]
	}
	req, _ := http.NewRequest("GET", e.base+path, nil)
	if len(e.keys) > 0 {
		req.Header.Set("Authorization", "Bearer "+e.keys[0])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func netListen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// post is a goroutine-safe JSON POST: it reports failures instead of
// calling t.Fatal, which only the test goroutine may do.
func (e *env) post(path string, body any, out any) (int, error) {
	j, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", e.base+path, bytes.NewReader(j))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if len(e.keys) > 0 {
		req.Header.Set("Authorization", "Bearer "+e.keys[0])
	}
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
}

// waitPool waits until n kernels are warm.
func (e *env) waitPool(t *testing.T, n int) {
	t.Helper()
	testwait.For(t, 90*time.Second, fmt.Sprintf("the pool to fill to %d", n), func() string {
		if st := e.pool.Stats(); st.Ready < n {
			return fmt.Sprintf("%+v", st)
		}
		return ""
	})
}

// heapPeak samples this process's heap in use every 10 ms until the
// returned stop is called, which returns the highest value seen.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak.Store(max(peak.Load(), ms.HeapInuse))
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}
