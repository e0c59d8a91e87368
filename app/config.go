package app

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/codegw/codegw/cluster"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/files"
)

// Config is every setting of the service. The env tags name the
// environment variables cmd/codegw reads them from (the original
// project's names); fields tagged "-" are for programs that build the app
// in-process (tests, benchmarks). Durations read from the environment are
// seconds or Go durations; lists are comma-separated.
type Config struct {
	Host          string   `env:"HOST"`
	Port          int      `env:"PORT"`
	AllowOpen     bool     `env:"ALLOW_OPEN"` // serve without API keys on a non-loopback address
	APIKeys       []string `env:"API_KEYS"`
	PublicBaseURL string   `env:"PUBLIC_BASE_URL"`

	Executor   string   `env:"EXECUTOR"`          // local | docker | zygote
	PoolSize   int      `env:"POOL_SIZE"`         // warm kernels kept ready
	PoolStarts int      `env:"POOL_MAX_STARTING"` // concurrent kernel starts
	Preload    []string `env:"EXECUTOR_PRELOAD"`  // nil: the launcher's default; empty: nothing
	StateDir   string   `env:"STATE_DIR"`         // empty: the provisioner's default

	Python      string  `env:"KERNEL_PYTHON"` // empty: kernel/local's default
	Sandbox     string  `env:"SANDBOX"`       // auto | bwrap | none
	KernelStart string  `env:"KERNEL_START"`  // fork (from a zygote; docker: a zygote container) | spawn (a cold start each)
	DockerImage string  `env:"DOCKER_IMAGE"`
	NetworkMode string  `env:"DOCKER_NETWORK_MODE"`
	PidsLimit   int64   `env:"DOCKER_PIDS_LIMIT"`
	MemoryBytes Bytes   `env:"KERNEL_MEMORY"`
	CPUs        float64 `env:"KERNEL_CPUS"`
	InstanceID  string  `env:"EXECUTOR_INSTANCE_ID"`

	// ZygoteSocket is, with EXECUTOR=zygote, the unix socket of a fork
	// server the gateway did not start (executor-image/zygote.py with
	// EXECUTOR_ZYGOTE_SERVE=1, e.g. a Kubernetes pod's zygote container);
	// the kernels' directories go beside it. Default "" (required then).
	ZygoteSocket string `env:"ZYGOTE_SOCKET"`

	MaxWorkers        int           `env:"MAX_WORKERS"`
	MaxQueue          int           `env:"MAX_QUEUE"`
	QueueTimeout      time.Duration `env:"QUEUE_TIMEOUT"`
	ExecutionTimeout  time.Duration `env:"EXECUTION_TIMEOUT"`
	MaxOutputBytes    int           `env:"MAX_OUTPUT_BYTES"`
	SessionIdle       time.Duration `env:"SESSION_IDLE_TIMEOUT"`
	MaxSessions       int           `env:"MAX_SESSIONS"`
	MaxSessionsPerKey int           `env:"MAX_SESSIONS_PER_KEY"`

	ImageStorePath string        `env:"IMAGE_STORE_PATH"`
	ImageURLPrefix string        `env:"IMAGE_URL_PREFIX"`
	FileStorePath  string        `env:"FILE_STORE_PATH"`
	FileURLPrefix  string        `env:"FILE_URL_PREFIX"`
	Retention      time.Duration `env:"STORE_RETENTION"`

	OutputAllowedExt   []string      `env:"OUTPUT_ALLOWED_EXTENSIONS"`
	OutputMaxFiles     int           `env:"OUTPUT_MAX_FILES"`
	OutputFileMaxBytes int64         `env:"OUTPUT_FILE_MAX_BYTES"`
	OutputTotalBytes   int64         `env:"OUTPUT_TOTAL_MAX_BYTES"`
	InputMaxFiles      int           `env:"INPUT_MAX_FILES"`
	InputFileMaxBytes  int64         `env:"INPUT_FILE_MAX_BYTES"`
	InputTotalBytes    int64         `env:"INPUT_TOTAL_MAX_BYTES"`
	InputTimeout       time.Duration `env:"INPUT_TIMEOUT"`
	InputAllowHosts    []string      `env:"INPUT_ALLOW_HOSTS"`
	InputAllowCIDRs    []string      `env:"INPUT_ALLOW_CIDRS"`

	RedisURL  string `env:"REDIS_URL"` // empty: the memory store, a single instance
	LogLevel  string `env:"LOG_LEVEL"`
	LogFormat string `env:"LOG_FORMAT"` // text | json (read by cmd/codegw)

	// Operations: see package metrics and gateway's quotas and drain.
	MetricsKey          string  `env:"METRICS_KEY"`            // bearer token for /metrics; empty: loopback callers only
	RateLimit           float64 `env:"RATE_LIMIT"`             // API requests per second per key; 0: unlimited
	RateBurst           int     `env:"RATE_BURST"`             // token bucket size; 0: one second's worth
	MaxExecutionsPerKey int     `env:"MAX_EXECUTIONS_PER_KEY"` // executions at once per key, every way in; 0: unlimited
	// MaxKernelMemoryPerKey bounds the memory of the kernels one key holds
	// on this instance (sessions, stateless executions), each counted at
	// KERNEL_MEMORY; 0: unlimited. It needs a per-kernel limit the
	// executor enforces: Open refuses it for kernels without one.
	MaxKernelMemoryPerKey Bytes         `env:"MAX_KERNEL_MEMORY_PER_KEY"`
	DrainTimeout          time.Duration `env:"DRAIN_TIMEOUT"` // how long SIGTERM waits for running executions

	// Multi-instance (REDIS_URL set): see package cluster.
	InternalAddr  string        `env:"INTERNAL_ADDR"`  // URL other instances reach this one at; "{ip}" is this host's address
	InstanceTTL   time.Duration `env:"INSTANCE_TTL"`   // registry entry lifetime; heartbeats every TTL/3
	ClusterSecret string        `env:"CLUSTER_SECRET"` // shared by the instances; authenticates forwarded requests

	// Provisioner, when set, starts the kernels instead of one opened from
	// Executor; the caller keeps it (Close leaves it open).
	Provisioner kernel.Provisioner `env:"-"`
	// Capabilities, when set, is served at /capabilities instead of the
	// facts probed in a kernel at start (no probe runs).
	Capabilities func() any `env:"-"`
	// Logger defaults to slog.Default().
	Logger *slog.Logger `env:"-"`
	// WarmUp is the cell pool kernels run before they are handed out.
	WarmUp string `env:"-"`
	// HeartbeatTimeout is the kernel clients' (0: kernel's default).
	HeartbeatTimeout time.Duration `env:"-"`
	// InterruptGrace, ReplayEvents: see session.Config.
	InterruptGrace time.Duration `env:"-"`
	ReplayEvents   int           `env:"-"`
	// BodyLimit, UploadLimit, PingInterval: see gateway.Config (0: its
	// defaults).
	BodyLimit    int           `env:"-"`
	UploadLimit  int64         `env:"-"`
	PingInterval time.Duration `env:"-"`
}

