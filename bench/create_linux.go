package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm/instant"
)

// createGoal is the manager's goal per create on a VMM that boots
// instantly: under 2 ms from Create until ready.
var createGoal = &Goal{Kind: GoalMaxValue, Limit: 2e-3}

// runCreateGroup measures the manager's own cost per create: Create until
// ready on the instant double, whose boot is an in-process agent, one at
// a time and in bursts of 8 and 64.
func (e *env) runCreateGroup(ctx context.Context) []Result {
	dir, err := os.MkdirTemp(e.dir, "c-")
	if err != nil {
		return []Result{e.report(skippedErr("create", "create to ready", err))}
	}
	mgr, err := newDoubleManager(filepath.Join(dir, "data"), &instant.Driver{}, e.quiet)
	if err != nil {
		return []Result{e.report(skippedErr("create", "create to ready", err))}
	}
	defer mgr.Close(context.WithoutCancel(ctx))

	// Warm-up: the first creates pay for page faults and goroutine stacks.
	if _, err := createBurst(ctx, mgr, 1, e.iterations(50, 5)); err != nil {
		return []Result{e.report(skippedErr("create", "create to ready", err))}
	}
	var results []Result
	for _, c := range []int{1, 8, 64} {
		results = append(results, e.report(e.measureCreate(ctx, mgr, c)))
	}
	return results
}

func (e *env) measureCreate(ctx context.Context, mgr *sandbox.Manager, concurrency int) Result {
	name := fmt.Sprintf("create.instant.c%d", concurrency)
	title := fmt.Sprintf("create to ready, instant double, %d at once", concurrency)
	total := e.iterations(1024, 128)
	bursts := max(1, total/concurrency)
	var samples []time.Duration
	var wall time.Duration
	for b := 0; b < bursts; b++ {
		start := time.Now()
		burst, err := createBurst(ctx, mgr, concurrency, 1)
		wall += time.Since(start)
		if err != nil {
			return skippedErr(name, title, err)
		}
		samples = append(samples, burst...)
	}
	r := timed(name, title, samples)
	r.Note = fmt.Sprintf("%.0f creates/s", float64(len(samples))/wall.Seconds())
	if concurrency == 1 {
		r.Goal = createGoal
	}
	return r
}

// createBurst runs rounds of concurrency creates started together, each
// timed from Create until ready, and removes the sandboxes after each
// round, untimed.
func createBurst(ctx context.Context, mgr *sandbox.Manager, concurrency, rounds int) ([]time.Duration, error) {
	var samples []time.Duration
	for round := 0; round < rounds; round++ {
		durations := make([]time.Duration, concurrency)
		ids := make([]string, concurrency)
		errs := make([]error, concurrency)
		var wg sync.WaitGroup
		for i := 0; i < concurrency; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				ids[i], errs[i] = createReady(ctx, mgr, sandbox.CreateOptions{Network: sandbox.NetworkNone})
				durations[i] = time.Since(start)
			}()
		}
		wg.Wait()
		for i, id := range ids {
			if id != "" {
				if err := mgr.Remove(ctx, id, true); err != nil && errs[i] == nil {
					errs[i] = fmt.Errorf("remove sandbox %s: %w", id, err)
				}
			}
		}
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
		samples = append(samples, durations...)
	}
	return samples, nil
}
