// Command gwcpu measures the gateway process's own CPU time, kernels
// excluded: per stateless call and per idle second with a full warm pool.
// It runs gateway binaries (cmd/codegw builds) as child processes, so that
// two builds, e.g. main's and this tree's, are measured side by side in one
// run, each with one-shot kernels (KERNEL_START=fork, STATELESS_KERNEL=oneshot)
// and with full kernels forked and spawned (KERNEL_START=fork, spawn):
//
//	go build -o /tmp/codegw-after ./cmd/codegw
//	git archive main | (mkdir -p /tmp/codegw-main && tar -x -C /tmp/codegw-main)
//	(cd /tmp/codegw-main && go build -o /tmp/codegw-before ./cmd/codegw)
//	go run ./bench/gwcpu -bin before=/tmp/codegw-before,after=/tmp/codegw-after
//
// The gateway's CPU is utime+stime of its own /proc/<pid>/stat (all its
// threads, not its children: kernels and the zygote are children), in
// clock ticks of 10 ms, so the windows are long; the on-CPU nanoseconds of
// its threads (/proc/<pid>/task/*/schedstat) are reported beside it.
//
//   - idle: a gateway with POOL_SIZE kernels ready and no request, for -idle.
//   - per call: -n stateless POST /api/v1/execute of print(1+1), one after
//     the other, from a full pool until the pool is full again (each call's
//     replacement kernel is started, dialled and warmed by the gateway:
//     that is part of a call's cost). The idle CPU of that window is
//     included, as a gateway pays it.
//
// bench/README.md explains the figures.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw/bench/internal/benchkit"
)

type config struct {
	Bins   string
	Start  string
	N      int
	Idle   time.Duration
	Pool   int
	Rounds int
	Python string
	JSON   bool
}

// Result is one gateway binary's figures with one KERNEL_START mode.
type Result struct {
	Bin   string `json:"bin"`
	Start string `json:"kernel_start"`
	Round int    `json:"round"`
	// IdleMsPerS is the gateway's CPU ms per idle second with a full pool
	// (/proc/<pid>/stat); IdleSchedMsPerS the same from schedstat.
	IdleMsPerS      float64 `json:"idle_cpu_ms_per_s"`
	IdleSchedMsPerS float64 `json:"idle_sched_ms_per_s"`
	// CallMs is the gateway's CPU ms per stateless call, from a full pool
	// to a full pool again; CallSchedMs the same from schedstat.
	CallMs      float64 `json:"cpu_ms_per_call"`
	CallSchedMs float64 `json:"sched_ms_per_call"`
	CallWallMs  float64 `json:"wall_ms_per_call"`
	Load        string  `json:"loadavg_at_end"`
}

func main() {
	var c config
	flag.StringVar(&c.Bins, "bin", "", "gateway binaries, name=path[,name=path...] (default: this tree's cmd/codegw, built)")
	flag.StringVar(&c.Start, "start", "oneshot,fork,spawn", "modes: oneshot (KERNEL_START=fork, STATELESS_KERNEL=oneshot), fork, spawn (KERNEL_START, STATELESS_KERNEL=kernel)")
	flag.IntVar(&c.N, "n", 30, "stateless calls per measure")
	flag.DurationVar(&c.Idle, "idle", 30*time.Second, "idle window with a full pool")
	flag.IntVar(&c.Pool, "pool", 2, "POOL_SIZE")
	flag.IntVar(&c.Rounds, "rounds", 1, "rounds over every binary and mode (interleaved)")
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "KERNEL_PYTHON")
	flag.BoolVar(&c.JSON, "json", false, "print JSON")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gwcpu:", err)
		os.Exit(1)
	}
}

type bin struct{ name, path string }

func run(ctx context.Context, c config, out io.Writer) error {
	var bins []bin
	if c.Bins == "" {
		dir, err := os.MkdirTemp("", "gwcpu")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "codegw")
		if b, err := exec.Command("go", "build", "-o", path, "./cmd/codegw").CombinedOutput(); err != nil {
			return fmt.Errorf("build: %v: %s", err, b)
		}
		bins = append(bins, bin{"this", path})
	}
	for _, s := range strings.Split(c.Bins, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		name, path, ok := strings.Cut(s, "=")
		if !ok {
			name, path = filepath.Base(s), s
		}
		bins = append(bins, bin{name, path})
	}
	var all []*Result
	for round := 1; round <= c.Rounds; round++ {
		for _, start := range strings.Split(c.Start, ",") {
			for _, b := range bins {
				fmt.Fprintf(os.Stderr, "gwcpu: round %d: %s with KERNEL_START=%s...\n", round, b.name, start)
				r, err := measure(ctx, c, b, strings.TrimSpace(start))
				if err != nil {
					return fmt.Errorf("%s, KERNEL_START=%s: %w", b.name, start, err)
				}
				r.Round = round
				all = append(all, r)
			}
		}
	}
	if c.JSON {
		return benchkit.PrintJSON(out, all)
	}
	fmt.Fprintf(out, "gwcpu %s  %d CPUs, %s, %s\n", time.Now().Format("2006-01-02 15:04"), runtime.NumCPU(), runtime.Version(), benchkit.PythonVersions(c.Python))
	fmt.Fprintf(out, "POOL_SIZE=%d, idle window %v, %d stateless print(1+1) calls per measure; gateway process only (kernels excluded)\n", c.Pool, c.Idle, c.N)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tbinary\tKERNEL_START\tidle CPU ms/s (stat)\t(schedstat)\tCPU ms per call (stat)\t(schedstat)\twall ms per call\tload at end\t")
	for _, r := range all {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.2f\t%.2f\t%.1f\t%.1f\t%.0f\t%s\t\n", r.Round, r.Bin, r.Start, r.IdleMsPerS, r.IdleSchedMsPerS,
			r.CallMs, r.CallSchedMs, r.CallWallMs, r.Load)
	}
	return tw.Flush()
}

