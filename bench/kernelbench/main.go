// Command kernelbench measures the kernel engine on this machine: the warm
// "1+1" round trip through kernel.Kernel.Execute against Python's
// jupyter_client.BlockingKernelClient on the same kernel, the warm pool's
// Acquire latency, and the start-to-ready time and CPU cost of a kernel with
// and without the preloaded data stack. bench/README.md explains the figures.
//
//	go run ./bench/kernelbench [-n 500] [-rounds 5] [-sandbox auto] [-json]
//
// Kernels come from the local provisioner (kernel/local) with the default
// executor launcher; the jupyter_client side runs under -python (default
// /usr/bin/python3, the interpreter with ipykernel and jupyter_client).
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/local"
)

// config is every setting of one run, read from the flags.
type config struct {
	Python      string
	StateDir    string
	Sandbox     string
	Transport   string
	N           int
	Rounds      int
	Warmup      int
	Code        string
	PoolSamples int
	Starts      int
	Phases      string
	JSON        bool
	CPUProfile  string
	Verbose     bool
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel and jupyter_client")
	flag.StringVar(&c.StateDir, "state-dir", "", "local provisioner state directory (default: the provisioner's)")
	flag.StringVar(&c.Sandbox, "sandbox", local.SandboxAuto, "kernel sandbox: auto, bwrap or none")
	flag.StringVar(&c.Transport, "transport", local.TransportAuto, `kernel transport: "" (ipc when possible), ipc or tcp`)
	flag.IntVar(&c.N, "n", 500, "timed round trips per client, split over -rounds")
	flag.IntVar(&c.Rounds, "rounds", 5, "interleaved rounds per client (Go, Python, Go, ...)")
	flag.IntVar(&c.Warmup, "warmup", 20, "untimed round trips at the start of every round")
	flag.StringVar(&c.Code, "code", "1+1", "code executed in the round-trip test")
	flag.IntVar(&c.PoolSamples, "pool-samples", 20, "warm pool Acquire samples")
	flag.IntVar(&c.Starts, "starts", 5, "timed kernel starts per preload setting (after one untimed)")
	flag.StringVar(&c.Phases, "phases", "rt,pool,start", "comma-separated phases to run: rt, pool, start")
	flag.BoolVar(&c.JSON, "json", false, "print the results as JSON instead of a table")
	flag.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the Go round trips to this file")
	flag.BoolVar(&c.Verbose, "v", false, "log provisioner events")
	flag.Parse()
	return c
}

func main() {
	cfg := parseFlags()
	benchkit.Main("kernelbench", func(ctx context.Context, out io.Writer) error { return run(ctx, cfg, out) })
}

// Results is everything one run measured; -json prints it.
type Results struct {
	Date      time.Time         `json:"date"`
	Host      benchkit.Host     `json:"host"`
	RoundTrip *RoundTripResult  `json:"round_trip,omitempty"`
	Pool      *PoolResult       `json:"pool,omitempty"`
	Starts    []StartResult     `json:"starts,omitempty"`
	Config    map[string]string `json:"config"`
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	level := benchkit.LogLevel(cfg.Verbose)
	watch := &sandboxWatch{Handler: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})}
	log := slog.New(watch)

	phases, err := benchkit.ParsePhases(cfg.Phases, "rt", "pool", "start")
	if err != nil {
		return err
	}
	if cfg.Rounds < 1 || cfg.N < cfg.Rounds {
		return fmt.Errorf("-n must be at least -rounds, and -rounds at least 1")
	}

	res := &Results{
		Date: time.Now(),
		Host: benchkit.NewHost(cfg.Python),
		Config: map[string]string{
			"n": fmt.Sprint(cfg.N), "rounds": fmt.Sprint(cfg.Rounds), "warmup": fmt.Sprint(cfg.Warmup),
			"code": cfg.Code, "sandbox": cfg.Sandbox, "transport": cfg.Transport,
			"pool_samples": fmt.Sprint(cfg.PoolSamples), "starts": fmt.Sprint(cfg.Starts),
		},
	}

	newProv := func(preload []string) (*local.Provisioner, error) {
		return local.New(local.Config{
			Python: cfg.Python, StateDir: cfg.StateDir, Sandbox: cfg.Sandbox,
			Transport: cfg.Transport, Preload: preload, Logger: log,
		})
	}
	prov, err := newProv(nil) // the launcher's default preload
	if err != nil {
		return err
	}
	defer prov.Close()
	res.Host.Sandbox = watch.mode(cfg.Sandbox)
	b := &bench{cfg: cfg, log: log, prov: prov}

	if phases["rt"] {
		progress("round trip: %d x %s, %d interleaved rounds per client...", cfg.N, cfg.Code, cfg.Rounds)
		if cfg.CPUProfile != "" {
			// The whole phase: the Go side is disconnected and idle during
			// the Python rounds, so the profile is the Go rounds'.
			f, err := os.Create(cfg.CPUProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
		}
		rt, err := b.roundTrip(ctx)
		if cfg.CPUProfile != "" {
			pprof.StopCPUProfile()
		}
		if err != nil {
			return fmt.Errorf("round trip: %w", err)
		}
		res.RoundTrip = rt
		res.Host.Transport = rt.Transport
	}
	if phases["pool"] {
		progress("pool: %d warm acquires...", cfg.PoolSamples)
		pr, err := b.pool(ctx)
		if err != nil {
			return fmt.Errorf("pool: %w", err)
		}
		res.Pool = pr
	}
	if phases["start"] {
		none, err := newProv([]string{})
		if err != nil {
			return err
		}
		defer none.Close()
		for _, s := range []struct {
			name string
			prov *local.Provisioner
		}{{"default", prov}, {"none", none}} {
			progress("starts: preload %s, %d starts...", s.name, cfg.Starts)
			sr, err := b.starts(ctx, s.prov, s.name)
			if err != nil {
				return fmt.Errorf("starts (preload %s): %w", s.name, err)
			}
			res.Starts = append(res.Starts, *sr)
		}
	}

	return benchkit.Report(out, cfg.JSON, &res.Host, res, func(w io.Writer) { printTable(w, res) })
}

// bench holds what the phases share.
type bench struct {
	cfg  config
	log  *slog.Logger
	prov *local.Provisioner
	seq  atomic.Int64
}

// nextID returns a kernel id unique among this run's kernels and other
// processes using the same state directory.
func (b *bench) nextID() string {
	return fmt.Sprintf("kb%d-%d", os.Getpid(), b.seq.Add(1))
}

func (b *bench) launch(ctx context.Context, prov kernel.Provisioner) (*kernel.Kernel, error) {
	return kernel.Launch(ctx, prov, kernel.Spec{ID: b.nextID()}, kernel.LaunchOptions{Logger: b.log})
}

var progress = benchkit.Progress("kernelbench")

// sandboxWatch notices the local provisioner's warning that it fell back to
// plain processes, which is the only outward sign of what "auto" chose.
type sandboxWatch struct {
	slog.Handler
	off atomic.Bool
}

func (w *sandboxWatch) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "sandbox is OFF") {
		w.off.Store(true)
	}
	return w.Handler.Handle(ctx, r)
}

func (w *sandboxWatch) mode(flagValue string) string {
	if flagValue == local.SandboxNone || w.off.Load() {
		return "none"
	}
	return "bwrap"
}
