package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/codegw/codegw/kernel"
)

// capabilities describes the runtime, probed once in a kernel of the kind
// that serves requests so that it tells the truth about that kernel.
type capabilities struct {
	cfg Config
	// start and limitMode say how kernels are made (fork, spawn)
	// and limited (cgroup, rlimit, none; Docker: container when each kernel
	// is a container of its own).
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
			"memory_enforced":           c.cfg.MemoryBytes > 0 && c.limitMode != "none",
			"max_kernel_memory_per_key": c.cfg.MaxKernelMemoryPerKey,
			"max_executions_per_key":    c.cfg.MaxExecutionsPerKey,
			"rate_limit":                c.cfg.RateLimit,
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
