package benchkit

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go runs on here).
const userHZ = 100

// rusageThread is RUSAGE_THREAD, which package syscall does not name.
const rusageThread = 1

func rusageCPU(who int) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// SelfCPU is this process's CPU seconds, all threads (getrusage RUSAGE_SELF).
func SelfCPU() float64 { return rusageCPU(syscall.RUSAGE_SELF) }

// threadCPU is the calling OS thread's CPU seconds.
func threadCPU() float64 { return rusageCPU(rusageThread) }

// procStat is what we read from one /proc/<pid>/stat.
type procStat struct {
	ppid  int
	own   int64 // utime + stime, ticks
	reap  int64 // cutime + cstime, ticks
	start int64 // starttime, ticks since boot: tells a reused pid apart
	rss   int64 // pages
	comm  string
}

func readStat(pid string) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	j := strings.IndexByte(s, '(')
	if i < 0 || j < 0 || j > i {
		return procStat{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return procStat{}, false
	}
	// f[0] is field 3 (state): ppid is field 4, utime..cstime 14..17,
	// starttime 22, rss 24.
	n := func(k int) int64 { v, _ := strconv.ParseInt(f[k-3], 10, 64); return v }
	return procStat{ppid: int(n(4)), own: n(14) + n(15), reap: n(16) + n(17), start: n(22), rss: n(24), comm: s[j+1 : i]}, true
}

func readProcs() map[int]procStat {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	procs := make(map[int]procStat, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(e.Name()); ok {
			procs[pid] = st
		}
	}
	return procs
}

// descendants returns the pids of procs whose parent chain reaches root.
// Processes in a sandbox's pid namespace are listed under their host pids,
// so a bwrap tree counts.
func descendants(procs map[int]procStat, root int) []int {
	var out []int
	for pid, st := range procs {
		for p, n := st.ppid, 0; p > 1 && n < 64; p, n = procs[p].ppid, n+1 {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// TreeCPU is the CPU seconds of every live descendant of this process, plus
// what their reaped children used (kernelbench's method: a snapshot, right
// after the kernel of interest became ready).
func TreeCPU() float64 {
	procs := readProcs()
	var ticks int64
	for _, pid := range descendants(procs, os.Getpid()) {
		ticks += procs[pid].own + procs[pid].reap
	}
	return float64(ticks) / userHZ
}

// TreeMem is the memory of every live descendant of this process except
// the subtrees of the pids in skip: the summed resident sets (shared pages
// counted once per process) and proportional set sizes (shared pages split
// between their users; /proc/<pid>/smaps_rollup), in bytes.
func TreeMem(skip ...int) (rss, pss int64, procs int) {
	all := readProcs()
	d := descendants(all, os.Getpid())
	skipped := map[int]bool{}
	for _, s := range skip {
		skipped[s] = true
		for _, pid := range descendants(all, s) {
			skipped[pid] = true
		}
	}
	for _, pid := range d {
		if skipped[pid] {
			continue
		}
		procs++
		rss += all[pid].rss * int64(os.Getpagesize())
		pss += pidPss(pid)
	}
	return rss, pss, procs
}

func pidPss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// SelfRSS is this process's resident set in bytes (/proc/self/statm).
func SelfRSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// CPUOfComm is the summed own CPU seconds (utime+stime) of live processes
// whose command name starts with one of prefixes, e.g. "dockerd".
func CPUOfComm(prefixes ...string) float64 {
	var ticks int64
	for _, st := range readProcs() {
		for _, p := range prefixes {
			if strings.HasPrefix(st.comm, p) {
				ticks += st.own
				break
			}
		}
	}
	return float64(ticks) / userHZ
}

// TreeSampler follows the CPU time of this process's descendants over a
// window in which kernels start and die: a snapshot cannot see the CPU of a
// process that is gone, and getrusage(RUSAGE_CHILDREN) cannot see a bwrap
// sandbox's (the outer bwrap never reaps the sandbox's init). It samples
// every descendant's own utime+stime (never cutime, which would count a
// reaped child twice) every interval and keeps the last value per process.
// What a process used in its last interval before it died is missed; the
// kernels here are idle then (killed right after their execution).
//
// The sampler runs on its own locked OS thread so that its own CPU (reading
// /proc) is measured with RUSAGE_THREAD and can be taken off the gateway's.
type TreeSampler struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	base    map[[2]int64]int64 // (pid, starttime) -> ticks at Start
	last    map[[2]int64]int64 // (pid, starttime) -> last ticks seen
	ownCPU  float64
	samples int
}

// StartTreeSampler takes a first sample and starts sampling.
func StartTreeSampler(interval time.Duration) *TreeSampler {
	s := &TreeSampler{stop: make(chan struct{}), done: make(chan struct{}), base: map[[2]int64]int64{}, last: map[[2]int64]int64{}}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(s.done)
		t0 := threadCPU()
		s.sample(true)
		close(ready)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				s.sample(false)
				s.mu.Lock()
				s.ownCPU = threadCPU() - t0
				s.mu.Unlock()
				return
			case <-tick.C:
				s.sample(false)
			}
		}
	}()
	<-ready
	return s
}

func (s *TreeSampler) sample(first bool) {
	procs := readProcs()
	self := os.Getpid()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	for _, pid := range descendants(procs, self) {
		st := procs[pid]
		key := [2]int64{int64(pid), st.start}
		if first {
			s.base[key] = st.own
		}
		s.last[key] = st.own
	}
}

// Stop takes a last sample and returns the descendants' CPU seconds over
// the window and the sampler's own CPU seconds (already inside SelfCPU).
func (s *TreeSampler) Stop() (kernels, sampler float64, samples int) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	var ticks int64
	for k, v := range s.last {
		ticks += v - s.base[k]
	}
	return float64(ticks) / userHZ, s.ownCPU, s.samples
}

// LoadAvg is the first three fields of /proc/loadavg.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// memGiB is the machine's RAM.
func memGiB() float64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return float64(si.Totalram) * float64(si.Unit) / (1 << 30)
}

// PythonVersions reports the kernel side's versions.
func PythonVersions(python string) string {
	out, err := exec.Command(python, "-c",
		"import ipykernel, zmq, sys; "+
			"print('python %d.%d.%d' % sys.version_info[:3], 'ipykernel', ipykernel.__version__, "+
			"'pyzmq', zmq.__version__, 'libzmq', zmq.zmq_version())").Output()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

// MachineCPU is the CPU seconds every CPU of the machine spent busy since
// boot (/proc/stat: user, nice, system, irq, softirq; not idle, iowait or
// steal). Over a window on an otherwise quiet machine it is what a load
// costs all in, the kernel's own work for it included (forks, page faults,
// exits, namespaces), which a sample of live processes misses for those
// that live a few milliseconds.
func MachineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return float64(ticks) / userHZ
}
