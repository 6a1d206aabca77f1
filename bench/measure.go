package bench

import (
	"fmt"
	"time"
)

// timeLoop runs fn warmup times untimed, then n times timed with the
// monotonic clock, and returns the n durations. It stops at the first
// error.
func timeLoop(warmup, n int, fn func() error) ([]time.Duration, error) {
	for i := 0; i < warmup; i++ {
		if err := fn(); err != nil {
			return nil, fmt.Errorf("warm-up %d: %w", i+1, err)
		}
	}
	samples := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		err := fn()
		elapsed := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("iteration %d: %w", i+1, err)
		}
		samples = append(samples, elapsed)
	}
	return samples, nil
}

// timed returns a Result in seconds for samples.
func timed(name, title string, samples []time.Duration) Result {
	return Result{Name: name, Title: title, Unit: UnitSeconds, Stats: Summarize(seconds(samples))}
}

// skipped returns a Result for a measure that did not run.
func skipped(name, title, reason string) Result {
	return Result{Name: name, Title: title, Unit: UnitSeconds, Skipped: reason}
}

// skippedErr returns a Result for a measure that failed part way.
func skippedErr(name, title string, err error) Result {
	return skipped(name, title, "failed: "+err.Error())
}

// floorOf returns r as the floor of another result.
func floorOf(r Result) *Floor {
	if r.Skipped != "" || r.Stats.N == 0 {
		return nil
	}
	return &Floor{Name: r.Name, Stats: r.Stats}
}
