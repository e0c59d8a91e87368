// Package app builds the whole service from one Config: the kernel
// provisioner and warm pool, the session store (memory, or Redis with
// cluster membership and routing), the image and file stores, the input
// fetcher, the session manager, the capabilities probe and the HTTP
// gateway, and closes them in order. cmd/codegw, the gateway's end-to-end
// tests and the benchmarks all build the service through it.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/cluster"
	"github.com/codegw/codegw/gateway"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/mcpserver"
	"github.com/codegw/codegw/metrics"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/artifact"
	"github.com/codegw/codegw/session/inputs"
	"github.com/codegw/codegw/session/outputs"
	"github.com/codegw/codegw/session/snapshot"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/memory"
	"github.com/codegw/codegw/store/redis"
)

// App is the running service. The parts tests and benchmarks look inside
// are exported; the gateway is not listening until Listen or Serve.
type App struct {
	Pool *kernel.Pool
	// OneShots keeps one-shot kernels for stateless calls
	// (STATELESS_KERNEL=oneshot); nil when they take full kernels from Pool.
	OneShots *kernel.Pool
	Images   *artifact.Store
	Files    *artifact.Store
	Manager  *session.Manager
	Metrics  *metrics.Metrics

	prov       kernel.Provisioner
	store      store.Store
	gateway    *gateway.Server
	cfg        Config
	log        *slog.Logger
	ownProv    bool
	membership *cluster.Membership // nil with a single instance
	cancelBg   context.CancelFunc
	bg         sync.WaitGroup
}

