package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strconv"
	"strings"
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
	// stateless is the kernel of stateless calls in use: oneshot or kernel.
	stateless string
	launch    func(context.Context) (*kernel.Kernel, error)
	log       *slog.Logger

	mu    sync.Mutex
	facts map[string]any
	// probeErr is why the probe failed ("" once it succeeded), for the
	// original project's networkPolicy.introspection.
	probeErr string
}

// oneShotMaker is implemented by provisioners that can make one-shot
// kernels (kernel.Spec.OneShot).
type oneShotMaker interface{ MakesOneShots() bool }

// startModer is implemented by local.Provisioner.
type startModer interface {
	StartMode() string
	LimitMode() string
}

// probeCode prints the kernel's facts as JSON: its Python, its packages
// ("name==version") and the Node.js version it can run (null without node).
const probeCode = `import sys, json, shutil, subprocess, importlib.metadata as _m
_node = shutil.which("node")
_nv = subprocess.run([_node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip().lstrip("v") if _node else None
print(json.dumps({"python_version": sys.version.split()[0], "node_version": _nv or None, "packages": sorted({(d.metadata["Name"] or "").lower() + "==" + d.version for d in _m.distributions() if d.metadata["Name"]})}))`

func (c *capabilities) probe(ctx context.Context) {
	k, err := c.launch(ctx)
	if err != nil {
		c.log.Warn("capabilities probe: kernel start failed", "err", err)
		c.fail("kernel start failed: " + err.Error())
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
		c.fail("probe failed")
		return
	}
	c.mu.Lock()
	c.facts = res
	c.probeErr = ""
	c.mu.Unlock()
}

func (c *capabilities) fail(msg string) {
	c.mu.Lock()
	c.probeErr = msg
	c.mu.Unlock()
}

func (c *capabilities) get() any {
	c.mu.Lock()
	p, probeErr := c.facts, c.probeErr
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
	if c.stateless != "" {
		out["stateless_kernel"] = c.stateless
	}
	if c.start != "" {
		out["kernel_start"] = c.start
		out["limits"].(map[string]any)["kernel_limits"] = c.limitMode
	}
	for k, v := range p {
		out[k] = v
	}
	if p == nil && probeErr == "" {
		probeErr = "the runtime probe has not finished"
	}
	addOriginalFields(out, c.cfg, probeErr)
	return out
}

// addOriginalFields adds, beside codegw's own fields, the ones the original
// project's newest /capabilities serves (camelCase), derived from them:
// pythonVersion, installedPackages [{name, version}], limits' maxConcurrency,
// executionTimeoutSeconds, container, input and output, and networkPolicy.
// It also lists the languages: python, and javascript when the kernels
// have Node.js. facts is the map get builds; probeErr is why the probe
// failed ("" when it succeeded).
func addOriginalFields(facts map[string]any, cfg Config, probeErr string) {
	pkgs := []map[string]string{}
	switch list := facts["packages"].(type) {
	case []string:
		for _, p := range list {
			name, version, _ := strings.Cut(p, "==")
			pkgs = append(pkgs, map[string]string{"name": name, "version": version})
		}
	case []any:
		for _, v := range list {
			if p, ok := v.(string); ok {
				name, version, _ := strings.Cut(p, "==")
				pkgs = append(pkgs, map[string]string{"name": name, "version": version})
			}
		}
	}
	facts["pythonVersion"] = facts["python_version"]
	facts["installedPackages"] = pkgs
	langs := []string{"python"}
	if v, _ := facts["node_version"].(string); v != "" {
		langs = append(langs, "javascript")
	}
	facts["languages"] = langs
	limits, _ := facts["limits"].(map[string]any)
	if limits == nil {
		limits = map[string]any{}
		facts["limits"] = limits
	}
	memory := "" // Docker's notation, as the original's "1g"
	switch m := int64(cfg.MemoryBytes); {
	case m > 0 && m%(1<<30) == 0:
		memory = strconv.FormatInt(m>>30, 10) + "g"
	case m > 0 && m%(1<<20) == 0:
		memory = strconv.FormatInt(m>>20, 10) + "m"
	case m > 0:
		memory = strconv.FormatInt(m, 10)
	}
	limits["maxConcurrency"] = cfg.MaxWorkers
	limits["executionTimeoutSeconds"] = cfg.ExecutionTimeout.Seconds()
	limits["container"] = map[string]any{"memory": memory, "cpus": cfg.CPUs, "pidsLimit": cfg.PidsLimit}
	limits["input"] = map[string]any{"maxFiles": cfg.InputMaxFiles, "maxFileBytes": cfg.InputFileMaxBytes, "totalMaxBytes": cfg.InputTotalBytes}
	ext := append([]string{}, cfg.OutputAllowedExt...)
	sort.Strings(ext)
	limits["output"] = map[string]any{"maxFiles": cfg.OutputMaxFiles, "maxFileBytes": cfg.OutputFileMaxBytes, "totalMaxBytes": cfg.OutputTotalBytes, "allowedExtensions": ext}
	mode := "none"
	if cfg.Executor == "docker" && cfg.NetworkMode != "" {
		mode = cfg.NetworkMode
	}
	introspection := map[string]any{"ok": probeErr == "", "error": nil}
	if probeErr != "" {
		introspection["error"] = probeErr
	}
	facts["networkPolicy"] = map[string]any{
		"executorNetworkMode":    mode,
		"internetAccess":         mode != "none",
		"supportsHttpInputFiles": true,
		"supportsPipInstall":     false, // Debian's packages only: no pip in the kernels
		"introspection":          introspection,
	}
}
