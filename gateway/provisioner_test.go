package gateway_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
)

// currentProvisioner is the provisioner the end-to-end suites run on: the
// local sandbox by default; Docker when CODEGW_TEST_EXECUTOR is "docker"
// (the test command runs the suites once more that way): kernels forked
// from a zygote container, or containers of their own with
// CODEGW_TEST_KERNEL_START=spawn. Under
// CI=true an unreachable Docker fails the run instead of skipping it.
func currentProvisioner(t testing.TB) kernel.Provisioner {
	t.Helper()
	if os.Getenv("CODEGW_TEST_EXECUTOR") != "docker" {
		return localProvisioner(t)
	}
	if sharedProv != nil {
		return sharedProv
	}
	image := os.Getenv("DOCKER_IMAGE")
	if image == "" {
		image = "codegw/executor:latest"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The instance id is unique to this run: a provisioner reaps containers
	// of its instance id, and other runs may share the engine.
	dir := shortDir(t, "cgwd")
	p, err := docker.New(ctx, docker.Config{Image: image, InstanceID: "gwtest-" + filepath.Base(dir), StateDir: dir, Memory: 1 << 30, PidsLimit: 256,
		Start: os.Getenv("CODEGW_TEST_KERNEL_START")})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("docker provisioner unavailable under CI: %v", err)
		}
		t.Skipf("docker provisioner unavailable: %v", err)
	}
	sharedProv = p
	return p
}
