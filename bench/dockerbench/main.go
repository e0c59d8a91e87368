// Command dockerbench measures container kernels (kernel/docker) against
// local bubblewrap kernels (kernel/local) in the same run:
//
//   - the warm "1+1" round trip through kernel.Kernel.Execute on a container
//     kernel and on a local kernel, in interleaved rounds;
//
//   - the time and CPU seconds to produce one warm container kernel (start to
//     ready, default preload): the container's own CPU from its cgroup
//     (cpuacct.usage, cgroup v1; cpu.stat on v2), the Docker engine's
//     (dockerd, containerd and the container's shim, from /proc) and this
//     process's, next to a local kernel's start;
//
//   - stateless print(1) through an in-process gateway with a warm container
//     pool, next to print(1) on a container kernel of its own.
//
//     go run ./bench/dockerbench [-n 300] [-starts 5] [-gw-n 20] [-json]
//
// dockerd must run and the executor image exist (scripts/docker-up.sh).
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
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/docker/client"

	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	Python   string
	Sandbox  string
	Image    string
	StateDir string
	Memory   int64
	CPUs     float64
	N        int
	Rounds   int
	Warmup   int
	Code     string
	Starts   int
	GwN      int
	Phases   string
	JSON     bool
	Verbose  bool
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel (local kernels)")
	flag.StringVar(&c.Sandbox, "sandbox", local.SandboxAuto, "local kernel sandbox: auto, bwrap or none")
	flag.StringVar(&c.Image, "image", "codegw/executor:latest", "DOCKER_IMAGE")
	flag.StringVar(&c.StateDir, "state-dir", "/tmp/cgw-dbench", "docker provisioner state directory (short: ipc socket paths)")
	flag.Int64Var(&c.Memory, "memory", 1<<30, "KERNEL_MEMORY in bytes (the gateway's default 1g)")
	flag.Float64Var(&c.CPUs, "cpus", 1, "KERNEL_CPUS (the gateway's default 1)")
	flag.IntVar(&c.N, "n", 300, "timed round trips per side, split over -rounds")
	flag.IntVar(&c.Rounds, "rounds", 6, "interleaved rounds per side (container, local, local, container, ...)")
	flag.IntVar(&c.Warmup, "warmup", 20, "untimed executions at the start of every round")
	flag.StringVar(&c.Code, "code", "1+1", "code executed in the round-trip phase")
	flag.IntVar(&c.Starts, "starts", 5, "timed kernel starts per kind (after one untimed)")
	flag.IntVar(&c.GwN, "gw-n", 20, "stateless print(1) samples through the gateway (pool full before each)")
	flag.StringVar(&c.Phases, "phases", "rt,start,gateway", "comma-separated phases: rt, start, gateway")
	flag.BoolVar(&c.JSON, "json", false, "print the results as JSON instead of a table")
	flag.BoolVar(&c.Verbose, "v", false, "log provisioner events")
	flag.Parse()
	return c
}

func main() {
	cfg := parseFlags()
	benchkit.Main("dockerbench", func(ctx context.Context, out io.Writer) error { return run(ctx, cfg, out) })
}

// Results is everything one run measured; -json prints it.
type Results struct {
	Date      time.Time         `json:"date"`
	Host      benchkit.Host     `json:"host"`
	Config    map[string]string `json:"config"`
	RoundTrip *RoundTrip        `json:"round_trip,omitempty"`
	Starts    []Start           `json:"starts,omitempty"`
	Gateway   *Gateway          `json:"gateway,omitempty"`
}

// RoundTrip compares the warm round trip on the two kinds of kernel.
type RoundTrip struct {
	Container benchkit.Stats `json:"container"`
	Local     benchkit.Stats `json:"local"`
	P50Ratio  float64        `json:"p50_ratio"`
	Target    float64        `json:"p50_target"`
	// Round p50s, to see drift and noise.
	ContainerRoundP50 []float64 `json:"container_round_p50_ms"`
	LocalRoundP50     []float64 `json:"local_round_p50_ms"`
}

