// Command fileevents measures how soon a file written to /code/output
// reaches a client as a "file" event: an in-process gateway on a loopback
// port (local or Docker kernels) runs one stateless NDJSON execution whose
// code writes -n files, -gap apart, and prints the wall-clock time of each
// close; the latency of a file is the arrival of its event at the client
// minus that time (the kernel and the bench read the same host clock).
//
//	go run ./bench/fileevents [-n 50] [-gap 100ms] [-executor local|docker] [-json]
//
// Target: p50 at most 100 ms. bench/README.md has the figures.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	N        int
	Gap      time.Duration
	Executor string
	Image    string
	Python   string
	JSON     bool
	Verbose  bool
}

type result struct {
	Host     benchkit.Host  `json:"host"`
	Executor string         `json:"executor"`
	N        int            `json:"n"`
	Gap      string         `json:"gap"`
	Events   int            `json:"events"`
	Latency  benchkit.Stats `json:"latency_ms"`
	Target   string         `json:"target"`
}

func main() {
	var c config
	flag.IntVar(&c.N, "n", 50, "files written, one at a time")
	flag.DurationVar(&c.Gap, "gap", 100*time.Millisecond, "pause after each file's close")
	flag.StringVar(&c.Executor, "executor", "local", "kernels: local or docker")
	flag.StringVar(&c.Image, "image", "codegw/executor:latest", "executor image (docker)")
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel (local)")
	flag.BoolVar(&c.JSON, "json", false, "print JSON")
	flag.BoolVar(&c.Verbose, "v", false, "log the gateway")
	flag.Parse()
	benchkit.Main("fileevents", func(ctx context.Context, out io.Writer) error { return run(ctx, c, out) })
}

func run(ctx context.Context, c config, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchkit.LogLevel(c.Verbose)}))
	var prov kernel.Provisioner
	var err error
	if c.Executor == "docker" {
		dir, derr := os.MkdirTemp("", "cgfe")
		if derr != nil {
			return derr
		}
		defer os.RemoveAll(dir)
		prov, err = docker.New(ctx, docker.Config{Image: c.Image, InstanceID: "fileevents-" + strconv.Itoa(os.Getpid()),
			StateDir: dir, Memory: 1 << 30, PidsLimit: 256, Logger: log})
	} else {
		prov, err = local.New(local.Config{Python: c.Python, Logger: log})
	}
	if err != nil {
		return err
	}
	defer prov.Close()
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{Prov: prov, PoolSize: 1, Logger: log,
		Tune: func(a *app.Config) { a.OutputMaxFiles = c.N }})
	if err != nil {
		return err
	}
	defer g.Close()
	if err := benchkit.WaitPoolFull(ctx, g.Pool, 1, 2*time.Minute); err != nil {
		return err
	}
	host := benchkit.NewHost("")
	lat, events, err := measure(ctx, g.Base, c)
	if err != nil {
		return err
	}
	res := result{Host: host, Executor: c.Executor, N: c.N, Gap: c.Gap.String(), Events: events,
		Latency: benchkit.Summarize(lat)}
	res.Target = benchkit.Verdict(res.Latency.P50 <= 100)
	return benchkit.Report(out, c.JSON, &res.Host, res, func(w io.Writer) {
		fmt.Fprintf(w, "executor %s, %d files %s apart, %d file events\n", c.Executor, c.N, c.Gap, events)
		l := res.Latency
		fmt.Fprintf(w, "close -> event at the client (ms): p50 %.1f  p90 %.1f  max %.1f  (target p50 <= 100: %s)\n", l.P50, l.P90, l.Max, res.Target)
		fmt.Fprintf(w, "load %s -> %s\n", res.Host.LoadStart, res.Host.LoadEnd)
	})
}

// measure runs the writing code and pairs each file's event with its close
// time, printed by the kernel as "closed <i> <unix seconds>".
func measure(ctx context.Context, base string, c config) ([]time.Duration, int, error) {
	code := fmt.Sprintf(`import time
for i in range(%d):
    with open(f'/code/output/f{i:03d}.txt', 'w') as f:
        f.write('x' * 1000)
    print('closed', i, repr(time.time()), flush=True)
    time.sleep(%g)`, c.N, c.Gap.Seconds())
	body, _ := json.Marshal(map[string]any{"code": code, "timeout": 120})
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/api/v1/execute", strings.NewReader(string(body)))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	closed := map[int]time.Time{}
	arrived := map[int]time.Time{}
	var partial string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	status := ""
	for sc.Scan() {
		now := time.Now()
		var ev codegw.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, 0, fmt.Errorf("line %q: %w", sc.Text(), err)
		}
		switch ev.Type {
		case codegw.EventFile:
			var i int
			if _, err := fmt.Sscanf(ev.File.OriginalName, "f%03d.txt", &i); err == nil {
				arrived[i] = now
			}
		case codegw.EventStream:
			partial += ev.Text
			for {
				j := strings.IndexByte(partial, '\n')
				if j < 0 {
					break
				}
				var i int
				var t float64
				if _, err := fmt.Sscanf(partial[:j], "closed %d %g", &i, &t); err == nil {
					closed[i] = time.Unix(0, int64(t*1e9))
				}
				partial = partial[j+1:]
			}
		case "response":
			status = string(ev.Status)
		}
	}
	if status != string(codegw.StatusOK) {
		return nil, 0, fmt.Errorf("execution ended %q", status)
	}
	var lat []time.Duration
	for i, t := range closed {
		if a, ok := arrived[i]; ok {
			lat = append(lat, a.Sub(t))
		}
	}
	if len(lat) != c.N || len(arrived) != c.N {
		return nil, 0, fmt.Errorf("%d closes, %d events, %d paired; want %d", len(closed), len(arrived), len(lat), c.N)
	}
	return lat, len(arrived), nil
}
