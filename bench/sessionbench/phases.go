package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/local"
)

// RoundTrip compares a warm session's websocket round trip with the bare
// kernel's.
type RoundTrip struct {
	WS       Series  `json:"websocket"` // execute message -> done event
	Floor    Series  `json:"floor"`     // kernel.Kernel.Execute on its own kernel
	P50Ratio float64 `json:"p50_ratio"`
	Target   float64 `json:"p50_target"`
	// Round p50s, to see drift and noise.
	WSRoundP50    []float64 `json:"websocket_round_p50_ms"`
	FloorRoundP50 []float64 `json:"floor_round_p50_ms"`
}

// Series is one side's latency (ms) and this process's CPU per execution:
// for the websocket side that is the gateway plus the websocket client (both
// in this process), for the floor the Go kernel client alone.
type Series struct {
	benchkit.Stats
	CPUPerExecMs float64 `json:"process_cpu_per_exec_ms"`
}

const ratioTarget = 1.10

func execFloor(ctx context.Context, k *kernel.Kernel, code string) (time.Duration, error) {
	t0 := time.Now()
	// The options the session manager uses.
	_, err := k.Execute(ctx, code, kernel.ExecuteOptions{StoreHistory: true, OnMessage: func(*kernel.Message) {}}, kernel.Deadline{Timeout: 60 * time.Second})
	return time.Since(t0), err
}

func roundTrip(ctx context.Context, cfg config, g *benchkit.Gateway, prov *local.Provisioner, log *slog.Logger) (*RoundTrip, error) {
	floor, err := benchkit.LaunchHB(ctx, prov, nil, log, cfg.HBTimeout)
	if err != nil {
		return nil, fmt.Errorf("floor kernel: %w", err)
	}
	defer floor.Close(context.Background())
	client := benchkit.HTTPClient(4)
	id, err := createSession(ctx, client, g.Base)
	if err != nil {
		return nil, err
	}
	defer deleteSession(context.Background(), client, g.Base, id)
	ws, err := dial(g.Base, id)
	if err != nil {
		return nil, err
	}
	defer ws.close()

	res := &RoundTrip{Target: ratioTarget}
	type side struct {
		lat []time.Duration
		cpu float64
	}
	var wsAll, flAll side
	for r := 0; r < cfg.Rounds; r++ {
		n := cfg.N / cfg.Rounds
		if r < cfg.N%cfg.Rounds {
			n++
		}
		wsFirst := r%2 == 0
		for s := 0; s < 2; s++ {
			isWS := (s == 0) == wsFirst
			one := func() (time.Duration, error) {
				if isWS {
					return ws.exec(cfg.Code)
				}
				return execFloor(ctx, floor, cfg.Code)
			}
			for range cfg.Warmup {
				if _, err := one(); err != nil {
					return nil, err
				}
			}
			if isWS && profileStart != nil {
				profileStart()
			}
			lat := make([]time.Duration, 0, n)
			c0 := benchkit.SelfCPU()
			for range n {
				d, err := one()
				if err != nil {
					return nil, err
				}
				lat = append(lat, d)
			}
			cpu := benchkit.SelfCPU() - c0
			if isWS && profileStop != nil {
				profileStop()
				profileStart, profileStop = nil, nil // one profiled round
			}
			p50 := benchkit.Summarize(lat).P50
			if isWS {
				wsAll.lat, wsAll.cpu = append(wsAll.lat, lat...), wsAll.cpu+cpu
				res.WSRoundP50 = append(res.WSRoundP50, p50)
			} else {
				flAll.lat, flAll.cpu = append(flAll.lat, lat...), flAll.cpu+cpu
				res.FloorRoundP50 = append(res.FloorRoundP50, p50)
			}
		}
	}
	res.WS = Series{Stats: benchkit.Summarize(wsAll.lat), CPUPerExecMs: wsAll.cpu * 1e3 / float64(len(wsAll.lat))}
	res.Floor = Series{Stats: benchkit.Summarize(flAll.lat), CPUPerExecMs: flAll.cpu * 1e3 / float64(len(flAll.lat))}
	res.P50Ratio = res.WS.P50 / res.Floor.P50
	return res, nil
}

// Busy is executions per second with cfg.Busy clients busy at once.
type Busy struct {
	Clients  int     `json:"clients"`
	WS       Rate    `json:"websocket"` // each client on its own session's websocket
	Floor    Rate    `json:"floor"`     // each client on a kernel of its own, kernel.Kernel.Execute
	Ratio    float64 `json:"rate_ratio"`
	ExtraCPU float64 `json:"gateway_extra_cpu_ms_per_exec"` // WS minus floor process CPU per execution
}

