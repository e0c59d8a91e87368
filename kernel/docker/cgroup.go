package docker

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Where a zygote container sees the parents of its kernels' cgroups (see
// cgroups).
const containerCgroupDir = "/run/codegw-cgroup"

// cgroups holds the parent directories, on the engine's host, of the
// memory and pids cgroups of the kernels forked in one provisioner's zygote
// containers: codegw-docker-<instance hash> at the root of writable cgroup
// v1 hierarchies. The gateway makes them and each kernel's directory in
// them (and reads its counters there); they are bind mounted into the
// zygote container at containerCgroupDir/<controller>, where the child
// joins its own before it runs user code. Its processes then leave the
// container's cgroups for limits of their own. cgroup v2 is not used: the
// container's cgroup namespace hides the rest of the tree, and without it
// forked kernels are limited by rlimits.
type cgroups struct {
	mem, pids string
}

// cgroup is one kernel's pair of cgroups, by host path.
type cgroup struct {
	name      string
	mem, pids string
}

// detectCgroups finds the v1 memory and pids hierarchies and makes the
// provisioner's parent directories in them, emptying what a crashed
// gateway of the same instance left there. It fails when the gateway is
// not root or either hierarchy is missing or not writable.
func detectCgroups(name string) (*cgroups, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("not root")
	}
	mounts, err := v1Mounts()
	if err != nil {
		return nil, err
	}
	c := &cgroups{}
	for _, ctl := range []struct {
		name string
		dir  *string
		file string
	}{{"memory", &c.mem, "memory.limit_in_bytes"}, {"pids", &c.pids, "pids.max"}} {
		mnt, ok := mounts[ctl.name]
		if !ok {
			return nil, fmt.Errorf("no cgroup v1 %s hierarchy", ctl.name)
		}
		dir := filepath.Join(mnt, name)
		if kids, err := os.ReadDir(dir); err == nil {
			for _, k := range kids {
				if k.IsDir() {
					os.Remove(filepath.Join(dir, k.Name()))
				}
			}
		}
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("cgroup %s: %w", ctl.name, err)
		}
		if _, err := os.Stat(filepath.Join(dir, ctl.file)); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", ctl.name, err)
		}
		*ctl.dir = dir
	}
	return c, nil
}

// v1Mounts maps the v1 memory and pids controllers to their mount points.
func v1Mounts() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 || rf[0] != "cgroup" || lf[3] != "/" {
			continue
		}
		for _, opt := range strings.Split(rf[2], ",") {
			if opt == "memory" || opt == "pids" {
				m[opt] = lf[4]
			}
		}
	}
	return m, sc.Err()
}

// remove removes the parent directories; a kernel's cgroup still there
// keeps them, and the next provisioner of the instance removes them.
func (c *cgroups) remove() {
	os.Remove(c.mem)
	os.Remove(c.pids)
}

// create makes one kernel's cgroups with its limits: memory in bytes (swap
// included, where the host accounts it) and processes; zero is no limit.
func (c *cgroups) create(name string, memory, pids int64) (*cgroup, error) {
	g := &cgroup{name: name, mem: filepath.Join(c.mem, name), pids: filepath.Join(c.pids, name)}
	for _, d := range []string{g.mem, g.pids} {
		if err := os.Mkdir(d, 0o755); err != nil {
			g.remove()
			return nil, fmt.Errorf("docker: cgroup: %w", err)
		}
	}
	var err error
	if memory > 0 {
		v := strconv.FormatInt(memory, 10)
		err = writeFile(filepath.Join(g.mem, "memory.limit_in_bytes"), v)
		if sw := filepath.Join(g.mem, "memory.memsw.limit_in_bytes"); err == nil && exists(sw) {
			err = writeFile(sw, v)
		}
	}
	if pids > 0 && err == nil {
		err = writeFile(filepath.Join(g.pids, "pids.max"), strconv.FormatInt(pids, 10))
	}
	if err != nil {
		g.remove()
		return nil, fmt.Errorf("docker: cgroup: %w", err)
	}
	return g, nil
}

func writeFile(path, v string) error { return os.WriteFile(path, []byte(v), 0o644) }

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// containerDirs are the kernel's cgroup directories as the zygote
// container sees them.
func (g *cgroup) containerDirs() []string {
	return []string{
		containerCgroupDir + "/memory/" + g.name,
		containerCgroupDir + "/pids/" + g.name,
	}
}

// oomKilled reports whether the memory cgroup's OOM killer killed a process.
func (g *cgroup) oomKilled() bool {
	return counter(filepath.Join(g.mem, "memory.oom_control"), "oom_kill") > 0
}

// pidsHits counts the forks refused at the pids limit.
func (g *cgroup) pidsHits() int64 { return counter(filepath.Join(g.pids, "pids.events"), "max") }

// empty reports whether no process is left in the kernel's cgroups.
func (g *cgroup) empty() bool {
	b, err := os.ReadFile(filepath.Join(g.pids, "cgroup.procs"))
	return err != nil || len(strings.TrimSpace(string(b))) == 0
}

// remove removes the kernel's cgroups, waiting a little for the last
// processes to leave them.
func (g *cgroup) remove() {
	for _, d := range []string{g.mem, g.pids} {
		for i := 0; ; i++ {
			err := os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) || i == 100 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// counter reads "name value" from a cgroup's key-value file.
func counter(path, name string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == name {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
