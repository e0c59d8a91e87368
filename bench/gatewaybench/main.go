// Command gatewaybench measures the stateless API end to end: a whole
// gateway in this process on a loopback port (local provisioner, default
// preload, warm pool, memory store) driven by a real HTTP client.
//
//	go run ./bench/gatewaybench [-n 40] [-duration 30s] [-json]
//
// Latency: POST /api/v1/execute for print(1), a pandas sum, a pandas describe() and a
// matplotlib plot, each sample taken when the pool is full, against the bare
// kernel round trip (kernel.Kernel.Execute on a warm kernel of its own) as the
// floor. Throughput: requests per second under continuous load, each on a
// fresh kernel, and the CPU seconds each request costs (the gateway process
// plus the kernels' process trees). Both ways of making local kernels,
// -start oneshot,fork,spawn (oneshot: KERNEL_START=fork with
// STATELESS_KERNEL=oneshot; fork, spawn: KERNEL_START with full kernels),
// run side by side in the same process,
// one after the other. -executor docker runs the same on the Docker
// provisioner (fork and oneshot only: kernels forked in one zygote
// container, whose cgroup's cpuacct.usage is the kernels' CPU).
// bench/README.md explains the figures.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	Python      string
	Sandbox     string
	N           int
	NHeavy      int
	Load        string
	FloorPer    int
	PoolSize    int
	MaxStarting int
	Workers     int
	Clients     int
	Duration    time.Duration
	Warmup      time.Duration
	Phases      string
	JSON        bool
	CPUProfile  string
	Verbose     bool
	WarmUpCode  string
	Start       string
	Executor    string
	Image       string
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel")
	flag.StringVar(&c.Sandbox, "sandbox", local.SandboxAuto, "kernel sandbox: auto, bwrap or none")
	flag.IntVar(&c.N, "n", 40, "latency samples of print(1) through the gateway")
	flag.IntVar(&c.NHeavy, "n-heavy", 15, "latency samples of the pandas and the plot snippets each")
	flag.IntVar(&c.FloorPer, "floor-per", 3, "floor executions interleaved with each gateway sample")
	flag.IntVar(&c.PoolSize, "pool", 2, "POOL_SIZE")
	flag.IntVar(&c.MaxStarting, "max-starting", 1, "POOL_MAX_STARTING")
	flag.IntVar(&c.Workers, "workers", 4, "MAX_WORKERS")
	flag.IntVar(&c.Clients, "clients", 0, "concurrent clients in the throughput phase (default: -workers)")
	flag.DurationVar(&c.Duration, "duration", 30*time.Second, "measured throughput window")
	flag.DurationVar(&c.Warmup, "warmup", 5*time.Second, "unmeasured load before the window (drains the pool to its steady state)")
	flag.StringVar(&c.Phases, "phases", "latency,throughput", "comma-separated phases: latency, throughput")
	flag.StringVar(&c.Load, "load", "print", "the throughput phase's snippets, one window each: print, sum, describe, plot")
	flag.BoolVar(&c.JSON, "json", false, "print the results as JSON instead of a table")
	flag.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the gateway process (throughput window) to this file")
	flag.StringVar(&c.WarmUpCode, "pool-warmup", "pass", "the pool kernels' warm-up cell (the gateway's is \"pass\")")
	flag.BoolVar(&c.Verbose, "v", false, "log gateway and provisioner events")
	flag.StringVar(&c.Start, "start", "oneshot,fork,spawn", "modes to measure, in order: oneshot (KERNEL_START=fork, STATELESS_KERNEL=oneshot), fork, spawn (KERNEL_START, with STATELESS_KERNEL=kernel)")
	flag.StringVar(&c.Executor, "executor", "local", "EXECUTOR: local, or docker (modes oneshot and fork)")
	flag.StringVar(&c.Image, "image", "codegw/executor:latest", "DOCKER_IMAGE (-executor docker)")
	flag.Parse()
	if c.Clients <= 0 {
		c.Clients = c.Workers
	}
	return c
}

func main() {
	cfg := parseFlags()
	benchkit.Main("gatewaybench", func(ctx context.Context, out io.Writer) error { return run(ctx, cfg, out) })
}

