// Command sessionbench measures stateful sessions through an in-process
// gateway on a loopback port (local provisioner, memory store):
//
//   - the warm "1+1" round trip over a session's websocket (send the execute
//     message, receive its "done" event) against kernel.Kernel.Execute on a
//     kernel of its own as the floor, in interleaved rounds;
//
//   - the gateway's memory per idle session, with -sessions sessions open and
//     a websocket connected to each (held by a child process, so the
//     clients' memory is not in the gateway's);
//
//   - executions per second across 8 busy sessions, each looping "1+1" over
//     its own websocket, against 8 kernels driven directly as the floor.
//
//     go run ./bench/sessionbench [-n 500] [-sessions 200] [-busy-duration 20s] [-json]
//
// bench/README.md explains the figures.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"time"

	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	Python       string
	Sandbox      string
	N            int
	Rounds       int
	Warmup       int
	Code         string
	Sessions     int
	MemPool      int
	MemStarting  int
	Busy         int
	BusyDuration time.Duration
	HBTimeout    time.Duration
	Phases       string
	JSON         bool
	CPUProfile   string
	MemProfile   string
	Verbose      bool
	Holder       string // internal: run as the websocket holder for this base URL
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel")
	flag.StringVar(&c.Sandbox, "sandbox", local.SandboxAuto, "kernel sandbox: auto, bwrap or none")
	flag.IntVar(&c.N, "n", 500, "timed round trips per side, split over -rounds")
	flag.IntVar(&c.Rounds, "rounds", 5, "interleaved rounds per side (websocket, floor, floor, websocket, ...)")
	flag.IntVar(&c.Warmup, "warmup", 20, "untimed executions at the start of every round")
	flag.StringVar(&c.Code, "code", "1+1", "code executed in the round-trip and busy phases")
	flag.IntVar(&c.Sessions, "sessions", 200, "idle sessions opened in the memory phase")
	flag.IntVar(&c.MemPool, "mem-pool", 4, "POOL_SIZE in the memory phase")
	flag.IntVar(&c.MemStarting, "mem-starting", 2, "POOL_MAX_STARTING in the memory phase")
	flag.IntVar(&c.Busy, "busy", 8, "busy sessions (and floor kernels) in the busy phase")
	flag.DurationVar(&c.BusyDuration, "busy-duration", 20*time.Second, "measured time per side in the busy phase")
	flag.DurationVar(&c.HBTimeout, "hb-timeout", 0, "kernel heartbeat timeout, gateway and floor kernels alike (0: the kernel package's default, as the gateway runs)")
	flag.StringVar(&c.Phases, "phases", "rt,busy,memory", "comma-separated phases: rt, busy, memory")
	flag.BoolVar(&c.JSON, "json", false, "print the results as JSON instead of a table")
	flag.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the websocket rounds of the rt phase to this file")
	flag.StringVar(&c.MemProfile, "memprofile", "", "write a heap profile of the gateway with every idle session open to this file")
	flag.BoolVar(&c.Verbose, "v", false, "log gateway and provisioner events")
	flag.StringVar(&c.Holder, "holder", "", "internal: hold websockets to this gateway (see holder)")
	flag.Parse()
	return c
}

func main() {
	cfg := parseFlags()
	if cfg.Holder != "" {
		if err := holder(cfg.Holder); err != nil {
			fmt.Fprintln(os.Stderr, "sessionbench holder:", err)
			os.Exit(1)
		}
		return
	}
	benchkit.Main("sessionbench", func(ctx context.Context, out io.Writer) error { return run(ctx, cfg, out) })
}

// Results is everything one run measured; -json prints it.
type Results struct {
	Date      time.Time         `json:"date"`
	Host      benchkit.Host     `json:"host"`
	Config    map[string]string `json:"config"`
	RoundTrip *RoundTrip        `json:"round_trip,omitempty"`
	Busy      *Busy             `json:"busy,omitempty"`
	Memory    *Memory           `json:"memory,omitempty"`
	Errors    map[string]string `json:"errors,omitempty"` // phases that failed
}

var progress = benchkit.Progress("sessionbench")

func run(ctx context.Context, cfg config, out io.Writer) error {
	level := benchkit.LogLevel(cfg.Verbose)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	phases, err := benchkit.ParsePhases(cfg.Phases, "rt", "busy", "memory")
	if err != nil {
		return err
	}
	if cfg.Rounds < 1 || cfg.N < cfg.Rounds {
		return fmt.Errorf("-n must be at least -rounds, and -rounds at least 1")
	}
	res := &Results{
		Date:   time.Now(),
		Host:   benchkit.NewHost(cfg.Python),
		Errors: map[string]string{},
		Config: map[string]string{
			"sandbox": cfg.Sandbox, "code": cfg.Code, "n": fmt.Sprint(cfg.N), "rounds": fmt.Sprint(cfg.Rounds),
			"warmup": fmt.Sprint(cfg.Warmup), "sessions": fmt.Sprint(cfg.Sessions), "busy": fmt.Sprint(cfg.Busy),
			"busy_duration":   cfg.BusyDuration.String(),
			"rt_busy_gateway": fmt.Sprintf("default preload, POOL_SIZE=2 POOL_MAX_STARTING=1 MAX_WORKERS=%d", max(8, cfg.Busy)),
			"memory_gateway":  fmt.Sprintf("EXECUTOR_PRELOAD empty, POOL_SIZE=%d POOL_MAX_STARTING=%d MAX_SESSIONS=%d MAX_WORKERS=4", cfg.MemPool, cfg.MemStarting, cfg.Sessions+10),
		},
	}

	if phases["rt"] || phases["busy"] {
		prov, err := local.New(local.Config{Python: cfg.Python, Sandbox: cfg.Sandbox, Logger: log})
		if err != nil {
			return err
		}
		defer prov.Close()
		g, err := benchkit.StartGateway(benchkit.GatewayConfig{
			Prov: prov, PoolSize: 2, MaxStarting: 1, Workers: max(8, cfg.Busy), MaxSessions: 20 + cfg.Busy, Logger: log, HeartbeatTimeout: cfg.HBTimeout,
		})
		if err != nil {
			return err
		}
		defer g.Close()
		if phases["rt"] {
			var stopProfile func()
			if cfg.CPUProfile != "" {
				f, err := os.Create(cfg.CPUProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				stopProfile = func() { pprof.StopCPUProfile() }
				profileStart = func() { pprof.StartCPUProfile(f) }
				profileStop = stopProfile
			}
			progress("round trip: %d x %s per side, %d interleaved rounds...", cfg.N, cfg.Code, cfg.Rounds)
			rt, err := roundTrip(ctx, cfg, g, prov, log)
			if err != nil {
				progress("round trip: %v", err)
				res.Errors["rt"] = err.Error()
			}
			res.RoundTrip = rt
		}
		if phases["busy"] {
			progress("busy: %d sessions vs %d kernels, %v per side...", cfg.Busy, cfg.Busy, cfg.BusyDuration)
			b, err := busy(ctx, cfg, g, prov, log)
			if err != nil {
				// Reported, and the memory phase still runs.
				progress("busy: %v", err)
				res.Errors["busy"] = err.Error()
			}
			res.Busy = b
		}
		g.Close()
	}
	if phases["memory"] {
		progress("memory: %d idle sessions with a websocket each (preload none)...", cfg.Sessions)
		m, err := memory(ctx, cfg, log)
		if err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		res.Memory = m
	}
	return benchkit.Report(out, cfg.JSON, &res.Host, res, func(w io.Writer) { printTable(w, res) })
}

var profileStart, profileStop func()
