package cgroupv1

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestGroup makes real cgroups (root and cgroup v1, as the fork tests of
// both provisioners need) and puts a process in them.
func TestGroup(t *testing.T) {
	name := fmt.Sprintf("codegw-test-%d", os.Getpid())
	p, err := Detect(false, func(_, mnt string) (string, error) { return filepath.Join(mnt, name), nil })
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no cgroups under CI: %v", err)
		}
		t.Skipf("no cgroups here: %v", err)
	}
	defer p.Remove()
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