// The snippets timed through the gateway.
var snippets = []struct{ Key, Name, Code string }{
	{"print", "print(1)", "print(1)"},
	{"sum", "pandas sum", "import pandas as pd\nprint(pd.DataFrame({'a': range(1000)})['a'].sum())"},
	{"describe", "pandas describe", "import numpy as np, pandas as pd\ndf = pd.DataFrame({'a': np.arange(1000), 'b': np.random.rand(1000)})\nprint(df.describe())"},
	{"plot", "matplotlib plot", "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('bench')\nplt.show()"},
}

// Results is everything one run measured; -json prints it.
type Results struct {
	Date       time.Time         `json:"date"`
	Host       benchkit.Host     `json:"host"`
	Config     map[string]string `json:"config"`
	Latency    []Latency         `json:"latency,omitempty"`
	Target     *Target           `json:"print_target,omitempty"`
	Throughput []*Throughput     `json:"throughput,omitempty"`
}

// Latency is one snippet through the gateway next to the same snippet on
// the floor kernel, in ms.
type Latency struct {
	Snippet string         `json:"snippet"`
	Gateway benchkit.Stats `json:"gateway"`
	Floor   benchkit.Stats `json:"floor"` // kernel.Kernel.Execute on a warm kernel of its own
	// Fresh is the same code through kernel.Kernel.Execute on a kernel just
	// taken from the gateway's pool (then closed): the floor a stateless
	// call can reach, since it always runs on a fresh kernel.
	Fresh benchkit.Stats `json:"fresh_pool_kernel"`
	// ServerMs is the gateway's own execution_time (kernel execute as the
	// session manager sees it), to split the gap into kernel and HTTP.
	ServerMs benchkit.Stats `json:"server_execution_time"`
}

// Target is the print(1) target: gateway p50 within 5 ms of the floor p50.
type Target struct {
	DiffMs   float64 `json:"p50_diff_ms"`
	Ratio    float64 `json:"p50_ratio"`
	TargetMs float64 `json:"target_diff_ms"`
	Met      bool    `json:"met"`
}

// Throughput is the sustained rate with a fresh kernel per request.
type Throughput struct {
	Snippet        string         `json:"snippet"`
	Clients        int            `json:"clients"`
	Seconds        float64        `json:"seconds"`
	Requests       int            `json:"requests"`
	Errors         int            `json:"errors"`
	FirstError     string         `json:"first_error,omitempty"`
	RPS            float64        `json:"requests_per_s"`
	OriginalRPS    float64        `json:"original_requests_per_s"`
	Ratio          float64        `json:"ratio_to_original"`
	Latency        benchkit.Stats `json:"latency_ms"`
	GatewayCPU     float64        `json:"gateway_cpu_s"` // RUSAGE_SELF minus the sampler's thread
	KernelCPU      float64        `json:"kernel_cpu_s"`  // descendants, sampled from /proc
	SamplerCPU     float64        `json:"sampler_cpu_s"` // reading /proc, taken off GatewayCPU
	GatewayCPUPerR float64        `json:"gateway_cpu_ms_per_request"`
	KernelCPUPerR  float64        `json:"kernel_cpu_ms_per_request"`
	TotalCPUPerR   float64        `json:"total_cpu_ms_per_request"`
	// MachineCPU is every CPU's busy time over the window (/proc/stat):
	// the load all in, short-lived kernels and the OS's work for them
	// included, which the per-process figures miss.
	MachineCPU     float64 `json:"machine_cpu_s"`
	MachineCPUPerR float64 `json:"machine_cpu_ms_per_request"`
	CoreSeconds    float64 `json:"core_seconds_available"` // CPUs x window
}

const (
	targetDiffMs = 5.0
	originalRPS  = 4.7 // the original project's stateless throughput, as it reported it
)

func run(ctx context.Context, cfg config, out io.Writer) error {
	for _, start := range strings.Split(cfg.Start, ",") {
		if err := runStart(ctx, cfg, strings.TrimSpace(start), out); err != nil {
			return fmt.Errorf("KERNEL_START=%s: %w", start, err)
		}
	}
	return nil
}

