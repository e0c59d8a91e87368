package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/internal/testwait"
)

// TestOneShotGatewayKill kills the gateway (the binary) with SIGKILL while a
// stateless call runs on a one-shot kernel with a background process of its
// own: the zygote notices and ends, with every kernel process; a restarted
// gateway on the same state directory (and instance) reaps what is left on
// disk and in the engine, and serves; once it stops, nothing of either run
// is left: no process, kernel directory, cgroup or container.
func TestOneShotGatewayKill(t *testing.T) {
	if os.Geteuid() != 0 {
		// One-shot kernels are forked by a zygote, which sandboxes as root.
		if os.Getenv("CI") == "true" {
			t.Fatal("one-shot kernels need root, which CI has")
		}
		t.Skip("one-shot kernels need root")
	}
	forEachExecutor(t, oneShotGatewayKill)
}

// kernelThings lists what a gateway's kernels own outside its process, for
// the gateway with pid gw: processes naming state in their command line
// (the zygote, its kernels; local), kernel directories, cgroups and
// containers (Docker) of the instance. Each is a string that names it.
func kernelThings(t *testing.T, executor, state, instance string, gw int) []string {
	var things []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(state+"/")) {
			things = append(things, "process "+filepath.Base(filepath.Dir(p))+" "+string(bytes.ReplaceAll(bytes.TrimRight(b, "\x00"), []byte{0}, []byte{' '})))
		}
	}
	dirs := func(dir, what string) {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() {
				things = append(things, what+" "+filepath.Join(dir, e.Name()))
			}
		}
	}
	switch executor {
	case "local":
		dirs(filepath.Join(state, "k"), "directory")
		// The kernels' cgroups are in codegw-<gateway pid> under the
		// gateway's own (kernel/local/cgroup.go).
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", gw))
		for _, line := range strings.Split(string(b), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && (parts[1] == "pids" || parts[1] == "memory") {
				parent := filepath.Join("/sys/fs/cgroup", parts[1], parts[2], fmt.Sprintf("codegw-%d", gw))
				if _, err := os.Stat(parent); err == nil {
					things = append(things, "cgroup "+parent)
				}
				dirs(parent, "cgroup")
			}
		}
	case "docker":
		// The fork directory and the kernels' cgroup parents are named
		// after the instance (kernel/docker/docker.go).
		sum := sha256.Sum256([]byte(instance))
		hash := hex.EncodeToString(sum[:4])
		dirs(filepath.Join(state, "z-"+hash), "directory")
		for _, ctl := range []string{"pids", "memory"} {
			dirs(filepath.Join("/sys/fs/cgroup", ctl, "codegw-docker-"+hash), "cgroup")
		}
		out, err := exec.Command("docker", "ps", "-a", "--no-trunc", "--filter", "label=codegw.instance="+instance, "--format", "{{.ID}}").Output()
		if err != nil {
			t.Fatalf("docker ps: %v", err)
		}
		for _, id := range strings.Fields(string(out)) {
			things = append(things, "container "+id)
		}
	}
	return things
}

// exists reports whether a thing of kernelThings is still there (a process:
// the same pid with the same command line).
func exists(thing string) bool {
	kind, rest, _ := strings.Cut(thing, " ")
	switch kind {
	case "process":
		pid, cmdline, _ := strings.Cut(rest, " ")
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil {
			return false
		}
		st, _ := os.ReadFile("/proc/" + pid + "/stat")
		if i := bytes.LastIndexByte(st, ')'); i > 0 && bytes.HasPrefix(bytes.TrimSpace(st[i+1:]), []byte("Z")) {
			return false // a zombie: dead, not yet reaped by its parent
		}
		return string(bytes.ReplaceAll(bytes.TrimRight(b, "\x00"), []byte{0}, []byte{' '})) == cmdline
	case "container":
		return exec.Command("docker", "inspect", rest).Run() == nil
	}
	_, err := os.Stat(rest)
	return err == nil
}

// within waits, for up to d, until none of things exists, and returns those
// that still do.
func within(d time.Duration, things []string) []string {
	var left []string
	testwait.Within(d, func() bool {
		left = slices.DeleteFunc(slices.Clone(things), func(s string) bool { return !exists(s) })
		return len(left) == 0
	})
	return left
}

