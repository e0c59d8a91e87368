package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

func printTable(out io.Writer, r *Results) {
	fmt.Fprintf(out, "kernelbench %s  %d CPUs, %s, sandbox %s, load %s\n%s\n\n",
		r.Date.Format("2006-01-02 15:04"), r.Host.CPUs, r.Host.GoVersion, r.Host.Sandbox, r.Host.LoadStart, r.Host.Versions)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	if rt := r.RoundTrip; rt != nil {
		fmt.Fprintf(out, "warm %q round trip (execute_reply + iopub idle), same kernel, %s, %d rounds interleaved:\n",
			r.Config["code"], rt.Transport, len(rt.GoRoundP50))
		fmt.Fprintln(tw, "client\tn\tp50 ms\tp90 ms\tp99 ms\tmax ms\tclient CPU/exec ms\tsyscalls/exec\t")
		for _, s := range []struct {
			name string
			s    Series
		}{{"kernel.Kernel.Execute", rt.Go}, {"jupyter_client", rt.Python}} {
			fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.0f\t\n", s.name, s.s.N, s.s.P50, s.s.P90, s.s.P99, s.s.Max, s.s.CPUPerExecMs, s.s.SyscallsPerExec)
		}
		tw.Flush()
		fmt.Fprintf(out, "round p50s ms: go %s | python %s\n", floats(rt.GoRoundP50), floats(rt.PythonRoundP50))
		fmt.Fprintf(out, "p50 ratio Go/Python: %.3f (target <= %.2f: %s)\n\n", rt.P50Ratio, rt.Target, verdict(rt.P50Ratio <= rt.Target))
	}
	if p := r.Pool; p != nil {
		fmt.Fprintf(out, "warm pool (size %d), %d acquires:\n", p.Size, p.Acquire.N)
		fmt.Fprintln(tw, "\tp50 ms\tp90 ms\tmax ms\t")
		fmt.Fprintf(tw, "Acquire\t%.4f\t%.4f\t%.4f\t\n", p.Acquire.P50, p.Acquire.P90, p.Acquire.Max)
		fmt.Fprintf(tw, "first exec after Acquire\t%.3f\t%.3f\t%.3f\t\n", p.FirstExec.P50, p.FirstExec.P90, p.FirstExec.Max)
		tw.Flush()
		fmt.Fprintf(out, "Acquire p50 target < %.0f ms: %s\n\n", p.TargetMs, verdict(p.Acquire.P50 < p.TargetMs))
	}
	if len(r.Starts) > 0 {
		fmt.Fprintf(out, "kernel start to ready, %d starts each (after one untimed):\n", r.Starts[0].Ready.N)
		fmt.Fprintln(tw, "preload\tready p50 ms\tready max ms\tCPU to ready p50 s\tCPU to ready max s\t")
		for _, s := range r.Starts {
			fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2f\t%.2f\t\n", s.Preload, s.Ready.P50, s.Ready.Max, s.CPUToReady.P50, s.CPUToReady.Max)
		}
		tw.Flush()
	}
}

func floats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, " ")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
