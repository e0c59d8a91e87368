package deploy

// The chart on a real cluster (scripts/k8s-up.sh): installed with helm,
// driven through the Service's ClusterIP from the host. Runs when
// CODEGW_K8S_E2E=1, with KUBECONFIG and K8S_BIN from k8s-up.sh. Not yet in
// scripts/test.sh: the cluster scripts have not brought a cluster up on
// this machine yet (docs/kubernetes.md, "Tests").

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	e2eNS  = "codegw-e2e"
	e2eKey = "e2e-key"
)

type cluster struct {
	t    *testing.T
	bin  string
	base string // http://<cluster IP>:14564
}

func needCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv("CODEGW_K8S_E2E") != "1" {
		t.Skip("CODEGW_K8S_E2E=1 runs it on the cluster of scripts/k8s-up.sh")
	}
	bin := os.Getenv("K8S_BIN")
	if bin == "" || os.Getenv("KUBECONFIG") == "" {
		t.Fatal("K8S_BIN and KUBECONFIG must be set (eval \"$(scripts/k8s-up.sh)\")")
	}
	return &cluster{t: t, bin: bin}
}

// run runs helm or kubectl and returns its output.
func (c *cluster) run(name string, args ...string) string {
	c.t.Helper()
	out, err := c.try(name, args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) try(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (c *cluster) kubectl(args ...string) string {
	return c.run("kubectl", append([]string{"-n", e2eNS}, args...)...)
}

func (c *cluster) helm(args ...string) string {
	return c.run("helm", append([]string{"-n", e2eNS}, args...)...)
}

// helmValues are the e2e's values: images imported by k8s-up.sh, small
// kernels, a short drain.
var helmValues = []string{
	"--set", "apiKeys={" + e2eKey + "}", "--set", "image.pullPolicy=Never",
	"--set", "kernels.poolSize=2", "--set", "kernels.preload=",
	"--set", "gateway.drainTimeout=10", "--set", "gateway.preStopSeconds=2",
	"--set", "zygote.resources.requests.memory=128Mi", "--set", "zygote.resources.requests.cpu=50m",
	"--set", "zygote.resources.limits.memory=2Gi", "--set", "kernels.memory=512Mi",
}

// pods returns the names of the gateway pods that are Ready.
func (c *cluster) readyPods() []string {
	out := c.kubectl("get", "pods", "-l", "app.kubernetes.io/component=gateway", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[1] == "True" {
			names = append(names, f[0])
		}
	}
	return names
}

func (c *cluster) waitReady(n int, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if len(c.readyPods()) == n {
			return
		}
		time.Sleep(time.Second)
	}
	c.t.Fatalf("%d gateway pods not ready within %v: %s", n, within, c.kubectl("get", "pods", "-o", "wide"))
}

var client = &http.Client{Timeout: 120 * time.Second}

// call sends a JSON request with the API key and decodes the answer.
func (c *cluster) call(method, path string, body any, out any) (int, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+e2eKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, nil
}

type execResult struct {
	Status   string `json:"status"`
	Stdout   string `json:"stdout"`
	ImageURL string `json:"image_url"`
	Files    []struct {
		OriginalName string `json:"original_name"`
		URL          string `json:"url"`
	} `json:"files"`
	Error any    `json:"error"`
	Code  string `json:"code"`
}

func (c *cluster) execute(path, code string) (execResult, int, error) {
	var r execResult
	st, err := c.call("POST", path, map[string]any{"code": code}, &r)
	return r, st, err
}

func (c *cluster) mustExecute(path, code string) execResult {
	c.t.Helper()
	r, st, err := c.execute(path, code)
	if err != nil || st != 200 || r.Status != "ok" {
		c.t.Fatalf("%s %q: %d %+v %v", path, code, st, r, err)
	}
	return r
}

func TestK8s(t *testing.T) {
	c := needCluster(t)
	c.try("kubectl", "delete", "namespace", e2eNS, "--wait=true", "--timeout=120s")
	begin := time.Now()
	c.helm(append([]string{"install", "codegw", chartDir, "--create-namespace", "--wait", "--timeout", "5m",
		"--set", "replicaCount=1"}, helmValues...)...)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.try("kubectl", "-n", e2eNS, "get", "pods", "-o", "wide")
			t.Logf("pods:\n%s", out)
			for _, p := range c.readyPods() {
				out, _ := c.try("kubectl", "-n", e2eNS, "logs", p, "--all-containers", "--tail", "40")
				t.Logf("%s:\n%s", p, out)
			}
		}
		c.try("helm", "-n", e2eNS, "uninstall", "codegw", "--wait", "--timeout", "3m")
		c.try("kubectl", "delete", "namespace", e2eNS, "--wait=true", "--timeout=120s")
	})
	ip := strings.TrimSpace(c.kubectl("get", "service", "codegw", "-o", "jsonpath={.spec.clusterIP}"))
	if !strings.HasPrefix(ip, "198.19.") {
		t.Fatalf("service IP %q is not in the service range 198.19.0.0/16", ip)
	}
	c.base = "http://" + ip + ":14564"
	c.mustExecute("/api/v1/execute", "print(1+1)")
	t.Logf("figure: helm install -> first answer through the ClusterIP: %v", time.Since(begin).Round(100*time.Millisecond))

	t.Run("stateless", func(t *testing.T) {
		c := *c
		c.t = t
		r := c.mustExecute("/api/v1/execute", "import os\nopen('/code/output/r.txt','w').write('k8s')\nprint(6*7)")
		if strings.TrimSpace(r.Stdout) != "42" || len(r.Files) != 1 || r.Files[0].OriginalName != "r.txt" {
			t.Errorf("execute: %+v", r)
		}
		r = c.mustExecute("/api/v1/execute", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1,2,3])\nplt.show()")
		if r.ImageURL == "" {
			t.Errorf("no image: %+v", r)
		}
	})

	t.Run("session", func(t *testing.T) {
		c := *c
		c.t = t
		var s struct{ ID string }
		if st, err := c.call("POST", "/api/v1/sessions", map[string]any{}, &s); err != nil || st != 201 {
			t.Fatalf("create session: %d %v", st, err)
		}
		c.mustExecute("/api/v1/sessions/"+s.ID+"/execute", "x = 41")
		if r := c.mustExecute("/api/v1/sessions/"+s.ID+"/execute", "print(x+1)"); strings.TrimSpace(r.Stdout) != "42" {
			t.Errorf("session state: %+v", r)
		}
		c.call("DELETE", "/api/v1/sessions/"+s.ID, nil, nil)
	})

	t.Run("isolation", func(t *testing.T) {
		c := *c
		c.t = t
		pod := c.readyPods()[0]
		podIP := strings.TrimSpace(c.kubectl("get", "pod", pod, "-o", "jsonpath={.status.podIP}"))
		redisIP := strings.TrimSpace(c.kubectl("get", "service", "codegw-redis", "-o", "jsonpath={.spec.clusterIP}"))
		code := fmt.Sprintf(`import socket
res = []
for host, port in [("127.0.0.1", 14564), (%q, 14564), (%q, 14564), ("198.19.0.1", 443), (%q, 6379)]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        res.append("open")
    except OSError as e:
        res.append("closed")
print(",".join(res))`, podIP, ip, redisIP)
		if r := c.mustExecute("/api/v1/execute", code); strings.TrimSpace(r.Stdout) != "closed,closed,closed,closed,closed" {
			t.Errorf("a kernel reached the gateway, the Service, the Kubernetes API or Redis: %q", r.Stdout)
		}
		// A memory bomb and a fork bomb end their own kernel; the pod
		// serves on.
		var wg sync.WaitGroup
		for _, bomb := range []string{"x = []\nwhile True:\n    x.append(bytearray(64 << 20))",
			"import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req := map[string]any{"code": bomb, "timeout": 20}
				var r execResult
				c.call("POST", "/api/v1/execute", req, &r)
			}()
		}
		time.Sleep(2 * time.Second)
		if r := c.mustExecute("/api/v1/execute", "print('sibling')"); strings.TrimSpace(r.Stdout) != "sibling" {
			t.Errorf("sibling during the bombs: %+v", r)
		}
		wg.Wait()
		c.mustExecute("/api/v1/execute", "print('after')")
		if got := c.readyPods(); len(got) != 1 || got[0] != pod {
			t.Errorf("pods after the bombs: %v, want %s", got, pod)
		}
	})

	t.Run("scale", func(t *testing.T) {
		c := *c
		c.t = t
		c.helm(append([]string{"upgrade", "codegw", chartDir, "--wait", "--timeout", "5m", "--set", "replicaCount=3"}, helmValues...)...)
		c.waitReady(3, 3*time.Minute)
		// 30 sessions, each called twice through the Service: whichever
		// pod answers, the call reaches the session's kernel.
		ids := make([]string, 30)
		var failed atomic.Int32
		var wg sync.WaitGroup
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var s struct{ ID string }
				if st, err := c.call("POST", "/api/v1/sessions", map[string]any{}, &s); err != nil || st != 201 {
					failed.Add(1)
					return
				}
				ids[i] = s.ID
				if _, st, err := c.execute("/api/v1/sessions/"+s.ID+"/execute", fmt.Sprintf("v = %d", i)); err != nil || st != 200 {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		for i, id := range ids {
			if id == "" {
				continue
			}
			r, st, err := c.execute("/api/v1/sessions/"+id+"/execute", "print(v)")
			if err != nil || st != 200 || strings.TrimSpace(r.Stdout) != fmt.Sprint(i) {
				t.Errorf("session %d: %d %+v %v", i, st, r, err)
			}
		}
		if n := failed.Load(); n > 0 {
			t.Errorf("%d of 30 sessions failed", n)
		}

		// Delete a pod while clients execute: the others serve.
		stop := make(chan struct{})
		var ok, bad atomic.Int32
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, st, err := c.execute("/api/v1/execute", "print(1)"); err == nil && st == 200 {
						ok.Add(1)
					} else {
						bad.Add(1)
					}
				}
			}()
		}
		victim := c.readyPods()[0]
		c.kubectl("delete", "pod", victim, "--wait=false")
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			pods := c.readyPods()
			if len(pods) == 3 && !strings.Contains(strings.Join(pods, " "), victim) {
				break
			}
			time.Sleep(time.Second)
		}
		close(stop)
		wg.Wait()
		t.Logf("during the deletion of %s: %d calls served, %d failed", victim, ok.Load(), bad.Load())
		if ok.Load() == 0 {
			t.Error("no call served while a pod was deleted")
		}
		c.waitReady(3, 3*time.Minute)

		// A rolling update under load: no stateless call fails.
		stop = make(chan struct{})
		ok.Store(0)
		bad.Store(0)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					r, st, err := c.execute("/api/v1/execute", "print(1)")
					if err == nil && st == 200 && r.Status == "ok" {
						ok.Add(1)
					} else {
						bad.Add(1)
						t.Logf("call during the rollout: %d %+v %v", st, r, err)
					}
				}
			}()
		}
		c.helm(append([]string{"upgrade", "codegw", chartDir, "--wait", "--timeout", "8m", "--set", "replicaCount=3",
			"--set", "gateway.logLevel=debug"}, helmValues...)...)
		close(stop)
		wg.Wait()
		t.Logf("rolling update: %d stateless calls served, %d failed", ok.Load(), bad.Load())
		if bad.Load() > 0 {
			t.Errorf("%d stateless calls failed during the rolling update", bad.Load())
		}
	})
}