// Open builds the service from cfg. On error, what was opened is closed.
// ctx bounds the start (the Docker engine's answer, the first reap, Redis).
func Open(ctx context.Context, cfg Config) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if _, ok := cfg.Logger.Handler().(codegw.ContextHandler); !ok {
		// Lines logged with a request's context name its ids.
		cfg.Logger = slog.New(codegw.ContextHandler{Handler: cfg.Logger.Handler()})
	}
	log := cfg.Logger
	if len(cfg.APIKeys) == 0 {
		if !isLoopback(cfg.Host) && !cfg.AllowOpen {
			return nil, fmt.Errorf("no API_KEYS configured and HOST=%s is not a loopback address: set API_KEYS, or ALLOW_OPEN=true to serve without authentication", cfg.Host)
		}
		log.Warn("no API_KEYS configured: the API is open to anyone who can reach it", "host", cfg.Host)
	}
	bgCtx, cancelBg := context.WithCancel(context.Background())
	a := &App{cfg: cfg, log: log, cancelBg: cancelBg, Metrics: metrics.New(cfg.Executor)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	if a.prov = cfg.Provisioner; a.prov == nil {
		if a.prov, err = openProvisioner(ctx, cfg); err != nil {
			return nil, err
		}
		a.ownProv = true
	}
	if r, ok := a.prov.(kernel.Reaper); ok && a.ownProv {
		a.reap(ctx, r, "reaped kernels left by an earlier run")
		a.every(bgCtx, 5*time.Minute, func() { // crash leftovers, e.g. of a replica that shared STATE_DIR
			a.reap(bgCtx, r, "reaped leftover kernels")
		})
	}

	limitMode := "" // Docker enforces KERNEL_MEMORY
	if m, ok := a.prov.(startModer); ok {
		limitMode = m.LimitMode()
	}
	if limitMode == "none" && cfg.MemoryBytes > 0 {
		if cfg.MaxKernelMemoryPerKey > 0 {
			return nil, fmt.Errorf("MAX_KERNEL_MEMORY_PER_KEY is set but kernels are spawned (KERNEL_START=spawn, or the fork server is unavailable: it needs root to sandbox), and spawned kernels have no memory limit: KERNEL_MEMORY would not be enforced; unset MAX_KERNEL_MEMORY_PER_KEY or run with forked kernels or Docker")
		}
		log.Warn("KERNEL_MEMORY is not enforced: spawned kernels have no memory limit (forked kernels and Docker containers do)", "memory_bytes", int64(cfg.MemoryBytes))
	}

	var seq atomic.Uint64
	runID := codegw.NewID()[:6] // replicas of a compose service share STATE_DIR: kernel ids must not collide
	launch := func(ctx context.Context) (*kernel.Kernel, error) {
		id := fmt.Sprintf("k%s-%d", runID, seq.Add(1))
		start := time.Now()
		k, err := kernel.Launch(ctx, a.prov, kernel.Spec{ID: id, Labels: map[string]string{"instance": cfg.InstanceID}},
			kernel.LaunchOptions{Logger: log, WarmUp: cfg.WarmUp, Client: kernel.ClientOptions{HeartbeatTimeout: cfg.HeartbeatTimeout}})
		a.Metrics.KernelStart(time.Since(start), err)
		return k, err
	}
	a.Pool = kernel.NewPool(kernel.PoolConfig{Size: cfg.PoolSize, MaxStarting: cfg.PoolStarts, Launch: launch, Logger: log})
	var stateless session.Acquirer
	if cfg.StatelessKernel == StatelessOneShot {
		// No warm-up: the zygote warmed the shell once for all of them.
		launchOne := func(ctx context.Context) (*kernel.Kernel, error) {
			id := fmt.Sprintf("k%s-%d", runID, seq.Add(1))
			start := time.Now()
			k, err := kernel.Launch(ctx, a.prov, kernel.Spec{ID: id, Labels: map[string]string{"instance": cfg.InstanceID}, OneShot: true},
				kernel.LaunchOptions{Logger: log, Client: kernel.ClientOptions{HeartbeatTimeout: cfg.HeartbeatTimeout}})
			a.Metrics.KernelStart(time.Since(start), err)
			return k, err
		}
		a.OneShots = kernel.NewPool(kernel.PoolConfig{Size: cfg.PoolSize, MaxStarting: cfg.PoolStarts, Launch: launchOne, Logger: log})
		stateless = a.OneShots
	}

	if cfg.RedisURL == "" {
		a.store = memory.New()
	} else {
		rs, err := redis.New(ctx, cfg.RedisURL, redis.WithErrorHook(a.Metrics.StoreError))
		if err != nil {
			return nil, err
		}
		a.store = rs
	}
	sessionStore := a.store
	var router gateway.Router
	if cfg.RedisURL != "" {
		addr, err := cluster.InternalAddr(cfg.InternalAddr, cfg.Host, cfg.Port)
		if err != nil {
			return nil, err
		}
		if cfg.ClusterSecret == "" {
			log.Warn("CLUSTER_SECRET is not set: requests forwarded between instances are not authenticated; set the same secret on every instance")
		}
		a.membership = cluster.NewMembership(a.store, store.Instance{ID: cfg.InstanceID, Addr: addr}, cfg.InstanceTTL, log)
		sessionStore = a.membership.Wrap(a.store)
		router = gateway.NewForwarder(cluster.NewRouter(a.store, cluster.RouterConfig{
			Instance: cfg.InstanceID, Secret: cfg.ClusterSecret, Logger: log,
		}), cfg.PingInterval)
	}

	a.Images = &artifact.Store{Dir: cfg.ImageStorePath, URLPrefix: cfg.ImageURLPrefix, PublicBaseURL: cfg.PublicBaseURL, Retention: cfg.Retention, Logger: log}
	a.Files = &artifact.Store{Dir: cfg.FileStorePath, URLPrefix: cfg.FileURLPrefix, PublicBaseURL: cfg.PublicBaseURL, Retention: cfg.Retention, Logger: log}
	for _, s := range []*artifact.Store{a.Images, a.Files} {
		if err := s.Init(); err != nil {
			return nil, fmt.Errorf("store directory %s: %w", s.Dir, err)
		}
		if s.Retention > 0 {
			s.Expire()
			a.every(bgCtx, time.Minute, s.Expire)
		}
	}
	fetcher, err := inputs.NewFetcher(inputs.FetchLimits{
		MaxFiles: cfg.InputMaxFiles, MaxFileBytes: cfg.InputFileMaxBytes, MaxTotalBytes: cfg.InputTotalBytes,
		Timeout: cfg.InputTimeout, AllowHosts: cfg.InputAllowHosts, AllowCIDRs: cfg.InputAllowCIDRs,
	})
	if err != nil {
		return nil, fmt.Errorf("input file settings: %w", err)
	}
	var snaps snapshot.Store
	if cfg.SnapshotS3Bucket != "" {
		s3, err := snapshot.NewS3(ctx, snapshot.S3Config{Endpoint: cfg.SnapshotS3Endpoint, Bucket: cfg.SnapshotS3Bucket,
			Prefix: cfg.SnapshotS3Prefix, Region: cfg.SnapshotS3Region, AccessKey: cfg.SnapshotS3AccessKey, SecretKey: cfg.SnapshotS3SecretKey})
		if err != nil {
			return nil, fmt.Errorf("SNAPSHOT_S3_BUCKET %s at %s: %w", cfg.SnapshotS3Bucket, cfg.SnapshotS3Endpoint, err)
		}
		snaps = s3
	} else if cfg.SnapshotDir != "" {
		d, err := snapshot.NewDir(cfg.SnapshotDir)
		if err != nil {
			return nil, fmt.Errorf("SNAPSHOT_DIR %s: %w", cfg.SnapshotDir, err)
		}
		snaps = d
	}
	a.Manager, err = session.New(session.Config{
		Kernels: a.Pool, Stateless: stateless, Images: a.Images, Files: a.Files, Fetcher: fetcher,
		Outputs: outputs.Limits{AllowedExt: cfg.OutputAllowedExt, MaxFiles: cfg.OutputMaxFiles, MaxFileBytes: cfg.OutputFileMaxBytes, MaxTotalBytes: cfg.OutputTotalBytes},
		Store:   sessionStore, Instance: cfg.InstanceID,
		ExecTimeout: cfg.ExecutionTimeout, InterruptGrace: cfg.InterruptGrace, MaxOutputBytes: cfg.MaxOutputBytes,
		MaxWorkers: cfg.MaxWorkers, MaxQueue: cfg.MaxQueue, QueueTimeout: cfg.QueueTimeout,
		MaxSessions: cfg.MaxSessions, MaxSessionsPerKey: cfg.MaxSessionsPerKey, SessionIdle: cfg.SessionIdle,
		ReplayEvents: cfg.ReplayEvents, Logger: log, Metrics: a.Metrics,
		MaxExecutionsPerKey: cfg.MaxExecutionsPerKey, KernelMemory: int64(cfg.MemoryBytes), MaxKernelMemoryPerKey: int64(cfg.MaxKernelMemoryPerKey),
		Snapshots: snaps, MaxSnapshotBytes: int64(cfg.MaxSnapshotBytes), MaxSnapshotBytesPerKey: int64(cfg.MaxSnapshotBytesPerKey),
		IdleAction: cfg.IdleAction, PausedTTL: cfg.PausedTTL, CheckpointAfter: cfg.CheckpointAfter,
	})
	if err != nil {
		return nil, err
	}
	if n, err := a.Manager.Recover(ctx); err != nil {
		log.Warn("could not recover the paused sessions of the snapshot store", "err", err)
	} else if n > 0 {
		log.Info("recovered paused sessions from the snapshot store", "sessions", n, "dir", cfg.SnapshotDir)
	}

	caps := cfg.Capabilities
	if caps == nil {
		c := &capabilities{cfg: cfg, launch: launch, log: log}
		if m, ok := a.prov.(startModer); ok {
			c.start, c.limitMode = m.StartMode(), limitMode
		}
		c.stateless = StatelessFull
		if o, ok := a.prov.(oneShotMaker); ok && cfg.StatelessKernel == StatelessOneShot && o.MakesOneShots() {
			c.stateless = StatelessOneShot
		}
		a.bg.Add(1)
		go func() { defer a.bg.Done(); c.probe(bgCtx) }()
		caps = c.get
	}
	a.gateway = gateway.New(gateway.Config{
		Manager: a.Manager, Images: a.Images, Files: a.Files, APIKeys: cfg.APIKeys,
		BodyLimit: cfg.BodyLimit, UploadLimit: cfg.UploadLimit, PingInterval: cfg.PingInterval,
		Capabilities: caps, Ready: a.ready, Logger: log, Router: router,
		Metrics: a.Metrics, MetricsKey: cfg.MetricsKey,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst,
		DifyNetwork: cfg.DifyNetwork, DifyTimeout: cfg.DifyTimeout,
		LibreChatDir: cfg.LibreChatStorePath, LibreChatRetention: cfg.Retention,
		MCP: mcpserver.NewHandler(&mcpserver.Config{Backend: mcpserver.Manager{M: a.Manager, UploadLimit: cfg.UploadLimit}, Fetcher: fetcher},
			mcpserver.HandlerOptions{SessionTimeout: cfg.SessionIdle, BaseURL: cfg.PublicBaseURL}),
	})
	a.watch()
	if a.membership != nil {
		a.membership.Start(a.Manager.Local)
	}
	return a, nil
}