// runStart measures one KERNEL_START mode with its own provisioner and
// gateway, and reports it.
func runStart(ctx context.Context, cfg config, mode string, out io.Writer) error {
	// "oneshot" is KERNEL_START=fork with STATELESS_KERNEL=oneshot; fork
	// and spawn take full kernels (STATELESS_KERNEL=kernel).
	start, stateless := mode, app.StatelessFull
	if mode == app.StatelessOneShot {
		start, stateless = local.StartFork, app.StatelessOneShot
	}
	level := benchkit.LogLevel(cfg.Verbose)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	phases, err := benchkit.ParsePhases(cfg.Phases, "latency", "throughput")
	if err != nil {
		return err
	}
	res := &Results{
		Date: time.Now(),
		Host: benchkit.NewHost(cfg.Python),
		Config: map[string]string{
			"executor": cfg.Executor, "sandbox": cfg.Sandbox, "preload": "default (numpy, pandas, matplotlib, pyplot)",
			"POOL_SIZE": fmt.Sprint(cfg.PoolSize), "POOL_MAX_STARTING": fmt.Sprint(cfg.MaxStarting),
			"MAX_WORKERS": fmt.Sprint(cfg.Workers), "clients": fmt.Sprint(cfg.Clients),
			"n": fmt.Sprint(cfg.N), "n_heavy": fmt.Sprint(cfg.NHeavy), "floor_per_sample": fmt.Sprint(cfg.FloorPer),
			"duration": cfg.Duration.String(), "warmup": cfg.Warmup.String(), "pool_warmup_cell": cfg.WarmUpCode,
			"KERNEL_START": start, "STATELESS_KERNEL": stateless,
		},
	}
	prov, kernelCPU, err := newProvisioner(ctx, cfg, start, log)
	if err != nil {
		return err
	}
	defer prov.Close()
	if prov.StartMode() != start {
		return fmt.Errorf("the provisioner fell back to %s", prov.StartMode())
	}
	res.Config["kernel_limits"] = prov.LimitMode()
	if cfg.Executor == "docker" {
		res.Config["DOCKER_IMAGE"] = cfg.Image
	}
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{
		Prov: prov, PoolSize: cfg.PoolSize, MaxStarting: cfg.MaxStarting, Workers: cfg.Workers,
		MaxQueue: 4 * cfg.Clients, Logger: log, WarmUp: cfg.WarmUpCode,
		Tune: func(c *app.Config) { c.StatelessKernel = stateless },
	})
	if err != nil {
		return err
	}
	defer g.Close()
	client := benchkit.HTTPClient(cfg.Clients + 4)

	if phases["latency"] {
		if err := latency(ctx, cfg, g, prov, client, log, res); err != nil {
			return fmt.Errorf("latency: %w", err)
		}
	}
	if phases["throughput"] {
		if cfg.CPUProfile != "" {
			f, err := os.Create(cfg.CPUProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			defer pprof.StopCPUProfile()
			profile = f
		}
		for _, key := range strings.Split(cfg.Load, ",") {
			i := slices.IndexFunc(snippets, func(s struct{ Key, Name, Code string }) bool { return s.Key == strings.TrimSpace(key) })
			if i < 0 {
				return fmt.Errorf("-load: no snippet %q (print, sum, describe, plot)", key)
			}
			tp, err := throughput(ctx, cfg, g, client, kernelCPU, snippets[i].Name, snippets[i].Code)
			if err != nil {
				return fmt.Errorf("throughput: %w", err)
			}
			res.Throughput = append(res.Throughput, tp)
		}
	}
	return benchkit.Report(out, cfg.JSON, &res.Host, res, func(w io.Writer) { printTable(w, res) })
}

var profile *os.File

var progress = benchkit.Progress("gatewaybench")