// Bytes is a byte count; read from the environment it may carry a unit
// (512m, 1g: powers of 1024).
type Bytes int64

// DefaultConfig runs on a laptop: local sandboxed kernels, memory store.
// Limits are the defaults of the packages that own them.
func DefaultConfig() Config {
	s := session.DefaultConfig()
	in := files.DefaultFetchLimits()
	out := files.DefaultOutputLimits()
	d := docker.DefaultConfig()
	return Config{
		Host: "127.0.0.1", Port: 14564,
		Executor: "local", PoolSize: 2, PoolStarts: 2,
		Sandbox: "auto", KernelStart: local.StartFork,
		DockerImage: d.Image, NetworkMode: d.NetworkMode, PidsLimit: d.PidsLimit,
		MemoryBytes: 1 << 30, CPUs: 1, InstanceID: d.InstanceID,

		MaxWorkers: s.MaxWorkers, MaxQueue: s.MaxQueue, QueueTimeout: s.QueueTimeout,
		ExecutionTimeout: s.ExecTimeout, MaxOutputBytes: s.MaxOutputBytes,
		SessionIdle: s.SessionIdle, MaxSessions: s.MaxSessions, MaxSessionsPerKey: s.MaxSessionsPerKey,
		InterruptGrace: s.InterruptGrace, ReplayEvents: s.ReplayEvents,

		ImageStorePath: "./data/images", ImageURLPrefix: "/images",
		FileStorePath: "./data/files", FileURLPrefix: "/files",
		Retention: 24 * time.Hour,

		OutputAllowedExt: out.AllowedExt, OutputMaxFiles: out.MaxFiles,
		OutputFileMaxBytes: out.MaxFileBytes, OutputTotalBytes: out.MaxTotalBytes,
		InputMaxFiles: in.MaxFiles, InputFileMaxBytes: in.MaxFileBytes, InputTotalBytes: in.MaxTotalBytes,
		InputTimeout: in.Timeout,

		LogLevel: "info", LogFormat: "text", InstanceTTL: cluster.DefaultTTL,
		DrainTimeout: 30 * time.Second,
		WarmUp:       "pass",
	}
}

