// Command flood measures per-key isolation: how much one key flooding the
// gateway raises another key's latency. A whole gateway runs in this
// process (local provisioner, memory store) with two API keys, RATE_LIMIT
// and MAX_EXECUTIONS_PER_KEY set. Key B runs print(1) in a session of its
// own, one request at a time, first alone and then while key A floods the
// API from many connections with stateless executions and listings (at
// -offered requests per second, 25 times its quota by default; 0 sends as
// fast as the connections go, which on a small machine measures the CPU
// the flood's own client takes), most of which the quotas refuse with 429. The target: B's p50 under the flood
// is at most 20% above its p50 alone.
//
//	go run ./bench/flood [-n 200] [-flooders 16] [-rate 20] [-offered 500] [-json]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel/local"
)

type config struct {
	Python   string
	N        int
	Flooders int
	Rate     float64
	MaxExec  int
	Offered  float64
	Mix      string
	JSON     bool
	Verbose  bool
}

type result struct {
	Host      benchkit.Host  `json:"host"`
	Alone     benchkit.Stats `json:"victim_alone_ms"`
	Flooded   benchkit.Stats `json:"victim_flooded_ms"`
	Ratio     float64        `json:"p50_ratio"`
	Target    string         `json:"target"`
	Offered   float64        `json:"flood_offered_per_second"`
	Flood     map[int]int64  `json:"flood_statuses"`
	FloodRate float64        `json:"flood_requests_per_second"`
	Mix       string         `json:"mix"`
	RateLimit float64        `json:"rate_limit"`
}

func main() {
	var c config
	flag.StringVar(&c.Python, "python", "/usr/bin/python3", "interpreter with ipykernel")
	flag.IntVar(&c.N, "n", 200, "victim samples in each phase")
	flag.IntVar(&c.Flooders, "flooders", 16, "concurrent connections of the flooding key")
	flag.Float64Var(&c.Rate, "rate", 20, "RATE_LIMIT (requests per second per key; burst the same)")
	flag.IntVar(&c.MaxExec, "max-exec", 1, "MAX_EXECUTIONS_PER_KEY")
	flag.Float64Var(&c.Offered, "offered", 500, "requests per second key A offers in all (0: as fast as the connections go)")
	flag.StringVar(&c.Mix, "mix", "both", "what key A floods with: both (stateless executions and listings in turn), execute, list")
	flag.BoolVar(&c.JSON, "json", false, "print JSON")
	flag.BoolVar(&c.Verbose, "v", false, "log gateway events")
	flag.Parse()
	benchkit.Main("flood", func(ctx context.Context, out io.Writer) error { return run(ctx, c, out) })
}

