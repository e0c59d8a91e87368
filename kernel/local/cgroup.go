package local

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroups is where forked kernels get their memory and pids cgroups: one
// directory per controller, codegw-<pid> under the gateway's own cgroup in
// a writable cgroup v1 hierarchy. cgroup v2 is not used yet: without it the
// provisioner falls back to rlimits.
type cgroups struct {
	mem, pids string
}

// cgroup is one kernel's pair of cgroups.
type cgroup struct {
	mem, pids string
}

// detectCgroups finds the v1 memory and pids hierarchies and makes this
// process's parent directories in them. It fails when either is missing or
// not writable (not root, cgroup v2 only, read-only /sys/fs/cgroup).
func detectCgroups() (*cgroups, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("not root")
	}
	own, err := ownCgroups()
	if err != nil {
		return nil, err
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
		base := filepath.Join(mnt, own[ctl.name])
		reapCgroups(base)
		dir := filepath.Join(base, fmt.Sprintf("codegw-%d", os.Getpid()))
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

// v1Mounts maps v1 controllers to their mount points.
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
		if len(lf) < 5 || len(rf) < 3 || rf[0] != "cgroup" {
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

// reapCgroups removes the kernel cgroups of gateways that are gone.
func reapCgroups(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, "codegw-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "codegw-"))
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		kids, _ := os.ReadDir(d)
		for _, k := range kids {
			if k.IsDir() {
				os.Remove(filepath.Join(d, k.Name()))
			}
		}
		os.Remove(d)
	}
}

// remove removes the provisioner's parent cgroups once no kernel's is left
// in them; one still there (a kernel not yet reaped) keeps them, and the
// next provisioner's detectCgroups removes them.
func (c *cgroups) remove() {
	for _, d := range []string{c.mem, c.pids} {
		os.Remove(d)
	}
}

// create makes the cgroups of one kernel with its limits: memory in bytes
// (swap included, where the kernel accounts it) and processes; zero means
// no limit.
func (c *cgroups) create(name string, memory int64, pids int) (*cgroup, error) {
	g := &cgroup{mem: filepath.Join(c.mem, name), pids: filepath.Join(c.pids, name)}
	for _, d := range []string{g.mem, g.pids} {
		// The parent is shared by the provisioners of this process (it is
		// named after the pid): another one's Close may have removed it.
		if err := os.Mkdir(filepath.Dir(d), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			g.remove()
			return nil, fmt.Errorf("local: cgroup: %w", err)
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			g.remove()
			return nil, fmt.Errorf("local: cgroup: %w", err)
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
		err = writeFile(filepath.Join(g.pids, "pids.max"), strconv.Itoa(pids))
	}
	if err != nil {
		g.remove()
		return nil, fmt.Errorf("local: cgroup: %w", err)
	}
	return g, nil
}

func writeFile(path, v string) error { return os.WriteFile(path, []byte(v), 0o644) }

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// dirs lists the cgroup directories a kernel joins.
func (g *cgroup) dirs() []string { return []string{g.mem, g.pids} }

// oomKilled reports whether the memory cgroup's OOM killer killed a process.
func (g *cgroup) oomKilled() bool {
	return counter(filepath.Join(g.mem, "memory.oom_control"), "oom_kill") > 0
}

// pidsHit reports whether a fork failed at the pids limit.
func (g *cgroup) pidsHit() bool { return counter(filepath.Join(g.pids, "pids.events"), "max") > 0 }

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
			if err == nil || errors.Is(err, os.ErrNotExist) || i == 50 {
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
