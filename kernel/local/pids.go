package local

// PidsLimitHits returns how many forks the kernel's pids cgroup refused so
// far (0 for spawned kernels and without cgroups), as the Docker kernels'
// method does: a call whose code met the limit and carried on is answered
// pids_limit, on either executor.
func (k *instance) PidsLimitHits() int64 {
	if p, ok := k.core.(interface{ PidsLimitHits() int64 }); ok {
		return p.PidsLimitHits()
	}
	return 0
}
