// Command cluster measures what routing between instances costs: the p50
// (and p90, p99) of a session execute of `1+1` sent through an instance that
// does not hold the session (forwarded to the holder) against the same call
// sent to the holder directly, in one run, as a ratio.
//
// It builds cmd/codegw, starts two instances on loopback ports with a
// private redis-server and local kernels, creates one session on the first
// and alternates the two paths so that both see the same conditions.
//
//	go run ./bench/cluster [-n 500] [-warmup 50]
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 500, "measured executions per path")
	warm := flag.Int("warmup", 50, "unmeasured executions per path first")
	flag.Parse()
	if err := run(*n, *warm); err != nil {
		fmt.Fprintln(os.Stderr, "bench/cluster:", err)
		os.Exit(1)
	}
}

func run(n, warm int) error {
	dir, err := os.MkdirTemp("", "cgbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // the sandboxed kernels' user must reach STATE_DIR
		return err
	}
	bin := filepath.Join(dir, "codegw")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/codegw").CombinedOutput(); err != nil {
		return fmt.Errorf("build (run from the repository root): %v\n%s", err, out)
	}
	redisPort := freePort()
	redis := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(redisPort), "--save", "", "--appendonly", "no", "--dir", dir)
	redis.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := redis.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	defer func() { redis.Process.Kill(); redis.Wait() }()
	redisURL := fmt.Sprintf("redis://127.0.0.1:%d/0", redisPort)

	var bases []string
	for _, name := range []string{"owner", "other"} {
		port := freePort()
		state := filepath.Join(dir, name[:1])
		cmd := exec.Command(bin)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "HOST=127.0.0.1",
			"PORT=" + strconv.Itoa(port), "REDIS_URL=" + redisURL, "EXECUTOR_INSTANCE_ID=" + name,
			"CLUSTER_SECRET=bench", "API_KEYS=k", "EXECUTOR=local", "POOL_SIZE=1", "EXECUTOR_PRELOAD=",
			"STATE_DIR=" + state, "IMAGE_STORE_PATH=" + filepath.Join(dir, name, "i"),
			"FILE_STORE_PATH=" + filepath.Join(dir, name, "f"), "SNAPSHOT_DIR=" + filepath.Join(dir, "snapshots"), "LOG_LEVEL=warn"}
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		if err := waitUp(base); err != nil {
			return err
		}
		bases = append(bases, base)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	var sess struct{ ID string }
	if err := call(client, "POST", bases[0]+"/api/v1/sessions", `{}`, &sess); err != nil {
		return err
	}
	path := "/api/v1/sessions/" + sess.ID + "/execute"
	body := `{"code": "1+1"}`
	var direct, proxied []time.Duration
	for i := 0; i < warm+n; i++ {
		for j, base := range bases {
			var res struct{ Status, Result string }
			t0 := time.Now()
			if err := call(client, "POST", base+path, body, &res); err != nil {
				return err
			}
			d := time.Since(t0)
			if res.Status != "ok" || res.Result != "2" {
				return fmt.Errorf("unexpected answer %+v", res)
			}
			if i < warm {
				continue
			}
			if j == 0 {
				direct = append(direct, d)
			} else {
				proxied = append(proxied, d)
			}
		}
	}
	slices.Sort(direct)
	slices.Sort(proxied)
	q := func(s []time.Duration, p float64) time.Duration { return s[int(p*float64(len(s)-1))] }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("session execute of 1+1, %d each, local kernels, one redis-server, loopback\n", n)
	fmt.Printf("%-28s %10s %10s %10s\n", "path", "p50", "p90", "p99")
	fmt.Printf("%-28s %10s %10s %10s\n", "direct to the owner", ms(q(direct, .5)), ms(q(direct, .9)), ms(q(direct, .99)))
	fmt.Printf("%-28s %10s %10s %10s\n", "through another instance", ms(q(proxied, .5)), ms(q(proxied, .9)), ms(q(proxied, .99)))
	fmt.Printf("p50 ratio (proxied/direct): %.2f; added p50: %s\n",
		float64(q(proxied, .5))/float64(q(direct, .5)), ms(q(proxied, .5)-q(direct, .5)))
	return nil
}

func call(c *http.Client, method, url, body string, out any) error {
	req, _ := http.NewRequest(method, url, bytes.NewBufferString(body))
	req.Header.Set("Authorization", "Bearer k")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}

func waitUp(base string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not come up", base)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