// Start is the cost of one warm kernel of one kind.
type Start struct {
	Kind  string         `json:"kind"`  // "container" or "local"
	Ready benchkit.Stats `json:"ready"` // ms, kernel.Launch: start, dial, kernel_info + idle, warm-up cell
	// KernelCPU is the kernel's own CPU seconds at ready: the container's
	// cgroup for a container, the process tree from /proc for a local one.
	KernelCPU benchkit.Stats `json:"kernel_cpu_s"`
	// EngineCPU is dockerd + containerd + the container's shim, CPU seconds
	// from before the start until ready (containers only).
	EngineCPU benchkit.Stats `json:"engine_cpu_s"`
	// SelfCPU is this process's CPU seconds for the launch (client side).
	SelfCPU benchkit.Stats `json:"self_cpu_s"`
	// Teardown is Close: kill and remove the container or process, ms.
	Teardown benchkit.Stats `json:"teardown_ms"`
	// EngineTeardownCPU is the engine's CPU seconds for the teardown.
	EngineTeardownCPU benchkit.Stats `json:"engine_teardown_cpu_s"`
}

// Gateway is stateless print(1) through the gateway with a container pool.
type Gateway struct {
	PoolSize int            `json:"pool_size"`
	Gateway  benchkit.Stats `json:"gateway"` // ms
	Floor    benchkit.Stats `json:"floor"`   // print(1) on a container kernel of its own, ms
	Server   benchkit.Stats `json:"server_execution_time"`
}

const ratioTarget = 1.10

var progress = benchkit.Progress("dockerbench")

func run(ctx context.Context, cfg config, out io.Writer) error {
	level := benchkit.LogLevel(cfg.Verbose)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	phases, err := benchkit.ParsePhases(cfg.Phases, "rt", "start", "gateway")
	if err != nil {
		return err
	}
	if cfg.Rounds < 1 || cfg.N < cfg.Rounds {
		return fmt.Errorf("-n must be at least -rounds, and -rounds at least 1")
	}
	eng, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer eng.Close()
	ver, err := eng.ServerVersion(ctx)
	if err != nil {
		return fmt.Errorf("docker engine: %w (start it with scripts/docker-up.sh)", err)
	}
	res := &Results{
		Date: time.Now(),
		Host: benchkit.NewHost(""),
		Config: map[string]string{
			"image": cfg.Image, "memory": fmt.Sprint(cfg.Memory), "cpus": fmt.Sprint(cfg.CPUs), "network": "none",
			"sandbox": cfg.Sandbox, "code": cfg.Code, "n": fmt.Sprint(cfg.N), "rounds": fmt.Sprint(cfg.Rounds),
			"starts": fmt.Sprint(cfg.Starts), "gw_n": fmt.Sprint(cfg.GwN), "preload": "default (numpy, pandas, matplotlib, pyplot)",
		},
	}
	res.Host.Docker = "docker " + ver.Version
	instance := fmt.Sprintf("dbench%d", os.Getpid())
	dprov, err := docker.New(ctx, docker.Config{
		Image: cfg.Image, NetworkMode: "none", Memory: cfg.Memory, NanoCPUs: int64(cfg.CPUs * 1e9),
		InstanceID: instance, StateDir: cfg.StateDir, Logger: log,
		Start: docker.StartSpawn, // a container per kernel: its cgroup tells its CPU
	})
	if err != nil {
		return err
	}
	defer dprov.Close()
	defer func() { // containers of this run left by an error
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if n, err := dprov.Reap(cctx); err == nil && n > 0 {
			progress("removed %d leftover containers", n)
		}
	}()
	lprov, err := local.New(local.Config{Python: cfg.Python, Sandbox: cfg.Sandbox, Logger: log})
	if err != nil {
		return err
	}
	defer lprov.Close()
	b := &bench{cfg: cfg, log: log, eng: eng, dprov: dprov, lprov: lprov, instance: instance}

	if phases["rt"] {
		progress("round trip: %d x %s per side, %d interleaved rounds...", cfg.N, cfg.Code, cfg.Rounds)
		rt, err := b.roundTrip(ctx)
		if err != nil {
			return fmt.Errorf("round trip: %w", err)
		}
		res.RoundTrip = rt
	}
	if phases["start"] {
		for _, kind := range []string{"container", "local"} {
			progress("starts: %s, %d starts...", kind, cfg.Starts)
			s, err := b.starts(ctx, kind)
			if err != nil {
				return fmt.Errorf("starts (%s): %w", kind, err)
			}
			res.Starts = append(res.Starts, *s)
		}
	}
	if phases["gateway"] {
		progress("gateway: %d x stateless print(1) with a warm container pool...", cfg.GwN)
		g, err := b.gateway(ctx)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		res.Gateway = g
	}
	return benchkit.Report(out, cfg.JSON, &res.Host, res, func(w io.Writer) { printTable(w, res) })
}

