// Command soak runs a mix of everything the gateway serves for a set
// duration and checks that every answer is right and that the gateway's
// memory, goroutines and open files stay flat. A whole gateway runs in this
// process (local provisioner, memory store), so the figures include the
// load's own client, which is small and steady.
//
// The mix, spread over -clients workers: stateless calls, session calls over
// REST and websocket, plots (the stored image is fetched), output files
// (downloaded and compared), input files from a local HTTP server, an
// interrupt of a long session call, errors, and faults: a timeout, a kernel
// process ending abruptly (stateless, or a session's, which the client
// restarts and finds empty), and a memory bomb past KERNEL_MEMORY (-memory),
// which must end as "oom" (forked kernels in a memory cgroup, as root; under
// RLIMIT_AS it must raise MemoryError; spawned kernels have no limit, so the
// bomb is left out of the mix and the report says so). The key's kernel
// memory is bounded too (MAX_KERNEL_MEMORY_PER_KEY: two kernels per client,
// what the mix holds at most), so a reservation that leaked would show as
// refusals, and none may be left at the end. A client whose call failed
// looks at its session and restarts it if its kernel died, as a real client
// would, so one fault is not counted again by every later call. At the end it reports wrong answers (must be 0),
// errors by kind, p50/p99 per kind, RSS, goroutines and open descriptors
// sampled every second (flat: the mean of the last quarter within 10% of
// the second quarter's), and the kernel processes and directories left
// after the gateway closed (must be 0). It exits with status 1 when any of
// these is missed; scripts/test.sh runs it for 60 seconds.
//
//	go run ./bench/soak [-duration 60s] [-clients 4] [-json]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	Python   string
	Duration time.Duration
	Clients  int
	JSON     bool
	Verbose  bool
	Memory   int64 // KERNEL_MEMORY
}

// kindStats are one kind's counts and latencies.
type kindStats struct {
	N      int            `json:"n"`
	Wrong  int            `json:"wrong"`
	Errors map[string]int `json:"errors,omitempty"`
	Lat    benchkit.Stats `json:"latency_ms"`
	ds     []time.Duration
}

type sample struct {
	T          float64 `json:"t_s"`
	RSSMiB     float64 `json:"rss_mib"`
	Goroutines int     `json:"goroutines"`
	FDs        int     `json:"fds"`
}

type result struct {
	Host          benchkit.Host         `json:"host"`
	Duration      string                `json:"duration"`
	Kinds         map[string]*kindStats `json:"kinds"`
	Wrong         int                   `json:"wrong_answers"`
	Samples       []sample              `json:"samples"`
	Flat          map[string]string     `json:"flat"`
	LeftProcs     int                   `json:"left_kernel_processes"`
	LeftDirs      int                   `json:"left_kernel_dirs"`
	LeftReserved  int                   `json:"left_kernel_reservations"`
	MemoryLimit   string                `json:"kernel_memory_limit"` // how KERNEL_MEMORY is enforced: cgroup, rlimit, none
	Verdict       string                `json:"verdict"`
	firstWrongMsg []string
}

func main() {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel")
	flag.DurationVar(&c.Duration, "duration", 60*time.Second, "how long the mix runs")
	flag.IntVar(&c.Clients, "clients", 4, "concurrent workers")
	flag.BoolVar(&c.JSON, "json", false, "print JSON")
	flag.BoolVar(&c.Verbose, "v", false, "log gateway events")
	flag.Int64Var(&c.Memory, "memory", 512<<20, "KERNEL_MEMORY in bytes: each kernel's limit, which the memory bomb passes")
	flag.Parse()
	benchkit.Main("soak", func(ctx context.Context, out io.Writer) error { return run(ctx, c, out) })
}

// worker is one client with a session of its own.
type worker struct {
	g      *benchkit.Gateway
	c      *http.Client
	sess   string
	n      int // the session's counter, to check state is kept
	inputs string
	rng    *rand.Rand
	limit  string // how kernel memory is limited: cgroup, rlimit, none
}