func oneShotGatewayKill(t *testing.T, executor string) {
	bin := buildBinary(t)
	state, err := os.MkdirTemp("", "cgk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	dir := t.TempDir()
	instance := fmt.Sprintf("oskill-%s-%d", executor, os.Getpid())
	env := []string{"STATE_DIR=" + state, "POOL_SIZE=1", "EXECUTOR=" + executor, "EXECUTOR_INSTANCE_ID=" + instance,
		"STATELESS_KERNEL=oneshot", "DRAIN_TIMEOUT=5",
		"IMAGE_STORE_PATH=" + filepath.Join(dir, "img"), "FILE_STORE_PATH=" + filepath.Join(dir, "files"),
		"SNAPSHOT_DIR=" + filepath.Join(dir, "snapshots")}
	s1 := startServer(t, bin, dir, env...)
	var caps struct {
		StatelessKernel string `json:"stateless_kernel"`
	}
	if resp, err := http.Get(s1.base + "/capabilities"); err != nil {
		t.Fatal(err)
	} else {
		json.NewDecoder(resp.Body).Decode(&caps)
		resp.Body.Close()
	}
	if caps.StatelessKernel != "oneshot" {
		t.Fatalf("stateless_kernel %q, want oneshot\n%s", caps.StatelessKernel, s1.logs)
	}

	// A call that starts a background process and runs until the kill.
	mark := strconv.Itoa(100000 + (os.Getpid()*7+len(executor))%800000)
	code := fmt.Sprintf("import subprocess, time\\nsubprocess.Popen(['sleep', '%s'])\\nprint('started', flush=True)\\ntime.sleep(600)", mark)
	req, _ := http.NewRequest("POST", s1.base+"/api/v1/execute", strings.NewReader(`{"code": "`+code+`", "timeout": 300}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for started := false; !started; {
		if !sc.Scan() {
			t.Fatalf("the call ended before it started: %v\n%s", sc.Err(), s1.logs)
		}
		var ev struct{ Type, Name, Text string }
		json.Unmarshal(sc.Bytes(), &ev)
		started = ev.Type == "stream" && strings.Contains(ev.Text, "started")
	}
	sleeper := func() []string {
		var s []string
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, _ := os.ReadFile(p); string(b) == "sleep\x00"+mark+"\x00" {
				s = append(s, "process "+filepath.Base(filepath.Dir(p))+" sleep "+mark)
			}
		}
		return s
	}
	before := append(kernelThings(t, executor, state, instance, s1.cmd.Process.Pid), sleeper()...)
	t.Logf("before the kill: %s", strings.Join(before, "\n"))
	kinds := map[string]bool{}
	for _, s := range before {
		kind, _, _ := strings.Cut(s, " ")
		kinds[kind] = true
	}
	want := []string{"process", "directory", "cgroup"}
	if executor == "docker" {
		want = append(want, "container")
	}
	for _, k := range want {
		if !kinds[k] {
			t.Errorf("no %s of the running kernels found: the checks below would see nothing", k)
		}
	}
	if len(sleeper()) != 1 {
		t.Fatalf("the call's background process: %q", sleeper())
	}

	if err := s1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-s1.done
	if sc.Scan() && strings.Contains(sc.Text(), `"type":"response"`) {
		t.Errorf("a killed gateway answered: %s", sc.Text())
	}
	// The zygote notices its gateway's death and ends with its kernels.
	var procs []string
	for _, s := range before {
		if strings.HasPrefix(s, "process ") || (executor == "docker" && strings.HasPrefix(s, "container ")) {
			procs = append(procs, s)
		}
	}
	killed := time.Now()
	if left := within(60*time.Second, procs); len(left) > 0 {
		t.Errorf("alive 60 s after the gateway's SIGKILL:\n%s", strings.Join(left, "\n"))
	} else {
		t.Logf("every process (and container) ended %v after the kill", time.Since(killed).Round(time.Millisecond))
	}
	t.Logf("left until a gateway restarts: %q", within(0, before))

	// A restarted gateway reaps the rest and serves.
	s2 := startServer(t, bin, dir, env...)
	if left := within(30*time.Second, before); len(left) > 0 {
		t.Errorf("left after a restart:\n%s", strings.Join(left, "\n"))
	}
	var res struct{ Status, Stdout string }
	if st := s2.post(t, "/api/v1/execute", `{"code": "print(6 * 7)"}`, &res); st != 200 || res.Status != "ok" || res.Stdout != "42\n" {
		t.Errorf("after the restart: %d %+v\n%s", st, res, s2.logs)
	}
	after := kernelThings(t, executor, state, instance, s2.cmd.Process.Pid)
	s2.stop(t)
	if left := within(30*time.Second, append(after, kernelThings(t, executor, state, instance, s2.cmd.Process.Pid)...)); len(left) > 0 {
		t.Errorf("left after the restarted gateway stopped:\n%s", strings.Join(left, "\n"))
	}
}
