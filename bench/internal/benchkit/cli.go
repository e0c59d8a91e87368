package benchkit

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
)

// LogLevel is the level of the bench commands' logs: warnings only, or the
// provisioners' and gateway's info lines with -v.
func LogLevel(verbose bool) slog.Level {
	if verbose {
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// ParsePhases reads a -phases list ("rt,pool") into a set, refusing names
// not in known.
func ParsePhases(spec string, known ...string) (map[string]bool, error) {
	phases := map[string]bool{}
	for _, p := range strings.Split(spec, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		ok := false
		for _, k := range known {
			ok = ok || p == k
		}
		if !ok {
			return nil, fmt.Errorf("unknown phase %q (want %s)", p, strings.Join(known, ", "))
		}
		phases[p] = true
	}
	return phases, nil
}

// Main runs a bench command: run gets a context that Ctrl-C cancels and
// stdout; an error is printed as "name: error" and exits with status 1.
func Main(name string, run func(ctx context.Context, out io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Progress returns a printer of progress lines on stderr, prefixed with
// the command's name.
func Progress(name string) func(format string, args ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, name+": "+format+"\n", args...)
	}
}

// Host describes where the figures were taken. Fields a command does not
// measure stay empty and are left out of its JSON.
type Host struct {
	CPUs       int     `json:"cpus"`
	GoVersion  string  `json:"go_version"`
	GOMAXPROCS int     `json:"gomaxprocs,omitempty"`
	LoadStart  string  `json:"loadavg_at_start"`
	LoadEnd    string  `json:"loadavg_at_end,omitempty"`
	MemGiB     float64 `json:"mem_gib,omitempty"`
	Python     string  `json:"python,omitempty"`
	Versions   string  `json:"versions,omitempty"` // python, ipykernel, jupyter_client, pyzmq, libzmq
	Docker     string  `json:"docker,omitempty"`
	Sandbox    string  `json:"sandbox,omitempty"`   // what the kernels really ran in
	Transport  string  `json:"transport,omitempty"` // of the round-trip kernel
}

// NewHost describes this machine now; python, when set, is the kernels'
// interpreter, whose versions are recorded.
func NewHost(python string) Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		LoadStart: LoadAvg(), MemGiB: memGiB(), Python: python}
	if python != "" {
		h.Versions = PythonVersions(python)
	}
	return h
}

// Report ends a run: it records the load at the end in host and prints res
// as indented JSON, or as the command's table.
func Report(out io.Writer, asJSON bool, host *Host, res any, table func(io.Writer)) error {
	host.LoadEnd = LoadAvg()
	if asJSON {
		return PrintJSON(out, res)
	}
	table(out)
	return nil
}
