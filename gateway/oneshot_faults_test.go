package gateway_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/testcheck"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/docker"
	"github.com/codegw/codegw/kernel/local"
	"github.com/codegw/codegw/session"
)

// Stateless calls on one-shot kernels (STATELESS_KERNEL=oneshot, the
// default) under abuse, on the executor of the pass (local, or Docker with
// CODEGW_TEST_EXECUTOR=docker): 300 figures, a 200 MB print, a fork bomb and
// a memory bomb beside a running sibling, and the zygote killed mid-call.

// requireOneShots skips (under CI, fails) unless prov makes one-shot kernels
// and the pass uses them.
func requireOneShots(t *testing.T, prov kernel.Provisioner) {
	t.Helper()
	if k := os.Getenv("CODEGW_TEST_STATELESS_KERNEL"); k != "" && k != "oneshot" {
		t.Skipf("stateless calls run on full kernels in this pass (STATELESS_KERNEL=%s)", k)
	}
	if o, ok := prov.(oneShotMaker); !ok || !o.MakesOneShots() {
		if os.Getenv("CI") == "true" && os.Getenv("CODEGW_TEST_KERNEL_START") != "spawn" {
			t.Fatal("the provisioner makes no one-shot kernels under CI")
		}
		t.Skip("the provisioner makes no one-shot kernels (spawned kernels)")
	}
}

// TestOneShotFigures: 300 figures in one call come back as the first
// MAX_IMAGES images (each a PNG behind its URL) and a text line for each of
// the others, the answer marked truncated and small; the next call works.
func TestOneShotFigures(t *testing.T) {
	prov := currentProvisioner(t)
	requireOneShots(t, prov)
	e := newEnv(t, envOptions{poolSize: 1, timeout: 5 * time.Minute})
	maxImages := session.DefaultConfig().MaxImages
	code := "import matplotlib.pyplot as plt\nfor i in range(300):\n    plt.figure(figsize=(1, 1), dpi=50)\n    plt.plot([0, i])\nprint('drew', len(plt.get_fignums()))"
	start := time.Now()
	var raw json.RawMessage
	if st := e.do("POST", "/api/v1/execute", map[string]any{"code": code, "timeout": 300}, &raw); st != 200 {
		t.Fatalf("status %d", st)
	}
	var res codegw.ExecuteResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	t.Logf("300 figures: %v, answer %d bytes, %d images, %d outputs", time.Since(start).Round(time.Millisecond), len(raw), len(res.Images), len(res.Outputs))
	if res.Status != codegw.StatusOK || res.Stdout != "drew 300\n" {
		t.Fatalf("status %s error %s stdout %q", res.Status, strOr(res.Error), res.Stdout)
	}
	if len(res.Images) != maxImages || !res.Truncated {
		t.Errorf("%d images, truncated %v: want the first %d and truncated", len(res.Images), res.Truncated, maxImages)
	}
	if len(res.Outputs) != 300 {
		t.Errorf("%d outputs, want one per figure", len(res.Outputs))
	}
	pngs := 0
	for i, o := range res.Outputs {
		switch {
		case o.MIME == "image/png" && o.URL != "":
			pngs++
		case o.MIME == "text/plain" && strings.HasPrefix(o.Text, "<Figure size"):
		default:
			t.Errorf("output %d: %s %q", i, o.MIME, truncate(o.Text, 60))
		}
	}
	if pngs != maxImages {
		t.Errorf("%d image outputs, want %d", pngs, maxImages)
	}
	seen := map[string]bool{}
	for i, u := range res.Images {
		if seen[u] {
			t.Errorf("image %d: URL %s twice", i, u)
		}
		seen[u] = true
		if st, _, b := e.get(u); st != 200 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("image %d: status %d, %d bytes, not a PNG", i, st, len(b))
		}
	}
	// The answer holds URLs, not images.
	if len(raw) > 256<<10 {
		t.Errorf("the answer is %d bytes", len(raw))
	}
	if next := e.exec(map[string]any{"code": "import matplotlib.pyplot as plt\nprint(len(plt.get_fignums()))"}); next.Status != codegw.StatusOK || next.Stdout != "0\n" {
		t.Errorf("next call: %s %q %s", next.Status, next.Stdout, strOr(next.Error))
	}
}

