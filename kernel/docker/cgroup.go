package docker

import (
	"path/filepath"

	"github.com/codegw/codegw/kernel/internal/cgroupv1"
)

// Where a zygote container sees the parents of its kernels' cgroups (see
// detectCgroups).
const containerCgroupDir = "/run/codegw-cgroup"

// detectCgroups makes the parent directories, on the engine's host, of the
// memory and pids cgroups of the kernels forked in one provisioner's zygote
// containers: name (codegw-docker-<instance hash>) at the root of writable
// cgroup v1 hierarchies, emptied of what a crashed gateway of the same
// instance left there. The gateway makes each kernel's directory in them
// (and reads its counters there); they are bind mounted into the zygote
// container at containerCgroupDir/<controller>, where the child joins its
// own before it runs user code. Its processes then leave the container's
// cgroups for limits of their own. cgroup v2 is not used: the container's
// cgroup namespace hides the rest of the tree, and without v1 forked
// kernels are limited by rlimits. It fails when the gateway is not root or
// either hierarchy is missing or not writable.
func detectCgroups(name string) (*cgroupv1.Parents, error) {
	return cgroupv1.Detect(true, func(_, mnt string) (string, error) {
		dir := filepath.Join(mnt, name)
		cgroupv1.RemoveChildren(dir)
		return dir, nil
	})
}

// containerDirs are a kernel's cgroup directories as the zygote container
// sees them.
func containerDirs(g *cgroupv1.Group) []string {
	return []string{
		containerCgroupDir + "/memory/" + filepath.Base(g.Mem),
		containerCgroupDir + "/pids/" + filepath.Base(g.Pids),
	}
}