// latency times each snippet through the gateway with the pool full, and
// the same snippet on the floor kernel right before or after (alternating),
// so that drift in the machine's load hits both alike.
func latency(ctx context.Context, cfg config, g *benchkit.Gateway, prov kernel.Provisioner, client *http.Client, log *slog.Logger, res *Results) error {
	floor, err := benchkit.Launch(ctx, prov, nil, log)
	if err != nil {
		return fmt.Errorf("floor kernel: %w", err)
	}
	defer floor.Close(context.Background())
	floorExec := func(code string) (time.Duration, error) {
		t0 := time.Now()
		_, err := floor.Execute(ctx, code, kernel.ExecuteOptions{StoreHistory: true}, kernel.Deadline{Timeout: 60 * time.Second})
		return time.Since(t0), err
	}
	for _, s := range snippets { // untimed: imports and first-cell work on the floor kernel
		for range 3 {
			if _, err := floorExec(s.Code); err != nil {
				return fmt.Errorf("floor %s: %w", s.Name, err)
			}
		}
	}
	if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.PoolSize, 3*time.Minute); err != nil {
		return err
	}
	if _, err := g.Execute(ctx, client, "print(0)"); err != nil { // untimed: connection, first-use paths
		return err
	}
	for si, s := range snippets {
		n := cfg.N
		if si > 0 {
			n = cfg.NHeavy
		}
		progress("latency: %d x %s through the gateway, pool full before each...", n, s.Name)
		var gw, fl, server, fresh []time.Duration
		for i := range n {
			if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.PoolSize, 3*time.Minute); err != nil {
				return err
			}
			// Let the previous request's kernel teardown and the refill's
			// last messages settle.
			time.Sleep(100 * time.Millisecond)
			doFloor := func() error {
				for range cfg.FloorPer {
					d, err := floorExec(s.Code)
					if err != nil {
						return fmt.Errorf("floor %s: %w", s.Name, err)
					}
					fl = append(fl, d)
				}
				return nil
			}
			if i%2 == 0 {
				if err := doFloor(); err != nil {
					return err
				}
			}
			t0 := time.Now()
			r, err := g.Execute(ctx, client, s.Code)
			d := time.Since(t0)
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			if strings.Contains(s.Code, "plt.show()") && (r.ImageURL == nil || *r.ImageURL == "") {
				return fmt.Errorf("%s: no image_url in the answer", s.Name)
			}
			gw = append(gw, d)
			server = append(server, time.Duration(r.ExecutionTime*float64(time.Second)))
			// The same code directly on the next fresh pool kernel.
			if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.PoolSize, 3*time.Minute); err != nil {
				return err
			}
			time.Sleep(100 * time.Millisecond)
			k, err := g.Pool.Acquire(ctx)
			if err != nil {
				return err
			}
			t0 = time.Now()
			_, err = k.Execute(ctx, s.Code, kernel.ExecuteOptions{StoreHistory: true, OnMessage: func(*kernel.Message) {}}, kernel.Deadline{Timeout: 60 * time.Second})
			fresh = append(fresh, time.Since(t0))
			k.Close(context.Background())
			if err != nil {
				return fmt.Errorf("fresh kernel %s: %w", s.Name, err)
			}
			if i%2 == 1 {
				if err := doFloor(); err != nil {
					return err
				}
			}
		}
		res.Latency = append(res.Latency, Latency{Snippet: s.Name, Gateway: benchkit.Summarize(gw), Floor: benchkit.Summarize(fl), ServerMs: benchkit.Summarize(server), Fresh: benchkit.Summarize(fresh)})
	}
	p := res.Latency[0]
	diff := p.Gateway.P50 - p.Floor.P50
	res.Target = &Target{DiffMs: diff, Ratio: p.Gateway.P50 / p.Floor.P50, TargetMs: targetDiffMs, Met: diff <= targetDiffMs}
	return nil
}