type bench struct {
	cfg      config
	log      *slog.Logger
	eng      *client.Client
	dprov    *docker.Provisioner
	lprov    *local.Provisioner
	instance string
}

func (b *bench) prov(kind string) kernel.Provisioner {
	if kind == "container" {
		return b.dprov
	}
	return b.lprov
}

func execOnce(ctx context.Context, k *kernel.Kernel, code string) (time.Duration, error) {
	t0 := time.Now()
	_, err := k.Execute(ctx, code, kernel.ExecuteOptions{StoreHistory: true}, kernel.Deadline{Timeout: 60 * time.Second})
	return time.Since(t0), err
}

// roundTrip starts one kernel of each kind and times cfg.N executions on
// each, in interleaved rounds ordered container, local, local, container...
func (b *bench) roundTrip(ctx context.Context) (*RoundTrip, error) {
	ck, err := benchkit.Launch(ctx, b.dprov, nil, b.log)
	if err != nil {
		return nil, err
	}
	defer ck.Close(context.Background())
	lk, err := benchkit.Launch(ctx, b.lprov, nil, b.log)
	if err != nil {
		return nil, err
	}
	defer lk.Close(context.Background())
	res := &RoundTrip{Target: ratioTarget}
	var call, lall []time.Duration
	for r := 0; r < b.cfg.Rounds; r++ {
		n := b.cfg.N / b.cfg.Rounds
		if r < b.cfg.N%b.cfg.Rounds {
			n++
		}
		cFirst := r%2 == 0
		for s := 0; s < 2; s++ {
			isC := (s == 0) == cFirst
			k := lk
			if isC {
				k = ck
			}
			for range b.cfg.Warmup {
				if _, err := execOnce(ctx, k, b.cfg.Code); err != nil {
					return nil, err
				}
			}
			lat := make([]time.Duration, 0, n)
			for range n {
				d, err := execOnce(ctx, k, b.cfg.Code)
				if err != nil {
					return nil, err
				}
				lat = append(lat, d)
			}
			p50 := benchkit.Summarize(lat).P50
			if isC {
				call = append(call, lat...)
				res.ContainerRoundP50 = append(res.ContainerRoundP50, p50)
			} else {
				lall = append(lall, lat...)
				res.LocalRoundP50 = append(res.LocalRoundP50, p50)
			}
		}
	}
	res.Container, res.Local = benchkit.Summarize(call), benchkit.Summarize(lall)
	res.P50Ratio = res.Container.P50 / res.Local.P50
	return res, nil
}

// engineCPU is the Docker engine's CPU seconds: dockerd, containerd and
// every containerd shim alive now.
func engineCPU() float64 { return benchkit.CPUOfComm("dockerd", "containerd") }

// containerCPU is the CPU seconds the container's cgroup has used, found
// through its init process's cgroup membership.
func (b *bench) containerCPU(ctx context.Context, kernelID string) (float64, error) {
	in, err := b.eng.ContainerInspect(ctx, "codegw-"+b.instance+"-"+kernelID)
	if err != nil {
		return 0, err
	}
	if in.State == nil || in.State.Pid == 0 {
		return 0, fmt.Errorf("container %s has no running process", in.ID)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", in.State.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(cg), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpuacct" { // cgroup v1
				for _, dir := range []string{"/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"} {
					if v, err := os.ReadFile(dir + f[2] + "/cpuacct.usage"); err == nil {
						ns, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
						return float64(ns) / 1e9, err
					}
				}
			}
		}
		if f[0] == "0" && f[1] == "" { // cgroup v2
			if v, err := os.ReadFile("/sys/fs/cgroup" + f[2] + "/cpu.stat"); err == nil && strings.HasPrefix(string(v), "usage_usec") {
				us, err := strconv.ParseInt(strings.Fields(string(v))[1], 10, 64)
				return float64(us) / 1e6, err
			}
		}
	}
	return 0, fmt.Errorf("no cpuacct cgroup found for container %s", in.ID)
}

