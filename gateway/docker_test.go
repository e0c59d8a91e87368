package gateway_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel/docker"
)

// TestDockerFaults runs in the Docker pass of the test command
// (CODEGW_TEST_EXECUTOR=docker): memory and process limits and a container
// killed from outside are named in the answer, and the next request works.
// Kernels are forked from a zygote container (the default, KERNEL_START=fork)
// unless CODEGW_TEST_KERNEL_START=spawn.
func TestDockerFaults(t *testing.T) {
	if os.Getenv("CODEGW_TEST_EXECUTOR") != "docker" {
		t.Skip("runs in the Docker pass: CODEGW_TEST_EXECUTOR=docker")
	}
	currentProvisioner(t) // fails under CI when Docker is missing
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	image := os.Getenv("DOCKER_IMAGE")
	if image == "" {
		image = "codegw/executor:latest"
	}
	dir := shortDir(t, "cgwf") // its name makes the instance id unique to this run (see currentProvisioner)
	prov, err := docker.New(ctx, docker.Config{Image: image, InstanceID: "gwfaults-" + filepath.Base(dir), StateDir: dir, Memory: 256 << 20, PidsLimit: 64, Preload: []string{},
		Start: os.Getenv("CODEGW_TEST_KERNEL_START")})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	e := newEnv(t, envOptions{poolSize: 1, prov: prov, timeout: 30 * time.Second})

	t.Run("oom", func(t *testing.T) {
		res := e.exec(map[string]any{"code": "print('allocating', flush=True)\nx = bytearray(1 << 30)"})
		if res.Status != codegw.StatusOOM || res.Error == nil || !strings.Contains(*res.Error, "memory") {
			t.Errorf("answer: %s %s", res.Status, strOr(res.Error))
		}
	})

	t.Run("fork bomb", func(t *testing.T) {
		code := "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(60); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('refused after', n, e)"
		res := e.exec(map[string]any{"code": code})
		if res.Status != codegw.StatusPidsLimit || res.Error == nil || !strings.Contains(*res.Error, "process limit") {
			t.Errorf("answer: %s %s stdout %q", res.Status, strOr(res.Error), res.Stdout)
		}
		if !strings.Contains(res.Stdout, "refused after") {
			t.Errorf("stdout = %q", res.Stdout)
		}
	})

	t.Run("docker kill from outside", func(t *testing.T) {
		s := e.createSession(t, nil)
		// A kernel container of its own (spawn), named after the session, or
		// (fork) the zygote container that forked the session's kernel.
		host := prov.ZygoteContainer()
		if prov.StartMode() == docker.StartSpawn {
			if out, err := exec.Command("docker", "ps", "-q", "--filter", "name="+s.ID).Output(); err != nil || len(strings.Fields(string(out))) != 1 {
				t.Errorf("containers named after the session: %q %v", out, err)
			}
			// The container's id, from its own cgroup path.
			host = e.sexec(t, s.ID, map[string]any{"code": "import re; print(re.search(r'[0-9a-f]{64}', open('/proc/self/cgroup').read()).group(0))"}).Result
		}
		watch := e.mustDial(t, s.ID, "")
		resc := make(chan codegw.ExecuteResult, 1)
		go func() {
			var r codegw.ExecuteResult
			e.post("/api/v1/sessions/"+s.ID+"/execute", map[string]any{"code": "import time; print('sleeping', flush=True); time.sleep(100)"}, &r)
			resc <- r
		}()
		watch.until(streamEv("sleeping"), 30*time.Second)
		killed := time.Now()
		if out, err := exec.Command("docker", "kill", host).CombinedOutput(); err != nil {
			t.Fatalf("docker kill %s: %v %s", host, err, out)
		}
		select {
		case r := <-resc:
			if r.Status != codegw.StatusDied {
				t.Errorf("status %s %s", r.Status, strOr(r.Error))
			}
			if d := time.Since(killed); d > 2*time.Second {
				t.Errorf("death reported %v after the kill", d)
			}
			t.Logf("reported %v after docker kill: %s", time.Since(killed).Round(time.Millisecond), strOr(r.Error))
		case <-time.After(15 * time.Second):
			t.Fatal("no answer after docker kill")
		}
	})

	if res := e.exec(map[string]any{"code": "print('fine')"}); res.Result != "fine" {
		t.Errorf("after the faults: %+v", res)
	}
}
