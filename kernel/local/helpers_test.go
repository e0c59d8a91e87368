package local

import "github.com/codegw/codegw/kernel/internal/forked"

// Process is the old name of instance, for oneshot_test.go.
type Process = instance

// forkedRun is a forked kernel's current process.
func forkedRun(k *instance) *forked.Run { return k.core.(*forked.Kernel).Current() }

// spawnedRun is a spawned kernel's current process.
func spawnedRun(k *instance) *run { return k.core.(*spawned).current() }

// pgidOf is the process group of a kernel's current process: a forked
// kernel's pid leads its own.
func pgidOf(k *instance) int {
	if s, ok := k.core.(*spawned); ok {
		return s.current().pgid
	}
	return forkedRun(k).PID()
}