func run(ctx context.Context, c config, out io.Writer) error {
	if c.Mix != "both" && c.Mix != "execute" && c.Mix != "list" {
		return fmt.Errorf("-mix %q: want both, execute or list", c.Mix)
	}
	progress := benchkit.Progress("flood")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if c.Verbose {
		log = slog.Default()
	}
	prov, err := local.New(local.Config{Python: c.Python, Logger: log})
	if err != nil {
		return err
	}
	defer prov.Close()
	host := benchkit.NewHost(c.Python)
	g, err := benchkit.StartGateway(benchkit.GatewayConfig{Prov: prov, PoolSize: 2, MaxStarting: 1, Workers: 4, Logger: log,
		Tune: func(a *app.Config) {
			a.APIKeys = []string{"key-a", "key-b"}
			a.RateLimit, a.RateBurst, a.MaxExecutionsPerKey = c.Rate, int(c.Rate), c.MaxExec
			a.LogLevel = "warn"
		}})
	if err != nil {
		return err
	}
	defer g.Close()
	if err := benchkit.WaitPoolFull(ctx, g.Pool, 2, 2*time.Minute); err != nil {
		return err
	}
	client := benchkit.HTTPClient(c.Flooders + 4)
	var sess codegw.SessionInfo
	if err := do(ctx, client, "POST", g.Base+"/api/v1/sessions", "key-b", "{}", &sess, 201); err != nil {
		return err
	}
	victim := func(n int) ([]time.Duration, error) {
		ds := make([]time.Duration, 0, n)
		// One request per 1/rate: key B stays within its own quota.
		gap := time.Duration(float64(time.Second) / c.Rate * 1.25)
		for i := 0; i < n; i++ {
			t0 := time.Now()
			var res codegw.ExecuteResult
			if err := do(ctx, client, "POST", g.Base+"/api/v1/sessions/"+sess.ID+"/execute", "key-b", `{"code":"print(1)"}`, &res, 200); err != nil {
				return nil, err
			}
			d := time.Since(t0)
			if strings.TrimSpace(res.Stdout) != "1" {
				return nil, fmt.Errorf("victim: wrong answer %+v", res)
			}
			ds = append(ds, d)
			time.Sleep(max(0, gap-d))
		}
		return ds, nil
	}
	if _, err := victim(10); err != nil { // warm up
		return err
	}
	progress("victim alone: %d samples", c.N)
	alone, err := victim(c.N)
	if err != nil {
		return err
	}

	progress("victim under a flood of %d connections", c.Flooders)
	fctx, stop := context.WithCancel(ctx)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int64{}
		total    atomic.Int64
	)
	for i := 0; i < c.Flooders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tick <-chan time.Time
			if c.Offered > 0 {
				t := time.NewTicker(time.Duration(float64(time.Second) * float64(c.Flooders) / c.Offered))
				defer t.Stop()
				tick = t.C
			}
			for j := 0; fctx.Err() == nil; j++ {
				if tick != nil {
					select {
					case <-tick:
					case <-fctx.Done():
						return
					}
				}
				st := 0
				if c.Mix == "execute" || (c.Mix != "list" && j%2 == 0) {
					st = status(fctx, client, "POST", g.Base+"/api/v1/execute", "key-a", `{"code":"print(2)"}`)
				} else {
					st = status(fctx, client, "GET", g.Base+"/api/v1/sessions", "key-a", "")
				}
				if st == 0 {
					continue
				}
				total.Add(1)
				mu.Lock()
				statuses[st]++
				mu.Unlock()
			}
		}()
	}
	t0 := time.Now()
	flooded, err := victim(c.N)
	elapsed := time.Since(t0)
	stop()
	wg.Wait()
	if err != nil {
		return err
	}
	r := result{Host: host, Offered: c.Offered, Alone: benchkit.Summarize(alone), Flooded: benchkit.Summarize(flooded), Flood: statuses,
		FloodRate: float64(total.Load()) / elapsed.Seconds(), Mix: c.Mix, RateLimit: c.Rate}
	r.Ratio = r.Flooded.P50 / r.Alone.P50
	r.Target = benchkit.Verdict(r.Ratio <= 1.2)
	return benchkit.Report(out, c.JSON, &r.Host, r, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "victim (key B, session print(1))\tp50 ms\tp90 ms\tp99 ms\n")
		fmt.Fprintf(tw, "alone\t%.2f\t%.2f\t%.2f\n", r.Alone.P50, r.Alone.P90, r.Alone.P99)
		fmt.Fprintf(tw, "key A flooding\t%.2f\t%.2f\t%.2f\n", r.Flooded.P50, r.Flooded.P90, r.Flooded.P99)
		tw.Flush()
		fmt.Fprintf(w, "p50 ratio %.3f (target <= 1.20: %s); flood (-mix %s, RATE_LIMIT %g) %.0f req/s, statuses %v\n",
			r.Ratio, r.Target, r.Mix, r.RateLimit, r.FloodRate, r.Flood)
		fmt.Fprintf(w, "load %s -> %s on %d CPUs\n", r.Host.LoadStart, r.Host.LoadEnd, r.Host.CPUs)
	})
}

func request(ctx context.Context, method, url, key, body string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}

func do(ctx context.Context, c *http.Client, method, url, key, body string, out any, want int) error {
	req, err := request(ctx, method, url, key, body)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %d %.200s", method, url, resp.StatusCode, b)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func status(ctx context.Context, c *http.Client, method, url, key, body string) int {
	req, err := request(ctx, method, url, key, body)
	if err != nil {
		return 0
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
