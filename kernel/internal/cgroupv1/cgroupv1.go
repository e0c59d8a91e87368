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
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Parents are the directories, one per controller, under which kernels get
// their cgroups. They keep the groups of kernels that ended, empty, for
// the next kernels with the same limits (Group.Release): making and
// removing a memory cgroup costs the host far more than reusing one.
type Parents struct {
	Mem, Pids string

	memsw bool // the memory hierarchy accounts swap

	mu     sync.Mutex
	free   []*Group // empty, each with its counters as its last kernel left them
	closed bool
}

// maxFree is how many empty groups Parents keep: enough for the kernels
// that end and start within a moment at a busy instance.
const maxFree = 32

// reuseMax is the most memory a group may still be charged with, once its
// processes are gone, to serve another kernel: page cache of files its
// kernel wrote that are still on disk, kernel memory. A group with more
// is removed.
const reuseMax = 16 << 20

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
	p.memsw = exists(filepath.Join(p.Mem, "memory.memsw.limit_in_bytes"))
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

// Remove removes the empty groups kept for reuse, and the parents once no
// kernel's cgroup is left in them; one still there (a kernel not yet
// reaped) keeps them for the next Detect. Groups that end later are
// removed, not kept.
func (p *Parents) Remove() {
	p.mu.Lock()
	free := p.free
	p.free, p.closed = nil, true
	p.mu.Unlock()
	for _, g := range free {
		g.remove()
	}
	os.Remove(p.Mem)
	os.Remove(p.Pids)
}

// Group is one kernel's pair of cgroups.
type Group struct {
	Mem, Pids string

	p                  *Parents
	memory, pids       int64 // the limits
	oomEnd, refusedEnd int64 // the counters when its kernel ended (Ended)
	// The files read at each kernel's end, kept open from Create to
	// Remove: one pread each instead of open, fstat, read and close.
	files [nFiles]*os.File
	// The counters when the group was handed to its kernel; atomic: a
	// reader late for the kernel's end may still read them (PidsHits).
	oom0, refused0 atomic.Int64
	// done: released or removed, once per kernel: a second Release or
	// Remove (two paths that end a kernel) does nothing, so a group never
	// goes back to Parents after it was removed.
	done atomic.Bool
}

