// Command compatbench measures what the Dify compatibility layer costs: a
// whole gateway in this process (local provisioner, warm pool) driven by
// -clients concurrent HTTP clients, each phase for -duration, in rounds
// that alternate the phases so that load drift on a shared machine falls on
// each alike:
//
//   - execute: codegw's own stateless POST /api/v1/execute of a Dify-like
//     script (a main function and the result markers), the baseline;
//   - dify-python3: POST /v1/sandbox/run with Dify's Python3 runner script;
//   - dify-nodejs: POST /v1/sandbox/run with Dify's NodeJs runner script.
//
// Each request runs on a fresh kernel. Every answer is checked.
//
//	go run ./bench/compatbench [-clients 8] [-duration 20s] [-rounds 2] [-json]
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"github.com/codegw/codegw/kernel/local"
)

const key = "bench-key"

// Dify's Python3 and NodeJs runner scripts (api/core/helper/code_executor),
// filled as Dify fills them, for main(arg1, arg2) returning their sum.
const (
	pyUser     = "def main(arg1: int, arg2: int) -> dict:\n    return {\"result\": arg1 + arg2}\n"
	pyRunner   = "\n# declare main function\n%s\nimport json\nfrom base64 import b64decode\n\n# decode and prepare input dict\ninputs_obj = json.loads(b64decode('%s').decode('utf-8'))\n\n# execute main function\noutput_obj = main(**inputs_obj)\n\n# convert output to json and print\noutput_json = json.dumps(output_obj, indent=4)\nresult = f'''<<RESULT>>{output_json}<<RESULT>>'''\nprint(result)\n"
	jsUser     = "function main({arg1, arg2}) {\n    return {result: arg1 + arg2}\n}\n"
	jsRunner   = "%s\n// decode and prepare input object\nvar inputs_obj = JSON.parse(Buffer.from('%s', 'base64').toString('utf-8'))\n\n// execute main function\nvar output_obj = main(inputs_obj)\n\n// convert output to json and print\nvar output_json = JSON.stringify(output_obj)\nvar result = `<<RESULT>>${output_json}<<RESULT>>`\nconsole.log(result)\n"
	wantResult = "<<RESULT>>"
)

type phase struct {
	Name string `json:"name"`
	path string
	body map[string]any
	// check reads one answer; it reports an error for a wrong one.
	check func(b []byte) error
}

type result struct {
	Name     string         `json:"name"`
	Requests int            `json:"requests"`
	Errors   int            `json:"errors"`
	RPS      float64        `json:"req_per_s"`
	Latency  benchkit.Stats `json:"latency_ms"`
	FirstErr string         `json:"first_error,omitempty"`
}

func phases() []phase {
	in := base64.StdEncoding.EncodeToString([]byte(`{"arg1": 20, "arg2": 22}`))
	py := fmt.Sprintf(pyRunner, pyUser, in)
	js := fmt.Sprintf(jsRunner, jsUser, in)
	difyCheck := func(b []byte) error {
		var r struct {
			Code int
			Data struct{ Stdout, Error string }
		}
		if err := json.Unmarshal(b, &r); err != nil || r.Code != 0 || r.Data.Error != "" || !strings.Contains(r.Data.Stdout, wantResult) || !strings.Contains(r.Data.Stdout, "42") {
			return fmt.Errorf("answer %.200s", b)
		}
		return nil
	}
	return []phase{
		{Name: "execute", path: "/api/v1/execute", body: map[string]any{"code": py}, check: func(b []byte) error {
			var r struct{ Status, Stdout string }
			if err := json.Unmarshal(b, &r); err != nil || r.Status != "ok" || !strings.Contains(r.Stdout, "42") {
				return fmt.Errorf("answer %.200s", b)
			}
			return nil
		}},
		{Name: "dify-python3", path: "/v1/sandbox/run", body: map[string]any{"language": "python3", "code": py, "preload": "", "enable_network": true}, check: difyCheck},
		{Name: "dify-nodejs", path: "/v1/sandbox/run", body: map[string]any{"language": "nodejs", "code": js, "preload": "", "enable_network": true}, check: difyCheck},
	}
}

