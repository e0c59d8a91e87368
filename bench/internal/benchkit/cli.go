package benchkit

import (
	"fmt"
	"log/slog"
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
