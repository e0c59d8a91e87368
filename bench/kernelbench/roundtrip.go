package main

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"github.com/codegw/codegw/bench/internal/benchkit"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/codegw/codegw/kernel"
)

//go:embed jupyter_client_rt.py
var pythonClient []byte

// RoundTripResult compares the warm round trip of the two clients.
type RoundTripResult struct {
	Transport string  `json:"transport"`
	Go        Series  `json:"go"`         // kernel.Kernel.Execute
	Python    Series  `json:"python"`     // jupyter_client.BlockingKernelClient
	P50Ratio  float64 `json:"p50_ratio"`  // Go p50 / Python p50
	Target    float64 `json:"p50_target"` // the ratio must not exceed it
	// RoundP50 are the p50s of each round, to show drift and noise.
	GoRoundP50     []float64 `json:"go_round_p50_ms"`
	PythonRoundP50 []float64 `json:"python_round_p50_ms"`
}

// Series is the latency distribution of one client, in milliseconds, and the
// client process's CPU time per execution.
type Series struct {
	benchkit.Stats
	CPUPerExecMs float64 `json:"client_cpu_per_exec_ms"`
	// SyscallsPerExec is the client process's read and write system calls
	// per execution (/proc/self/io): a proxy for its per-frame I/O cost.
	SyscallsPerExec float64 `json:"client_syscalls_per_exec"`
}

// sample is what one round of one client measured.
type sample struct {
	lat      []time.Duration
	cpu      float64 // seconds
	syscalls int64
}

func (s *sample) add(o sample) {
	s.lat = append(s.lat, o.lat...)
	s.cpu += o.cpu
	s.syscalls += o.syscalls
}

func (s sample) series() Series {
	n := float64(len(s.lat))
	return Series{Stats: benchkit.Summarize(s.lat), CPUPerExecMs: s.cpu * 1e3 / n, SyscallsPerExec: float64(s.syscalls) / n}
}

const ratioTarget = 1.05

// attach is a Provisioner that hands back a process already running, so that
// kernel.Launch connects a new Client (and Kernel) to it. Each Go round uses
// a fresh one and disconnects it afterwards, as the Python side does, so only
// one client is connected while either side measures.
type attach struct{ proc kernel.Process }

func (a attach) Start(context.Context, kernel.Spec) (kernel.Process, error) { return a.proc, nil }
func (a attach) Close() error                                               { return nil }

// roundTrip starts one kernel and times cfg.N executions of cfg.Code from
// each client, in interleaved rounds ordered Go, Python, Python, Go, ... so
// that drift in the machine's load hits both sides alike.
func (b *bench) roundTrip(ctx context.Context) (*RoundTripResult, error) {
	cfg := b.cfg
	// Rounds connect their own clients: start the process alone.
	proc, err := b.prov.Start(ctx, kernel.Spec{ID: b.nextID()})
	if err != nil {
		return nil, err
	}
	defer proc.Close(context.Background())

	dir, err := os.MkdirTemp("", "kernelbench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	connFile := filepath.Join(dir, "kernel.json")
	if err := proc.ConnectionInfo().WriteFile(connFile); err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "jupyter_client_rt.py")
	if err := os.WriteFile(script, pythonClient, 0o644); err != nil {
		return nil, err
	}
	py, err := startPython(ctx, cfg.Python, script, connFile)
	if err != nil {
		return nil, err
	}
	defer py.close()

	res := &RoundTripResult{Transport: proc.ConnectionInfo().Transport, Target: ratioTarget}
	var goAll, pyAll sample
	for r := 0; r < cfg.Rounds; r++ {
		n := cfg.N / cfg.Rounds
		if r < cfg.N%cfg.Rounds {
			n++
		}
		goFirst := r%2 == 0
		for side := 0; side < 2; side++ {
			if (side == 0) == goFirst {
				s, err := b.goRound(ctx, proc, n)
				if err != nil {
					return nil, fmt.Errorf("go round %d: %w%s", r+1, err, kernelOutput(proc))
				}
				goAll.add(s)
				res.GoRoundP50 = append(res.GoRoundP50, benchkit.Summarize(s.lat).P50)
			} else {
				s, err := py.round(n, cfg.Warmup, cfg.Code)
				if err != nil {
					return nil, fmt.Errorf("python round %d: %w%s", r+1, err, kernelOutput(proc))
				}
				pyAll.add(s)
				res.PythonRoundP50 = append(res.PythonRoundP50, benchkit.Summarize(s.lat).P50)
			}
		}
	}
	res.Go, res.Python = goAll.series(), pyAll.series()
	res.P50Ratio = res.Go.P50 / res.Python.P50
	return res, nil
}