func main() {
	clients := flag.Int("clients", 8, "concurrent clients")
	duration := flag.Duration("duration", 20*time.Second, "measured window of each phase in each round")
	rounds := flag.Int("rounds", 2, "rounds of the three phases")
	workers := flag.Int("workers", 0, "MAX_WORKERS (0: the default)")
	pool := flag.Int("pool", 2, "POOL_SIZE")
	asJSON := flag.Bool("json", false, "print JSON")
	verbose := flag.Bool("v", false, "log gateway events")
	flag.Parse()
	benchkit.Main("compatbench", func(ctx context.Context, out io.Writer) error {
		host := benchkit.NewHost("/usr/bin/python3")
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		if *verbose {
			log = slog.Default()
		}
		prov, err := local.New(local.Config{Logger: log})
		if err != nil {
			return err
		}
		defer prov.Close()
		g, err := benchkit.StartGateway(benchkit.GatewayConfig{Prov: prov, PoolSize: *pool, MaxStarting: 2, Workers: *workers, Logger: log,
			Tune: func(c *app.Config) {
				c.APIKeys, c.DifyNetwork, c.QueueTimeout = []string{key}, "offline", 5*time.Minute
			}})
		if err != nil {
			return err
		}
		defer g.Close()
		if err := benchkit.WaitPoolFull(ctx, g.Pool, *pool, 2*time.Minute); err != nil {
			return err
		}
		progress := benchkit.Progress("compatbench")
		client := benchkit.HTTPClient(*clients)
		totals := map[string]*result{}
		lat := map[string][]time.Duration{}
		var order []string
		for r := 0; r < *rounds; r++ {
			for _, p := range phases() {
				if _, ok := totals[p.Name]; !ok {
					totals[p.Name] = &result{Name: p.Name}
					order = append(order, p.Name)
				}
				progress("round %d: %s", r+1, p.Name)
				n, errs, first, ds := load(ctx, client, g.Base, p, *clients, *duration)
				t := totals[p.Name]
				t.Requests += n
				t.Errors += errs
				if t.FirstErr == "" {
					t.FirstErr = first
				}
				lat[p.Name] = append(lat[p.Name], ds...)
			}
		}
		var res []result
		for _, name := range order {
			t := totals[name]
			t.RPS = float64(t.Requests) / (float64(*rounds) * duration.Seconds())
			t.Latency = benchkit.Summarize(lat[name])
			res = append(res, *t)
		}
		return benchkit.Report(out, *asJSON, &host, map[string]any{"clients": *clients, "duration_s": duration.Seconds(), "rounds": *rounds, "phases": res}, func(w io.Writer) {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "phase\trequests\terrors\treq/s\tp50 ms\tp90 ms\n")
			for _, r := range res {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.0f\t%.0f\n", r.Name, r.Requests, r.Errors, r.RPS, r.Latency.P50, r.Latency.P90)
			}
			tw.Flush()
			fmt.Fprintf(w, "load average %s at start, %s at end; %d CPUs\n", host.LoadStart, host.LoadEnd, host.CPUs)
			for _, r := range res {
				if r.FirstErr != "" {
					fmt.Fprintf(w, "%s: first error: %s\n", r.Name, r.FirstErr)
				}
			}
		})
	})
}

// load runs clients loops of p for d and returns the requests completed,
// the failed ones, the first failure and the latencies of the good ones.
func load(ctx context.Context, c *http.Client, base string, p phase, clients int, d time.Duration) (n, errs int, first string, lat []time.Duration) {
	body, _ := json.Marshal(p.body)
	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				start := time.Now()
				err := post(ctx, c, base+p.path, body, p.check)
				took := time.Since(start)
				mu.Lock()
				n++
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
				} else {
					lat = append(lat, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return
}

func post(ctx context.Context, c *http.Client, url string, body []byte, check func([]byte) error) error {
	req, err := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Api-Key", key)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
	}
	return check(b)
}
