// Package bench measures hearth's performance against physical floors
// taken on the same machine in the same run. Each measure is timed next
// to the cheapest way the machine can do the same work without hearth,
// such as a local fork, exec and wait, a copy over loopback TCP or a bare
// QEMU boot, and the report gives the ratio between the two.
//
// It runs real components: the hearth daemon as a child process serving
// its gRPC API, the Firecracker test double with the real hearth-agent,
// the instant VMM double, and QEMU guests booted from the boot assets.
// It needs root (the Firecracker double creates namespaces) and, for the
// QEMU measures, qemu-system-x86_64 and the assets of scripts/build-assets.
// A measure whose requirements are missing is reported as skipped, with
// the reason, rather than failing the run.
//
// The package owns the measures, their statistics and the report (a text
// table and a JSON file). It changes nothing in the components it
// measures, and no test runs a measure: `make bench` does.
package bench
