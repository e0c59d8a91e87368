package benchkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/session"
)

// GatewayConfig is what a bench varies in an in-process gateway; the rest is
// app.DefaultConfig, as cmd/codegw runs.
type GatewayConfig struct {
	Prov        kernel.Provisioner
	PoolSize    int // POOL_SIZE
	MaxStarting int // POOL_MAX_STARTING
	Workers     int // MAX_WORKERS (0: the default)
	MaxQueue    int // MAX_QUEUE (0: the default)
	MaxSessions int // MAX_SESSIONS and MAX_SESSIONS_PER_KEY (0: the defaults)
	Logger      *slog.Logger
	// HeartbeatTimeout is the kernel clients' (0: the kernel package's
	// default, which the gateway uses).
	HeartbeatTimeout time.Duration
	// WarmUp is the pool kernels' warm-up cell (default "pass", as
	// cmd/codegw launches them).
	WarmUp string
	// Tune, when set, has the last word on the configuration (keys,
	// quotas).
	Tune func(*app.Config)
}

// Gateway is a whole gateway on a loopback port, built by app.Open as
// cmd/codegw builds it (memory store, stores in a temporary directory).
type Gateway struct {
	Base string // http://127.0.0.1:port
	Pool *kernel.Pool
	Mgr  *session.Manager
	app  *app.App
	dir  string
}

var kernelSeq atomic.Int64

// KernelID returns a kernel id unique among this process's kernels and
// other processes sharing the provisioner's state directory.
func KernelID(prefix string) string {
	return fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), kernelSeq.Add(1))
}

// Launch starts one ready kernel as the gateway's pool does (WarmUp
// "pass": the first-cell cost is paid before the kernel is handed out).
func Launch(ctx context.Context, prov kernel.Provisioner, labels map[string]string, log *slog.Logger) (*kernel.Kernel, error) {
	return LaunchHB(ctx, prov, labels, log, 0)
}

// LaunchHB is Launch with the client's heartbeat timeout set (0: default).
func LaunchHB(ctx context.Context, prov kernel.Provisioner, labels map[string]string, log *slog.Logger, hb time.Duration) (*kernel.Kernel, error) {
	return kernel.Launch(ctx, prov, kernel.Spec{ID: KernelID("b"), Labels: labels},
		kernel.LaunchOptions{Logger: log, WarmUp: "pass", Client: kernel.ClientOptions{HeartbeatTimeout: hb}})
}

// StartGateway starts a gateway on 127.0.0.1:0. Close it.
func StartGateway(cfg GatewayConfig) (*Gateway, error) {
	dir, err := os.MkdirTemp("", "codegw-bench")
	if err != nil {
		return nil, err
	}
	c := app.DefaultConfig()
	c.Provisioner, c.Logger, c.InstanceID, c.HeartbeatTimeout = cfg.Prov, cfg.Logger, "bench", cfg.HeartbeatTimeout
	c.PoolSize, c.PoolStarts = cfg.PoolSize, cfg.MaxStarting
	if cfg.WarmUp != "" {
		c.WarmUp = cfg.WarmUp
	}
	if cfg.Workers > 0 {
		c.MaxWorkers = cfg.Workers
	}
	if cfg.MaxQueue > 0 {
		c.MaxQueue = cfg.MaxQueue
	}
	if cfg.MaxSessions > 0 {
		c.MaxSessions, c.MaxSessionsPerKey = cfg.MaxSessions, cfg.MaxSessions
	}
	c.ImageStorePath, c.FileStorePath, c.Retention = dir+"/images", dir+"/files", time.Hour
	c.SnapshotDir = dir + "/snapshots"
	c.Capabilities = func() any { return map[string]any{} }
	if cfg.Tune != nil {
		cfg.Tune(&c)
	}
	g := &Gateway{dir: dir}
	if g.app, err = app.Open(context.Background(), c); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	g.Pool, g.Mgr = g.app.Pool, g.app.Manager
	if g.app.OneShots != nil { // stateless calls take their kernels there
		g.Pool = g.app.OneShots
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.Close()
		return nil, err
	}
	go g.app.Serve(ln)
	g.Base = "http://" + ln.Addr().String()
	return g, nil
}

// Close shuts the server, ends every session and closes every kernel.
func (g *Gateway) Close() {
	g.app.Close()
	os.RemoveAll(g.dir)
}

// WaitPoolFull polls until p holds n ready kernels and none is starting.
func WaitPoolFull(ctx context.Context, p *kernel.Pool, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s := p.Stats()
		if s.Ready >= n && s.Starting == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool not full after %v: %+v", timeout, s)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// HTTPClient is a keep-alive client for loopback benchmarks.
func HTTPClient(conns int) *http.Client {
	return &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute,
	}}
}

// PostJSON posts body to base+path and decodes the answer into out, failing
// on a status other than want.
func PostJSON(ctx context.Context, c *http.Client, url string, body, out any, want int) error {
	j, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(j))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: status %d: %.300s", url, resp.StatusCode, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Execute runs code statelessly through POST /api/v1/execute and checks
// that it succeeded.
func (g *Gateway) Execute(ctx context.Context, c *http.Client, code string) (*codegw.ExecuteResult, error) {
	var res codegw.ExecuteResult
	if err := PostJSON(ctx, c, g.Base+"/api/v1/execute", map[string]any{"code": code}, &res, 200); err != nil {
		return nil, err
	}
	if res.Status != codegw.StatusOK {
		e := ""
		if res.Error != nil {
			e = *res.Error
		}
		return &res, fmt.Errorf("execute: status %s: %.300s", res.Status, e)
	}
	return &res, nil
}

// Verdict says whether a target was met.
func Verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// PrintJSON prints v indented.
func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