// throughput runs cfg.Clients clients posting print(1) back to back: a
// warm-up that drains the pool to its steady state, then the measured window.
// Throughput is the requests completed inside the window, whenever they
// began; the CPU is what the gateway process and the kernels used inside the
// window. In the steady state both are unbiased. Requests still in flight
// when the window closes are abandoned (the gateway finishes them before
// Close returns).
func throughput(ctx context.Context, cfg config, g *benchkit.Gateway, client *http.Client, kernelCPU func() (float64, error), name, code string) (*Throughput, error) {
	if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.PoolSize, 3*time.Minute); err != nil {
		return nil, err
	}
	progress("throughput: %d clients sending %s, %v warm-up then %v measured...", cfg.Clients, name, cfg.Warmup, cfg.Duration)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		window   bool
		lat      []time.Duration
		errs     int
		firstErr string
		wg       sync.WaitGroup
	)
	for range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cctx.Err() == nil {
				t0 := time.Now()
				_, err := g.Execute(cctx, client, code)
				d := time.Since(t0)
				mu.Lock()
				if window && cctx.Err() == nil {
					if err != nil {
						errs++
						if firstErr == "" {
							firstErr = err.Error()
						}
					} else {
						lat = append(lat, d)
					}
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
	}
	var sampler *benchkit.TreeSampler
	var kcpu0 float64
	if kernelCPU == nil {
		sampler = benchkit.StartTreeSampler(100 * time.Millisecond)
	} else if c, err := kernelCPU(); err != nil {
		return nil, err
	} else {
		kcpu0 = c
	}
	if profile != nil {
		pprof.StartCPUProfile(profile)
	}
	mu.Lock()
	self0, machine0 := benchkit.SelfCPU(), benchkit.MachineCPU()
	t0 := time.Now()
	window = true
	mu.Unlock()
	select {
	case <-time.After(cfg.Duration):
	case <-ctx.Done():
	}
	mu.Lock()
	window = false
	elapsed := time.Since(t0).Seconds()
	self, machine := benchkit.SelfCPU()-self0, benchkit.MachineCPU()-machine0
	n, nerr, first := len(lat), errs, firstErr
	all := lat
	mu.Unlock()
	var kcpu, scpu float64
	if sampler != nil {
		kcpu, scpu, _ = sampler.Stop()
	} else {
		c, err := kernelCPU()
		if err != nil {
			return nil, err
		}
		kcpu = c - kcpu0
	}
	if profile != nil {
		pprof.StopCPUProfile()
		profile = nil // one profile: the first window's
	}
	cancel()
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	tp := &Throughput{
		Snippet: name, Clients: cfg.Clients, Seconds: elapsed, Requests: n, Errors: nerr, FirstError: first,
		RPS: float64(n) / elapsed, OriginalRPS: originalRPS, Latency: benchkit.Summarize(all),
		GatewayCPU: self - scpu, KernelCPU: kcpu, SamplerCPU: scpu, CoreSeconds: float64(runtime.NumCPU()) * elapsed,
		MachineCPU: machine - scpu,
	}
	tp.Ratio = tp.RPS / originalRPS
	if n > 0 {
		tp.GatewayCPUPerR = tp.GatewayCPU * 1e3 / float64(n)
		tp.KernelCPUPerR = tp.KernelCPU * 1e3 / float64(n)
		tp.TotalCPUPerR = tp.GatewayCPUPerR + tp.KernelCPUPerR
		tp.MachineCPUPerR = tp.MachineCPU * 1e3 / float64(n)
	}
	return tp, nil
}

func printTable(out io.Writer, r *Results) {
	fmt.Fprintf(out, "gatewaybench %s  %d CPUs, %s, load %s -> %s\n%s\n", r.Date.Format("2006-01-02 15:04"),
		r.Host.CPUs, r.Host.GoVersion, r.Host.LoadStart, r.Host.LoadEnd, r.Host.Versions)
	fmt.Fprintf(out, "config: %s provisioner (sandbox %s), KERNEL_START=%s STATELESS_KERNEL=%s, default preload, POOL_SIZE=%s POOL_MAX_STARTING=%s MAX_WORKERS=%s, memory store\n\n",
		r.Config["executor"], r.Config["sandbox"], r.Config["KERNEL_START"], r.Config["STATELESS_KERNEL"], r.Config["POOL_SIZE"], r.Config["POOL_MAX_STARTING"], r.Config["MAX_WORKERS"])
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	if len(r.Latency) > 0 {
		fmt.Fprintln(out, "stateless POST /api/v1/execute, pool full before each sample, vs the same code on a warm kernel of its own (ms):")
		fmt.Fprintln(tw, "snippet\tn\tgateway p50\tp90\tp99\tfloor p50\tp99\tp50 diff\tp50 ratio\tserver exec p50\tfresh kernel p50\tgateway - fresh p50\t")
		for _, l := range r.Latency {
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%+.2f\t%.2f\t%.2f\t%.2f\t%+.2f\t\n", l.Snippet, l.Gateway.N, l.Gateway.P50, l.Gateway.P90, l.Gateway.P99,
				l.Floor.P50, l.Floor.P99, l.Gateway.P50-l.Floor.P50, l.Gateway.P50/l.Floor.P50, l.ServerMs.P50, l.Fresh.P50, l.Gateway.P50-l.Fresh.P50)
		}
		tw.Flush()
		if t := r.Target; t != nil {
			fmt.Fprintf(out, "print(1): gateway p50 - floor p50 = %.2f ms (target <= %.0f ms: %s)\n", t.DiffMs, t.TargetMs, benchkit.Verdict(t.Met))
			fmt.Fprintln(out, "(floor: a long-warm kernel of its own; fresh kernel: kernel.Kernel.Execute on a kernel just taken from the same pool)")
			fmt.Fprintln(out)
		}
	}
	for _, t := range r.Throughput {
		fmt.Fprintf(out, "sustained stateless %s, fresh kernel each, %d clients, %.1f s window:\n", t.Snippet, t.Clients, t.Seconds)
		fmt.Fprintln(tw, "requests\terrors\treq/s\tvs original 4.7/s\tlatency p50 ms\tp99 ms\tgateway CPU ms/req\tkernels CPU ms/req (sampled)\tmachine CPU ms/req\tmachine busy\t")
		fmt.Fprintf(tw, "%d\t%d\t%.2f\t%.2fx\t%.0f\t%.0f\t%.2f\t%.0f\t%.1f\t%.0f%%\t\n", t.Requests, t.Errors, t.RPS, t.Ratio, t.Latency.P50, t.Latency.P99,
			t.GatewayCPUPerR, t.KernelCPUPerR, t.MachineCPUPerR, 100*t.MachineCPU/t.CoreSeconds)
		tw.Flush()
		if t.FirstError != "" {
			fmt.Fprintf(out, "first error: %s\n", t.FirstError)
		}
		fmt.Fprintf(out, "(/proc sampler's own CPU, taken off the gateway's and the machine's: %.2f s; the sampled kernels' CPU misses what short-lived processes spend between samples: the machine's figure counts all, on a quiet machine)\n", t.SamplerCPU)
	}
}

