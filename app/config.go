package app

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/codegw/codegw/cluster"
	"github.com/codegw/codegw/gateway"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/inputs"
	"github.com/codegw/codegw/session/outputs"
	"github.com/codegw/codegw/store"
)

// Config is every setting of the service. The env tags name the
// environment variables cmd/codegw reads them from (the original
// project's names); each field's comment says what it does and ends with
// its default, the value DefaultConfig sets (TestConfigDocs checks both,
// and the README's configuration table is generated from them:
// TestReadmeConfig). Fields tagged "-" are for programs that build the app
// in-process (tests, benchmarks). Durations read from the environment are
// seconds or Go durations; lists are comma-separated; Bytes take a unit.
type Config struct {
	// Host is the address the HTTP server listens on. Default: 127.0.0.1.
	Host string `env:"HOST"`
	// Port is the port the HTTP server listens on. Default: 14564.
	Port int `env:"PORT"`
	// AllowOpen lets a server without API keys listen on an address other
	// than loopback. Default: false.
	AllowOpen bool `env:"ALLOW_OPEN"`
	// APIKeys are the keys callers send (Bearer or token); empty, the
	// server is open (loopback only unless ALLOW_OPEN). Default: none.
	APIKeys []string `env:"API_KEYS"`
	// PublicBaseURL makes image_url and file URLs absolute. Default: none
	// (URLs relative to the server).
	PublicBaseURL string `env:"PUBLIC_BASE_URL"`

	// Executor is where kernels run: local (a bubblewrap sandbox), docker
	// (containers), or zygote (forked by a fork server the gateway did not
	// start, e.g. a Kubernetes pod's zygote container: docs/kubernetes.md).
	// Default: local.
	Executor string `env:"EXECUTOR"`
	// ZygoteSocket is, with EXECUTOR=zygote, the unix socket of that fork
	// server (executor-image/zygote.py with EXECUTOR_ZYGOTE_SERVE=1); the
	// kernels' directories go beside it. Default: none (required then).
	ZygoteSocket string `env:"ZYGOTE_SOCKET"`
	// PoolSize is how many warm kernels are kept ready. Default: 2.
	PoolSize int `env:"POOL_SIZE"`
	// PoolStarts bounds concurrent kernel starts. Default: 2.
	PoolStarts int `env:"POOL_MAX_STARTING"`
	// Preload is the modules imported at kernel start; set empty, nothing
	// is preloaded. Default: numpy,pandas,matplotlib,matplotlib.pyplot (the
	// launcher's list).
	Preload []string `env:"EXECUTOR_PRELOAD"`
	// StateDir holds per-kernel directories and ipc sockets (keep it
	// short). Default: /tmp/codegw-<uid> (local), /tmp/codegw-docker
	// (docker).
	StateDir string `env:"STATE_DIR"`

	// Python is the local kernels' interpreter, with ipykernel. Default:
	// /usr/bin/python3.
	Python string `env:"KERNEL_PYTHON"`
	// Sandbox is the local kernels' sandbox: auto (bwrap when installed,
	// else a loud warning), bwrap or none. Default: auto.
	Sandbox string `env:"SANDBOX"`
	// KernelStart is how kernels start: fork (from a zygote that loaded the
	// data stack once; docker: a zygote container; needs a root gateway,
	// else spawn with a warning) or spawn (a cold start each; docker: a
	// container per kernel). Default: fork.
	KernelStart string `env:"KERNEL_START"`
	// StatelessKernel is the kernel of stateless calls (POST /api/v1/execute,
	// MCP's fresh runs, codegw run): oneshot (a child of the zygote that runs
	// the one cell in the zygote's prepared IPython shell: the cost of a
	// fork, not of a kernel) or kernel (a full ipykernel, as sessions and the
	// Jupyter API always have). Kernels that are spawned (KERNEL_START=spawn,
	// or a gateway that is not root) are full kernels either way;
	// /capabilities says which is in use (stateless_kernel). Default: oneshot.
	StatelessKernel string `env:"STATELESS_KERNEL"`
	// DockerImage is the executor image. Default: codegw/executor:latest.
	DockerImage string `env:"DOCKER_IMAGE"`
	// NetworkMode is the kernel containers' network. Default: none.
	NetworkMode string `env:"DOCKER_NETWORK_MODE"`
	// PidsLimit bounds the processes of a container, and of each forked
	// kernel (cgroup v1 where writable, else RLIMIT_NPROC). Default: 256.
	PidsLimit int64 `env:"DOCKER_PIDS_LIMIT"`
	// MemoryBytes bounds a container's memory (swap = memory), and each
	// forked kernel's (cgroup v1 where writable, else RLIMIT_AS); it is
	// also what a kernel counts for in MAX_KERNEL_MEMORY_PER_KEY. Default:
	// 1g.
	MemoryBytes Bytes `env:"KERNEL_MEMORY"`
	// CPUs bounds a container's CPU (not forked kernels'). Default: 1.
	CPUs float64 `env:"KERNEL_CPUS"`
	// InstanceID names and labels this instance's containers; it must be
	// unique per replica. Default: the hostname.
	InstanceID string `env:"EXECUTOR_INSTANCE_ID"`

	// MaxWorkers bounds the executions running at once. Default: 4.
	MaxWorkers int `env:"MAX_WORKERS"`
	// MaxQueue bounds the executions waiting for a worker (429 when full).
	// Default: 64.
	MaxQueue int `env:"MAX_QUEUE"`
	// QueueTimeout is how long an execution waits for a worker (then 503).
	// Default: 30.
	QueueTimeout time.Duration `env:"QUEUE_TIMEOUT"`
	// ExecutionTimeout caps every execution; a request's timeout may only
	// lower it. Default: 120.
	ExecutionTimeout time.Duration `env:"EXECUTION_TIMEOUT"`
	// MaxOutputBytes bounds all the text of one answer (stdout, stderr,
	// result, error, rich text outputs, traceback) as JSON bytes; the rest
	// is dropped and truncated set. Default: 1048576.
	MaxOutputBytes int `env:"MAX_OUTPUT_BYTES"`
	// SessionIdle is how long a session may stay idle before it is closed.
	// Default: 1800.
	SessionIdle time.Duration `env:"SESSION_IDLE_TIMEOUT"`
	// MaxSessions bounds the sessions of this instance. Default: 100.
	MaxSessions int `env:"MAX_SESSIONS"`
	// MaxSessionsPerKey bounds one key's sessions across instances.
	// Default: 20.
	MaxSessionsPerKey int `env:"MAX_SESSIONS_PER_KEY"`

	// SnapshotDir holds session snapshots (pause, resume, checkpoints:
	// docs/snapshots.md); a volume shared by every instance when several
	// run. Set it empty to turn snapshots off. Default: ./data/snapshots.
	SnapshotDir string `env:"SNAPSHOT_DIR"`
	// SnapshotS3Bucket is, when set, the bucket of an S3-compatible object
	// store that keeps the snapshots instead of SNAPSHOT_DIR (shared by every
	// instance: docs/snapshots.md). Default: none.
	SnapshotS3Bucket string `env:"SNAPSHOT_S3_BUCKET"`
	// SnapshotS3Endpoint is the object store's host:port or URL (http://
	// for no TLS). Default: none.
	SnapshotS3Endpoint string `env:"SNAPSHOT_S3_ENDPOINT"`
	// SnapshotS3Prefix starts every key the snapshots use in the bucket.
	// Default: codegw/.
	SnapshotS3Prefix string `env:"SNAPSHOT_S3_PREFIX"`
	// SnapshotS3Region is the bucket's region. Default: us-east-1.
	SnapshotS3Region string `env:"SNAPSHOT_S3_REGION"`
	// SnapshotS3AccessKey is the object store's access key. Default: none.
	SnapshotS3AccessKey string `env:"SNAPSHOT_S3_ACCESS_KEY"`
	// SnapshotS3SecretKey is the object store's secret key. Default: none.
	SnapshotS3SecretKey string `env:"SNAPSHOT_S3_SECRET_KEY"`
	// MaxSnapshotBytes bounds one snapshot (the variables and the /code
	// tree, before compression); a larger one is refused with 413 and the
	// session runs on. Default: 2g.
	MaxSnapshotBytes Bytes `env:"MAX_SNAPSHOT_BYTES"`
	// MaxSnapshotBytesPerKey bounds the stored snapshots of one key (429
	// over it). Default: 0 (unlimited).
	MaxSnapshotBytesPerKey Bytes `env:"MAX_SNAPSHOT_BYTES_PER_KEY"`
	// IdleAction is what happens to a session idle past its timeout:
	// delete, or pause (its state kept in a snapshot, resumed by its next
	// use). Default: delete.
	IdleAction string `env:"IDLE_ACTION"`
	// PausedTTL deletes a paused session and its snapshots this long after
	// its pause (0: kept until deleted). Default: 604800 (7 days).
	PausedTTL time.Duration `env:"PAUSED_TTL"`
	// CheckpointAfter takes a checkpoint of a session once it has been idle
	// this long after an execution, so that if its instance dies it resumes
	// elsewhere from there (0: never). Default: 0.
	CheckpointAfter time.Duration `env:"CHECKPOINT_AFTER"`

	// ImageStorePath is the directory of stored images. Default:
	// ./data/images.
	ImageStorePath string `env:"IMAGE_STORE_PATH"`
	// ImageURLPrefix is the URL path stored images are served under.
	// Default: /images.
	ImageURLPrefix string `env:"IMAGE_URL_PREFIX"`
	// FileStorePath is the directory of stored output files. Default:
	// ./data/files.
	FileStorePath string `env:"FILE_STORE_PATH"`
	// FileURLPrefix is the URL path stored output files are served under.
	// Default: /files.
	FileURLPrefix string `env:"FILE_URL_PREFIX"`
	// Retention is how long stored images and files are kept. Default:
	// 86400.
	Retention time.Duration `env:"STORE_RETENTION"`

	// OutputAllowedExt are the extensions of the output files collected.
	// Default: md,csv,txt,json,log.
	OutputAllowedExt []string `env:"OUTPUT_ALLOWED_EXTENSIONS"`
	// OutputMaxFiles bounds the output files collected per execution.
	// Default: 10.
	OutputMaxFiles int `env:"OUTPUT_MAX_FILES"`
	// OutputFileMaxBytes bounds one output file. Default: 10485760 (10
	// MiB).
	OutputFileMaxBytes int64 `env:"OUTPUT_FILE_MAX_BYTES"`
	// OutputTotalBytes bounds an execution's output files together.
	// Default: 52428800 (50 MiB).
	OutputTotalBytes int64 `env:"OUTPUT_TOTAL_MAX_BYTES"`
	// InputMaxFiles bounds the input URLs of one execution. Default: 5.
	InputMaxFiles int `env:"INPUT_MAX_FILES"`
	// InputFileMaxBytes bounds one input file. Default: 52428800 (50 MiB).
	InputFileMaxBytes int64 `env:"INPUT_FILE_MAX_BYTES"`
	// InputTotalBytes bounds an execution's input files together. Default:
	// 104857600 (100 MiB).
	InputTotalBytes int64 `env:"INPUT_TOTAL_MAX_BYTES"`
	// InputTimeout bounds the download of an execution's input files.
	// Default: 60.
	InputTimeout time.Duration `env:"INPUT_TIMEOUT"`
	// InputAllowHosts admits these internal host names for input
	// downloads. Default: none.
	InputAllowHosts []string `env:"INPUT_ALLOW_HOSTS"`
	// InputAllowCIDRs admits these internal addresses for input downloads.
	// Default: none.
	InputAllowCIDRs []string `env:"INPUT_ALLOW_CIDRS"`

	// RedisURL keeps sessions in Redis (redis://host:6379/0), for several
	// instances; empty, the memory store of a single instance. Default:
	// none.
	RedisURL string `env:"REDIS_URL"`
	// LogLevel is the lowest level logged: debug, info, warn or error.
	// Default: info.
	LogLevel string `env:"LOG_LEVEL"`
	// LogFormat is the log lines' format: text, or json for one JSON
	// object per line (read by cmd/codegw). Default: text.
	LogFormat string `env:"LOG_FORMAT"`

	// Operations: see package metrics and gateway's quotas and drain.

	// MetricsKey is the bearer token for GET /metrics; empty, /metrics
	// answers loopback callers only. Default: none.
	MetricsKey string `env:"METRICS_KEY"`
	// RateLimit is the API requests per second per key (a token bucket);
	// past it 429 limit with Retry-After. Default: 0 (unlimited).
	RateLimit float64 `env:"RATE_LIMIT"`
	// RateBurst is the token bucket's size. Default: 0 (one second's
	// worth).
	RateBurst int `env:"RATE_BURST"`
	// MaxExecutionsPerKey bounds the executions one key runs (or has
	// queued) at once on this instance, every way in: REST, NDJSON,
	// session and Jupyter websockets, MCP. Default: 0 (unlimited).
	MaxExecutionsPerKey int `env:"MAX_EXECUTIONS_PER_KEY"`
	// MaxKernelMemoryPerKey bounds the memory of the kernels one key holds
	// on this instance (sessions, stateless executions), each counted at
	// KERNEL_MEMORY. It needs a per-kernel limit the executor enforces:
	// the service refuses to start with it for kernels without one.
	// Default: 0 (unlimited).
	MaxKernelMemoryPerKey Bytes `env:"MAX_KERNEL_MEMORY_PER_KEY"`
	// DrainTimeout is how long, on SIGTERM, running executions may finish
	// before the sessions and kernels are stopped. Default: 30.
	DrainTimeout time.Duration `env:"DRAIN_TIMEOUT"`

	// DifyNetwork is what a run of Dify's sandbox API (/v1/sandbox/run)
	// asking for "enable_network": true gets (Dify's code node always
	// asks): refuse answers dify-sandbox's "network is disabled" error;
	// offline runs it without network, as every kernel runs; allow runs it
	// with the kernels' network (EXECUTOR=docker with DOCKER_NETWORK_MODE
	// other than none only). Default: refuse.
	DifyNetwork string `env:"DIFY_NETWORK"`
	// DifyTimeout bounds each Dify run, within EXECUTION_TIMEOUT (seconds;
	// dify-sandbox's worker_timeout). Default: 15.
	DifyTimeout time.Duration `env:"DIFY_TIMEOUT"`
	// LibreChatStorePath holds the files of LibreChat's Code Interpreter
	// sessions (/librechat), one directory per key and session, removed
	// after STORE_RETENTION untouched. Default: ./data/librechat.
	LibreChatStorePath string `env:"LIBRECHAT_STORE_PATH"`

	// Multi-instance (REDIS_URL set): see package cluster.

	// InternalAddr is the URL other instances reach this one at (required
	// when HOST=0.0.0.0); {ip} is replaced by this host's address.
	// Default: http://HOST:PORT.
	InternalAddr string `env:"INTERNAL_ADDR"`
	// InstanceTTL is how long an instance's registry entry lives;
	// heartbeats come every TTL/3. Default: 15.
	InstanceTTL time.Duration `env:"INSTANCE_TTL"`
	// ClusterSecret authenticates the requests instances forward to each
	// other; every instance has the same. Default: none (a warning).
	ClusterSecret string `env:"CLUSTER_SECRET"`

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
	// BodyLimit, UploadLimit, PingInterval: see gateway.Config.
	BodyLimit    int           `env:"-"`
	UploadLimit  int64         `env:"-"`
	PingInterval time.Duration `env:"-"`
}

