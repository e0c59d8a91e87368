package main

import (
	"context"
	"fmt"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"time"

	"github.com/codegw/codegw/kernel"
)

// PoolResult is the warm pool's Acquire latency.
type PoolResult struct {
	Size    int            `json:"size"`
	Acquire benchkit.Stats `json:"acquire"` // ms
	// FirstExec is the first execution on each acquired kernel, which pays
	// for whatever IPython does lazily on its first cell.
	FirstExec benchkit.Stats `json:"first_exec"` // ms
	TargetMs  float64        `json:"acquire_p50_target_ms"`
}

const acquireTargetMs = 1.0

// pool fills a pool of two kernels and times Acquire while it is full: each
// sample waits for the pool to be full again, acquires, runs one execution
// and closes the kernel.
func (b *bench) pool(ctx context.Context) (*PoolResult, error) {
	const size = 2
	p := kernel.NewPool(kernel.PoolConfig{
		Size:   size,
		Launch: func(ctx context.Context) (*kernel.Kernel, error) { return b.launch(ctx, b.prov) },
		Logger: b.log,
	})
	defer p.Close(context.Background())
	var acq, first []time.Duration
	for range b.cfg.PoolSamples {
		if err := waitFull(ctx, p, size); err != nil {
			return nil, err
		}
		t0 := time.Now()
		k, err := p.Acquire(ctx)
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		acq = append(acq, d)
		t0 = time.Now()
		_, err = k.Execute(ctx, b.cfg.Code, kernel.ExecuteOptions{StoreHistory: true}, kernel.Deadline{Timeout: 30 * time.Second})
		first = append(first, time.Since(t0))
		k.Close(ctx)
		if err != nil {
			return nil, err
		}
	}
	return &PoolResult{Size: size, Acquire: benchkit.Summarize(acq), FirstExec: benchkit.Summarize(first), TargetMs: acquireTargetMs}, nil
}

// waitFull polls until the pool holds size ready kernels.
func waitFull(ctx context.Context, p *kernel.Pool, size int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s := p.Stats()
		if s.Ready >= size {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool not full after 2m: %+v", s)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// StartResult is the cost of starting one kernel to ready.
type StartResult struct {
	Preload string         `json:"preload"` // "default" or "none"
	Ready   benchkit.Stats `json:"ready"`   // ms from Provisioner.Start to ready
	// CPUToReady is the CPU seconds of the kernel's process tree (bwrap
	// included) from start until ready, read from /proc just after ready.
	// getrusage(RUSAGE_CHILDREN) cannot measure it under bwrap: the outer
	// bwrap exits on its child's exit status without reaping the sandbox's
	// init, so that tree's CPU is never accounted to us.
	CPUToReady benchkit.Stats `json:"cpu_to_ready_s"`
}

// starts starts one untimed kernel, then cfg.Starts timed ones, one at a
// time, each closed before the next: the cost of a cold start with nothing
// else running.
func (b *bench) starts(ctx context.Context, prov kernel.Provisioner, preload string) (*StartResult, error) {
	var ready []time.Duration
	var cpuReady []float64
	for i := 0; i <= b.cfg.Starts; i++ {
		t0 := time.Now()
		k, err := b.launch(ctx, prov)
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		cpu := benchkit.TreeCPU()
		if err := k.Close(ctx); err != nil {
			return nil, err
		}
		if i == 0 {
			continue // page cache and font cache warm-up
		}
		ready = append(ready, d)
		cpuReady = append(cpuReady, cpu)
	}
	return &StartResult{Preload: preload, Ready: benchkit.Summarize(ready),
		CPUToReady: benchkit.SummarizeFloat(cpuReady)}, nil
}