// TestOneShotPrintFlood: one print of 200 MB is cut at MAX_OUTPUT_BYTES by
// the kernel; the gateway's heap does not grow with it, and the next call
// works.
func TestOneShotPrintFlood(t *testing.T) {
	prov := currentProvisioner(t)
	requireOneShots(t, prov)
	const limit = 64 << 10
	e := newEnv(t, envOptions{poolSize: 1, maxOutput: limit, timeout: 3 * time.Minute})
	if r := e.exec(map[string]any{"code": "print('warm')"}); r.Result != "warm" {
		t.Fatalf("first call: %+v", r)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, rss0 := ms.HeapInuse, vmRSS(t)
	stopPeak := heapPeak()
	start := time.Now()
	res := e.exec(map[string]any{"code": "print('x' * (200 << 20))\nprint('done')", "timeout": 180})
	grew := int64(stopPeak()) - int64(base)
	t.Logf("200 MB print: %v; gateway heap in use grew by %d KiB at most, RSS by %d KiB", time.Since(start).Round(time.Millisecond), grew>>10, (vmRSS(t)-rss0)>>10)
	if res.Status != codegw.StatusOK || !res.Truncated || len(res.Stdout) != limit || strings.Trim(res.Stdout, "x") != "" {
		t.Fatalf("status %s %s truncated %v, %d bytes of stdout", res.Status, strOr(res.Error), res.Truncated, len(res.Stdout))
	}
	// What the gateway holds is the limit and what is in flight on the
	// kernel's socket, not the print: 32 MiB is the bound of the other
	// flood tests (TestJupyterSlowConsumerBounded), garbage included.
	if grew > 32<<20 {
		t.Errorf("gateway heap grew by %d MiB during a 200 MB print", grew>>20)
	}
	if next := e.exec(map[string]any{"code": "print('next')"}); next.Result != "next" || next.Truncated {
		t.Errorf("next call: %+v", next)
	}
}

// vmRSS is this process's resident set size in bytes.
func vmRSS(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

// faultProv is a provisioner of the pass's executor of its own, with
// small limits, that a test may abuse (kill its zygote): it tells what its
// kernels left behind.
type faultProv struct {
	prov kernel.Provisioner
	dir  string
	// leftovers describes what is left of kernels (processes, directories,
	// cgroups, containers) beyond the zygote's own.
	leftovers func() []string
	// killZygote kills the zygote with SIGKILL.
	killZygote func()
}

// newFaultProv starts a provisioner with a 256 MiB memory limit and 64
// processes per kernel.
func newFaultProv(t *testing.T) *faultProv {
	t.Helper()
	currentProvisioner(t) // skips, or fails under CI, without Docker
	dir := shortDir(t, "cgwo")
	if os.Getenv("CODEGW_TEST_EXECUTOR") == "docker" {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		image := os.Getenv("DOCKER_IMAGE")
		if image == "" {
			image = "codegw/executor:latest"
		}
		instance := "gwoneshot-" + filepath.Base(dir)
		p, err := docker.New(ctx, docker.Config{Image: image, InstanceID: instance, StateDir: dir, Memory: 256 << 20, PidsLimit: 64,
			Preload: []string{}, Start: os.Getenv("CODEGW_TEST_KERNEL_START")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		fp := &faultProv{prov: p, dir: dir}
		fp.killZygote = func() {
			if out, err := exec.Command("docker", "kill", p.ZygoteContainer()).CombinedOutput(); err != nil {
				t.Fatalf("docker kill: %v %s", err, out)
			}
		}
		fp.leftovers = func() []string {
			var left []string
			out, err := exec.Command("docker", "ps", "-a", "--no-trunc", "--filter", "label="+docker.LabelInstance+"="+instance,
				"--format", "{{.ID}} {{.Names}} {{.State}}").Output()
			if err != nil {
				t.Fatalf("docker ps: %v", err)
			}
			zyg := p.ZygoteContainer()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l != "" && (zyg == "" || !strings.HasPrefix(l, zyg) && !strings.Contains(l, " "+zyg+" ")) {
					left = append(left, "container "+l)
				}
			}
			// The fork directory z-<hash> and the kernels' cgroup parents
			// codegw-docker-<hash> are the provisioner's (see
			// kernel/docker/docker.go): the kernels' are inside.
			sum := sha256.Sum256([]byte(instance))
			hash := hex.EncodeToString(sum[:4])
			for _, d := range kernelDirs(t, dir) {
				if filepath.Base(d) != "z-"+hash {
					left = append(left, "directory "+d)
				}
			}
			left = append(left, subdirs(filepath.Join(dir, "z-"+hash), "directory ")...)
			for _, ctl := range []string{"pids", "memory"} {
				left = append(left, subdirs(filepath.Join("/sys/fs/cgroup", ctl, "codegw-docker-"+hash), "cgroup ")...)
			}
			return left
		}
		return fp
	}
	p, err := local.New(local.Config{StateDir: dir, Memory: 256 << 20, PidsLimit: 64, Preload: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	cgBefore := kernelCgroups(t)
	fp := &faultProv{prov: p, dir: dir}
	fp.killZygote = func() {
		pid := p.ZygotePID()
		if pid == 0 {
			t.Fatal("no zygote")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	fp.leftovers = func() []string {
		var left []string
		zpid := p.ZygotePID()
		// The zygote's and its children's command lines name the state
		// directory (the zygote's script is in it).
		for _, pr := range testcheck.Procs() {
			// The zygote's lifeline watcher is its child too.
			watcher := pr.PPID == zpid && strings.HasPrefix(pr.Cmdline, "/bin/sh -c (while read")
			if pr.PID != zpid && !watcher && strings.Contains(pr.Cmdline, dir+"/") {
				left = append(left, fmt.Sprintf("process %d (parent %d): %s", pr.PID, pr.PPID, pr.Cmdline))
			}
		}
		entries, _ := os.ReadDir(filepath.Join(dir, "k"))
		for _, e := range entries {
			left = append(left, "directory "+filepath.Join(dir, "k", e.Name()))
		}
		for cg := range kernelCgroups(t) {
			if !cgBefore[cg] {
				left = append(left, "cgroup "+cg)
			}
		}
		return left
	}
	return fp
}

// kernelDirs lists the kernel directories of a Docker provisioner's state
// directory (those with the instance file).
func kernelDirs(t *testing.T, dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "instance")); err == nil {
			left = append(left, filepath.Join(dir, e.Name()))
		}
	}
	return left
}

// subdirs lists the directories in dir, each after prefix.
func subdirs(dir, prefix string) []string {
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		if e.IsDir() {
			left = append(left, prefix+filepath.Join(dir, e.Name()))
		}
	}
	return left
}

// kernelCgroups lists the kernel cgroups of this process's local
// provisioners: those under codegw-<pid> in the pids and memory
// hierarchies (see kernel/local/cgroup.go).
func kernelCgroups(t *testing.T) map[string]bool {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || (parts[1] != "pids" && parts[1] != "memory") {
			continue
		}
		parent := filepath.Join("/sys/fs/cgroup", parts[1], parts[2], fmt.Sprintf("codegw-%d", os.Getpid()))
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.IsDir() {
				set[filepath.Join(parent, e.Name())] = true
			}
		}
	}
	return set
}

// marked counts live processes running `sleep <mark>`, a mark unique to
// this test binary so that other runs' sleeps do not count.
func marked(mark string) int {
	n := 0
	for _, pr := range testcheck.Procs() {
		if pr.Cmdline == "sleep "+mark {
			n++
		}
	}
	return n
}

// streamUntil starts body as a streamed stateless call and returns once
// its stdout contained want; the answer comes on the channel.
func (e *env) streamUntil(t *testing.T, body map[string]any, want string) <-chan codegw.ExecuteResult {
	t.Helper()
	seen := make(chan struct{})
	done := make(chan codegw.ExecuteResult, 1)
	go func() {
		var once sync.Once
		var out strings.Builder
		_, res := e.ndjsonEvents(t, "/api/v1/execute", body, func(ev codegw.Event) {
			if ev.Type == "stream" && ev.Name == "stdout" {
				out.WriteString(ev.Text)
				if strings.Contains(out.String(), want) {
					once.Do(func() { close(seen) })
				}
			}
		})
		once.Do(func() { close(seen) })
		done <- res
	}()
	select {
	case <-seen:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the call never printed %q", want)
	}
	return done
}

// TestOneShotBombs runs a fork bomb and a memory bomb, each in a one-shot
// call, while a sibling call runs: the bombs are answered pids_limit and
// oom, and the sibling finishes with its own correct output.
func TestOneShotBombs(t *testing.T) {
	fp := newFaultProv(t)
	requireOneShots(t, fp.prov)
	if m, ok := fp.prov.(interface{ LimitMode() string }); !ok || m.LimitMode() != "cgroup" {
		if os.Getenv("CI") == "true" {
			t.Fatal("kernels are not limited by cgroups under CI")
		}
		t.Skip("kernels are not limited by cgroups here")
	}
	e := newEnv(t, envOptions{prov: fp.prov, poolSize: 2, workers: 4, timeout: 3 * time.Minute})

	// The sibling works for some 20 s, longer than the bombs take.
	sibling := e.streamUntil(t, map[string]any{"code": "import time\nprint('started', flush=True)\nt = 0\nfor i in range(200):\n    t += sum(range(10000))\n    time.sleep(0.1)\nprint(t)", "timeout": 180}, "started")
	type answer struct {
		name string
		res  codegw.ExecuteResult
	}
	bombs := make(chan answer, 2)
	go func() {
		var r codegw.ExecuteResult
		code := "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(60); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('refused after', n, e)"
		if st, err := e.post("/api/v1/execute", map[string]any{"code": code}, &r); st != 200 || err != nil {
			t.Errorf("fork bomb: status %d %v", st, err)
		}
		bombs <- answer{"fork bomb", r}
	}()
	go func() {
		var r codegw.ExecuteResult
		code := "print('allocating', flush=True)\nx = bytearray(1 << 30)"
		if st, err := e.post("/api/v1/execute", map[string]any{"code": code}, &r); st != 200 || err != nil {
			t.Errorf("memory bomb: status %d %v", st, err)
		}
		bombs <- answer{"memory bomb", r}
	}()
	for range 2 {
		var a answer
		select {
		case a = <-bombs:
		case res := <-sibling:
			t.Fatalf("the sibling ended (%s %q) before the bombs did", res.Status, res.Stdout)
		}
		switch a.name {
		case "fork bomb":
			if a.res.Status != codegw.StatusPidsLimit || !strings.Contains(a.res.Stdout, "refused after") {
				t.Errorf("fork bomb: %s %s stdout %q", a.res.Status, strOr(a.res.Error), a.res.Stdout)
			}
		case "memory bomb":
			if a.res.Status != codegw.StatusOOM || a.res.Stdout != "allocating\n" {
				t.Errorf("memory bomb: %s %s stdout %q", a.res.Status, strOr(a.res.Error), a.res.Stdout)
			}
		}
		t.Logf("%s: %s: %s", a.name, a.res.Status, strOr(a.res.Error))
	}
	select {
	case res := <-sibling:
		if want := strconv.Itoa(200 * 9999 * 10000 / 2); res.Status != codegw.StatusOK || res.Stdout != "started\n"+want+"\n" {
			t.Errorf("sibling: %s %s stdout %q, want %s", res.Status, strOr(res.Error), res.Stdout, want)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the sibling did not finish")
	}
	if next := e.exec(map[string]any{"code": "print('next')"}); next.Result != "next" {
		t.Errorf("next call: %+v", next)
	}
	e.app.Close()
	fp.prov.Close() // which removes the empty cgroups it keeps for its next kernels
	if !testwait.Within(30*time.Second, func() bool { return len(fp.leftovers()) == 0 }) {
		t.Errorf("left after the bombs:\n%s", strings.Join(fp.leftovers(), "\n"))
	}
}

// TestOneShotZygoteKill kills the zygote with SIGKILL while a one-shot call
// runs (with a background process of its own): the call is answered died,
// the next call works on a new zygote, and no process, directory, cgroup
// or container of the killed kernels is left.
func TestOneShotZygoteKill(t *testing.T) {
	fp := newFaultProv(t)
	requireOneShots(t, fp.prov)
	e := newEnv(t, envOptions{prov: fp.prov, poolSize: 2, timeout: 3 * time.Minute})
	if r := e.exec(map[string]any{"code": "print('before')"}); r.Result != "before" {
		t.Fatalf("first call: %+v", r)
	}
	mark := strconv.Itoa(100000 + os.Getpid()%800000)
	code := fmt.Sprintf("import subprocess, time\nsubprocess.Popen(['sleep', '%s'])\nprint('started', flush=True)\ntime.sleep(600)", mark)
	call := e.streamUntil(t, map[string]any{"code": code, "timeout": 180}, "started")
	if marked(mark) != 1 {
		t.Fatalf("%d processes 'sleep %s'", marked(mark), mark)
	}
	// What the leftover check looks for exists while kernels run.
	running := fp.leftovers()
	t.Logf("while the call runs: %d kernel directories, cgroups and containers", len(running))
	if !slices.ContainsFunc(running, func(s string) bool { return strings.HasPrefix(s, "directory ") }) ||
		!slices.ContainsFunc(running, func(s string) bool { return strings.HasPrefix(s, "cgroup ") }) {
		t.Errorf("the leftover check sees no kernel directory or cgroup while kernels run")
	}
	killed := time.Now()
	fp.killZygote()
	select {
	case res := <-call:
		t.Logf("answered %v after the kill: %s: %s", time.Since(killed).Round(time.Millisecond), res.Status, strOr(res.Error))
		if res.Status != codegw.StatusDied || res.Error == nil || !strings.Contains(*res.Error, "died") {
			t.Errorf("the call during the kill: %s %s", res.Status, strOr(res.Error))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no answer after the zygote was killed")
	}
	if !testwait.Within(30*time.Second, func() bool { return marked(mark) == 0 }) {
		t.Errorf("the call's background process outlived the zygote")
	}
	// The next calls are served (by a new zygote): each of them, not only
	// one that happened to find a live kernel.
	for i := range 3 {
		if next := e.exec(map[string]any{"code": "print('next')"}); next.Result != "next" {
			t.Errorf("call %d after the kill: %s %s %q", i, next.Status, strOr(next.Error), next.Stdout)
		}
	}
	e.app.Close()
	fp.prov.Close() // which removes the empty cgroups it keeps for its next kernels
	if !testwait.Within(30*time.Second, func() bool { return len(fp.leftovers()) == 0 }) {
		t.Errorf("left after the zygote's death:\n%s", strings.Join(sorted(fp.leftovers()), "\n"))
	}
}

func sorted(s []string) []string { sort.Strings(s); return s }

// TestOneShotBackgroundProcess: a process a one-shot call started in the
// background ends with the call, and the next call does not see it.
func TestOneShotBackgroundProcess(t *testing.T) {
	prov := currentProvisioner(t)
	requireOneShots(t, prov)
	e := newEnv(t, envOptions{poolSize: 1})
	mark := strconv.Itoa(100000 + (os.Getpid()*13)%800000)
	res := e.exec(map[string]any{"code": fmt.Sprintf("import subprocess\np = subprocess.Popen(['sleep', '%s'])\nprint(p.poll())", mark)})
	if res.Status != codegw.StatusOK || res.Stdout != "None\n" {
		t.Fatalf("%s %s %q", res.Status, strOr(res.Error), res.Stdout)
	}
	if !testwait.Within(30*time.Second, func() bool { return marked(mark) == 0 }) {
		t.Errorf("'sleep %s' outlived its call", mark)
	}
	res = e.exec(map[string]any{"code": fmt.Sprintf(`import os
cmds = [open('/proc/%%s/cmdline' %% p, 'rb').read() for p in os.listdir('/proc') if p.isdigit()]
print(len(cmds), any(b'%s' in c for c in cmds))`, mark)})
	if res.Status != codegw.StatusOK || res.Stdout != "1 False\n" {
		t.Errorf("the next call sees: %s %s %q, want only itself", res.Status, strOr(res.Error), res.Stdout)
	}
}
