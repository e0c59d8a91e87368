package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/joho/godotenv"
)

// Config is every setting of the gateway, read from the environment (and a
// .env file) in one place. Names of the original project are kept.
type Config struct {
	Host          string // HOST: listen address (default 127.0.0.1)
	Port          int    // PORT
	AllowOpen     bool   // ALLOW_OPEN: serve without API keys on a non-loopback address
	APIKeys       []string
	PublicBaseURL string

	Executor   string // EXECUTOR: local | docker
	PoolSize   int    // POOL_SIZE: warm kernels kept ready
	PoolStarts int    // POOL_MAX_STARTING: concurrent kernel starts
	Preload    []string
	StateDir   string

	Python      string // KERNEL_PYTHON
	Sandbox     string // SANDBOX: auto | bwrap | none
	KernelStart string // KERNEL_START: fork | spawn (local executor)
	DockerImage string
	NetworkMode string
	PidsLimit   int64
	MemoryBytes int64
	CPUs        float64
	InstanceID  string

	MaxWorkers        int
	MaxQueue          int
	QueueTimeout      time.Duration
	ExecutionTimeout  time.Duration
	MaxOutputBytes    int
	SessionIdle       time.Duration
	MaxSessions       int
	MaxSessionsPerKey int

	ImageStorePath string
	ImageURLPrefix string
	FileStorePath  string
	FileURLPrefix  string
	Retention      time.Duration

	OutputAllowedExt   []string
	OutputMaxFiles     int
	OutputFileMaxBytes int64
	OutputTotalBytes   int64
	InputMaxFiles      int
	InputFileMaxBytes  int64
	InputTotalBytes    int64
	InputTimeout       time.Duration
	InputAllowHosts    []string
	InputAllowCIDRs    []string

	RedisURL string
	LogLevel string

	// Multi-instance (REDIS_URL set): see cluster.go.
	InternalAddr  string        // INTERNAL_ADDR: URL other instances reach this one at; "{ip}" is this host's address
	InstanceTTL   time.Duration // INSTANCE_TTL: registry entry lifetime; heartbeats every TTL/3
	ClusterSecret string        // CLUSTER_SECRET: shared by the instances; authenticates forwarded requests
}

// DefaultConfig runs on a laptop: local sandboxed kernels, memory store.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Host: "127.0.0.1", Port: 14564,
		Executor: "local", PoolSize: 2, PoolStarts: 2,
		Python: "/usr/bin/python3", Sandbox: "auto", KernelStart: "fork",
		DockerImage: "codegw/executor:latest", NetworkMode: "none", PidsLimit: 256,
		MemoryBytes: 1 << 30, CPUs: 1, InstanceID: host,
		MaxWorkers: 4, MaxQueue: 64, QueueTimeout: 30 * time.Second,
		ExecutionTimeout: 120 * time.Second, MaxOutputBytes: 1 << 20,
		SessionIdle: 30 * time.Minute, MaxSessions: 100, MaxSessionsPerKey: 20,
		ImageStorePath: "./data/images", ImageURLPrefix: "/images",
		FileStorePath: "./data/files", FileURLPrefix: "/files",
		Retention:        24 * time.Hour,
		OutputAllowedExt: []string{"md", "csv", "txt", "json", "log"}, OutputMaxFiles: 10,
		OutputFileMaxBytes: 10 << 20, OutputTotalBytes: 50 << 20,
		InputMaxFiles: 5, InputFileMaxBytes: 50 << 20, InputTotalBytes: 100 << 20, InputTimeout: 60 * time.Second,
		LogLevel: "info", InstanceTTL: 15 * time.Second,
	}
}