func run(ctx context.Context, c config, out io.Writer) error {
	progress := benchkit.Progress("soak")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if c.Verbose {
		log = slog.Default()
	}
	state, err := os.MkdirTemp("", "cgsoak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	prov, err := local.New(local.Config{Python: c.Python, StateDir: state, Logger: log, Memory: c.Memory})
	if err != nil {
		return err
	}
	limit := prov.LimitMode()
	host := benchkit.NewHost(c.Python)
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{Prov: prov, PoolSize: 2, MaxStarting: 2, Workers: 4, Logger: log,
		Tune: func(a *app.Config) {
			a.InputAllowCIDRs = []string{"127.0.0.1/32"} // the local file server
			a.MemoryBytes = app.Bytes(c.Memory)
			if limit != "none" { // refused without a per-kernel limit
				// Each client holds a session and at most one stateless
				// execution: the total is never reached unless a
				// reservation leaks.
				a.MaxKernelMemoryPerKey = app.Bytes(int64(2*c.Clients) * c.Memory)
			}
		}})
	if err != nil {
		prov.Close()
		return err
	}
	closed := false
	defer func() {
		if !closed {
			g.Close()
			prov.Close()
		}
	}()
	if err := benchkit.WaitPoolFull(ctx, g.Pool, 2, 2*time.Minute); err != nil {
		return err
	}
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "a,b\n%s,2\n", strings.TrimPrefix(r.URL.Path, "/"))
	}))
	defer files.Close()

	r := &result{Host: host, Duration: c.Duration.String(), Kinds: map[string]*kindStats{}, MemoryLimit: limit}
	var mu sync.Mutex
	record := func(kind string, d time.Duration, err error, wrong string) {
		mu.Lock()
		defer mu.Unlock()
		k := r.Kinds[kind]
		if k == nil {
			k = &kindStats{Errors: map[string]int{}}
			r.Kinds[kind] = k
		}
		k.N++
		switch {
		case err != nil:
			msg := err.Error()
			if i := strings.Index(msg, ": "); i > 0 && i < 40 {
				msg = msg[:i]
			}
			k.Errors[msg]++
		case wrong != "":
			k.Wrong++
			r.Wrong++
			if len(r.firstWrongMsg) < 5 {
				r.firstWrongMsg = append(r.firstWrongMsg, kind+": "+wrong)
			}
		default:
			k.ds = append(k.ds, d)
		}
	}

	start := time.Now()
	sctx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				runtime.GC()
				fds, _ := os.ReadDir("/proc/self/fd")
				mu.Lock()
				r.Samples = append(r.Samples, sample{T: time.Since(start).Seconds(), RSSMiB: float64(benchkit.SelfRSS()) / (1 << 20),
					Goroutines: runtime.NumGoroutine(), FDs: len(fds)})
				mu.Unlock()
			}
		}
	}()

	progress("running the mix for %v with %d clients", c.Duration, c.Clients)
	wctx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < c.Clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := &worker{g: g, c: benchkit.HTTPClient(4), inputs: files.URL, rng: rand.New(rand.NewPCG(uint64(i), 7)), limit: limit}
			for j := i; wctx.Err() == nil; j++ {
				if w.sess == "" {
					var s codegw.SessionInfo
					t0 := time.Now()
					err := w.post("/api/v1/sessions", "{}", &s, 201)
					record("session_create", time.Since(t0), err, "")
					w.sess, w.n = s.ID, 0
					if err != nil {
						time.Sleep(time.Second)
						continue
					}
				}
				kind, op := w.pick(j)
				t0 := time.Now()
				wrong, err := op(wctx)
				if wctx.Err() != nil && err != nil {
					break // the run ended under it
				}
				record(kind, time.Since(t0), err, wrong)
				if wrong != "" || err != nil {
					// A session whose kernel died under a fault is
					// restarted, as a client would, so one failure is
					// counted once and not again by every later call.
					t0 := time.Now()
					if restarted, err := w.recoverSession(); restarted || err != nil {
						record("session_restart", time.Since(t0), err, "")
					}
				}
			}
			if w.sess != "" {
				req, _ := http.NewRequest("DELETE", g.Base+"/api/v1/sessions/"+w.sess, nil)
				if resp, err := w.c.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		}(i)
	}
	wg.Wait()
	stopSampling()
	sampler.Wait()
	// The workers deleted their sessions; their stateless calls are over.
	r.LeftReserved = g.Mgr.Usage("anonymous").Kernels

	progress("closing the gateway")
	g.Close()
	prov.Close()
	closed = true
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(state)) {
			r.LeftProcs++
		}
	}
	if dirs, err := os.ReadDir(filepath.Join(state, "k")); err == nil {
		r.LeftDirs = len(dirs)
	}

	for _, k := range r.Kinds {
		k.Lat = benchkit.Summarize(k.ds)
	}
	r.Flat = flatness(r.Samples)
	ok := r.Wrong == 0 && r.LeftProcs == 0 && r.LeftDirs == 0 && r.LeftReserved == 0
	for _, v := range r.Flat {
		ok = ok && strings.HasPrefix(v, "flat")
	}
	r.Verdict = benchkit.Verdict(ok)
	if err := benchkit.Report(out, c.JSON, &r.Host, r, func(w io.Writer) { table(w, r) }); err != nil {
		return err
	}
	if !ok { // scripts/test.sh runs a short soak: a miss fails it
		return fmt.Errorf("missed: %d wrong answers, %d processes, %d directories and %d kernel reservations left, flatness %v",
			r.Wrong, r.LeftProcs, r.LeftDirs, r.LeftReserved, r.Flat)
	}
	return nil
}

