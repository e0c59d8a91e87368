package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go runs on here).
const userHZ = 100

func rusageCPU(who int) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// selfCPU is this process's CPU seconds, all threads.
func selfCPU() float64 { return rusageCPU(syscall.RUSAGE_SELF) }

// treeCPU is the CPU seconds of every live descendant of this process, plus
// what their reaped children used, read from /proc. Processes in a sandbox's
// pid namespace are listed under their host pids, so bwrap's tree counts.
func treeCPU() float64 {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	type stat struct {
		ppid  int
		ticks int64
	}
	procs := map[int]stat{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses: fields start
		// after the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 15 {
			continue
		}
		// f[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
		ppid, _ := strconv.Atoi(f[1])
		var ticks int64
		for _, j := range []int{11, 12, 13, 14} {
			t, _ := strconv.ParseInt(f[j], 10, 64)
			ticks += t
		}
		procs[pid] = stat{ppid: ppid, ticks: ticks}
	}
	self := os.Getpid()
	var ticks int64
	for _, st := range procs {
		for p, n := st.ppid, 0; p > 1 && n < 64; p, n = procs[p].ppid, n+1 {
			if p == self {
				ticks += st.ticks
				break
			}
		}
	}
	return float64(ticks) / userHZ
}

func loadAvg() string {
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

func memGiB() float64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return float64(si.Totalram) * float64(si.Unit) / (1 << 30)
}

// pythonVersions reports the versions of the Python side of the comparison.
func pythonVersions(python string) string {
	out, err := exec.Command(python, "-c",
		"import ipykernel, jupyter_client, zmq, sys; "+
			"print('python %d.%d.%d' % sys.version_info[:3], 'ipykernel', ipykernel.__version__, "+
			"'jupyter_client', jupyter_client.__version__, 'pyzmq', zmq.__version__, 'libzmq', zmq.zmq_version())").Output()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

// selfSyscalls is the number of read and write system calls this process has
// made (syscr + syscw in /proc/self/io), all threads.
func selfSyscalls() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "syscr" || k == "syscw") {
			x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			n += x
		}
	}
	return n
}