// Addr is the address the configuration says to listen on (HOST, PORT).
func (a *App) Addr() string { return net.JoinHostPort(a.cfg.Host, strconv.Itoa(a.cfg.Port)) }

// Listen serves the gateway on Addr until Close.
func (a *App) Listen() error { return a.gateway.Listen(a.Addr()) }

// Serve serves the gateway on ln until Close.
func (a *App) Serve(ln net.Listener) error { return a.gateway.Serve(ln) }

// Close stops the service in order: the gateway (requests in flight
// finish, up to 15 seconds), the manager (every session and execution
// ends), the cluster membership (the registry entry is removed, so peers
// report this instance's sessions lost at once), the background loops, the
// pool and the provisioner (every kernel stops), and the store.
func (a *App) Close() error {
	var errs []error
	if a.gateway != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		errs = append(errs, a.gateway.Shutdown(ctx))
		cancel()
	}
	if a.Manager != nil {
		a.Manager.Close()
	}
	if a.membership != nil {
		a.membership.Close()
	}
	// The loops launch kernels (the probe) and reap them: they end before
	// the pool and the provisioner close.
	a.cancelBg()
	a.bg.Wait()
	for _, p := range []*kernel.Pool{a.Pool, a.OneShots} {
		if p != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			p.Close(ctx)
			cancel()
		}
	}
	if a.ownProv && a.prov != nil {
		errs = append(errs, a.prov.Close())
	}
	if a.store != nil {
		errs = append(errs, a.store.Close())
	}
	return errors.Join(errs...)
}