// flatness compares the second and the last quarter of the samples.
func flatness(ss []sample) map[string]string {
	out := map[string]string{}
	n := len(ss)
	if n < 8 {
		out["samples"] = fmt.Sprintf("too few samples (%d)", n)
		return out
	}
	mean := func(from, to int, f func(sample) float64) float64 {
		s := 0.0
		for _, x := range ss[from:to] {
			s += f(x)
		}
		return s / float64(to-from)
	}
	for name, f := range map[string]func(sample) float64{
		"rss":        func(s sample) float64 { return s.RSSMiB },
		"goroutines": func(s sample) float64 { return float64(s.Goroutines) },
		"fds":        func(s sample) float64 { return float64(s.FDs) },
	} {
		q2, q4 := mean(n/4, n/2, f), mean(3*n/4, n, f)
		verdict := "flat"
		if q4 > q2*1.10 {
			verdict = "GROWING"
		}
		out[name] = fmt.Sprintf("%s (Q2 %.1f, Q4 %.1f, %+.1f%%)", verdict, q2, q4, (q4/q2-1)*100)
	}
	return out
}

func table(w io.Writer, r *result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "kind\tn\twrong\terrors\tp50 ms\tp99 ms\n")
	names := make([]string, 0, len(r.Kinds))
	for k := range r.Kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		k := r.Kinds[name]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%v\t%.1f\t%.1f\n", name, k.N, k.Wrong, k.Errors, k.Lat.P50, k.Lat.P99)
	}
	tw.Flush()
	fmt.Fprintf(w, "wrong answers: %d %v\n", r.Wrong, r.firstWrongMsg)
	for _, name := range []string{"rss", "goroutines", "fds"} {
		fmt.Fprintf(w, "%-10s %s\n", name, r.Flat[name])
	}
	fmt.Fprintf(w, "left after close: %d kernel processes, %d kernel directories; kernel reservations left: %d\n", r.LeftProcs, r.LeftDirs, r.LeftReserved)
	if r.MemoryLimit == "none" {
		fmt.Fprintf(w, "memory bomb: left out (spawned kernels have no memory limit)\n")
	} else {
		fmt.Fprintf(w, "kernel memory limited by: %s\n", r.MemoryLimit)
	}
	fmt.Fprintf(w, "verdict: %s (load %s -> %s on %d CPUs)\n", r.Verdict, r.Host.LoadStart, r.Host.LoadEnd, r.Host.CPUs)
}

// pick returns the j-th operation of the mix: stateless and session calls
// most often, the rest in turn.
func (w *worker) pick(j int) (string, func(context.Context) (string, error)) {
	switch j % 12 {
	case 0, 4, 8:
		return "stateless", w.stateless
	case 1, 5:
		return "session_rest", w.sessionREST
	case 2:
		return "websocket", w.websocketRun
	case 3:
		return "plot", w.plot
	case 6:
		return "output_file", w.outputFile
	case 7:
		return "input_file", w.inputFile
	case 9:
		return "error", w.raise
	case 10:
		return "interrupt", w.interrupt
	default: // the faults in turn
		switch j % 36 {
		case 11:
			return "fault_timeout", w.timeout
		case 23:
			if j%72 == 23+36 {
				return "fault_session_kill", w.killSession
			}
			return "fault_kernel_kill", w.kill
		}
		if w.limit == "none" {
			return "fault_timeout", w.timeout
		}
		return "fault_memory_bomb", w.memoryBomb
	}
}