// Create gives one kernel its cgroups with its limits: memory in bytes
// (swap included, where the host accounts it) and processes; zero is no
// limit. It hands out an empty group kept from an ended kernel with the
// same limits, or makes a new one named name.
func (p *Parents) Create(name string, memory, pids int64) (*Group, error) {
	p.mu.Lock()
	for i := len(p.free) - 1; i >= 0; i-- {
		if g := p.free[i]; g.memory == memory && g.pids == pids {
			p.free = slices.Delete(p.free, i, i+1)
			p.mu.Unlock()
			g.done.Store(false)
			return g, nil
		}
	}
	p.mu.Unlock()
	g := &Group{Mem: filepath.Join(p.Mem, name), Pids: filepath.Join(p.Pids, name), p: p, memory: memory, pids: pids}
	var made []string // a failure removes only these: not another's of that name
	undo := func() {
		for _, d := range made {
			os.Remove(d)
		}
	}
	for _, d := range g.Dirs() {
		err := os.Mkdir(d, 0o755)
		if errors.Is(err, os.ErrNotExist) {
			// A parent shared by several provisioners may have been
			// removed by another one's Close.
			if err = os.Mkdir(filepath.Dir(d), 0o755); err == nil || errors.Is(err, os.ErrExist) {
				err = os.Mkdir(d, 0o755)
			}
		}
		if err != nil {
			undo()
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		made = append(made, d)
	}
	var err error
	if memory > 0 {
		v := strconv.FormatInt(memory, 10)
		err = writeFile(filepath.Join(g.Mem, "memory.limit_in_bytes"), v)
		if err == nil && p.memsw {
			err = writeFile(filepath.Join(g.Mem, "memory.memsw.limit_in_bytes"), v)
		}
	}
	if pids > 0 && err == nil {
		err = writeFile(filepath.Join(g.Pids, "pids.max"), strconv.FormatInt(pids, 10))
	}
	if err == nil {
		err = g.open()
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

// OOMKilled reports whether the memory cgroup's OOM killer killed a
// process of this kernel.
func (g *Group) OOMKilled() bool { return g.ooms() > g.oom0.Load() }

// PidsHits counts the forks of this kernel refused at the pids limit.
func (g *Group) PidsHits() int64 { return g.refused() - g.refused0.Load() }

func (g *Group) ooms() int64    { return counter(g.read(oomControl), "oom_kill") }
func (g *Group) refused() int64 { return counter(g.read(pidsEvents), "max") }

// The files of a group that it reads.
const (
	oomControl = iota
	pidsEvents
	pidsCurrent
	memoryUsage
	nFiles
)

func (g *Group) path(i int) string {
	switch i {
	case oomControl:
		return filepath.Join(g.Mem, "memory.oom_control")
	case pidsEvents:
		return filepath.Join(g.Pids, "pids.events")
	case pidsCurrent:
		return filepath.Join(g.Pids, "pids.current")
	default:
		return filepath.Join(g.Mem, "memory.usage_in_bytes")
	}
}

// open keeps the group's files open (Create).
func (g *Group) open() error {
	for i := range g.files {
		f, err := os.Open(g.path(i))
		if err != nil {
			g.closeFiles()
			return err
		}
		g.files[i] = f
	}
	return nil
}

// closeFiles closes the files open kept. The slots keep their *os.File: a
// reader late for the kernel's end reads os.ErrClosed from it, not a
// slot another goroutine writes.
func (g *Group) closeFiles() {
	for _, f := range g.files {
		if f != nil {
			f.Close()
		}
	}
}

// read returns the content of the group's file i, nil when it cannot: a
// pread from the start of the descriptor open keeps (a cgroup file is
// made anew at offset 0), or, for a group Create did not make, a read by
// path.
func (g *Group) read(i int) []byte {
	f := g.files[i]
	if f == nil {
		b, _ := os.ReadFile(g.path(i))
		return b
	}
	buf := make([]byte, 512)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return nil
	}
	return buf[:n]
}

// Ended reads what the group says of its kernel's end: whether the OOM
// killer killed one of its processes, and whether a fork was refused at
// the pids limit. Call it once the kernel's processes are gone, then
// Release.
func (g *Group) Ended() (oomKilled, pidsLimited bool) {
	g.oomEnd, g.refusedEnd = g.ooms(), g.refused()
	return g.oomEnd > g.oom0.Load(), g.refusedEnd > g.refused0.Load()
}

// Release gives the group of a kernel that ended (Ended) back for another
// kernel, or removes it: one still charged with processes or with much
// memory, one of Parents that are closed, one past what Parents keep. The
// group is not to be used after.
func (g *Group) Release() {
	if !g.done.CompareAndSwap(false, true) {
		return // released or removed already
	}
	p := g.p
	if p == nil || readInt(g.read(pidsCurrent)) != 0 {
		g.remove()
		return
	}
	if used := readInt(g.read(memoryUsage)); used < 0 || used > reuseMax {
		g.remove()
		return
	}
	g.oom0.Store(g.oomEnd)
	g.refused0.Store(g.refusedEnd)
	p.mu.Lock()
	if !p.closed && len(p.free) < maxFree {
		p.free = append(p.free, g)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	g.remove()
}

// readInt reads the content of a cgroup file that holds one number; -1
// when it does not.
func readInt(b []byte) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

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
// processes to leave them. After Release, or a first Remove, it does
// nothing.
func (g *Group) Remove() {
	if g.done.CompareAndSwap(false, true) {
		g.remove()
	}
}

func (g *Group) remove() {
	g.closeFiles()
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

// counter reads "name value" from a cgroup's key-value file's content.
func counter(b []byte, name string) int64 {
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == name {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