// starts starts one untimed kernel of kind, then cfg.Starts timed ones, one
// at a time, each closed before the next.
func (b *bench) starts(ctx context.Context, kind string) (*Start, error) {
	var ready, teardown []time.Duration
	var kcpu, ecpu, scpu, etcpu []float64
	for i := 0; i <= b.cfg.Starts; i++ {
		time.Sleep(300 * time.Millisecond) // let the last teardown's shim exit
		e0, s0 := engineCPU(), benchkit.SelfCPU()
		t0 := time.Now()
		k, err := benchkit.Launch(ctx, b.prov(kind), nil, b.log)
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		e1, s1 := engineCPU(), benchkit.SelfCPU()
		var kc float64
		if kind == "container" {
			kc, err = b.containerCPU(ctx, k.ID())
			if err != nil {
				k.Close(ctx)
				return nil, err
			}
		} else {
			kc = benchkit.TreeCPU()
		}
		t1 := time.Now()
		if err := k.Close(ctx); err != nil {
			return nil, err
		}
		td := time.Since(t1)
		e2 := engineCPU()
		if i == 0 {
			continue // page cache warm-up
		}
		ready, teardown = append(ready, d), append(teardown, td)
		kcpu, scpu = append(kcpu, kc), append(scpu, s1-s0)
		if kind == "container" {
			ecpu, etcpu = append(ecpu, e1-e0), append(etcpu, e2-e1)
		}
	}
	return &Start{Kind: kind, Ready: benchkit.Summarize(ready), KernelCPU: benchkit.SummarizeFloat(kcpu),
		EngineCPU: benchkit.SummarizeFloat(ecpu), SelfCPU: benchkit.SummarizeFloat(scpu),
		Teardown: benchkit.Summarize(teardown), EngineTeardownCPU: benchkit.SummarizeFloat(etcpu)}, nil
}

// gateway times stateless print(1) through a gateway with a warm container
// pool (pool full before each sample), interleaved with print(1) on a
// container kernel of its own.
func (b *bench) gateway(ctx context.Context) (*Gateway, error) {
	const poolSize = 2
	floor, err := benchkit.Launch(ctx, b.dprov, nil, b.log)
	if err != nil {
		return nil, err
	}
	defer floor.Close(context.Background())
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{Prov: b.dprov, PoolSize: poolSize, MaxStarting: 1, Workers: 4, Logger: b.log})
	if err != nil {
		return nil, err
	}
	defer g.Close()
	var c *http.Client = benchkit.HTTPClient(4)
	if err := benchkit.WaitPoolFull(ctx, g.Pool, poolSize, 3*time.Minute); err != nil {
		return nil, err
	}
	if _, err := g.Execute(ctx, c, "print(0)"); err != nil {
		return nil, err
	}
	for range 5 {
		if _, err := execOnce(ctx, floor, "print(1)"); err != nil {
			return nil, err
		}
	}
	var gw, fl, server []time.Duration
	for i := range b.cfg.GwN {
		if err := benchkit.WaitPoolFull(ctx, g.Pool, poolSize, 3*time.Minute); err != nil {
			return nil, err
		}
		time.Sleep(300 * time.Millisecond) // the last kernel's container removal
		doFloor := func() error {
			for range 3 {
				d, err := execOnce(ctx, floor, "print(1)")
				if err != nil {
					return err
				}
				fl = append(fl, d)
			}
			return nil
		}
		if i%2 == 0 {
			if err := doFloor(); err != nil {
				return nil, err
			}
		}
		t0 := time.Now()
		r, err := g.Execute(ctx, c, "print(1)")
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		gw = append(gw, d)
		server = append(server, time.Duration(r.ExecutionTime*float64(time.Second)))
		if i%2 == 1 {
			if err := doFloor(); err != nil {
				return nil, err
			}
		}
	}
	return &Gateway{PoolSize: poolSize, Gateway: benchkit.Summarize(gw), Floor: benchkit.Summarize(fl), Server: benchkit.Summarize(server)}, nil
}