// LoadConfig reads .env (when present) and the environment over the defaults.
func LoadConfig() (Config, error) {
	_ = godotenv.Load() // a missing .env is fine; real env wins
	c := DefaultConfig()
	e := envReader{}
	e.str("HOST", &c.Host)
	e.int("PORT", &c.Port)
	e.bool("ALLOW_OPEN", &c.AllowOpen)
	e.list("API_KEYS", &c.APIKeys)
	e.str("PUBLIC_BASE_URL", &c.PublicBaseURL)
	e.str("EXECUTOR", &c.Executor)
	e.int("POOL_SIZE", &c.PoolSize)
	e.int("POOL_MAX_STARTING", &c.PoolStarts)
	if v, ok := os.LookupEnv("EXECUTOR_PRELOAD"); ok {
		c.Preload = splitList(v)
		if c.Preload == nil {
			c.Preload = []string{}
		}
	}
	e.str("STATE_DIR", &c.StateDir)
	e.str("KERNEL_PYTHON", &c.Python)
	e.str("SANDBOX", &c.Sandbox)
	e.str("KERNEL_START", &c.KernelStart)
	e.str("DOCKER_IMAGE", &c.DockerImage)
	e.str("DOCKER_NETWORK_MODE", &c.NetworkMode)
	e.int64("DOCKER_PIDS_LIMIT", &c.PidsLimit)
	e.bytes("KERNEL_MEMORY", &c.MemoryBytes)
	e.float("KERNEL_CPUS", &c.CPUs)
	e.str("EXECUTOR_INSTANCE_ID", &c.InstanceID)
	e.int("MAX_WORKERS", &c.MaxWorkers)
	e.int("MAX_QUEUE", &c.MaxQueue)
	e.seconds("QUEUE_TIMEOUT", &c.QueueTimeout)
	e.seconds("EXECUTION_TIMEOUT", &c.ExecutionTimeout)
	e.int("MAX_OUTPUT_BYTES", &c.MaxOutputBytes)
	e.seconds("SESSION_IDLE_TIMEOUT", &c.SessionIdle)
	e.int("MAX_SESSIONS", &c.MaxSessions)
	e.int("MAX_SESSIONS_PER_KEY", &c.MaxSessionsPerKey)
	e.str("IMAGE_STORE_PATH", &c.ImageStorePath)
	e.str("IMAGE_URL_PREFIX", &c.ImageURLPrefix)
	e.str("FILE_STORE_PATH", &c.FileStorePath)
	e.str("FILE_URL_PREFIX", &c.FileURLPrefix)
	e.seconds("STORE_RETENTION", &c.Retention)
	e.list("OUTPUT_ALLOWED_EXTENSIONS", &c.OutputAllowedExt)
	e.int("OUTPUT_MAX_FILES", &c.OutputMaxFiles)
	e.int64("OUTPUT_FILE_MAX_BYTES", &c.OutputFileMaxBytes)
	e.int64("OUTPUT_TOTAL_MAX_BYTES", &c.OutputTotalBytes)
	e.int("INPUT_MAX_FILES", &c.InputMaxFiles)
	e.int64("INPUT_FILE_MAX_BYTES", &c.InputFileMaxBytes)
	e.int64("INPUT_TOTAL_MAX_BYTES", &c.InputTotalBytes)
	e.seconds("INPUT_TIMEOUT", &c.InputTimeout)
	e.list("INPUT_ALLOW_HOSTS", &c.InputAllowHosts)
	e.list("INPUT_ALLOW_CIDRS", &c.InputAllowCIDRs)
	e.str("REDIS_URL", &c.RedisURL)
	e.str("LOG_LEVEL", &c.LogLevel)
	e.str("INTERNAL_ADDR", &c.InternalAddr)
	e.seconds("INSTANCE_TTL", &c.InstanceTTL)
	e.str("CLUSTER_SECRET", &c.ClusterSecret)
	if len(e.errs) > 0 {
		return c, fmt.Errorf("config: %s", strings.Join(e.errs, "; "))
	}
	return c, c.validate()
}

func (c Config) validate() error {
	switch {
	case c.Executor != "local" && c.Executor != "docker":
		return fmt.Errorf("config: EXECUTOR must be local or docker, not %q", c.Executor)
	case c.Port <= 0 || c.Port > 65535:
		return fmt.Errorf("config: PORT %d out of range", c.Port)
	case c.MaxWorkers <= 0:
		return fmt.Errorf("config: MAX_WORKERS must be at least 1")
	case c.PoolSize < 0:
		return fmt.Errorf("config: POOL_SIZE must not be negative")
	case c.ExecutionTimeout <= 0:
		return fmt.Errorf("config: EXECUTION_TIMEOUT must be positive")
	case c.InstanceTTL < 300*time.Millisecond:
		return fmt.Errorf("config: INSTANCE_TTL must be at least 0.3 seconds")
	}
	return nil
}

// envReader parses variables, collecting every error so that one run names
// them all.
type envReader struct{ errs []string }

func (e *envReader) lookup(name string) (string, bool) {
	v, ok := os.LookupEnv(name)
	return strings.TrimSpace(v), ok && strings.TrimSpace(v) != ""
}

func (e *envReader) str(name string, dst *string) {
	if v, ok := e.lookup(name); ok {
		*dst = v
	}
}

func (e *envReader) int(name string, dst *int) {
	if v, ok := e.lookup(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Sprintf("%s=%q is not an integer", name, v))
			return
		}
		*dst = n
	}
}

func (e *envReader) int64(name string, dst *int64) {
	if v, ok := e.lookup(name); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Sprintf("%s=%q is not an integer", name, v))
			return
		}
		*dst = n
	}
}

func (e *envReader) float(name string, dst *float64) {
	if v, ok := e.lookup(name); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Sprintf("%s=%q is not a number", name, v))
			return
		}
		*dst = f
	}
}

func (e *envReader) bool(name string, dst *bool) {
	if v, ok := e.lookup(name); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Sprintf("%s=%q is not a boolean", name, v))
			return
		}
		*dst = b
	}
}

// seconds reads a number of seconds ("30", "1.5") or a Go duration ("2m").
func (e *envReader) seconds(name string, dst *time.Duration) {
	if v, ok := e.lookup(name); ok {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			*dst = time.Duration(f * float64(time.Second))
			return
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Sprintf("%s=%q is not a number of seconds or a duration", name, v))
			return
		}
		*dst = d
	}
}

// bytes reads a byte count with an optional k/m/g suffix.
func (e *envReader) bytes(name string, dst *int64) {
	v, ok := e.lookup(name)
	if !ok {
		return
	}
	mult := int64(1)
	switch strings.ToLower(v[len(v)-1:]) {
	case "k":
		mult = 1 << 10
	case "m":
		mult = 1 << 20
	case "g":
		mult = 1 << 30
	}
	if mult > 1 {
		v = v[:len(v)-1]
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		e.errs = append(e.errs, fmt.Sprintf("%s is not a byte count like 512m", name))
		return
	}
	*dst = n * mult
}

func (e *envReader) list(name string, dst *[]string) {
	if v, ok := e.lookup(name); ok {
		*dst = splitList(v)
	}
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