func (w *worker) post(path, body string, out any, want int) error {
	resp, err := w.c.Post(w.g.Base+path, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("status %d: %.200s", resp.StatusCode, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func (w *worker) execute(path string, req map[string]any) (codegw.ExecuteResult, error) {
	var res codegw.ExecuteResult
	b, _ := json.Marshal(req)
	err := w.post(path, string(b), &res, 200)
	return res, err
}

func (w *worker) get(url string) ([]byte, error) {
	if strings.HasPrefix(url, "/") {
		url = w.g.Base + url
	}
	resp, err := w.c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET status %d", resp.StatusCode)
	}
	return b, nil
}

func (w *worker) stateless(context.Context) (string, error) {
	a, b := w.rng.IntN(1000), w.rng.IntN(1000)
	res, err := w.execute("/api/v1/execute", map[string]any{"code": fmt.Sprintf("print(%d + %d)", a, b)})
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(res.Stdout) != fmt.Sprint(a+b) {
		return fmt.Sprintf("stdout %q, want %d", res.Stdout, a+b), nil
	}
	return "", nil
}

func (w *worker) sessionREST(context.Context) (string, error) {
	code := "n = globals().get('n', 0) + 1\nprint(n)"
	res, err := w.execute("/api/v1/sessions/"+w.sess+"/execute", map[string]any{"code": code})
	if err != nil {
		return "", err
	}
	w.n++
	if strings.TrimSpace(res.Stdout) != fmt.Sprint(w.n) {
		got := strings.TrimSpace(res.Stdout)
		w.n = 0
		fmt.Sscan(got, &w.n)
		return fmt.Sprintf("session counter %q, want %d", got, w.n), nil
	}
	return "", nil
}

func (w *worker) websocketRun(ctx context.Context) (string, error) {
	url := "ws" + strings.TrimPrefix(w.g.Base, "http") + "/api/v1/sessions/" + w.sess + "/ws"
	conn, _, err := websocket.DefaultDialer.DialContext(ctx, url, nil)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	k := w.rng.IntN(100)
	id := fmt.Sprintf("ws%d", k)
	if err := conn.WriteJSON(map[string]any{"type": "execute", "id": id, "code": fmt.Sprintf("for i in range(3): print(%d + i)", k)}); err != nil {
		return "", err
	}
	var text strings.Builder
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for {
		var ev codegw.Event
		if err := conn.ReadJSON(&ev); err != nil {
			return "", err
		}
		if ev.ExecutionID != id {
			continue
		}
		switch ev.Type {
		case codegw.EventStream:
			text.WriteString(ev.Text)
		case codegw.EventDone:
			want := fmt.Sprintf("%d\n%d\n%d\n", k, k+1, k+2)
			if ev.Status != codegw.StatusOK || text.String() != want {
				return fmt.Sprintf("websocket %s %q, want ok %q", ev.Status, text.String(), want), nil
			}
			return "", nil
		}
	}
}

func (w *worker) plot(context.Context) (string, error) {
	res, err := w.execute("/api/v1/execute", map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"})
	if err != nil {
		return "", err
	}
	if res.Status != codegw.StatusOK || len(res.Images) != 1 {
		return fmt.Sprintf("plot: status %s, %d images", res.Status, len(res.Images)), nil
	}
	img, err := w.get(res.Images[0])
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(img, []byte("\x89PNG")) {
		return "plot: the stored image is not a PNG", nil
	}
	return "", nil
}

func (w *worker) outputFile(context.Context) (string, error) {
	v := w.rng.IntN(1 << 30)
	res, err := w.execute("/api/v1/execute", map[string]any{"code": fmt.Sprintf("open('/code/output/out.csv', 'w').write('v\\n%d\\n')", v)})
	if err != nil {
		return "", err
	}
	if len(res.Files) != 1 {
		return fmt.Sprintf("output: %d files", len(res.Files)), nil
	}
	b, err := w.get(res.Files[0].URL)
	if err != nil {
		return "", err
	}
	if string(b) != fmt.Sprintf("v\n%d\n", v) {
		return fmt.Sprintf("output file %q", b), nil
	}
	return "", nil
}

func (w *worker) inputFile(context.Context) (string, error) {
	v := w.rng.IntN(1 << 30)
	url := fmt.Sprintf("%s/%d", w.inputs, v)
	res, err := w.execute("/api/v1/execute", map[string]any{"code": fmt.Sprintf("import pandas as pd\nprint(pd.read_csv('%s')['a'][0])", url), "files": []string{url}})
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(res.Stdout) != fmt.Sprint(v) {
		return fmt.Sprintf("input: stdout %q error %v, want %d", res.Stdout, res.Error, v), nil
	}
	return "", nil
}

func (w *worker) raise(context.Context) (string, error) {
	res, err := w.execute("/api/v1/execute", map[string]any{"code": "1/0"})
	if err != nil {
		return "", err
	}
	if res.Status != codegw.StatusError || res.EName != "ZeroDivisionError" {
		return fmt.Sprintf("error: status %s ename %q", res.Status, res.EName), nil
	}
	return "", nil
}

func (w *worker) interrupt(context.Context) (string, error) {
	type answer struct {
		res codegw.ExecuteResult
		err error
	}
	done := make(chan answer, 1)
	go func() {
		res, err := w.execute("/api/v1/sessions/"+w.sess+"/execute", map[string]any{"code": "import time\ntime.sleep(30)"})
		done <- answer{res, err}
	}()
	time.Sleep(500 * time.Millisecond)
	var ierr error
	for range 20 { // the call may still be on its way to the kernel
		if ierr = w.post("/api/v1/sessions/"+w.sess+"/interrupt", "", nil, 200); ierr != nil {
			break
		}
		select {
		case a := <-done:
			if a.err != nil {
				return "", a.err
			}
			if a.res.Status != codegw.StatusInterrupted {
				return fmt.Sprintf("interrupt: status %s", a.res.Status), nil
			}
			return "", nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	a := <-done
	if a.err != nil {
		return "", a.err
	}
	if ierr != nil {
		return "", ierr
	}
	return fmt.Sprintf("interrupt: status %s", a.res.Status), nil
}

func (w *worker) timeout(context.Context) (string, error) {
	res, err := w.execute("/api/v1/execute", map[string]any{"code": "while True: pass", "timeout": 1})
	if err != nil {
		return "", err
	}
	if res.Status != codegw.StatusTimeout {
		return fmt.Sprintf("timeout: status %s", res.Status), nil
	}
	return "", nil
}

// memoryBomb allocates past the kernel's memory limit: in a memory cgroup
// the kernel is killed and the answer says "oom"; under RLIMIT_AS the
// allocation fails with MemoryError.
func (w *worker) memoryBomb(context.Context) (string, error) {
	res, err := w.execute("/api/v1/execute", map[string]any{"code": "x = []\nwhile True: x.append(b'x' * (16 << 20))"})
	if err != nil {
		return "", err
	}
	switch {
	case w.limit == "cgroup" && res.Status != codegw.StatusOOM:
		return fmt.Sprintf("memory bomb: status %s (%v), want oom", res.Status, res.Error), nil
	case w.limit == "rlimit" && (res.Status != codegw.StatusError || res.EName != "MemoryError"):
		return fmt.Sprintf("memory bomb: status %s ename %q, want error MemoryError", res.Status, res.EName), nil
	}
	return "", nil
}

func (w *worker) kill(context.Context) (string, error) {
	// The kernel process ends abruptly. Not by a signal it sends itself: a
	// forked kernel is pid 1 of its own pid namespace, which ignores its own
	// SIGKILL (a kill from outside still ends it).
	res, err := w.execute("/api/v1/execute", map[string]any{"code": "import os\nos._exit(9)"})
	if err != nil {
		return "", err
	}
	if res.Status != codegw.StatusDied {
		return fmt.Sprintf("kill: status %s", res.Status), nil
	}
	return "", nil
}

// recoverSession looks at the worker's session after a failed call: a dead
// kernel is restarted, an ended session is forgotten (the loop makes a new
// one). It says whether it restarted the kernel.
func (w *worker) recoverSession() (bool, error) {
	if w.sess == "" {
		return false, nil
	}
	resp, err := w.c.Get(w.g.Base + "/api/v1/sessions/" + w.sess)
	if err != nil {
		return false, err
	}
	var info codegw.SessionInfo
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		w.sess, w.n = "", 0
		return false, nil
	case resp.StatusCode != http.StatusOK || err != nil:
		return false, fmt.Errorf("session info: status %d %v", resp.StatusCode, err)
	case info.State != "dead":
		return false, nil
	}
	w.n = 0
	return true, w.post("/api/v1/sessions/"+w.sess+"/restart", "", nil, 200)
}

// killSession ends the session's kernel abruptly; the client restarts it
// and finds a working kernel that has lost its variables.
func (w *worker) killSession(context.Context) (string, error) {
	res, err := w.execute("/api/v1/sessions/"+w.sess+"/execute", map[string]any{"code": "import os\nos._exit(9)"})
	if err != nil {
		return "", err
	}
	if res.Status != codegw.StatusDied {
		return fmt.Sprintf("session kill: status %s", res.Status), nil
	}
	restarted, err := w.recoverSession()
	if err != nil {
		return "", err
	}
	if !restarted {
		return "session kill: the session was not dead", nil
	}
	return w.sessionREST(context.Background())
}
