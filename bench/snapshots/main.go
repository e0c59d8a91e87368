// Command snapshots measures pausing and resuming sessions: an in-process
// gateway on a loopback port (local or Docker kernels) with its snapshot
// directory on the local disk.
//
//   - small: a session with a few small variables is paused, then resumed
//     by its next execution, -n times; the pause is POST .../pause, the
//     resume is the extra time of the first execution after it over the
//     same execution on a live session (measured in the same run).
//
//   - large: a session holding ~100 MB of pandas DataFrames and a fitted
//     scikit-learn model is paused and resumed -large times; the snapshot's
//     stored size is reported beside the state's size in memory.
//
//     go run ./bench/snapshots [-n 20] [-large 3] [-executor local|docker] [-json]
//
// Targets: small p50 <= 150 ms each way; large pause and resume <= 1 s.
// bench/README.md has the figures.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session/snapshot"
)

type config struct {
	N, Large int
	Executor string
	Image    string
	Python   string
	JSON     bool
	Verbose  bool
}

type result struct {
	Host          benchkit.Host  `json:"host"`
	Executor      string         `json:"executor"`
	SmallPause    benchkit.Stats `json:"small_pause_ms"`
	SmallResume   benchkit.Stats `json:"small_resume_ms"`
	LiveExec      benchkit.Stats `json:"live_execute_ms"`
	LargePause    benchkit.Stats `json:"large_pause_ms"`
	LargeResume   benchkit.Stats `json:"large_resume_ms"`
	LargeUnpack   benchkit.Stats `json:"large_resume_unpack_ms"`
	LargeLoad     benchkit.Stats `json:"large_resume_load_ms"`
	LargeMemoryMB float64        `json:"large_state_mb"`
	LargeStoredMB float64        `json:"large_snapshot_mb"`
	Target        string         `json:"target"`
}

func main() {
	var c config
	flag.IntVar(&c.N, "n", 20, "pause/resume rounds of the small session")
	flag.IntVar(&c.Large, "large", 3, "pause/resume rounds of the 100 MB session")
	flag.StringVar(&c.Executor, "executor", "local", "kernels: local or docker")
	flag.StringVar(&c.Image, "image", "codegw/executor:latest", "executor image (docker)")
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel (local)")
	flag.BoolVar(&c.JSON, "json", false, "print JSON")
	flag.BoolVar(&c.Verbose, "v", false, "log the gateway")
	flag.Parse()
	benchkit.Main("snapshots", func(ctx context.Context, out io.Writer) error { return run(ctx, c, out) })
}

