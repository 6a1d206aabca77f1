//go:build !linux

package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
)

// DaemonCommand is the hidden first argument that makes hearth-bench run
// as the daemon under test.
const DaemonCommand = "__daemon"

// DaemonMain reports that the benchmark daemon runs on Linux only.
func DaemonMain([]string) int {
	fmt.Fprintf(os.Stderr, "the benchmark daemon runs on Linux only, not %s\n", runtime.GOOS)
	return 1
}

// runGroup reports every group as skipped: the measures need Linux.
func runGroup(_ context.Context, _ *env, group string) []Result {
	return []Result{skipped(group, group, "the measures run on Linux only, not "+runtime.GOOS)}
}
