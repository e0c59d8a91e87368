// Package benchkit holds what the bench commands share: their main, flags
// and report (host description, JSON or table), percentile summaries, CPU
// and memory accounting from getrusage and /proc, and an in-process
// gateway built by app.Open as cmd/codegw builds it.
package benchkit

import (
	"math"
	"slices"
	"time"
)

// Stats summarizes samples: durations in milliseconds, or plain numbers.
type Stats struct {
	N    int     `json:"n"`
	Min  float64 `json:"min"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Summarize summarizes durations in milliseconds.
func Summarize(ds []time.Duration) Stats {
	f := make([]float64, len(ds))
	for i, d := range ds {
		f[i] = float64(d) / float64(time.Millisecond)
	}
	return SummarizeFloat(f)
}

// SummarizeFloat summarizes plain numbers.
func SummarizeFloat(xs []float64) Stats {
	if len(xs) == 0 {
		return Stats{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return Stats{N: len(s), Min: s[0], P50: Quantile(s, 0.50), P90: Quantile(s, 0.90),
		P99: Quantile(s, 0.99), Max: s[len(s)-1], Mean: sum / float64(len(s))}
}

// Quantile is the nearest-rank quantile of sorted samples.
func Quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