func run(ctx context.Context, c config, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchkit.LogLevel(c.Verbose)}))
	var prov kernel.Provisioner
	var err error
	if c.Executor == "docker" {
		dir, derr := os.MkdirTemp("", "cgsn")
		if derr != nil {
			return derr
		}
		defer os.RemoveAll(dir)
		prov, err = docker.New(ctx, docker.Config{Image: c.Image, InstanceID: "snapbench-" + strconv.Itoa(os.Getpid()),
			StateDir: dir, Memory: 2 << 30, PidsLimit: 256, Logger: log})
	} else {
		prov, err = local.New(local.Config{Python: c.Python, Logger: log})
	}
	if err != nil {
		return err
	}
	defer prov.Close()
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{Prov: prov, PoolSize: 2, Logger: log})
	if err != nil {
		return err
	}
	defer g.Close()
	if err := benchkit.WaitPoolFull(ctx, g.Pool, 2, 2*time.Minute); err != nil {
		return err
	}
	var unpacks, loads []time.Duration
	snapshot.Timing = func(_ string, u, l time.Duration) { unpacks, loads = append(unpacks, u), append(loads, l) }
	hc := benchkit.HTTPClient(4)
	host := benchkit.NewHost("")
	progress := benchkit.Progress("snapshots")
	create := func() (string, error) {
		var s codegw.SessionInfo
		err := benchkit.PostJSON(ctx, hc, g.Base+"/api/v1/sessions", map[string]any{}, &s, 201)
		return s.ID, err
	}
	exec := func(id, code string) (time.Duration, error) {
		var r codegw.ExecuteResult
		t0 := time.Now()
		if err := benchkit.PostJSON(ctx, hc, g.Base+"/api/v1/sessions/"+id+"/execute", map[string]any{"code": code}, &r, 200); err != nil {
			return 0, err
		}
		if r.Status != codegw.StatusOK {
			return 0, fmt.Errorf("execution %s: %v", r.Status, r.Error)
		}
		return time.Since(t0), nil
	}
	pause := func(id string) (time.Duration, codegw.Snapshot, error) {
		var p struct{ Snapshot codegw.Snapshot }
		t0 := time.Now()
		err := benchkit.PostJSON(ctx, hc, g.Base+"/api/v1/sessions/"+id+"/pause", nil, &p, 200)
		return time.Since(t0), p.Snapshot, err
	}
	var res result
	res.Executor, res.Host = c.Executor, host

	// Small: a few variables.
	id, err := create()
	if err != nil {
		return err
	}
	if _, err := exec(id, "a = 1\nb = 'text' * 10\nc = [1, 2, 3]\nd = {'k': 2.5}\nf = lambda v: v + a"); err != nil {
		return err
	}
	const probe = "print(a + len(c))"
	var live, pauses, resumes []time.Duration
	for i := 0; i < c.N; i++ {
		d, err := exec(id, probe)
		if err != nil {
			return err
		}
		live = append(live, d)
		p, _, err := pause(id)
		if err != nil {
			return err
		}
		pauses = append(pauses, p)
		r, err := exec(id, probe) // resumes it
		if err != nil {
			return err
		}
		resumes = append(resumes, r-d)
		progress("small round %d/%d: pause %v, resume %v", i+1, c.N, p.Round(time.Millisecond), (r - d).Round(time.Millisecond))
	}
	res.LiveExec, res.SmallPause, res.SmallResume = benchkit.Summarize(live), benchkit.Summarize(pauses), benchkit.Summarize(resumes)

	// Large: ~100 MB of DataFrames and a fitted model.
	id, err = create()
	if err != nil {
		return err
	}
	build := `import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(1)
frames = [pd.DataFrame(rng.random((650_000, 10)), columns=[f'c{i}' for i in range(10)]) for _ in range(2)]
X, y = frames[0].values[:20000], (frames[0].c0.values[:20000] > .5).astype(int)
model = LogisticRegression(max_iter=200).fit(X, y)
mb = sum(int(f.memory_usage(deep=True).sum()) for f in frames) / 1e6
print(mb)`
	var r codegw.ExecuteResult
	if err := benchkit.PostJSON(ctx, hc, g.Base+"/api/v1/sessions/"+id+"/execute", map[string]any{"code": build, "timeout": 120}, &r, 200); err != nil {
		return err
	}
	res.LargeMemoryMB, _ = strconv.ParseFloat(strings.TrimSpace(r.Result), 64)
	const check = "print(round(float(frames[1].c3.sum()), 3), model.predict(X[:3]).tolist())"
	var lp, lr []time.Duration
	for i := 0; i < c.Large; i++ {
		d, err := exec(id, check)
		if err != nil {
			return err
		}
		p, snap, err := pause(id)
		if err != nil {
			return err
		}
		lp = append(lp, p)
		res.LargeStoredMB = float64(snap.Bytes) / 1e6
		rd, err := exec(id, check)
		if err != nil {
			return err
		}
		lr = append(lr, rd-d)
		progress("large round %d/%d: pause %v, resume %v, %.1f MB stored", i+1, c.Large, p.Round(time.Millisecond), (rd - d).Round(time.Millisecond), res.LargeStoredMB)
	}
	res.LargePause, res.LargeResume = benchkit.Summarize(lp), benchkit.Summarize(lr)
	res.LargeUnpack, res.LargeLoad = benchkit.Summarize(unpacks[len(unpacks)-c.Large:]), benchkit.Summarize(loads[len(loads)-c.Large:])
	res.Target = benchkit.Verdict(res.SmallPause.P50 <= 150 && res.SmallResume.P50 <= 150 && res.LargePause.P50 <= 1000 && res.LargeResume.P50 <= 1000)
	return benchkit.Report(out, c.JSON, &res.Host, res, func(w io.Writer) {
		fmt.Fprintf(w, "executor %s; ms, p50 / p90\n", c.Executor)
		fmt.Fprintf(w, "small session:  pause %.0f / %.0f   resume %.0f / %.0f   (live execute %.0f)\n",
			res.SmallPause.P50, res.SmallPause.P90, res.SmallResume.P50, res.SmallResume.P90, res.LiveExec.P50)
		fmt.Fprintf(w, "%.0f MB of DataFrames + a fitted model:  pause %.0f / %.0f   resume %.0f / %.0f   snapshot %.1f MB (%.2fx the state in memory)\n",
			res.LargeMemoryMB, res.LargePause.P50, res.LargePause.P90, res.LargeResume.P50, res.LargeResume.P90, res.LargeStoredMB, res.LargeStoredMB/max(res.LargeMemoryMB, 1))
		fmt.Fprintf(w, "  large resume p50: %.0f ms the gateway checks and unpacks, %.0f ms the kernel loads\n", res.LargeUnpack.P50, res.LargeLoad.P50)
		fmt.Fprintf(w, "targets (small <= 150 ms each way, large <= 1 s each way): %s\n", res.Target)
	})
}