func printTable(out io.Writer, r *Results) {
	fmt.Fprintf(out, "dockerbench %s  %d CPUs, %s, %s, load %s -> %s\n", r.Date.Format("2006-01-02 15:04"),
		r.Host.CPUs, r.Host.GoVersion, r.Host.Docker, r.Host.LoadStart, r.Host.LoadEnd)
	fmt.Fprintf(out, "containers: %s, --network none, memory %s B, cpus %s; local: sandbox %s; default preload\n\n",
		r.Config["image"], r.Config["memory"], r.Config["cpus"], r.Config["sandbox"])
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	if rt := r.RoundTrip; rt != nil {
		fmt.Fprintf(out, "warm %q round trip, kernel.Kernel.Execute, %d interleaved rounds:\n", r.Config["code"], len(rt.LocalRoundP50))
		fmt.Fprintln(tw, "kernel\tn\tp50 ms\tp90 ms\tp99 ms\tmax ms\t")
		for _, s := range []struct {
			name string
			s    benchkit.Stats
		}{{"container (docker)", rt.Container}, {"local (bwrap)", rt.Local}} {
			fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t\n", s.name, s.s.N, s.s.P50, s.s.P90, s.s.P99, s.s.Max)
		}
		tw.Flush()
		fmt.Fprintf(out, "round p50s ms: container %s | local %s\n", floats(rt.ContainerRoundP50), floats(rt.LocalRoundP50))
		fmt.Fprintf(out, "p50 ratio container/local: %.3f (target <= %.2f: %s)\n\n", rt.P50Ratio, rt.Target, benchkit.Verdict(rt.P50Ratio <= rt.Target))
	}
	if len(r.Starts) > 0 {
		fmt.Fprintf(out, "one warm kernel (start to ready incl. warm-up cell), %d starts each after one untimed:\n", r.Starts[0].Ready.N)
		fmt.Fprintln(tw, "kind\tready p50 ms\tmax ms\tkernel CPU p50 s\tengine CPU p50 s\tgateway CPU p50 s\ttotal p50 s\tteardown p50 ms\tengine teardown CPU p50 s\t")
		for _, s := range r.Starts {
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2f\t%.2f\t%.3f\t%.2f\t%.0f\t%.2f\t\n", s.Kind, s.Ready.P50, s.Ready.Max, s.KernelCPU.P50, s.EngineCPU.P50, s.SelfCPU.P50,
				s.KernelCPU.P50+s.EngineCPU.P50+s.SelfCPU.P50, s.Teardown.P50, s.EngineTeardownCPU.P50)
		}
		tw.Flush()
		fmt.Fprintln(out, "(kernel CPU: the container's cgroup; for local, the bwrap process tree from /proc. engine: dockerd + containerd + shims)")
		fmt.Fprintln(out)
	}
	if g := r.Gateway; g != nil {
		fmt.Fprintf(out, "stateless print(1) through the gateway, warm container pool (size %d, full before each sample), ms:\n", g.PoolSize)
		fmt.Fprintln(tw, "path\tn\tp50\tp90\tp99\tmax\t")
		fmt.Fprintf(tw, "POST /api/v1/execute\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", g.Gateway.N, g.Gateway.P50, g.Gateway.P90, g.Gateway.P99, g.Gateway.Max)
		fmt.Fprintf(tw, "  server execution_time\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", g.Server.N, g.Server.P50, g.Server.P90, g.Server.P99, g.Server.Max)
		fmt.Fprintf(tw, "container kernel of its own (floor)\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", g.Floor.N, g.Floor.P50, g.Floor.P90, g.Floor.P99, g.Floor.Max)
		tw.Flush()
		fmt.Fprintf(out, "gateway p50 - floor p50: %+.2f ms (ratio %.2f)\n", g.Gateway.P50-g.Floor.P50, g.Gateway.P50/g.Floor.P50)
	}
}

func floats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, " ")
}