// goRound connects a new Kernel to proc, runs the warm-up, then times n
// executions through kernel.Kernel.Execute with the options and deadline
// the gateway uses, and disconnects. CPU and system calls are this process's
// over the timed part.
func (b *bench) goRound(ctx context.Context, proc kernel.Process, n int) (sample, error) {
	k, err := kernel.Launch(ctx, attach{proc}, kernel.Spec{ID: "rt"}, kernel.LaunchOptions{Logger: b.log})
	if err != nil {
		return sample{}, err
	}
	defer k.Client().Close() // not k.Close: that would end the process
	opts := kernel.ExecuteOptions{StoreHistory: true}
	dl := kernel.Deadline{Timeout: 30 * time.Second}
	exec := func() (time.Duration, error) {
		t0 := time.Now()
		reply, err := k.Execute(ctx, b.cfg.Code, opts, dl)
		d := time.Since(t0)
		if err != nil {
			return d, err
		}
		if reply.Status != "ok" {
			return d, fmt.Errorf("execute_reply status %q: %s %s", reply.Status, reply.EName, reply.EValue)
		}
		return d, nil
	}
	for range b.cfg.Warmup {
		if _, err := exec(); err != nil {
			return sample{}, err
		}
	}
	lat := make([]time.Duration, 0, n)
	c0, s0 := benchkit.SelfCPU(), selfSyscalls()
	for range n {
		d, err := exec()
		if err != nil {
			return sample{}, err
		}
		lat = append(lat, d)
	}
	return sample{lat: lat, cpu: benchkit.SelfCPU() - c0, syscalls: selfSyscalls() - s0}, nil
}

// pythonProc is the running jupyter_client_rt.py.
type pythonProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startPython(ctx context.Context, python, script, connFile string) (*pythonProc, error) {
	cmd := exec.CommandContext(ctx, python, script, connFile)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", python, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	return &pythonProc{cmd: cmd, in: in, out: sc}, nil
}

// round asks the Python client for one round.
func (p *pythonProc) round(n, warmup int, code string) (sample, error) {
	cmd, _ := json.Marshal(map[string]any{"n": n, "warmup": warmup, "code": code})
	if _, err := p.in.Write(append(cmd, '\n')); err != nil {
		return sample{}, err
	}
	if !p.out.Scan() {
		if err := p.out.Err(); err != nil {
			return sample{}, err
		}
		return sample{}, fmt.Errorf("python client exited: %v", p.cmd.Wait())
	}
	var r struct {
		LatNs    []int64 `json:"lat_ns"`
		CPU      float64 `json:"cpu_s"`
		Syscalls int64   `json:"syscalls"`
	}
	if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
		return sample{}, fmt.Errorf("python client output: %w", err)
	}
	lat := make([]time.Duration, len(r.LatNs))
	for i, ns := range r.LatNs {
		lat[i] = time.Duration(ns)
	}
	return sample{lat: lat, cpu: r.CPU, syscalls: r.Syscalls}, nil
}

func (p *pythonProc) close() {
	p.in.Close()
	p.cmd.Wait()
}

// kernelOutput is the tail of a local kernel's output, for error messages.
func kernelOutput(proc kernel.Process) string {
	if lp, ok := proc.(interface{ Output() string }); ok && lp.Output() != "" {
		return "\nkernel output:\n" + lp.Output()
	}
	return ""
}