// gateway is one running gateway process.
type gateway struct {
	cmd  *exec.Cmd
	base string
	dir  string
	http *http.Client
}

func startGateway(c config, b bin, start string) (*gateway, error) {
	// Short: the kernels' ipc socket paths live under STATE_DIR.
	dir, err := os.MkdirTemp("/tmp", "gwc")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(b.path)
	stateless := "kernel"
	if start == "oneshot" {
		start, stateless = "fork", "oneshot"
	}
	cmd.Env = append(os.Environ(),
		"HOST=127.0.0.1", "PORT="+strconv.Itoa(port), "POOL_SIZE="+strconv.Itoa(c.Pool),
		"KERNEL_START="+start, "STATELESS_KERNEL="+stateless, "KERNEL_PYTHON="+c.Python, "STATE_DIR="+filepath.Join(dir, "s"),
		"IMAGE_STORE_PATH="+filepath.Join(dir, "images"), "FILE_STORE_PATH="+filepath.Join(dir, "files"), "SNAPSHOT_DIR="+filepath.Join(dir, "snapshots"),
		"LOG_LEVEL=warn", "API_KEYS=", "REDIS_URL=", "EXECUTOR=local")
	logf, err := os.Create(filepath.Join(dir, "gateway.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &gateway{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir, http: benchkit.HTTPClient(2)}, nil
}

func (g *gateway) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		g.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(g.dir)
}

// poolReady reads codegw_pool_ready from /metrics (loopback: no key).
func (g *gateway) poolReady(ctx context.Context) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.base+"/metrics", nil)
	resp, err := g.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "codegw_pool_ready" {
			v, err := strconv.ParseFloat(f[1], 64)
			return int(v), err
		}
	}
	return 0, fmt.Errorf("no codegw_pool_ready in /metrics (status %d)", resp.StatusCode)
}

// waitFull polls the pool every interval until n kernels are ready.
func (g *gateway) waitFull(ctx context.Context, n int, interval time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		got, err := g.poolReady(ctx)
		if err == nil && got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
			return fmt.Errorf("pool not full (%d ready, %v): %w; log: %s", got, err, ctx.Err(), lastLines(string(b), 5))
		case <-time.After(interval):
		}
	}
}

func (g *gateway) execute(ctx context.Context, code string) error {
	body, _ := json.Marshal(map[string]string{"code": code})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.base+"/api/v1/execute", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var res struct {
		Result string  `json:"result"`
		Error  *string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return fmt.Errorf("status %d: %w", resp.StatusCode, err)
	}
	if res.Error != nil || strings.TrimSpace(res.Result) != "2" {
		return fmt.Errorf("status %d, result %q, error %v", resp.StatusCode, res.Result, res.Error)
	}
	return nil
}

func measure(ctx context.Context, c config, b bin, start string) (*Result, error) {
	g, err := startGateway(c, b, start)
	if err != nil {
		return nil, err
	}
	defer g.stop()
	pid := g.cmd.Process.Pid
	if err := g.waitFull(ctx, c.Pool, 250*time.Millisecond); err != nil {
		return nil, err
	}
	time.Sleep(3 * time.Second) // starts settle (the zygote's first kernels)
	if err := g.waitFull(ctx, c.Pool, 250*time.Millisecond); err != nil {
		return nil, err
	}
	r := &Result{Bin: b.name, Start: start}

	t0, s0, err := gatewayCPU(pid)
	if err != nil {
		return nil, err
	}
	select {
	case <-time.After(c.Idle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	t1, s1, err := gatewayCPU(pid)
	if err != nil {
		return nil, err
	}
	secs := c.Idle.Seconds()
	r.IdleMsPerS, r.IdleSchedMsPerS = (t1-t0)*1e3/secs, (s1-s0)*1e3/secs

	w0 := time.Now()
	t0, s0, _ = gatewayCPU(pid)
	for i := range c.N {
		if err := g.execute(ctx, "print(1+1)"); err != nil {
			return nil, fmt.Errorf("call %d: %w", i+1, err)
		}
	}
	if err := g.waitFull(ctx, c.Pool, 100*time.Millisecond); err != nil {
		return nil, err
	}
	t1, s1, err = gatewayCPU(pid)
	if err != nil {
		return nil, err
	}
	n := float64(c.N)
	r.CallMs, r.CallSchedMs = (t1-t0)*1e3/n, (s1-s0)*1e3/n
	r.CallWallMs = float64(time.Since(w0).Milliseconds()) / n
	r.Load = benchkit.LoadAvg()
	return r, nil
}

// gatewayCPU returns the process's own CPU seconds from /proc/<pid>/stat
// (utime+stime, ticks) and from its threads' schedstat (nanoseconds).
func gatewayCPU(pid int) (stat, sched float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// f[0] is field 3: utime and stime are fields 14 and 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	stat = float64(ut+st) / 100 // USER_HZ
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sched += float64(ns) / 1e9
		}
	}
	return stat, sched, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
