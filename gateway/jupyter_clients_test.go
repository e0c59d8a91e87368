package gateway_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testwait"
)

// systemPython is Debian's interpreter, which has jupyter_client,
// websocket-client and (with python3-notebook) Notebook 6.4.
const systemPython = "/usr/bin/python3"

func needPython(t *testing.T, module string) {
	t.Helper()
	if err := exec.Command(systemPython, "-c", "import "+module).Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s cannot import %s (install python3-notebook python3-websocket): %v", systemPython, module, err)
		}
		t.Skipf("%s cannot import %s: %v", systemPython, module, err)
	}
}

// runClient runs testdata/jupyter_client.py and returns its JSON line.
func runClient(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, systemPython, append([]string{"testdata/jupyter_client.py"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("jupyter_client.py %s: %v\n%s", args[0], err, out)
	}
	t.Logf("%s: %s", args[0], strings.TrimSpace(string(out)))
	return string(out)
}

// TestJupyterOpenWebUI makes the calls Open WebUI's code interpreter makes,
// from Python with websocket-client.
func TestJupyterOpenWebUI(t *testing.T) {
	needPython(t, "websocket")
	e := newEnv(t, envOptions{keys: []string{"owu-key"}, poolSize: 1})
	runClient(t, "openwebui", e.base, "owu-key")
}

// TestJupyterNotebook puts Debian's Notebook 6.4 server in front of the
// gateway with --gateway-url and drives it through its own API: specs,
// pandas, a matplotlib plot, input(), interrupt, restart, shutdown.
func TestJupyterNotebook(t *testing.T) {
	needPython(t, "notebook.gateway.managers")
	e := newEnv(t, envOptions{keys: []string{"nb-gw-key"}, poolSize: 1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	home := t.TempDir()
	cmd := exec.Command(systemPython, "-m", "notebook", "--no-browser", "--ip=127.0.0.1", fmt.Sprintf("--port=%d", port),
		"--NotebookApp.token=nbtok", "--notebook-dir="+home, "--allow-root",
		"--gateway-url="+e.base, "--GatewayClient.auth_token=nb-gw-key", "--GatewayClient.request_timeout=120")
	cmd.Env = append(os.Environ(), "HOME="+home, "JUPYTER_CONFIG_DIR="+home+"/cfg", "JUPYTER_DATA_DIR="+home+"/data",
		"JUPYTER_RUNTIME_DIR="+home+"/run")
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("notebook server log:\n%s", log.String())
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	testwait.For(t, 60*time.Second, "the notebook server to start", func() string {
		resp, err := http.Get(base + "/api")
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		return ""
	})
	out := runClient(t, "notebook", base, "nbtok", e.base, "nb-gw-key")
	for _, want := range []string{`"x+1": "42"`, `"interrupt": "KeyboardInterrupt"`, `"x_after_restart": "False"`, `"input": "hello notebook\n"`} {
		if !strings.Contains(out, strings.ReplaceAll(want, "\n", `\n`)) {
			t.Errorf("client output lacks %s", want)
		}
	}
}
