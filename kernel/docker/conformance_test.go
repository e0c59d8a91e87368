package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/kernel/kerneltest"
)

// TestConformance runs the provisioner conformance suite (kernel/kerneltest)
// on Docker kernels: a container each (spawn) and forked by a zygote
// container (fork).
func TestConformance(t *testing.T) {
	t.Parallel()
	for _, start := range []string{StartSpawn, StartFork} {
		t.Run(start, func(t *testing.T) {
			t.Parallel()
			fork := start == StartFork
			newP := func(t *testing.T, lim kerneltest.Limits) *Provisioner {
				cfg := testConfig(t)
				cfg.Start = start
				if lim.Memory > 0 {
					cfg.Memory = lim.Memory
				}
				if lim.Pids > 0 {
					cfg.PidsLimit = lim.Pids
				}
				if fork {
					return newForkProvisioner(t, cfg)
				}
				return newTestProvisioner(t, cfg)
			}
			// A container's limits are its cgroups'; forked kernels have
			// cgroups where the gateway can make them, else rlimits, which
			// neither kill at the memory limit nor say a fork was refused.
			limited := true
			if fork {
				limited = newP(t, kerneltest.Limits{}).cg != nil
				if !limited && os.Getenv("CI") == "true" {
					t.Fatal("no cgroups under CI")
				}
			}
			target := kerneltest.Target{
				New:          func(t *testing.T, lim kerneltest.Limits) kernel.Provisioner { return newP(t, lim) },
				OOM:          limited,
				Pids:         limited,
				FreshTmp:     true,
				PIDNamespace: true,
				OneShot:      fork,
				Leftovers: func(t *testing.T, proc kernel.Process) []string {
					var left []string
					if fk, ok := proc.(*forkedKernel); ok {
						if _, err := os.Stat(fk.files.dir); !errors.Is(err, os.ErrNotExist) {
							left = append(left, fmt.Sprintf("the kernel's directory (%v)", err))
						}
						// Its cgroups are removed, or kept empty for the
						// next kernel (cgroupv1.Group.Release).
						if g := fk.Current().Cgroup(); g != nil && !g.Empty() {
							left = append(left, fmt.Sprintf("processes in cgroup %s", g.Pids))
						}
						return left
					}
					c := proc.(*process)
					if _, err := engine(t).ContainerInspect(context.Background(), c.name); !cerrdefs.IsNotFound(err) {
						left = append(left, fmt.Sprintf("container %s (inspect: %v)", c.name, err))
					}
					if entries, _ := os.ReadDir(c.p.cfg.StateDir); len(entries) != 0 {
						left = append(left, fmt.Sprintf("the state directory's %v", entries))
					}
					return left
				},
			}
			if fork && limited {
				target.Processes = func(t *testing.T, proc kernel.Process) func() int {
					r := proc.(*forkedKernel).Current()
					return func() int { return r.Cgroup().Procs() }
				}
			}
			kerneltest.Run(t, target)
		})
	}
}