// Rate is one side of the busy phase.
type Rate struct {
	Seconds      float64        `json:"seconds"`
	Execs        int            `json:"executions"`
	PerSecond    float64        `json:"executions_per_s"`
	Latency      benchkit.Stats `json:"latency_ms"`
	CPUPerExecMs float64        `json:"process_cpu_per_exec_ms"`
}

// busy runs cfg.Busy clients looping cfg.Code, alternately over sessions'
// websockets and directly on kernels of their own, in four windows (floor,
// websocket, websocket, floor) of half the duration each.
func busy(ctx context.Context, cfg config, g *benchkit.Gateway, prov *local.Provisioner, log *slog.Logger) (*Busy, error) {
	n := cfg.Busy
	client := benchkit.HTTPClient(4)
	var (
		kernels []*kernel.Kernel
		socks   []*wsClient
		ids     []string
	)
	defer func() {
		for _, w := range socks {
			w.close()
		}
		for _, id := range ids {
			deleteSession(context.Background(), client, g.Base, id)
		}
		for _, k := range kernels {
			k.Close(context.Background())
		}
	}()
	for range n {
		k, err := benchkit.LaunchHB(ctx, prov, nil, log, cfg.HBTimeout)
		if err != nil {
			return nil, err
		}
		kernels = append(kernels, k)
		id, err := createSession(ctx, client, g.Base)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
		w, err := dial(g.Base, id)
		if err != nil {
			return nil, err
		}
		socks = append(socks, w)
	}
	for i := range n { // first-cell work and imports, untimed
		for range 10 {
			if _, err := socks[i].exec(cfg.Code); err != nil {
				return nil, err
			}
			if _, err := execFloor(ctx, kernels[i], cfg.Code); err != nil {
				return nil, err
			}
		}
	}
	// Let the pool's refills (one per session created) finish first.
	if err := benchkit.WaitPoolFull(ctx, g.Pool, 2, 3*time.Minute); err != nil {
		return nil, err
	}
	type acc struct {
		lat     []time.Duration
		cpu, el float64
	}
	var wsAcc, flAcc acc
	window := func(isWS bool, d time.Duration) error {
		var (
			mu   sync.Mutex
			lat  []time.Duration
			wg   sync.WaitGroup
			fail atomic.Value
		)
		end := time.Now().Add(d)
		c0 := benchkit.SelfCPU()
		t0 := time.Now()
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for time.Now().Before(end) && ctx.Err() == nil {
					var dd time.Duration
					var err error
					if isWS {
						dd, err = socks[i].exec(cfg.Code)
					} else {
						dd, err = execFloor(ctx, kernels[i], cfg.Code)
					}
					if err != nil {
						side := "floor kernel"
						if isWS {
							side = "session"
						}
						fail.CompareAndSwap(nil, fmt.Sprintf("%s %d: %v", side, i, err))
						return
					}
					mine = append(mine, dd)
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		el := time.Since(t0).Seconds()
		cpu := benchkit.SelfCPU() - c0
		if f := fail.Load(); f != nil {
			return fmt.Errorf("%s", f)
		}
		a := &flAcc
		if isWS {
			a = &wsAcc
		}
		a.lat, a.cpu, a.el = append(a.lat, lat...), a.cpu+cpu, a.el+el
		return nil
	}
	half := cfg.BusyDuration / 2
	for _, isWS := range []bool{false, true, true, false} {
		if err := window(isWS, half); err != nil {
			return nil, err
		}
	}
	rate := func(a acc) Rate {
		return Rate{Seconds: a.el, Execs: len(a.lat), PerSecond: float64(len(a.lat)) / a.el,
			Latency: benchkit.Summarize(a.lat), CPUPerExecMs: a.cpu * 1e3 / float64(len(a.lat))}
	}
	b := &Busy{Clients: n, WS: rate(wsAcc), Floor: rate(flAcc)}
	b.Ratio = b.WS.PerSecond / b.Floor.PerSecond
	b.ExtraCPU = b.WS.CPUPerExecMs - b.Floor.CPUPerExecMs
	return b, nil
}

// Memory is the gateway's memory per idle session.
type Memory struct {
	Sessions         int     `json:"sessions"`
	Before           MemSnap `json:"before"`
	After            MemSnap `json:"after"`
	HeapPerSession   float64 `json:"heap_inuse_kib_per_session"`
	RSSPerSession    float64 `json:"rss_kib_per_session"`
	GoroutinesPerSes float64 `json:"goroutines_per_session"`
	// Kernels: every process the sessions' kernels run (bwrap included),
	// other than the pool's, which are there before and after.
	KernelProcs        int     `json:"kernel_processes"`
	KernelRSSMiB       float64 `json:"kernels_rss_mib"`
	KernelPSSMiB       float64 `json:"kernels_pss_mib"`
	KernelPSSPerSesMiB float64 `json:"kernel_pss_mib_per_session"`
	CreateSeconds      float64 `json:"create_seconds"`
	LeftAfterCleanup   int     `json:"kernel_processes_left_after_cleanup"`
}

// MemSnap is the gateway process's memory after a forced GC.
type MemSnap struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	HeapAlloc  uint64 `json:"heap_alloc"`
	Sys        uint64 `json:"sys"`
	StackInuse uint64 `json:"stack_inuse"`
	RSS        int64  `json:"rss"`
	Goroutines int    `json:"goroutines"`
	TreeRSS    int64  `json:"kernels_rss"`
	TreePSS    int64  `json:"kernels_pss"`
	TreeProcs  int    `json:"kernel_processes"`
}

