package local

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/codegw/codegw/kernel/internal/cgroupv1"
)

// detectCgroups makes the parents of forked kernels' memory and pids
// cgroups: codegw-<pid> under the gateway's own cgroup in each writable
// cgroup v1 hierarchy, after removing those of gateways that are gone. It
// fails when either hierarchy is missing or not writable (not root, cgroup
// v2 only, read-only /sys/fs/cgroup): forked kernels then get rlimits.
func detectCgroups() (*cgroupv1.Parents, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	return cgroupv1.Detect(false, func(ctl, mnt string) (string, error) {
		base := filepath.Join(mnt, own[ctl])
		reapCgroups(base)
		return filepath.Join(base, fmt.Sprintf("codegw-%d", os.Getpid())), nil
	})
}

// ownCgroups maps v1 controllers to this process's cgroup path in them.
func ownCgroups() (map[string]string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			m[c] = parts[2]
		}
	}
	return m, nil
}

// reapCgroups removes the kernel cgroups of gateways that are gone.
func reapCgroups(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, "codegw-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "codegw-"))
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		cgroupv1.RemoveChildren(d)
		os.Remove(d)
	}
}
