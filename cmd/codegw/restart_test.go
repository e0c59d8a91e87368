package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testcheck"
	"github.com/gorilla/websocket"
)

// server is one run of the binary.
type server struct {
	cmd  *exec.Cmd
	base string
	logs *testcheck.Buffer
	done chan error
}

// startServer runs bin with env added and waits until it is ready.
func startServer(t *testing.T, bin, dir string, env ...string) *server {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(bin)
	cmd.Dir = dir
	logs := &testcheck.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.Env = append(os.Environ(), append([]string{fmt.Sprintf("PORT=%d", port)}, env...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port), logs: logs, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := http.Get(s.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		select {
		case err := <-s.done:
			t.Fatalf("exited before ready: %v\n%s", err, logs)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v\n%s", err, logs)
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, s.logs)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("still running 90s after SIGTERM\n%s", s.logs)
	}
}

func (s *server) post(t *testing.T, path, body string, out any) int {
	t.Helper()
	resp, err := http.Post(s.base+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("POST %s: %d %q: %v", path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// TestRestartKeepsSessions: a single instance on the in-memory store, with
// its snapshot directory on a volume, is stopped with SIGTERM and started
// again: its sessions come back under the same ids with their variables,
// and the websocket connected at the stop was told the session is paused.
func TestRestartKeepsSessions(t *testing.T) {
	bin := buildBinary(t)
	state, err := os.MkdirTemp("", "cgr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	dir := t.TempDir()
	env := []string{"STATE_DIR=" + state, "POOL_SIZE=1", "DRAIN_TIMEOUT=30",
		"IMAGE_STORE_PATH=" + filepath.Join(dir, "img"), "FILE_STORE_PATH=" + filepath.Join(dir, "files"),
		"SNAPSHOT_DIR=" + filepath.Join(dir, "snapshots")}
	s1 := startServer(t, bin, dir, env...)

	const sessions = 3
	ids := make([]string, sessions)
	for i := range ids {
		var sess struct{ ID string }
		if st := s1.post(t, "/api/v1/sessions", `{"env": {"WHO": "s`+fmt.Sprint(i)+`"}}`, &sess); st != 201 {
			t.Fatalf("create: %d", st)
		}
		ids[i] = sess.ID
		var res struct{ Status string }
		code := fmt.Sprintf(`{"code": "import pandas as pd\nn = %d\ndf = pd.DataFrame({'v': range(n + 10)})\nsq = lambda v: v * v + n"}`, i)
		if st := s1.post(t, "/api/v1/sessions/"+ids[i]+"/execute", code, &res); st != 200 || res.Status != "ok" {
			t.Fatalf("execute: %d %+v", st, res)
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial(strings.Replace(s1.base, "http", "ws", 1)+"/api/v1/sessions/"+ids[0]+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	s1.stop(t)
	select {
	case err := <-closed:
		var ce *websocket.CloseError
		if !strings.Contains(fmt.Sprint(err), "paused") || !strings.Contains(fmt.Sprint(err), "shutting down") {
			t.Errorf("websocket closed with %v; want it told the session is paused", err)
		} else if ok := errors.As(err, &ce); !ok || ce.Code != websocket.CloseGoingAway {
			t.Errorf("websocket close %v; want going away", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("websocket not closed at shutdown")
	}
	if !strings.Contains(s1.logs.String(), "sessions paused") {
		t.Errorf("no pause logged at the drain:\n%s", s1.logs)
	}

	s2 := startServer(t, bin, dir, env...)
	for i, id := range ids {
		var res struct {
			Status, Result string
			Restored       *struct {
				Kind      string
				Variables []string
			}
		}
		code := `{"code": "import os\nprint(n, len(df), sq(3), os.environ['WHO'])"}`
		if st := s2.post(t, "/api/v1/sessions/"+id+"/execute", code, &res); st != 200 {
			t.Fatalf("session %d after restart: %d %+v\n%s", i, st, res, s2.logs)
		}
		want := fmt.Sprintf("%d %d %d s%d", i, i+10, 9+i, i)
		if res.Result != want || res.Restored == nil || res.Restored.Kind != "pause" {
			t.Errorf("session %d after restart: %+v; want %q", i, res, want)
		}
	}
	s2.stop(t)
}