// ready reports whether executions can run: not when no kernel can start.
func (a *App) ready() error {
	if s := a.Pool.Stats(); s.Size > 0 && s.Ready == 0 && s.LastErr != "" {
		return errors.New("no kernel can start: " + s.LastErr)
	}
	if a.OneShots != nil {
		if s := a.OneShots.Stats(); s.Size > 0 && s.Ready == 0 && s.LastErr != "" {
			return errors.New("no one-shot kernel can start: " + s.LastErr)
		}
	}
	return nil
}

// every runs f every d until ctx ends, joined by Close.
func (a *App) every(ctx context.Context, d time.Duration, f func()) {
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f()
			}
		}
	}()
}

func (a *App) reap(ctx context.Context, r kernel.Reaper, what string) {
	if n, err := r.Reap(ctx); err != nil {
		a.log.Warn("reaping leftover kernels failed", "err", err)
	} else if n > 0 {
		a.log.Info(what, "count", n)
	}
}

func openProvisioner(ctx context.Context, cfg Config) (kernel.Provisioner, error) {
	if cfg.Executor == "zygote" {
		return docker.NewExternal(ctx, docker.Config{
			Memory: int64(cfg.MemoryBytes), PidsLimit: cfg.PidsLimit, InstanceID: cfg.InstanceID,
			Preload: cfg.Preload, Logger: cfg.Logger,
		}, cfg.ZygoteSocket)
	}
	if cfg.Executor == "docker" {
		return docker.New(ctx, docker.Config{
			Image: cfg.DockerImage, NetworkMode: cfg.NetworkMode, Memory: int64(cfg.MemoryBytes),
			NanoCPUs: int64(cfg.CPUs * 1e9), PidsLimit: cfg.PidsLimit, InstanceID: cfg.InstanceID,
			StateDir: cfg.StateDir, Preload: cfg.Preload, Logger: cfg.Logger, Start: cfg.KernelStart,
		})
	}
	return local.New(local.Config{Python: cfg.Python, StateDir: cfg.StateDir, Sandbox: cfg.Sandbox, Preload: cfg.Preload, Logger: cfg.Logger,
		Start: cfg.KernelStart, Memory: int64(cfg.MemoryBytes), PidsLimit: int(cfg.PidsLimit)})
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