// newProvisioner makes the provisioner of cfg.Executor for start, and, for
// Docker, how to read the CPU its kernels used (nil: the process tree is
// sampled from /proc).
func newProvisioner(ctx context.Context, cfg config, start string, log *slog.Logger) (interface {
	kernel.Provisioner
	StartMode() string
	LimitMode() string
}, func() (float64, error), error) {
	switch cfg.Executor {
	case "local":
		p, err := local.New(local.Config{Python: cfg.Python, Sandbox: cfg.Sandbox, Logger: log, Start: start,
			Memory: 1 << 30, PidsLimit: 256})
		return p, nil, err
	case "docker":
		if start != docker.StartFork {
			return nil, nil, fmt.Errorf("-executor docker measures oneshot and fork, not %s", start)
		}
		dir, err := os.MkdirTemp("", "cgwgb")
		if err != nil {
			return nil, nil, err
		}
		p, err := docker.New(ctx, docker.Config{Image: cfg.Image, InstanceID: fmt.Sprintf("gwbench%d", os.Getpid()), StateDir: dir,
			Memory: 1 << 30, PidsLimit: 256, Logger: log, Start: start})
		if err != nil {
			os.RemoveAll(dir)
			return nil, nil, err
		}
		return dockerProv{p, dir}, func() (float64, error) { return containerCPU(p.ZygoteContainer()) }, nil
	}
	return nil, nil, fmt.Errorf("unknown -executor %q (want local or docker)", cfg.Executor)
}

// dockerProv removes its state directory when it closes.
type dockerProv struct {
	*docker.Provisioner
	dir string
}

func (p dockerProv) Close() error {
	err := p.Provisioner.Close()
	os.RemoveAll(p.dir)
	return err
}

// containerCPU is the CPU seconds the container's cgroup (cgroup v1
// cpuacct) has used: the zygote and every kernel it forked, which leave its
// memory and pids cgroups but not its cpuacct one.
func containerCPU(id string) (float64, error) {
	out, err := exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", id).Output()
	if err != nil {
		return 0, fmt.Errorf("docker inspect %s: %w", id, err)
	}
	cg, err := os.ReadFile("/proc/" + strings.TrimSpace(string(out)) + "/cgroup")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(cg), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && strings.Contains(","+f[1]+",", ",cpuacct,") {
			for _, mnt := range []string{"/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"} {
				if v, err := os.ReadFile(filepath.Join(mnt, f[2], "cpuacct.usage")); err == nil {
					ns, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
					return float64(ns) / 1e9, err
				}
			}
		}
	}
	return 0, fmt.Errorf("no cpuacct cgroup for container %s", id)
}
