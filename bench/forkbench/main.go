// Command forkbench compares the two ways of making local kernels,
// KERNEL_START=fork (a zygote) and spawn (a cold start), side by side in one
// process, on what gatewaybench does not measure:
//
//		go run ./bench/forkbench [-n 20] [-start fork,spawn] [-json]
//		go run ./bench/forkbench -start fork,fork-whole   # what the zygote's prepared kernel saves
//
//	  - start to first answer: n kernels started one after the other with no
//	    pool (a drained pool: what a burst of session creations meets), each
//	    timed from Start until its first 1+1 is answered;
//	  - memory: the proportional set size (PSS) the n kernels add, idle with
//	    the data stack loaded, over the process tree (zygote included), per
//	    kernel.
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
	"os/signal"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	Python  string
	Sandbox string
	N       int
	Start   string
	JSON    bool
	Verbose bool
}

// Result is one KERNEL_START mode's figures.
type Result struct {
	Start       string         `json:"kernel_start"`
	Limits      string         `json:"kernel_limits"`
	FirstAnswer benchkit.Stats `json:"start_to_first_answer_ms"`
	// CPUPerStart is the process tree's CPU (live descendants and what
	// they reaped: the zygote reaps its kernels) from start to first answer.
	CPUPerStart float64 `json:"cpu_s_per_kernel"`
	PSSPerMiB   float64 `json:"pss_mib_per_idle_kernel"`
	RSSPerMiB   float64 `json:"rss_mib_per_idle_kernel"`
	Kernels     int     `json:"kernels"`
	Load        string  `json:"loadavg_at_end"`
}

func main() {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel")
	flag.StringVar(&c.Sandbox, "sandbox", local.SandboxAuto, "kernel sandbox: auto, bwrap or none")
	flag.IntVar(&c.N, "n", 20, "kernels per mode")
	flag.StringVar(&c.Start, "start", "fork,spawn", "KERNEL_START modes, in order (and fork-whole: fork without the zygote's prepared kernel)")
	flag.BoolVar(&c.JSON, "json", false, "print JSON")
	flag.BoolVar(&c.Verbose, "v", false, "log provisioner events")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "forkbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchkit.LogLevel(c.Verbose)}))
	var all []*Result
	for _, start := range strings.Split(c.Start, ",") {
		r, err := measure(ctx, c, strings.TrimSpace(start), log)
		if err != nil {
			return fmt.Errorf("KERNEL_START=%s: %w", start, err)
		}
		all = append(all, r)
	}
	if c.JSON {
		return benchkit.PrintJSON(out, all)
	}
	fmt.Fprintf(out, "forkbench %s  %d CPUs, %s, %s\n", time.Now().Format("2006-01-02 15:04"), runtime.NumCPU(), runtime.Version(), benchkit.PythonVersions(c.Python))
	fmt.Fprintf(out, "%d kernels per mode, default preload (numpy, pandas, matplotlib, pyplot), started one after the other, no pool\n", c.N)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "KERNEL_START\tlimits\tstart to first 1+1 p50 ms\tp90\tmax\tCPU-s per kernel\tPSS MiB per idle kernel\tRSS MiB\tload at end\t")
	for _, r := range all {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%.3f\t%.1f\t%.1f\t%s\t\n", r.Start, r.Limits, r.FirstAnswer.P50, r.FirstAnswer.P90,
			r.FirstAnswer.Max, r.CPUPerStart, r.PSSPerMiB, r.RSSPerMiB, r.Load)
	}
	return tw.Flush()
}

// modeWhole is KERNEL_START=fork with EXECUTOR_ZYGOTE_PREPARE=0: each
// child builds its kernel whole instead of finishing one the zygote
// prepared (the zygote as it was before), to measure what preparing saves.
const modeWhole = "fork-whole"

func measure(ctx context.Context, c config, mode string, log *slog.Logger) (*Result, error) {
	start, env := mode, map[string]string(nil)
	if mode == modeWhole {
		start, env = "fork", map[string]string{"EXECUTOR_ZYGOTE_PREPARE": "0"}
	}
	prov, err := local.New(local.Config{Python: c.Python, Sandbox: c.Sandbox, Start: start, Logger: log,
		Memory: 1 << 30, PidsLimit: 256, Env: env})
	if err != nil {
		return nil, err
	}
	defer prov.Close()
	if prov.StartMode() != start {
		return nil, fmt.Errorf("the provisioner fell back to %s", prov.StartMode())
	}
	fmt.Fprintf(os.Stderr, "forkbench: %s: %d kernels...\n", mode, c.N)
	// One untimed kernel first, as a pool's first start would be.
	if k, err := benchkit.Launch(ctx, prov, nil, log); err == nil {
		k.Close(context.Background())
	} else {
		return nil, err
	}
	time.Sleep(time.Second) // let the closed kernel's pages go
	rss0, pss0, _ := benchkit.TreeMem()
	cpu0 := benchkit.TreeCPU()
	var (
		lat     []time.Duration
		kernels []*kernel.Kernel
	)
	defer func() {
		for _, k := range kernels {
			k.Close(context.Background())
		}
	}()
	for range c.N {
		t0 := time.Now()
		k, err := kernel.Launch(ctx, prov, kernel.Spec{ID: benchkit.KernelID("f")}, kernel.LaunchOptions{Logger: log})
		if err != nil {
			return nil, err
		}
		kernels = append(kernels, k)
		r, err := k.Execute(ctx, "1+1", kernel.ExecuteOptions{}, kernel.Deadline{Timeout: time.Minute})
		if err != nil || r.Status != "ok" {
			return nil, fmt.Errorf("first 1+1: %v", err)
		}
		lat = append(lat, time.Since(t0))
	}
	cpu := benchkit.TreeCPU() - cpu0
	time.Sleep(2 * time.Second) // idle
	rss1, pss1, _ := benchkit.TreeMem()
	n := float64(c.N)
	return &Result{
		Start: mode, Limits: prov.LimitMode(), FirstAnswer: benchkit.Summarize(lat), CPUPerStart: cpu / n,
		PSSPerMiB: float64(pss1-pss0) / n / (1 << 20), RSSPerMiB: float64(rss1-rss0) / n / (1 << 20),
		Kernels: c.N, Load: benchkit.LoadAvg(),
	}, nil
}
