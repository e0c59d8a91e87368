package mcpserver_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/app/apptest"
	"github.com/codegw/codegw/internal/testwait"
)

// tsclient installs the official TypeScript MCP client (npm ci, once) and
// returns the directory of client.mjs. Without node and npm the test is
// skipped, and fails under CI=true.
func tsclient(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required under CI=true: %v", tool, err)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	dir, _ := filepath.Abs("testdata/tsclient")
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@modelcontextprotocol", "sdk")); err == nil {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			npmErr = err.Error() + "\n" + string(out)
		}
	})
	if npmErr != "" {
		t.Fatalf("npm ci: %s", npmErr)
	}
	return dir
}

var (
	npmOnce sync.Once
	npmErr  string
)

// serveApp opens a gateway with key on a loopback port.
func serveApp(t *testing.T, key string) (*app.App, string) {
	t.Helper()
	c := apptest.Config(t)
	c.APIKeys = []string{key}
	return apptest.Serve(t, c)
}

// runClient runs client.mjs and checks it passed every check.
func runClient(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"client.mjs"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("client output:\n%s", out)
	if err != nil || !strings.Contains(string(out), "\ndone") {
		t.Fatalf("TypeScript MCP client failed: %v", err)
	}
	return string(out)
}

func TestTypeScriptClientHTTP(t *testing.T) {
	dir := tsclient(t)
	const key = "mcp-test-key"
	a, base := serveApp(t, key)
	out := runClient(t, dir, nil, "http", base+"/mcp", key)
	for _, want := range []string{"ok wrong key refused", "ok state carried", "ok PNG signature", "ok file link downloads", "ok progress notifications", "ok kernel interrupted"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	// The MCP session ended: its kernel session is gone.
	testwait.Until(t, 30*time.Second, "no session left after the MCP session ended", func() bool { return a.Manager.Stats().Sessions == 0 })
}

// buildCodegw builds cmd/codegw into a temporary directory.
func buildCodegw(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "codegw")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/codegw").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestTypeScriptClientStdio runs the same client over stdio against
// `codegw mcp`, through a gateway (--url, env) and on local kernels.
func TestTypeScriptClientStdio(t *testing.T) {
	dir := tsclient(t)
	bin := buildCodegw(t)
	t.Run("gateway", func(t *testing.T) {
		const key = "mcp-stdio-key"
		a, base := serveApp(t, key)
		out := runClient(t, dir, []string{"CODEGW_URL=" + base, "CODEGW_KEY=" + key}, "stdio", bin, "mcp")
		if !strings.Contains(out, "ok file link downloads") {
			t.Error("no file link download")
		}
		testwait.Until(t, 30*time.Second, "no session left after codegw mcp ended", func() bool { return a.Manager.Stats().Sessions == 0 })
	})
	t.Run("local", func(t *testing.T) {
		state, err := os.MkdirTemp("", "cgmcps")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(state) })
		tmp := t.TempDir()
		out := runClient(t, dir, []string{"CODEGW_URL=", "CODEGW_KEY=", "STATE_DIR=" + state, "POOL_SIZE=1",
			"IMAGE_STORE_PATH=" + filepath.Join(tmp, "img"), "FILE_STORE_PATH=" + filepath.Join(tmp, "files"), "SNAPSHOT_DIR=" + filepath.Join(tmp, "snapshots")}, "stdio", bin, "mcp")
		if !strings.Contains(out, "ok file link on disk") {
			t.Error("no file link on disk")
		}
	})
}
