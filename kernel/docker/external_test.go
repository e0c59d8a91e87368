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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// runZygoteContainer starts the executor image's zygote in serve mode as a
// container sharing dir at the same path, with this checkout's zygote.py,
// and returns the container's name.
func runZygoteContainer(t *testing.T, dir string, extra ...string) string {
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
	args = append(append(args, extra...), image, "python3", containerZygote)
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
	fa := a.Process().(*forkedKernel)
	want := []string{fmt.Sprintf("%d %d ['input', 'output']", fa.files.uid, fa.files.kernelGID()), "['lo']"}
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

// TestExternalUnprivileged runs the gateway's side as a Kubernetes pod
// does: unprivileged (uid and gid 10001, no capability), the zygote's
// container having that gid as a supplementary group (the pod's fsGroup)
// and the shared directory in that group. The gateway is this test binary
// again (TestExternalHelper) under that uid.
func TestExternalUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the gateway's side under another uid")
	}
	const id = 10001
	dir := shortTempDir(t)
	if err := os.Chown(dir, 0, id); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o770|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	runZygoteContainer(t, dir, "--group-add", strconv.Itoa(id))
	// The test binary, where uid 10001 can run it, and a TMPDIR of its own
	// (the kernel uid leases).
	home, err := os.MkdirTemp("", "cgwu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	os.Chmod(home, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(home, "test.bin")
	if data, err := os.ReadFile(self); err != nil || os.WriteFile(bin, data, 0o755) != nil {
		t.Fatalf("copy the test binary: %v", err)
	}
	tmp := filepath.Join(home, "tmp")
	os.Mkdir(tmp, 0o700)
	os.Chown(tmp, id, id)
	cmd := exec.Command(bin, "-test.run=^TestExternalHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "CODEGW_EXTERNAL_HELPER="+filepath.Join(dir, zygoteSocket), "TMPDIR="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: id, Gid: id, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "helper: ok") {
		t.Fatalf("the unprivileged gateway: %v\n%s", err, out)
	}
}

// TestExternalHelper is the unprivileged gateway of TestExternalUnprivileged.
func TestExternalHelper(t *testing.T) {
	socket := os.Getenv("CODEGW_EXTERNAL_HELPER")
	if socket == "" {
		t.Skip("run by TestExternalUnprivileged")
	}
	cfg := testConfig(t)
	cfg.Memory, cfg.PidsLimit = 1<<30, 256
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p, err := NewExternal(ctx, cfg, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !p.shared {
		t.Fatal("an unprivileged gateway does not share the kernels' directories by group")
	}
	k := launch(t, p, kernel.Spec{})
	got := lines(t, k, `import os
open("/code/output/a.txt", "w").write("a")
print(os.getuid(), os.getgid(), os.getgroups())`)
	fk := k.Process().(*forkedKernel)
	if want := fmt.Sprintf("%d %d []", fk.files.uid, os.Getgid()); len(got) != 1 || got[0] != want {
		t.Fatalf("kernel: %q, want %q", got, want)
	}
	if data, err := os.ReadFile(filepath.Join(fk.Dir(), "output", "a.txt")); err != nil || string(data) != "a" {
		t.Fatalf("the kernel's output from the gateway: %q %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(fk.Dir(), "input", "in.txt"), []byte("in"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, k, `print(open("/code/input/in.txt").read())`); strings.TrimSpace(out) != "in" {
		t.Fatalf("the gateway's input from the kernel: %q", out)
	}
	k.Close(context.Background())
	fmt.Println("helper: ok")
}
