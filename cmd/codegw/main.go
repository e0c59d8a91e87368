// Command codegw is the code interpreter gateway: it runs untrusted Python
// in IPython kernels (local sandboxed processes or Docker containers) and
// serves the stateless and session APIs over HTTP and websocket.
//
// main only reads the configuration, wires the concrete parts together and
// handles signals.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/codegw/codegw/gateway"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/files"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/memory"
	"github.com/codegw/codegw/store/redis"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "codegw:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := LoadConfig()
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	if len(cfg.APIKeys) == 0 {
		if !isLoopback(cfg.Host) && !cfg.AllowOpen {
			return fmt.Errorf("no API_KEYS configured and HOST=%s is not a loopback address: set API_KEYS, or ALLOW_OPEN=true to serve without authentication", cfg.Host)
		}
		log.Warn("no API_KEYS configured: the API is open to anyone who can reach it", "host", cfg.Host)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	prov, err := provisioner(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer prov.Close()
	if r, ok := prov.(kernel.Reaper); ok {
		if n, err := r.Reap(ctx); err != nil {
			log.Warn("reaping leftover kernels failed", "err", err)
		} else if n > 0 {
			log.Info("reaped kernels left by an earlier run", "count", n)
		}
	}

	var seq atomic.Uint64
	runID := kernel.NewID()[:6] // replicas of a compose service share STATE_DIR: kernel ids must not collide
	launch := func(ctx context.Context) (*kernel.Kernel, error) {
		id := fmt.Sprintf("k%s-%d", runID, seq.Add(1))
		return kernel.Launch(ctx, prov, kernel.Spec{ID: id, Labels: map[string]string{"instance": cfg.InstanceID}}, kernel.LaunchOptions{Logger: log, WarmUp: "pass"})
	}
	pool := kernel.NewPool(kernel.PoolConfig{Size: cfg.PoolSize, MaxStarting: cfg.PoolStarts, Launch: launch, Logger: log})
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pool.Close(cctx)
	}()

	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	cl, err := newCluster(cfg, st, log)
	if err != nil {
		return err
	}

	images := &files.Store{Dir: cfg.ImageStorePath, URLPrefix: cfg.ImageURLPrefix, PublicBaseURL: cfg.PublicBaseURL, Retention: cfg.Retention, Logger: log}
	outFiles := &files.Store{Dir: cfg.FileStorePath, URLPrefix: cfg.FileURLPrefix, PublicBaseURL: cfg.PublicBaseURL, Retention: cfg.Retention, Logger: log}
	for _, s := range []*files.Store{images, outFiles} {
		if err := s.Init(); err != nil {
			return fmt.Errorf("store directory %s: %w", s.Dir, err)
		}
	}
	fetcher, err := files.NewFetcher(files.FetchLimits{
		MaxFiles: cfg.InputMaxFiles, MaxFileBytes: cfg.InputFileMaxBytes, MaxTotalBytes: cfg.InputTotalBytes,
		Timeout: cfg.InputTimeout, AllowHosts: cfg.InputAllowHosts, AllowCIDRs: cfg.InputAllowCIDRs,
	})
	if err != nil {
		return fmt.Errorf("input file settings: %w", err)
	}
	mgr, err := session.New(session.Config{
		Kernels: pool, Images: images, Files: outFiles, Fetcher: fetcher,
		Outputs: files.OutputLimits{AllowedExt: cfg.OutputAllowedExt, MaxFiles: cfg.OutputMaxFiles, MaxFileBytes: cfg.OutputFileMaxBytes, MaxTotalBytes: cfg.OutputTotalBytes},
		Store:   cl.wrap(st), Instance: cfg.InstanceID,
		ExecTimeout: cfg.ExecutionTimeout, MaxOutputBytes: cfg.MaxOutputBytes,
		MaxWorkers: cfg.MaxWorkers, MaxQueue: cfg.MaxQueue, QueueTimeout: cfg.QueueTimeout,
		MaxSessions: cfg.MaxSessions, MaxSessionsPerKey: cfg.MaxSessionsPerKey, SessionIdle: cfg.SessionIdle,
		Logger: log,
	})
	if err != nil {
		return err
	}

	bgCtx, cancelBg := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	for _, s := range []*files.Store{images, outFiles} {
		bg.Add(1)
		go func() { defer bg.Done(); s.Run(bgCtx, time.Minute) }()
	}
	if r, ok := prov.(kernel.Reaper); ok { // crash leftovers, e.g. of a replica that shared STATE_DIR
		bg.Add(1)
		go func() {
			defer bg.Done()
			t := time.NewTicker(5 * time.Minute)
			defer t.Stop()
			for {
				select {
				case <-bgCtx.Done():
					return
				case <-t.C:
					if n, err := r.Reap(bgCtx); err != nil {
						log.Warn("reaping leftover kernels failed", "err", err)
					} else if n > 0 {
						log.Info("reaped leftover kernels", "count", n)
					}
				}
			}
		}()
	}
	caps := newCapabilities(cfg, launch, log)
	if m, ok := prov.(startModer); ok {
		caps.start, caps.limitMode = m.StartMode(), m.LimitMode()
	}
	bg.Add(1)
	go func() { defer bg.Done(); caps.probe(bgCtx) }()

	srv := gateway.New(gateway.Config{
		Manager: mgr, Images: images, Files: outFiles, APIKeys: cfg.APIKeys,
		Capabilities: caps.get, Logger: log,
		Store: cl.shared(), Instance: cfg.InstanceID, ClusterSecret: cfg.ClusterSecret,
		Ready: func() error {
			if s := pool.Stats(); s.Size > 0 && s.Ready == 0 && s.LastErr != "" {
				return errors.New("no kernel can start: " + s.LastErr)
			}
			return nil
		},
	})
	cl.start(mgr.Local)
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	errc := make(chan error, 1)
	go func() { errc <- srv.Listen(addr) }()
	log.Info("codegw listening", "addr", "http://"+addr, "executor", cfg.Executor, "pool", cfg.PoolSize, "instance", cfg.InstanceID)

	select {
	case err = <-errc:
		err = fmt.Errorf("listen %s: %w", addr, err)
	case <-ctx.Done():
		log.Info("shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	mgr.Close()
	cl.close()
	cancelBg()
	bg.Wait()
	return err
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func provisioner(ctx context.Context, cfg Config, log *slog.Logger) (kernel.Provisioner, error) {
	if cfg.Executor == "docker" {
		stateDir := cfg.StateDir
		if stateDir == "" {
			stateDir = filepath.Join(os.TempDir(), "codegw-docker")
		}
		return docker.New(ctx, docker.Config{
			Image: cfg.DockerImage, NetworkMode: cfg.NetworkMode, Memory: cfg.MemoryBytes,
			NanoCPUs: int64(cfg.CPUs * 1e9), PidsLimit: cfg.PidsLimit, InstanceID: cfg.InstanceID,
			StateDir: stateDir, Preload: cfg.Preload, Logger: log,
		})
	}
	return local.New(local.Config{Python: cfg.Python, StateDir: cfg.StateDir, Sandbox: cfg.Sandbox, Preload: cfg.Preload, Logger: log,
		Start: cfg.KernelStart, Memory: cfg.MemoryBytes, PidsLimit: int(cfg.PidsLimit)})
}

func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	if cfg.RedisURL == "" {
		return memory.New(), nil
	}
	return redis.New(ctx, cfg.RedisURL)
}

// capabilities describes the runtime, probed once in a kernel of the kind
// that serves requests so that it tells the truth about that kernel.
type capabilities struct {
	cfg Config
	// start and limitMode say how local kernels are made (fork, spawn)
	// and limited (cgroup, rlimit, none); empty for Docker.
	start, limitMode string
	launch           func(context.Context) (*kernel.Kernel, error)
	log              *slog.Logger

	mu    sync.Mutex
	facts map[string]any
}

// startModer is implemented by local.Provisioner.
type startModer interface {
	StartMode() string
	LimitMode() string
}

func newCapabilities(cfg Config, launch func(context.Context) (*kernel.Kernel, error), log *slog.Logger) *capabilities {
	return &capabilities{cfg: cfg, launch: launch, log: log}
}

const probeCode = `import sys, json, importlib.metadata as _m
print(json.dumps({"python_version": sys.version.split()[0], "packages": sorted({(d.metadata["Name"] or "").lower() + "==" + d.version for d in _m.distributions() if d.metadata["Name"]})}))`

func (c *capabilities) probe(ctx context.Context) {
	k, err := c.launch(ctx)
	if err != nil {
		c.log.Warn("capabilities probe: kernel start failed", "err", err)
		return
	}
	defer k.Close(context.Background())
	var out []byte
	_, err = k.Execute(ctx, probeCode, kernel.ExecuteOptions{OnMessage: func(m *kernel.Message) {
		if m.Header.MsgType == "stream" {
			var s struct{ Text string }
			json.Unmarshal(m.Content, &s)
			out = append(out, s.Text...)
		}
	}}, kernel.Deadline{Timeout: 30 * time.Second})
	var res map[string]any
	if err != nil || json.Unmarshal(out, &res) != nil {
		c.log.Warn("capabilities probe failed", "err", err)
		return
	}
	c.mu.Lock()
	c.facts = res
	c.mu.Unlock()
}

func (c *capabilities) get() any {
	c.mu.Lock()
	p := c.facts
	c.mu.Unlock()
	out := map[string]any{
		"executor":          c.cfg.Executor,
		"python_version":    nil,
		"packages":          []string{},
		"execution_timeout": c.cfg.ExecutionTimeout.Seconds(),
		"max_workers":       c.cfg.MaxWorkers,
		"network": map[string]any{
			"kernel_network": map[bool]string{true: c.cfg.NetworkMode, false: "none (sandboxed)"}[c.cfg.Executor == "docker"],
			"input_files":    "http(s) only; loopback, private, link-local, multicast and unspecified addresses refused unless allow-listed",
		},
		"limits": map[string]any{
			"max_output_bytes":          c.cfg.MaxOutputBytes,
			"output_allowed_extensions": c.cfg.OutputAllowedExt,
			"output_max_files":          c.cfg.OutputMaxFiles,
			"output_file_max_bytes":     c.cfg.OutputFileMaxBytes,
			"output_total_max_bytes":    c.cfg.OutputTotalBytes,
			"input_max_files":           c.cfg.InputMaxFiles,
			"input_file_max_bytes":      c.cfg.InputFileMaxBytes,
			"input_total_max_bytes":     c.cfg.InputTotalBytes,
			"max_sessions":              c.cfg.MaxSessions,
			"max_sessions_per_key":      c.cfg.MaxSessionsPerKey,
			"session_idle_timeout":      c.cfg.SessionIdle.Seconds(),
			"memory_bytes":              c.cfg.MemoryBytes,
			"pids_limit":                c.cfg.PidsLimit,
		},
	}
	if c.start != "" {
		out["kernel_start"] = c.start
		out["limits"].(map[string]any)["kernel_limits"] = c.limitMode
	}
	for k, v := range p {
		out[k] = v
	}
	return out
}