// Bytes is a byte count; read from the environment it may carry a unit
// (512m, 1g: powers of 1024).
type Bytes int64

// The kinds of kernel of stateless calls (STATELESS_KERNEL).
const (
	StatelessOneShot = "oneshot" // a zygote's child that runs one cell
	StatelessFull    = "kernel"  // a full ipykernel
)

// DefaultConfig runs on a laptop: local sandboxed kernels, memory store.
// Limits are the defaults of the packages that own them.
func DefaultConfig() Config {
	s := session.DefaultConfig()
	in := inputs.DefaultFetchLimits()
	out := outputs.DefaultLimits()
	d := docker.DefaultConfig()
	return Config{
		Host: "127.0.0.1", Port: 14564,
		Executor: "local", PoolSize: 2, PoolStarts: kernel.DefaultMaxStarting,
		Python: local.DefaultPython, Sandbox: local.SandboxAuto, KernelStart: local.StartFork, StatelessKernel: StatelessOneShot,
		DockerImage: d.Image, NetworkMode: d.NetworkMode, PidsLimit: d.PidsLimit,
		MemoryBytes: 1 << 30, CPUs: 1, InstanceID: d.InstanceID,

		MaxWorkers: s.MaxWorkers, MaxQueue: s.MaxQueue, QueueTimeout: s.QueueTimeout,
		ExecutionTimeout: s.ExecTimeout, MaxOutputBytes: s.MaxOutputBytes,
		SessionIdle: s.SessionIdle, MaxSessions: s.MaxSessions, MaxSessionsPerKey: s.MaxSessionsPerKey,
		SnapshotDir: "./data/snapshots", MaxSnapshotBytes: Bytes(s.MaxSnapshotBytes), IdleAction: s.IdleAction,
		PausedTTL: 7 * 24 * time.Hour, SnapshotS3Prefix: "codegw/", SnapshotS3Region: "us-east-1",
		InterruptGrace: s.InterruptGrace, ReplayEvents: s.ReplayEvents,

		ImageStorePath: "./data/images", ImageURLPrefix: "/images",
		FileStorePath: "./data/files", FileURLPrefix: "/files",
		Retention: 24 * time.Hour, LibreChatStorePath: "./data/librechat",

		OutputAllowedExt: out.AllowedExt, OutputMaxFiles: out.MaxFiles,
		OutputFileMaxBytes: out.MaxFileBytes, OutputTotalBytes: out.MaxTotalBytes,
		InputMaxFiles: in.MaxFiles, InputFileMaxBytes: in.MaxFileBytes, InputTotalBytes: in.MaxTotalBytes,
		InputTimeout: in.Timeout,

		LogLevel: "info", LogFormat: "text", InstanceTTL: cluster.DefaultTTL,
		DrainTimeout: 30 * time.Second,
		DifyNetwork:  "refuse", DifyTimeout: 15 * time.Second,
		WarmUp:    "pass",
		BodyLimit: gateway.DefaultBodyLimit, UploadLimit: gateway.DefaultUploadLimit,
		PingInterval: gateway.DefaultPingInterval,
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
	check(c.StatelessKernel != StatelessOneShot && c.StatelessKernel != StatelessFull, "STATELESS_KERNEL must be oneshot or kernel, not %q", c.StatelessKernel)
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
	check(c.DifyNetwork != "" && c.DifyNetwork != "refuse" && c.DifyNetwork != "offline" && c.DifyNetwork != "allow",
		"DIFY_NETWORK must be refuse, offline or allow, not %q", c.DifyNetwork)
	check(c.DifyNetwork == "allow" && (c.Executor != "docker" || c.NetworkMode == "" || c.NetworkMode == "none"),
		"DIFY_NETWORK=allow needs kernels with a network (EXECUTOR=docker and DOCKER_NETWORK_MODE other than none); use offline or refuse")
	check(c.DifyTimeout < 0, "DIFY_TIMEOUT must not be negative")
	check(c.IdleAction != "delete" && c.IdleAction != "pause", "IDLE_ACTION must be delete or pause, not %q", c.IdleAction)
	check(c.IdleAction == "pause" && c.SnapshotDir == "" && c.SnapshotS3Bucket == "", "IDLE_ACTION=pause needs SNAPSHOT_DIR or SNAPSHOT_S3_BUCKET")
	check(c.SnapshotS3Bucket != "" && c.SnapshotS3Endpoint == "", "SNAPSHOT_S3_BUCKET needs SNAPSHOT_S3_ENDPOINT")
	check(c.MaxSnapshotBytes <= 0, "MAX_SNAPSHOT_BYTES must be positive")
	check(c.MaxSnapshotBytesPerKey < 0, "MAX_SNAPSHOT_BYTES_PER_KEY must not be negative")
	check(c.PausedTTL < 0 || c.CheckpointAfter < 0, "PAUSED_TTL and CHECKPOINT_AFTER must not be negative")
	check(c.InstanceID == store.Paused, "EXECUTOR_INSTANCE_ID %q is reserved", store.Paused)
	var level slog.Level
	check(level.UnmarshalText([]byte(c.LogLevel)) != nil, "LOG_LEVEL must be debug, info, warn or error, not %q", c.LogLevel)
	return errors.Join(errs...)
}
