package bench

import (
	"math"
	"slices"
	"time"
)

// Stats summarises the samples of one measure.
type Stats struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the order statistics of samples. Percentiles use the
// nearest-rank method, so every reported value is one that was measured;
// with fewer than 100 samples the p99 is the maximum. It returns the
// zero Stats for no samples.
func Summarize(samples []float64) Stats {
	if len(samples) == 0 {
		return Stats{}
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	return Stats{
		N:      len(sorted),
		Median: percentile(sorted, 0.50),
		P90:    percentile(sorted, 0.90),
		P99:    percentile(sorted, 0.99),
		Min:    sorted[0],
		Max:    sorted[len(sorted)-1],
	}
}

// percentile returns the nearest-rank p-quantile of sorted, which is not
// empty: the smallest sample with at least p of all samples at or below
// it.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// seconds converts durations to seconds for Summarize.
func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}
