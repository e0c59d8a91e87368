package docker

// Tests of zygote mode (NewExternal): a zygote started by someone else — a
// container run here as a Kubernetes pod runs it, with the same
// capabilities and a directory shared at the same path — and its loss.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// runZygoteContainer starts the executor image's zygote in serve mode as a
// container sharing dir at the same path, with this checkout's zygote.py,
// and returns the container's name.
func runZygoteContainer(t *testing.T, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("docker is required under CI=true")
		}
		t.Skip("no docker command")
	}
	image := os.Getenv("DOCKER_IMAGE")
	if image == "" {
		image = DefaultConfig().Image
	}
	_, file, _, _ := runtime.Caller(0)
	zygotePy := filepath.Join(filepath.Dir(file), "..", "..", "executor-image", "zygote.py")
	name := "codegw-zygote-test-" + randomID(t)
	args := []string{"run", "-d", "--name", name, "--user", "0:0", "--cap-drop", "ALL",
		"--security-opt", "no-new-privileges", "--network", "none", "--read-only",
		"--tmpfs", "/tmp", "-v", dir + ":" + dir, "-v", zygotePy + ":" + containerZygote + ":ro",
		"-e", "EXECUTOR_ZYGOTE_SERVE=1", "-e", "EXECUTOR_ZYGOTE_SOCKET=" + filepath.Join(dir, zygoteSocket),
		"-e", "EXECUTOR_PRELOAD="}
	for _, c := range zygoteCaps {
		args = append(args, "--cap-add", c)
	}
	args = append(args, image, "python3", containerZygote)
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("docker run: %v: %s", err, out)
		}
		t.Skipf("docker run (is the executor image built? scripts/docker-up.sh): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", "--tail", "30", name).CombinedOutput()
			t.Logf("zygote container log:\n%s", out)
		}
		exec.Command("docker", "rm", "-f", name).Run()
	})
	return name
}

func newExternalProvisioner(t *testing.T, dir string) *Provisioner {
	t.Helper()
	cfg := testConfig(t)
	cfg.Memory, cfg.PidsLimit = 1<<30, 256
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p, err := NewExternal(ctx, cfg, filepath.Join(dir, zygoteSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestExternalZygote(t *testing.T) {
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o770|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	name := runZygoteContainer(t, dir)
	p := newExternalProvisioner(t, dir)
	if p.StartMode() != StartFork || p.LimitMode() != "rlimit" {
		t.Fatalf("modes %s %s, want fork rlimit", p.StartMode(), p.LimitMode())
	}
	a := launch(t, p, kernel.Spec{})
	b := launch(t, p, kernel.Spec{})
	got := lines(t, a, `import os, socket
open("/code/output/a.txt", "w").write("a")
print(os.getuid(), os.getgid(), sorted(os.listdir("/code")))
print(sorted(n for _, n in socket.if_nameindex()))`)
	fa := a.Process().(*forked)
	want := []string{fmt.Sprintf("%d %d ['input', 'output']", fa.uid, fa.kernelGID()), "['lo']"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("kernel a: %q, want %q", got, want)
	}
	if data, err := os.ReadFile(filepath.Join(fa.Dir(), "output", "a.txt")); err != nil || string(data) != "a" {
		t.Errorf("a's output from the gateway: %q %v", data, err)
	}
	if out := mustRun(t, b, `import os; print(os.path.exists("/code/output/a.txt"))`); strings.TrimSpace(out) != "False" {
		t.Errorf("b sees a's output: %q", out)
	}

	// The zygote's container restarts: its kernels are reported killed,
	// and the next kernel connects to the new zygote.
	if out, err := exec.Command("docker", "restart", "-t", "1", name).CombinedOutput(); err != nil {
		t.Fatalf("docker restart: %v: %s", err, out)
	}
	for _, k := range []*kernel.Kernel{a, b} {
		if e := waitExited(t, k.Process(), 60*time.Second); e.Signal != "killed" {
			t.Errorf("kernel after the zygote's restart: %+v, want killed", e)
		}
	}
	c := launch(t, p, kernel.Spec{})
	if out := mustRun(t, c, "print(6*7)"); strings.TrimSpace(out) != "42" {
		t.Errorf("kernel after the reconnect: %q", out)
	}
}

func TestExternalNoZygote(t *testing.T) {
	_, err := NewExternal(context.Background(), testConfig(t), "")
	if !errors.Is(err, kernel.ErrProvisioner) {
		t.Errorf("no socket: %v, want ErrProvisioner", err)
	}
}
