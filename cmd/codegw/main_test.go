package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildBinary builds codegw once for the tests that run it as a process.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "codegw")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestRefusesBadStarts(t *testing.T) {
	bin := buildBinary(t)
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"open on a public address", []string{"HOST=0.0.0.0"}, "API_KEYS"},
		{"bad number", []string{"PORT=abc"}, `PORT="abc" is not an integer`},
		{"bad executor", []string{"EXECUTOR=vm"}, "EXECUTOR must be local or docker"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin)
			cmd.Dir = t.TempDir()
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), tc.want) {
				t.Errorf("exit %v, output %q; want exit 1 mentioning %q", err, out, tc.want)
			}
		})
	}
}

// TestServeAndShutdown runs the binary as a user would, serves one
// execution, and checks that SIGTERM leaves no kernel process or file.
func TestServeAndShutdown(t *testing.T) {
	bin := buildBinary(t)
	state, err := os.MkdirTemp("", "cgm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	port := freePort(t)
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "STATE_DIR="+state, "POOL_SIZE=2",
		"IMAGE_STORE_PATH="+filepath.Join(cmd.Dir, "img"), "FILE_STORE_PATH="+filepath.Join(cmd.Dir, "files"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Post(base+"/api/v1/execute", "application/json", strings.NewReader(`{"code": "import os\nprint(os.getcwd())"}`))
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]any
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if res["result"] != "/code" || res["status"] != "ok" {
		t.Fatalf("execute: %v", res)
	}
	// /capabilities tells the truth about the kernel, probed in one.
	for deadline := time.Now().Add(60 * time.Second); ; {
		var caps struct {
			Python   *string  `json:"python_version"`
			Packages []string `json:"packages"`
		}
		resp, err := http.Get(base + "/capabilities")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&caps)
			resp.Body.Close()
		}
		if caps.Python != nil && strings.HasPrefix(*caps.Python, "3.") && hasPrefix(caps.Packages, "pandas==") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("capabilities never listed python and pandas: %v %+v", err, caps)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A session holds a kernel of its own at shutdown.
	resp, err = http.Post(base+"/api/v1/sessions", "application/json", nil)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create session: %v %v", err, resp)
	}
	resp.Body.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("still running 60s after SIGTERM\n%s", logs.String())
	}
	// No kernel process and no kernel directory is left.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(state)) {
			t.Errorf("process left after shutdown: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	kernels, _ := os.ReadDir(filepath.Join(state, "k"))
	if len(kernels) != 0 {
		t.Errorf("%d kernel directories left after shutdown", len(kernels))
	}
}

func hasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
