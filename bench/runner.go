package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// Groups of measures, in the order they run. Options.Only selects among
// them.
const (
	GroupExec     = "exec"
	GroupTransfer = "transfer"
	GroupCreate   = "create"
	GroupQEMU     = "qemu"
	GroupMemory   = "memory"
)

// Groups lists every group in run order.
var Groups = []string{GroupExec, GroupTransfer, GroupCreate, GroupQEMU, GroupMemory}

// Options configures a run.
type Options struct {
	// BinDir holds the static hearth-agent and fake-firecracker binaries
	// (make bench builds both into bin/).
	BinDir string
	// Assets is the directory of vmlinux, initramfs.cpio and rootfs.ext4
	// for the QEMU measures.
	Assets string
	// WorkDir holds the run's sandboxes and sockets; empty means a new
	// temporary directory, removed at the end.
	WorkDir string
	// Only, when not empty, runs only these groups.
	Only []string
	// Quick cuts iteration counts and transfer sizes about tenfold, for a
	// smoke test of the benchmark itself. Its numbers are not comparable.
	Quick bool
	// QEMUAccel is the QEMU driver's accelerator: "tcg" (default), "kvm"
	// or "auto".
	QEMUAccel string
	// Progress receives one line per finished measure; nil discards them.
	Progress io.Writer
}

// env is the state the measures of one run share.
type env struct {
	opts     Options
	dir      string
	agent    string // static hearth-agent
	fakeFC   string // fake-firecracker
	progress io.Writer
	// quiet formats log records like a daemon would, then drops them, so
	// the cost of logging stays in the measures without flooding output.
	quiet *slog.Logger

	// coldBoot is the QEMU cold boot to ready, which the restore measure
	// divides by; nil until the QEMU group has measured it.
	coldBoot *Stats
}

// iterations returns full, or quick in a quick run.
func (e *env) iterations(full, quick int) int {
	if e.opts.Quick {
		return quick
	}
	return full
}

// report prints a finished result to the progress writer.
func (e *env) report(r Result) Result {
	r.finish()
	if r.Skipped != "" {
		fmt.Fprintf(e.progress, "%-44s skipped: %s\n", r.Title, r.Skipped)
		return r
	}
	fmt.Fprintf(e.progress, "%-44s n=%-5d median %s p90 %s p99 %s\n", r.Title, r.Stats.N,
		formatValue(r.Stats.Median, r.Unit), formatValue(r.Stats.P90, r.Unit), formatValue(r.Stats.P99, r.Unit))
	return r
}

// Run runs the selected groups and returns the report. A measure that
// cannot run is in the report as skipped, with the reason. Run returns an
// error only for an unknown group, a work directory it cannot create, or
// a cancelled ctx.
func Run(ctx context.Context, opts Options) (*Report, error) {
	for _, g := range opts.Only {
		if !slices.Contains(Groups, g) {
			return nil, fmt.Errorf("unknown measure group %q: use one of %s", g, strings.Join(Groups, ", "))
		}
	}
	if opts.QEMUAccel == "" {
		opts.QEMUAccel = "tcg"
	}
	e := &env{
		opts: opts, progress: opts.Progress,
		quiet: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if e.progress == nil {
		e.progress = io.Discard
	}
	// Components that log through the default logger (the instant
	// double's in-process agent) format their records as they would in
	// a daemon, but do not flood the output.
	prevLogger := slog.Default()
	slog.SetDefault(e.quiet)
	defer slog.SetDefault(prevLogger)
	var err error
	if e.agent, err = filepath.Abs(filepath.Join(opts.BinDir, "hearth-agent")); err != nil {
		return nil, err
	}
	if e.fakeFC, err = filepath.Abs(filepath.Join(opts.BinDir, "fake-firecracker")); err != nil {
		return nil, err
	}
	cleanup, err := e.makeWorkDir()
	if err != nil {
		return nil, err
	}
	defer cleanup()

	rep := &Report{Started: time.Now().UTC(), Quick: opts.Quick, Machine: describeMachine()}
	began := time.Now()
	for _, g := range Groups {
		if len(opts.Only) > 0 && !slices.Contains(opts.Only, g) {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rep.Results = append(rep.Results, runGroup(ctx, e, g)...)
	}
	rep.Duration = time.Since(began).Seconds()
	rep.Machine.LoadAvgEnd = loadAverage()
	return rep, nil
}

// makeWorkDir creates the run's directory, short enough for the Unix
// socket paths below it (108 bytes at most).
func (e *env) makeWorkDir() (func(), error) {
	if e.opts.WorkDir != "" {
		if err := os.MkdirAll(e.opts.WorkDir, 0o755); err != nil {
			return nil, fmt.Errorf("create work directory: %w", err)
		}
		e.dir = e.opts.WorkDir
		return func() {}, nil
	}
	dir, err := os.MkdirTemp("", "hbench-")
	if err != nil {
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	// The Firecracker double's guest user must be able to reach its
	// socket through this directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	e.dir = dir
	return func() { os.RemoveAll(dir) }, nil
}

func describeMachine() Machine {
	m := Machine{
		Cores:        runtime.NumCPU(),
		CPUModel:     cpuModel(),
		Kernel:       strings.TrimSpace(readFileString("/proc/sys/kernel/osrelease")),
		MemTotal:     memTotal(),
		GoVersion:    runtime.Version(),
		LoadAvgStart: loadAverage(),
	}
	m.Revision = revision()
	return m
}

// revision returns hearth's VCS revision as stamped into the binary, or
// else as git reports it for the working directory, with "+dirty" when
// the tree had changes. It returns "" when neither knows.
func revision() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if rev != "" {
			return rev[:min(12, len(rev))] + dirty
		}
	}
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return ""
	}
	rev := strings.TrimSpace(string(out))
	if status, err := exec.Command("git", "status", "--porcelain").Output(); err == nil && len(status) > 0 {
		rev += "+dirty"
	}
	return rev
}

func readFileString(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(data)
}

// loadAverage returns the first three fields of /proc/loadavg.
func loadAverage() string {
	fields := strings.Fields(readFileString("/proc/loadavg"))
	if len(fields) < 3 {
		return "unknown"
	}
	return strings.Join(fields[:3], " ")
}

func cpuModel() string {
	return procField("/proc/cpuinfo", "model name")
}

func memTotal() string {
	kib := procField("/proc/meminfo", "MemTotal")
	var n int64
	if _, err := fmt.Sscanf(kib, "%d kB", &n); err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<20))
}

// procField returns the value of the first "key: value" line of a /proc
// file with the given key, or "unknown".
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
