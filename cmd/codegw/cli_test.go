package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/app/apptest"
	"github.com/codegw/codegw/internal/testwait"
)

// cliGateway serves a gateway with key on a loopback port for the client
// commands and returns the environment that points them at it.
func cliGateway(t *testing.T, key string) (*app.App, []string) {
	t.Helper()
	c := apptest.Config(t)
	c.APIKeys = []string{key}
	a, base := apptest.Serve(t, c)
	return a, append(os.Environ(), "CODEGW_URL="+base, "CODEGW_KEY="+key)
}

// cli runs the binary and returns its stdout, stderr and exit status.
func cli(t *testing.T, bin string, env []string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Dir = t.TempDir()
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestCLIRunExecSession(t *testing.T) {
	bin := buildBinary(t)
	_, env := cliGateway(t, "cli-key")
	dir := t.TempDir()
	script := filepath.Join(dir, "plot.py")
	os.WriteFile(script, []byte(`import matplotlib.pyplot as plt
print("hello from run")
plt.plot([1, 2, 3])
plt.show()
open("/code/output/table.csv", "w").write("a,b\n1,2\n")
`), 0o644)
	outDir := filepath.Join(dir, "out")
	stdout, stderr, code := cli(t, bin, env, "", "run", "-o", outDir, script)
	if code != 0 || !strings.Contains(stdout, "hello from run") || !strings.Contains(stdout, "[image saved to ") {
		t.Fatalf("run: status %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	png, err := os.ReadFile(filepath.Join(outDir, "image-1.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("saved image: %v, %d bytes", err, len(png))
	}
	if b, err := os.ReadFile(filepath.Join(outDir, "table.csv")); err != nil || string(b) != "a,b\n1,2\n" {
		t.Errorf("saved file: %q, %v", b, err)
	}

	bad := filepath.Join(dir, "bad.py")
	os.WriteFile(bad, []byte("print('before')\n1/0\n"), 0o644)
	stdout, stderr, code = cli(t, bin, env, "", "run", "-o", outDir, bad)
	if code != 1 || !strings.Contains(stdout, "before") || !strings.Contains(stderr, "ZeroDivisionError") {
		t.Fatalf("run of failing code: status %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}

	stdout, stderr, code = cli(t, bin, env, "", "session", "create")
	id := strings.TrimSpace(stdout)
	if code != 0 || !strings.HasPrefix(id, "s_") {
		t.Fatalf("session create: %d %q %s", code, stdout, stderr)
	}
	if _, stderr, code = cli(t, bin, env, "", "exec", "-s", id, "x = 21"); code != 0 {
		t.Fatalf("exec: %d %s", code, stderr)
	}
	if stdout, stderr, code = cli(t, bin, env, "print(x * 2)\n", "exec", "-s", id); code != 0 || stdout != "42\n" {
		t.Fatalf("exec from stdin: %d %q %s", code, stdout, stderr)
	}
	if _, stderr, code = cli(t, bin, env, "", "exec", "-s", id, "undefined_name"); code != 1 || !strings.Contains(stderr, "NameError") {
		t.Fatalf("exec of failing code: %d %s", code, stderr)
	}
	if stdout, _, code = cli(t, bin, env, "", "session", "list"); code != 0 || !strings.Contains(stdout, id) {
		t.Fatalf("session list: %d %q", code, stdout)
	}
	// Checkpoint, branch, pause, list as paused, resume.
	stdout, stderr, code = cli(t, bin, env, "", "session", "checkpoint", id)
	ck, _, _ := strings.Cut(stdout, "\t")
	if code != 0 || !strings.HasPrefix(ck, "ck_") {
		t.Fatalf("session checkpoint: %d %q %s", code, stdout, stderr)
	}
	stdout, stderr, code = cli(t, bin, env, "", "session", "create", "-from", ck)
	branch := strings.TrimSpace(stdout)
	if code != 0 || !strings.HasPrefix(branch, "s_") {
		t.Fatalf("session create -from: %d %q %s", code, stdout, stderr)
	}
	if stdout, stderr, code = cli(t, bin, env, "", "exec", "-s", branch, "print(x + 1)"); code != 0 || stdout != "22\n" {
		t.Fatalf("exec in the branch: %d %q %s", code, stdout, stderr)
	}
	if stdout, stderr, code = cli(t, bin, env, "", "session", "pause", id); code != 0 || !strings.Contains(stdout, "paused "+id) {
		t.Fatalf("session pause: %d %q %s", code, stdout, stderr)
	}
	if stdout, _, _ = cli(t, bin, env, "", "session", "list"); !strings.Contains(stdout, "paused") {
		t.Fatalf("paused session not listed as paused: %q", stdout)
	}
	if stdout, stderr, code = cli(t, bin, env, "", "session", "resume", id); code != 0 || !strings.Contains(stdout, "resumed "+id) {
		t.Fatalf("session resume: %d %q %s", code, stdout, stderr)
	}
	if stdout, stderr, code = cli(t, bin, env, "", "exec", "-s", id, "print(x)"); code != 0 || stdout != "21\n" {
		t.Fatalf("exec after resume: %d %q %s", code, stdout, stderr)
	}
	if _, stderr, code = cli(t, bin, env, "", "session", "delete", id); code != 0 {
		t.Fatalf("session delete: %d %s", code, stderr)
	}
	if stdout, _, _ = cli(t, bin, env, "", "session", "list"); strings.Contains(stdout, id) {
		t.Fatalf("session still listed after delete: %q", stdout)
	}
	if _, stderr, code = cli(t, bin, append(env, "CODEGW_KEY=wrong"), "", "session", "list"); code == 0 || !strings.Contains(stderr, "unknown API key") {
		t.Fatalf("wrong key: %d %s", code, stderr)
	}
}

// term is the output of a process on a pseudo-terminal.
type term struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (tm *term) copy(r io.Reader) {
	b := make([]byte, 4096)
	for {
		n, err := r.Read(b)
		tm.mu.Lock()
		tm.buf.Write(b[:n])
		tm.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// waitFor waits until the output after offset from contains s and
// returns the offset after it.
func (tm *term) waitFor(t *testing.T, from int, s string) int {
	t.Helper()
	at := 0
	testwait.For(t, 60*time.Second, fmt.Sprintf("%q in the terminal after %d", s, from), func() string {
		tm.mu.Lock()
		out := tm.buf.String()
		tm.mu.Unlock()
		if i := strings.Index(out[from:], s); i >= 0 {
			at = from + i + len(s)
			return ""
		}
		return "\n" + out
	})
	return at
}

func TestCLIReplInterrupt(t *testing.T) {
	bin := buildBinary(t)
	a, env := cliGateway(t, "repl-key")
	cmd := exec.Command(bin, "repl", "-o", t.TempDir())
	cmd.Env = env
	f, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tm := &term{}
	go tm.copy(f)
	at := tm.waitFor(t, 0, ">>> ")
	io.WriteString(f, "x = 3\r")
	at = tm.waitFor(t, at, ">>> ")
	io.WriteString(f, "print(x + 1)\r")
	at = tm.waitFor(t, at, "4\r\n")
	at = tm.waitFor(t, at, ">>> ")
	io.WriteString(f, "import time; print('sleep' + 'ing', flush=True); time.sleep(60)\r")
	at = tm.waitFor(t, at, "sleeping") // the cell runs
	start := time.Now()
	io.WriteString(f, "\x03") // Ctrl-C
	at = tm.waitFor(t, at, "KeyboardInterrupt")
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("interrupt took %v", d)
	}
	at = tm.waitFor(t, at, ">>> ")
	io.WriteString(f, "print('alive', x)\r")
	at = tm.waitFor(t, at, "alive 3")
	tm.waitFor(t, at, ">>> ")
	io.WriteString(f, "\x04") // Ctrl-D
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("repl exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("repl did not exit on Ctrl-D")
	}
	if n := a.Manager.Stats().Sessions; n != 0 {
		t.Errorf("%d sessions left after the repl exited", n)
	}
}
