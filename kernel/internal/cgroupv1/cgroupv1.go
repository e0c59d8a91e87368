// Package cgroupv1 gives forked kernels memory and pids cgroups of their
// own in writable cgroup v1 hierarchies, and reads what those say about a
// kernel's end (an OOM kill, forks refused at the limit). The local and the
// Docker provisioners share it; where the parent directories go is theirs
// to say. cgroup v2 is not used: without v1 the provisioners limit forked
// kernels by rlimits.
package cgroupv1

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

// Parents are the directories, one per controller, under which kernels get
// their cgroups.
type Parents struct {
	Mem, Pids string
}

// Detect finds the v1 memory and pids hierarchies and makes the parents in
// them at dir(controller, mount point). With rootOnly, a hierarchy counts
// only where it is mounted at its root (not through a cgroup namespace).
// It fails when the process is not root or either hierarchy is missing or
// not writable (cgroup v2 only, a read-only /sys/fs/cgroup).
func Detect(rootOnly bool, dir func(ctl, mnt string) (string, error)) (*Parents, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("not root")
	}
	mounts, err := mounts(rootOnly)
	if err != nil {
		return nil, err
	}
	p := &Parents{}
	for _, ctl := range []struct {
		name string
		dir  *string
		file string
	}{{"memory", &p.Mem, "memory.limit_in_bytes"}, {"pids", &p.Pids, "pids.max"}} {
		mnt, ok := mounts[ctl.name]
		if !ok {
			return nil, fmt.Errorf("no cgroup v1 %s hierarchy", ctl.name)
		}
		d, err := dir(ctl.name, mnt)
		if err != nil {
			return nil, err
		}
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("cgroup %s: %w", ctl.name, err)
		}
		if _, err := os.Stat(filepath.Join(d, ctl.file)); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", ctl.name, err)
		}
		*ctl.dir = d
	}
	return p, nil
}

// mounts maps the v1 memory and pids controllers to their mount points.
func mounts(rootOnly bool) (map[string]string, error) {
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
		if len(lf) < 5 || len(rf) < 3 || rf[0] != "cgroup" || (rootOnly && lf[3] != "/") {
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

// RemoveChildren removes the (empty) cgroups left in dir.
func RemoveChildren(dir string) {
	kids, _ := os.ReadDir(dir)
	for _, k := range kids {
		if k.IsDir() {
			os.Remove(filepath.Join(dir, k.Name()))
		}
	}
}

// Remove removes the parents once no kernel's cgroup is left in them; one
// still there (a kernel not yet reaped) keeps them for the next Detect.
func (p *Parents) Remove() {
	os.Remove(p.Mem)
	os.Remove(p.Pids)
}

// Group is one kernel's pair of cgroups.
type Group struct {
	Mem, Pids string
}

// Create makes the cgroups of one kernel, named name, with its limits:
// memory in bytes (swap included, where the host accounts it) and
// processes; zero is no limit.
func (p *Parents) Create(name string, memory, pids int64) (*Group, error) {
	g := &Group{Mem: filepath.Join(p.Mem, name), Pids: filepath.Join(p.Pids, name)}
	var made []string // a failure removes only these: not another's of that name
	undo := func() {
		for _, d := range made {
			os.Remove(d)
		}
	}
	for _, d := range g.Dirs() {
		// A parent shared by several provisioners may have been removed
		// by another one's Close.
		if err := os.Mkdir(filepath.Dir(d), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			undo()
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			undo()
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		made = append(made, d)
	}
	var err error
	if memory > 0 {
		v := strconv.FormatInt(memory, 10)
		err = writeFile(filepath.Join(g.Mem, "memory.limit_in_bytes"), v)
		if sw := filepath.Join(g.Mem, "memory.memsw.limit_in_bytes"); err == nil && exists(sw) {
			err = writeFile(sw, v)
		}
	}
	if pids > 0 && err == nil {
		err = writeFile(filepath.Join(g.Pids, "pids.max"), strconv.FormatInt(pids, 10))
	}
	if err != nil {
		g.Remove()
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return g, nil
}

func writeFile(path, v string) error { return os.WriteFile(path, []byte(v), 0o644) }

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// Dirs lists the kernel's cgroup directories.
func (g *Group) Dirs() []string { return []string{g.Mem, g.Pids} }

// OOMKilled reports whether the memory cgroup's OOM killer killed a process.
func (g *Group) OOMKilled() bool {
	return counter(filepath.Join(g.Mem, "memory.oom_control"), "oom_kill") > 0
}

// PidsHits counts the forks refused at the pids limit.
func (g *Group) PidsHits() int64 { return counter(filepath.Join(g.Pids, "pids.events"), "max") }

// Empty reports whether no process is left in the kernel's cgroups.
func (g *Group) Empty() bool { return g.Procs() == 0 }

// Procs counts the processes in the kernel's cgroups: 0 once they are
// removed.
func (g *Group) Procs() int {
	b, err := os.ReadFile(filepath.Join(g.Pids, "cgroup.procs"))
	if err != nil {
		return 0
	}
	return len(strings.Fields(string(b)))
}

// Remove removes the kernel's cgroups, waiting up to 2 s for the last
// processes to leave them.
func (g *Group) Remove() {
	for _, d := range g.Dirs() {
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
