package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// libreAgentsDir is where scripts/librechat-agents.sh installed
// @librechat/agents (its node_modules), or "" when it did not.
func libreAgentsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CODEGW_LIBRECHAT_AGENTS")
	if dir == "" {
		out, err := exec.Command("../scripts/librechat-agents.sh", "--check").Output()
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("no @librechat/agents: run scripts/librechat-agents.sh (scripts/test.sh does): %v", err)
			}
			t.Skipf("no @librechat/agents: run scripts/librechat-agents.sh (%v)", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@librechat", "agents")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no @librechat/agents in %s: %v", dir, err)
		}
		t.Skipf("no @librechat/agents in %s", dir)
	}
	return dir
}

// TestLibreChatRealClient runs LibreChat's own code tool, the real
// @librechat/agents package under Node.js, against codegw's /librechat API
// (testdata/librechat-client.cjs): a Python cell writing a CSV and a plot
// whose files come back listed and download with their bytes, a JS cell,
// an upload read by the next call, two calls in one session_id sharing
// files, an error and an unsupported language.
func TestLibreChatRealClient(t *testing.T) {
	dir := libreAgentsDir(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	e := newEnv(t, envOptions{keys: []string{"lc-real"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	script, _ := filepath.Abs("testdata/librechat-client.cjs")
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"),
		"LIBRECHAT_CODE_BASEURL="+e.base+"/librechat", "LIBRECHAT_CODE_API_KEY=lc-real", "PROXY=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	type line struct {
		Step     string `json:"step"`
		OK       bool   `json:"ok"`
		Content  string `json:"content"`
		Error    string `json:"error"`
		Status   int    `json:"status"`
		Size     int    `json:"size"`
		Base64   string `json:"base64"`
		Artifact struct {
			SessionID string `json:"session_id"`
			Files     []struct{ ID, Name string }
		} `json:"artifact"`
	}
	steps := map[string]line{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("client line %q: %v", truncate(sc.Text(), 200), err)
		}
		t.Logf("%s: ok=%v %s%s", l.Step, l.OK, truncate(l.Content, 300), l.Error)
		steps[l.Step] = l
	}
	if _, ok := steps["done"]; !ok {
		t.Fatalf("the client did not finish: %s", stderr.String())
	}
	py := steps["py-files"]
	if !py.OK || !strings.Contains(py.Content, "stdout:\nrows 3") || len(py.Artifact.Files) != 2 || !strings.Contains(py.Content, "session_id: "+py.Artifact.SessionID) {
		t.Errorf("py-files: %+v", py)
	}
	csv, _ := base64.StdEncoding.DecodeString(steps["download-table.csv"].Base64)
	if string(csv) != "x,y\n1,4\n2,5\n3,6\n" {
		t.Errorf("table.csv: %+v %q", steps["download-table.csv"], csv)
	}
	png, _ := base64.StdEncoding.DecodeString(steps["download-plot.png"].Base64)
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n")) || steps["download-plot.png"].Size < 1000 {
		t.Errorf("plot.png: %d bytes", len(png))
	}
	if js := steps["js"]; !js.OK || !strings.Contains(js.Content, "stdout:\n2,4,6 a1 a2") {
		t.Errorf("js: %+v", js)
	}
	if up := steps["upload"]; !up.OK {
		t.Errorf("upload: %+v", up)
	}
	if r := steps["read-upload"]; !r.OK || !strings.Contains(r.Content, "HELLO FROM LIBRECHAT") {
		t.Errorf("read-upload: %+v", r)
	}
	if r := steps["same-session"]; !r.OK || !strings.Contains(r.Content, "stdout:\n15") {
		t.Errorf("same-session: %+v", r)
	}
	if r := steps["error"]; !r.OK || !strings.Contains(r.Content, "stderr:\n") || !strings.Contains(r.Content, "ValueError: bad value") {
		t.Errorf("error: %+v", r)
	}
	if r := steps["unsupported"]; r.OK || !strings.Contains(r.Error, "status: 400") {
		t.Errorf("unsupported: %+v", r)
	}
}
