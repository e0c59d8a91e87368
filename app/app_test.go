package app_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/app/apptest"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/store"
	"github.com/codegw/codegw/store/redis"
	"github.com/codegw/codegw/store/redis/redistest"
)

// testConfig is apptest's small local service with nothing preloaded.
func testConfig(t *testing.T) app.Config {
	c := apptest.Config(t)
	c.Preload = []string{}
	return c
}

// serve opens the app on a loopback port and returns it with its base URL.
func serve(t *testing.T, c app.Config) (*app.App, string) {
	t.Helper()
	a, err := app.Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	go a.Serve(ln)
	return a, "http://" + ln.Addr().String()
}

func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode
}

func TestOpenServesAndCloses(t *testing.T) {
	c := testConfig(t)
	a, base := serve(t, c)
	resp, err := http.Post(base+"/api/v1/execute", "application/json", strings.NewReader(`{"code": "print(6*7)"}`))
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	var res codegw.ExecuteResult
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if res.Status != codegw.StatusOK || res.Result != "42" {
		a.Close()
		t.Fatalf("execute through the app: %+v", res)
	}
	// The capabilities are probed in a kernel of the kind that serves. Both
	// shapes are served: codegw's and the original project's newest.
	var caps struct {
		Executor          string   `json:"executor"`
		KernelStart       string   `json:"kernel_start"`
		StatelessKernel   string   `json:"stateless_kernel"`
		Python            *string  `json:"python_version"`
		Packages          []string `json:"packages"`
		MaxWorkers        int      `json:"max_workers"`
		PythonVersion     *string  `json:"pythonVersion"`
		Languages         []string `json:"languages"`
		InstalledPackages []struct {
			Name, Version string
		} `json:"installedPackages"`
		Limits struct {
			MaxOutputBytes          int     `json:"max_output_bytes"`
			MaxConcurrency          int     `json:"maxConcurrency"`
			ExecutionTimeoutSeconds float64 `json:"executionTimeoutSeconds"`
			Container               struct {
				Memory    string  `json:"memory"`
				CPUs      float64 `json:"cpus"`
				PidsLimit int64   `json:"pidsLimit"`
			} `json:"container"`
			Input  struct{ MaxFiles, MaxFileBytes, TotalMaxBytes int64 } `json:"input"`
			Output struct {
				MaxFiles, MaxFileBytes, TotalMaxBytes int64
				AllowedExtensions                     []string `json:"allowedExtensions"`
			} `json:"output"`
		} `json:"limits"`
		NetworkPolicy struct {
			ExecutorNetworkMode    string `json:"executorNetworkMode"`
			InternetAccess         *bool  `json:"internetAccess"`
			SupportsHTTPInputFiles bool   `json:"supportsHttpInputFiles"`
			SupportsPipInstall     *bool  `json:"supportsPipInstall"`
			Introspection          struct {
				OK    bool    `json:"ok"`
				Error *string `json:"error"`
			} `json:"introspection"`
		} `json:"networkPolicy"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	probed := testwait.Poll(ctx, func() string {
		getJSON(t, base+"/capabilities", &caps)
		if caps.Executor == "local" && caps.Python != nil && strings.HasPrefix(*caps.Python, "3.") {
			return ""
		}
		return "not probed"
	})
	if probed != "" {
		a.Close()
		t.Fatalf("capabilities never probed: %+v", caps)
	}
	l, n := caps.Limits, caps.NetworkPolicy
	switch {
	case caps.PythonVersion == nil || *caps.PythonVersion != *caps.Python:
		t.Errorf("pythonVersion %v, python_version %s", caps.PythonVersion, *caps.Python)
	case len(caps.InstalledPackages) == 0 || len(caps.InstalledPackages) != len(caps.Packages) || caps.InstalledPackages[0].Name == "" || caps.InstalledPackages[0].Version == "":
		t.Errorf("installedPackages %d (first %+v), packages %d", len(caps.InstalledPackages), caps.InstalledPackages[:min(1, len(caps.InstalledPackages))], len(caps.Packages))
	case l.MaxConcurrency != c.MaxWorkers || l.MaxConcurrency != caps.MaxWorkers || l.ExecutionTimeoutSeconds != c.ExecutionTimeout.Seconds() || l.MaxOutputBytes == 0:
		t.Errorf("limits %+v", l)
	case l.Container.Memory != "1g" || l.Container.CPUs != 1 || l.Input.MaxFiles != int64(c.InputMaxFiles) || l.Output.MaxFiles != int64(c.OutputMaxFiles) || len(l.Output.AllowedExtensions) == 0:
		t.Errorf("limits %+v", l)
	case n.ExecutorNetworkMode != "none" || n.InternetAccess == nil || *n.InternetAccess || !n.SupportsHTTPInputFiles || n.SupportsPipInstall == nil || !n.Introspection.OK || n.Introspection.Error != nil:
		t.Errorf("networkPolicy %+v", n)
	case caps.KernelStart == "fork" && caps.StatelessKernel != c.StatelessKernel,
		caps.KernelStart != "fork" && caps.StatelessKernel != app.StatelessFull:
		t.Errorf("stateless_kernel %q with kernel_start %q and STATELESS_KERNEL=%s", caps.StatelessKernel, caps.KernelStart, c.StatelessKernel)
	case !slices.Contains(caps.Languages, "python") || !slices.Contains(caps.Languages, "javascript"):
		t.Errorf("languages %v: Node.js missing in the kernels (scripts/deps.sh installs nodejs)", caps.Languages)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// Every kernel stopped: none of their directories is left.
	if left, _ := os.ReadDir(filepath.Join(c.StateDir, "k")); len(left) != 0 {
		t.Errorf("%d kernel directories left after Close", len(left))
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the gateway still answers after Close")
	}
}

func TestOpenRefuses(t *testing.T) {
	redisURL := redistest.URL(t)
	cases := []struct {
		name string
		edit func(*app.Config)
		want string
	}{
		{"open on a public address", func(c *app.Config) { c.Host = "0.0.0.0" }, "API_KEYS"},
		{"a setting out of range", func(c *app.Config) { c.MaxWorkers = 0 }, "MAX_WORKERS"},
		{"several instances without a reachable address", func(c *app.Config) {
			c.Host, c.APIKeys, c.RedisURL = "0.0.0.0", []string{"k"}, redisURL
		}, "INTERNAL_ADDR"},
		{"an unreachable Redis", func(c *app.Config) { c.RedisURL = "redis://127.0.0.1:1/0" }, "unavailable"},
		{"kernel memory per key on spawned kernels, which have no memory limit", func(c *app.Config) {
			c.KernelStart, c.MaxKernelMemoryPerKey = "spawn", 4<<30
		}, "KERNEL_MEMORY would not be enforced"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			c.PoolSize = 0
			tc.edit(&c)
			a, err := app.Open(context.Background(), c)
			if err == nil {
				a.Close()
				t.Fatalf("Open succeeded, want an error mentioning %s", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open: %v; want it to mention %s", err, tc.want)
			}
		})
	}
}

// TestOpenJoinsTheCluster: with REDIS_URL the app registers itself, routes
// through the cluster (listing goes to the store) and leaves on Close.
func TestOpenJoinsTheCluster(t *testing.T) {
	redisURL := redistest.URL(t)
	c := testConfig(t)
	c.PoolSize, c.RedisURL, c.InstanceID, c.ClusterSecret = 0, redisURL, "app-test-"+t.Name(), "s"
	c.Capabilities = func() any { return map[string]any{} }
	a, base := serve(t, c)
	st, err := redis.New(context.Background(), redisURL)
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.GetInstance(ctx, c.InstanceID); err != nil {
		a.Close()
		t.Fatalf("not registered after Open: %v", err)
	}
	// A record of a session held by a dead instance is listed as lost:
	// the listing came from the store, through the cluster router.
	if err := st.CreateSession(ctx, store.SessionRecord{ID: "gone-" + c.InstanceID, Owner: "anonymous", Instance: c.InstanceID + "-dead"}, 0, 0); err != nil {
		a.Close()
		t.Fatal(err)
	}
	defer st.DeleteSession(ctx, "gone-"+c.InstanceID)
	var list struct{ Sessions []codegw.SessionInfo }
	if status := getJSON(t, base+"/api/v1/sessions", &list); status != 200 || len(list.Sessions) != 1 || list.Sessions[0].State != "lost" {
		a.Close()
		t.Fatalf("list: %d %+v; want the dead instance's session, lost", status, list)
	}
	a.Close()
	if _, err := st.GetInstance(ctx, c.InstanceID); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Errorf("registry entry after Close: %v; want not found", err)
	}
}