// Validate reports every setting out of range at once, each named by its
// variable.
func (c Config) Validate() error {
	var errs []error
	check := func(bad bool, format string, args ...any) {
		if bad {
			errs = append(errs, fmt.Errorf("config: "+format, args...))
		}
	}
	check(c.Executor != "local" && c.Executor != "docker" && c.Executor != "zygote", "EXECUTOR must be local, docker or zygote, not %q", c.Executor)
	check(c.Executor == "zygote" && c.ZygoteSocket == "", "EXECUTOR=zygote needs ZYGOTE_SOCKET")
	check(c.Port <= 0 || c.Port > 65535, "PORT %d out of range", c.Port)
	check(c.MaxWorkers <= 0, "MAX_WORKERS must be at least 1")
	check(c.PoolSize < 0, "POOL_SIZE must not be negative")
	check(c.ExecutionTimeout <= 0, "EXECUTION_TIMEOUT must be positive")
	check(c.InstanceTTL < 300*time.Millisecond, "INSTANCE_TTL must be at least 0.3 seconds")
	check(c.LogFormat != "text" && c.LogFormat != "json", "LOG_FORMAT must be text or json, not %q", c.LogFormat)
	check(c.RateLimit < 0, "RATE_LIMIT must not be negative")
	check(c.RateBurst < 0, "RATE_BURST must not be negative")
	check(c.MaxExecutionsPerKey < 0, "MAX_EXECUTIONS_PER_KEY must not be negative")
	check(c.DrainTimeout < 0, "DRAIN_TIMEOUT must not be negative")
	check(c.MemoryBytes < 0, "KERNEL_MEMORY must not be negative")
	check(c.MaxKernelMemoryPerKey < 0, "MAX_KERNEL_MEMORY_PER_KEY must not be negative")
	check(c.MaxKernelMemoryPerKey > 0 && c.MemoryBytes == 0, "MAX_KERNEL_MEMORY_PER_KEY needs KERNEL_MEMORY, the limit each kernel counts for")
	check(c.MaxKernelMemoryPerKey > 0 && c.MemoryBytes > 0 && c.MaxKernelMemoryPerKey < c.MemoryBytes,
		"MAX_KERNEL_MEMORY_PER_KEY (%d bytes) is less than one kernel's KERNEL_MEMORY (%d bytes): no key could run anything", c.MaxKernelMemoryPerKey, c.MemoryBytes)
	var level slog.Level
	check(level.UnmarshalText([]byte(c.LogLevel)) != nil, "LOG_LEVEL must be debug, info, warn or error, not %q", c.LogLevel)
	return errors.Join(errs...)
}
