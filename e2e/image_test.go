package e2e_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testwait"
)

// TestAPIImage builds the gateway image (scripts/compose-check.sh, which
// also validates docker-compose.yml) and runs it with the Docker socket
// mounted: it serves an execution on an executor container. Without a
// Docker engine it skips, or fails under CI=true.
func TestAPIImage(t *testing.T) {
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but no Docker engine answers: %v (run scripts/docker-up.sh)", err)
		}
		t.Skipf("no Docker engine: %v", err)
	}
	build := exec.Command("scripts/compose-check.sh")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/compose-check.sh: %v\n%s", err, tail(string(out), 30))
	}
	// STATE_DIR is bound at the same path: the engine binds per-kernel
	// directories from it (host paths) and the gateway uses their sockets.
	state, err := os.MkdirTemp("", "cgimg")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	port := freePort(t)
	name := fmt.Sprintf("codegw-api-test-%d", port)
	run := exec.Command("docker", "run", "-d", "--rm", "--name", name, "--network", "host",
		"-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", state+":"+state,
		"-e", "HOST=127.0.0.1", "-e", "PORT="+strconv.Itoa(port), "-e", "STATE_DIR="+state,
		"-e", "EXECUTOR_INSTANCE_ID="+name, "-e", "POOL_SIZE=1", "-e", "EXECUTOR_PRELOAD=",
		"codegw/api:latest")
	if out, err := run.CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	defer func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", "--tail", "40", name).CombinedOutput()
			t.Logf("gateway container log:\n%s", out)
		}
		exec.Command("docker", "stop", "-t", "20", name).Run()
		// Its kernels carry its instance id: none may be left.
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=codegw.instance="+name).Output()
		if s := strings.TrimSpace(string(out)); s != "" {
			t.Errorf("executor containers left after the gateway stopped: %s", s)
			exec.Command("sh", "-c", "docker rm -f "+strings.Join(strings.Fields(s), " ")).Run()
		}
	}()
	in := &instance{t: t, name: "image", base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	testwait.For(t, 60*time.Second, "the gateway container serving", func() string {
		if _, err := in.call("GET", "/healthz", "", nil); err != nil {
			return err.Error()
		}
		return ""
	})
	// The kernel runs in an executor container (spawned, or forked by the
	// zygote container: either way its root is not the gateway's image).
	a := in.must(t, "POST", "/api/v1/execute", "", map[string]any{"code": "import os\nprint(1, os.path.exists('/usr/local/bin/codegw'))"}, 200)
	var res codegw.ExecuteResult
	if err := json.Unmarshal(a.body, &res); err != nil || res.Status != codegw.StatusOK || res.Result != "1 False" {
		t.Fatalf("execute through the gateway image: %s", a)
	}
	c := in.must(t, "GET", "/capabilities", "", nil, 200)
	var caps struct {
		Executor    string `json:"executor"`
		KernelStart string `json:"kernel_start"`
	}
	if err := json.Unmarshal(c.body, &caps); err != nil || caps.Executor != "docker" || caps.KernelStart == "" {
		t.Errorf("capabilities of the gateway image: %s", c)
	}
	t.Logf("executor %s, kernel_start %s", caps.Executor, caps.KernelStart)
}
