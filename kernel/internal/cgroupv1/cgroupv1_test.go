package cgroupv1

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testwait"
)

// testParents makes parents named prefix-<pid> in the real hierarchies
// (root and cgroup v1, as the fork tests of both provisioners need),
// removed when the test ends; without them the test fails under CI and is
// skipped elsewhere.
func testParents(t *testing.T, prefix string) *Parents {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, os.Getpid())
	p, err := Detect(false, func(_, mnt string) (string, error) { return filepath.Join(mnt, name), nil })
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no cgroups under CI: %v", err)
		}
		t.Skipf("no cgroups here: %v", err)
	}
	t.Cleanup(p.Remove)
	return p
}

// TestGroup makes real cgroups (root and cgroup v1, as the fork tests of
// both provisioners need) and puts a process in them.
func TestGroup(t *testing.T) {
	p := testParents(t, "codegw-test")
	g, err := p.Create("k1", 64<<20, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create("k1", 0, 0); err == nil {
		t.Error("a second cgroup of the same name was made")
	}
	limit, _ := os.ReadFile(filepath.Join(g.Mem, "memory.limit_in_bytes"))
	pids, _ := os.ReadFile(filepath.Join(g.Pids, "pids.max"))
	if strings.TrimSpace(string(limit)) != strconv.Itoa(64<<20) || strings.TrimSpace(string(pids)) != "7" {
		t.Errorf("limits: memory %q pids %q", limit, pids)
	}
	if !g.Empty() || g.OOMKilled() || g.PidsHits() != 0 {
		t.Errorf("a new cgroup: empty %v oom %v pids hits %d", g.Empty(), g.OOMKilled(), g.PidsHits())
	}

	// A shell in the cgroups that forks past the pids limit.
	cmd := exec.Command("/bin/sh", "-c", `read x; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; read x`)
	in, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for _, d := range g.Dirs() {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	in.Write([]byte("go\n"))
	for i := 0; g.PidsHits() == 0 && i < 200; i++ {
		exec.Command("sleep", "0.01").Run()
	}
	if g.Empty() || g.PidsHits() == 0 {
		t.Errorf("with a shell forking past the limit: empty %v, pids hits %d", g.Empty(), g.PidsHits())
	}
	exec.Command("pkill", "-KILL", "-g", strconv.Itoa(cmd.Process.Pid)).Run()
	for _, pid := range strings.Fields(readFile(filepath.Join(g.Pids, "cgroup.procs"))) {
		n, _ := strconv.Atoi(pid)
		if p, err := os.FindProcess(n); err == nil {
			p.Kill()
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	g.Remove()
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", d, err)
		}
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestGroupReuse: the group of a kernel that ended serves the next kernel
// with the same limits, which does not inherit the first one's refused
// forks; a group still charged with much memory, or of other limits, is
// not handed out again; Parents' Remove removes the groups they kept.
func TestGroupReuse(t *testing.T) {
	p := testParents(t, "codegw-test-reuse")
	// run runs script in g's cgroups until it exits.
	run := func(g *Group, script string) {
		t.Helper()
		cmd := exec.Command("/bin/sh", "-c", "read x; "+script)
		in, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for _, d := range g.Dirs() {
			if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		in.Write([]byte("go\n"))
		in.Close()
		cmd.Wait()
		// The shell may leave children (it exits at a refused fork), whose
		// pids count until init reaps them.
		if !testwait.Within(10*time.Second, func() bool { return readInt([]byte(readFile(filepath.Join(g.Pids, "pids.current")))) == 0 }) {
			t.Fatalf("processes left in %s", g.Pids)
		}
	}

	a, err := p.Create("a", 64<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Forks past the limit of 3: refused.
	run(a, "for i in 1 2 3 4 5 6; do sleep 0.2 & done; wait")
	if oom, limited := a.Ended(); oom || !limited {
		t.Errorf("a ended: oom %v pids limited %v, want false true", oom, limited)
	}
	a.Release()
	if _, err := os.Stat(a.Pids); err != nil {
		t.Fatalf("a's group was not kept: %v", err)
	}
	if other, err := p.Create("c", 32<<20, 3); err != nil || other.Mem == a.Mem {
		t.Errorf("a group of other limits: %v, %v", other, err)
	} else {
		other.Remove()
	}
	b, err := p.Create("b", 64<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	if b.Mem != a.Mem || b.Pids != a.Pids {
		t.Fatalf("b got %s, not a's group %s", b.Pids, a.Pids)
	}
	if b.PidsHits() != 0 || b.OOMKilled() {
		t.Errorf("b, handed a's group: pids hits %d, oom %v", b.PidsHits(), b.OOMKilled())
	}
	run(b, "true")
	if oom, limited := b.Ended(); oom || limited {
		t.Errorf("b ended: oom %v pids limited %v, want false false", oom, limited)
	}
	b.Release()

	// A kernel that leaves a file's pages charged to its group: the group
	// is removed, not kept.
	c, err := p.Create("c2", 64<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mem != a.Mem {
		t.Fatalf("c got %s, not the kept group %s", c.Mem, a.Mem)
	}
	file := filepath.Join(t.TempDir(), "charged")
	run(c, "head -c 24000000 /dev/zero > "+file)
	c.Ended()
	c.Release()
	if _, err := os.Stat(c.Mem); !os.IsNotExist(err) {
		t.Errorf("a group charged with %s bytes was kept: %v", readFile(filepath.Join(c.Mem, "memory.usage_in_bytes")), err)
	}

	d, err := p.Create("d", 64<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	d.Ended()
	d.Release()
	p.Remove()
	for _, dir := range append(d.Dirs(), p.Mem, p.Pids) {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s left after Remove: %v", dir, err)
		}
	}
}

// TestGroupEndsOnce: of Release and Remove, called both (two paths that end
// a kernel, in either order), only the first counts: a removed group is
// never handed out again, and a kept one is not removed under Parents.
func TestGroupEndsOnce(t *testing.T) {
	p := testParents(t, "codegw-test-once")
	a, err := p.Create("a", 64<<20, 8)
	if err != nil {
		t.Fatal(err)
	}
	a.Remove()
	a.Ended()
	a.Release()
	b, err := p.Create("b", 64<<20, 8)
	if err != nil {
		t.Fatal(err)
	}
	if b.Mem == a.Mem {
		t.Fatalf("b was handed a's removed group %s", a.Mem)
	}
	b.Ended()
	b.Release()
	b.Remove()
	if _, err := os.Stat(b.Pids); err != nil {
		t.Fatalf("b's kept group was removed: %v", err)
	}
	c, err := p.Create("c", 64<<20, 8)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mem != b.Mem || c.PidsHits() != 0 || c.OOMKilled() {
		t.Errorf("c got %s (hits %d, oom %v), want b's kept group %s", c.Mem, c.PidsHits(), c.OOMKilled(), b.Mem)
	}
	c.Remove()
	if _, err := os.Stat(c.Pids); !os.IsNotExist(err) {
		t.Errorf("c's group, removed, is left: %v", err)
	}
}