func snapshot(skip int) MemSnap {
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := MemSnap{HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc, Sys: ms.Sys, StackInuse: ms.StackInuse,
		RSS: benchkit.SelfRSS(), Goroutines: runtime.NumGoroutine()}
	s.TreeRSS, s.TreePSS, s.TreeProcs = benchkit.TreeMem(skip)
	return s
}

// memory opens cfg.Sessions sessions one after the other on a gateway whose
// kernels preload nothing, connects a websocket to each from a child
// process, and compares the gateway's memory with what it was with the pool
// full and no session. Everything is deleted at the end.
func memory(ctx context.Context, cfg config, log *slog.Logger) (*Memory, error) {
	prov, err := local.New(local.Config{Python: cfg.Python, Sandbox: cfg.Sandbox, Preload: []string{}, Logger: log})
	if err != nil {
		return nil, err
	}
	defer prov.Close()
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{
		Prov: prov, PoolSize: cfg.MemPool, MaxStarting: cfg.MemStarting, Workers: 4, MaxSessions: cfg.Sessions + 10, Logger: log, HeartbeatTimeout: cfg.HBTimeout,
	})
	if err != nil {
		return nil, err
	}
	defer g.Close()
	client := benchkit.HTTPClient(8)

	// The websocket holder: this binary again, in -holder mode.
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	hold := exec.Command(self, "-holder", g.Base)
	hold.Stderr = os.Stderr
	hin, err := hold.StdinPipe()
	if err != nil {
		return nil, err
	}
	hout, err := hold.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := hold.Start(); err != nil {
		return nil, err
	}
	holderDone := false
	defer func() {
		if !holderDone {
			hin.Close()
			hold.Wait()
		}
	}()
	answers := bufio.NewScanner(hout)

	if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.MemPool, 3*time.Minute); err != nil {
		return nil, err
	}
	// One session made and removed first: first-use allocations (routes,
	// pools, the holder's first connection) are not per-session costs.
	if id, err := createSession(ctx, client, g.Base); err != nil {
		return nil, err
	} else if err := deleteSession(ctx, client, g.Base, id); err != nil {
		return nil, err
	}
	if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.MemPool, 3*time.Minute); err != nil {
		return nil, err
	}
	before := snapshot(hold.Process.Pid)

	var ids []string
	defer func() { // every session goes, whatever happened
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for _, id := range ids {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				deleteSession(context.Background(), client, g.Base, id)
			}()
		}
		wg.Wait()
	}()
	t0 := time.Now()
	for i := range cfg.Sessions {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		id, err := createSession(ctx, client, g.Base)
		if err != nil {
			return nil, fmt.Errorf("session %d: %w", i+1, err)
		}
		ids = append(ids, id)
		fmt.Fprintln(hin, id)
		if !answers.Scan() {
			return nil, fmt.Errorf("websocket holder exited: %v", answers.Err())
		}
		if a := answers.Text(); a != "ok" {
			return nil, fmt.Errorf("websocket holder: %s", a)
		}
		if (i+1)%20 == 0 {
			progress("memory: %d sessions open (%.0f s)", i+1, time.Since(t0).Seconds())
		}
	}
	created := time.Since(t0).Seconds()
	if err := benchkit.WaitPoolFull(ctx, g.Pool, cfg.MemPool, 3*time.Minute); err != nil {
		return nil, err
	}
	after := snapshot(hold.Process.Pid)
	if cfg.MemProfile != "" {
		f, err := os.Create(cfg.MemProfile)
		if err != nil {
			return nil, err
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}

	m := &Memory{Sessions: cfg.Sessions, Before: before, After: after, CreateSeconds: created}
	per := float64(cfg.Sessions)
	m.HeapPerSession = (float64(after.HeapInuse) - float64(before.HeapInuse)) / 1024 / per
	m.RSSPerSession = float64(after.RSS-before.RSS) / 1024 / per
	m.GoroutinesPerSes = float64(after.Goroutines-before.Goroutines) / per
	m.KernelProcs = after.TreeProcs - before.TreeProcs
	m.KernelRSSMiB = float64(after.TreeRSS-before.TreeRSS) / (1 << 20)
	m.KernelPSSMiB = float64(after.TreePSS-before.TreePSS) / (1 << 20)
	m.KernelPSSPerSesMiB = m.KernelPSSMiB / per

	// Clean up now, to report what is left.
	progress("memory: closing %d websockets and deleting the sessions...", len(ids))
	hin.Close()
	hold.Wait()
	holderDone = true
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := deleteSession(context.Background(), client, g.Base, id); err != nil {
				progress("memory: %v", err)
			}
		}()
	}
	wg.Wait()
	ids = nil
	g.Close()
	time.Sleep(500 * time.Millisecond)
	_, _, m.LeftAfterCleanup = benchkit.TreeMem()
	return m, nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func printTable(out io.Writer, r *Results) {
	fmt.Fprintf(out, "sessionbench %s  %d CPUs, %s, load %s -> %s\n%s\n\n", r.Date.Format("2006-01-02 15:04"),
		r.Host.CPUs, r.Host.GoVersion, r.Host.LoadStart, r.Host.LoadEnd, r.Host.Versions)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	if rt := r.RoundTrip; rt != nil {
		fmt.Fprintf(out, "warm session %q round trip, %d interleaved rounds (%s):\n", r.Config["code"], len(rt.WSRoundP50), r.Config["rt_busy_gateway"])
		fmt.Fprintln(tw, "path\tn\tp50 ms\tp90 ms\tp99 ms\tmax ms\tprocess CPU/exec ms\t")
		for _, s := range []struct {
			name string
			s    Series
		}{{"websocket execute -> done", rt.WS}, {"kernel.Kernel.Execute (floor)", rt.Floor}} {
			fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t\n", s.name, s.s.N, s.s.P50, s.s.P90, s.s.P99, s.s.Max, s.s.CPUPerExecMs)
		}
		tw.Flush()
		fmt.Fprintf(out, "round p50s ms: websocket %s | floor %s\n", floats(rt.WSRoundP50), floats(rt.FloorRoundP50))
		fmt.Fprintf(out, "p50 ratio websocket/floor: %.3f (target <= %.2f: %s)\n\n", rt.P50Ratio, rt.Target, benchkit.Verdict(rt.P50Ratio <= rt.Target))
	}
	if b := r.Busy; b != nil {
		fmt.Fprintf(out, "%d busy clients looping %q (two windows per side, interleaved):\n", b.Clients, r.Config["code"])
		fmt.Fprintln(tw, "path\texecutions\tseconds\texec/s\tp50 ms\tp99 ms\tprocess CPU/exec ms\t")
		for _, s := range []struct {
			name string
			r    Rate
		}{{"sessions over websocket", b.WS}, {"kernels direct (floor)", b.Floor}} {
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.0f\t%.2f\t%.2f\t%.3f\t\n", s.name, s.r.Execs, s.r.Seconds, s.r.PerSecond, s.r.Latency.P50, s.r.Latency.P99, s.r.CPUPerExecMs)
		}
		tw.Flush()
		fmt.Fprintf(out, "rate ratio sessions/floor: %.3f; gateway+websocket client CPU over the floor: %.3f ms/exec\n\n", b.Ratio, b.ExtraCPU)
	}
	for phase, e := range r.Errors {
		fmt.Fprintf(out, "phase %s FAILED: %s\n\n", phase, e)
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(out, "%d idle sessions, a websocket connected to each (held by a child process), created in %.0f s (%s):\n", m.Sessions, m.CreateSeconds, r.Config["memory_gateway"])
		fmt.Fprintln(tw, "\tHeapInuse MiB\tStackInuse MiB\tSys MiB\tRSS MiB\tgoroutines\tkernel procs\tkernels RSS MiB\tkernels PSS MiB\t")
		for _, s := range []struct {
			name string
			m    MemSnap
		}{{"before (pool full)", m.Before}, {"after", m.After}} {
			fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%.0f\t%.0f\t\n", s.name, mib(s.m.HeapInuse), mib(s.m.StackInuse), mib(s.m.Sys), float64(s.m.RSS)/(1<<20),
				s.m.Goroutines, s.m.TreeProcs, float64(s.m.TreeRSS)/(1<<20), float64(s.m.TreePSS)/(1<<20))
		}
		tw.Flush()
		fmt.Fprintf(out, "gateway per idle session: HeapInuse %.1f KiB, RSS %.1f KiB, %.1f goroutines\n", m.HeapPerSession, m.RSSPerSession, m.GoroutinesPerSes)
		fmt.Fprintf(out, "kernels of the sessions: %d processes, RSS %.0f MiB, PSS %.0f MiB (%.1f MiB PSS per session)\n", m.KernelProcs, m.KernelRSSMiB, m.KernelPSSMiB, m.KernelPSSPerSesMiB)
		fmt.Fprintf(out, "kernel processes left after cleanup: %d\n", m.LeftAfterCleanup)
	}
}

func floats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, " ")
}
