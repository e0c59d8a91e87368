package local

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/kerneltest"
)

// TestConformance runs the provisioner conformance suite (kernel/kerneltest)
// on local kernels, forked and spawned, in each sandbox mode.
func TestConformance(t *testing.T) {
	cg := false
	if parents, err := detectCgroups(); err == nil {
		parents.Remove()
		cg = true
	}
	for _, start := range []string{StartFork, StartSpawn} {
		for _, mode := range sandboxes(t) {
			t.Run(start+"/"+mode, func(t *testing.T) {
				fork := start == StartFork
				if fork && !cg && os.Getenv("CI") == "true" {
					t.Fatal("no cgroups under CI")
				}
				target := kerneltest.Target{
					New: func(t *testing.T, lim kerneltest.Limits) kernel.Provisioner {
						return newProvisioner(t, Config{Sandbox: mode, Start: start, Preload: []string{},
							Memory: lim.Memory, PidsLimit: int(lim.Pids)})
					},
					// Spawned kernels have no limits; forked ones without
					// cgroups have rlimits, which neither kill at the
					// memory limit nor say a fork was refused.
					OOM: fork && cg, Pids: fork && cg,
					PidsHits: func(proc kernel.Process) int64 {
						if r := forkedRun(proc.(*instance)); r.Cgroup() != nil {
							return r.Cgroup().PidsHits()
						}
						return 0
					},
					AbortSignal:  "aborted",
					PIDNamespace: mode == SandboxBwrap,
					OneShot:      fork,
					Processes: func(t *testing.T, proc kernel.Process) func() int {
						k := proc.(*instance)
						pgid := pgidOf(k)
						if !fork {
							return func() int { return groupMembers(t, pgid) }
						}
						r := forkedRun(k)
						return func() int {
							n := groupMembers(t, pgid)
							if r.Cgroup() != nil {
								n = max(n, r.Cgroup().Procs())
							} else if alive(r) {
								n = max(n, 1)
							}
							return n
						}
					},
					Leftovers: func(t *testing.T, proc kernel.Process) []string {
						var left []string
						if n := sleepers(t); n > 0 {
							left = append(left, fmt.Sprintf("%d 'sleep' children", n))
						}
						if _, err := os.Stat(proc.(*instance).files.kdir); !errors.Is(err, os.ErrNotExist) {
							left = append(left, fmt.Sprintf("the kernel's directory (%v)", err))
						}
						return left
					},
				}
				if fork && mode == SandboxBwrap {
					// A forked kernel is pid 1 of its namespace, which
					// ignores its own SIGABRT; glibc's abort then faults.
					target.AbortSignal = "segmentation fault"
				}
				kerneltest.Run(t, target)
			})
		}
	}
}
