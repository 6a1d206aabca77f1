// Command hearth-bench measures hearth against the physical floors of the
// machine it runs on and prints one table, also written as JSON. It needs
// root. See docs/benchmarks.md; `make bench` builds what it needs and
// runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/hearthvm/hearth/bench"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == bench.DaemonCommand {
		os.Exit(bench.DaemonMain(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	var opts bench.Options
	var only, out, markdown string
	flag.StringVar(&opts.BinDir, "bin", "bin", "directory of the static hearth-agent and fake-firecracker binaries")
	flag.StringVar(&opts.Assets, "assets", defaultAssets(), "boot assets directory for the QEMU measures (env HEARTH_ASSETS)")
	flag.StringVar(&opts.WorkDir, "workdir", "", "directory for the run's sandboxes and sockets (default: a new temporary directory, removed afterwards)")
	flag.StringVar(&opts.QEMUAccel, "qemu-accel", "tcg", "QEMU accelerator: tcg, kvm or auto")
	flag.BoolVar(&opts.Quick, "quick", false, "about ten times fewer iterations and smaller transfers: a smoke test, not comparable")
	flag.StringVar(&only, "only", "", "comma-separated groups to run: "+strings.Join(bench.Groups, ", ")+" (default: all)")
	flag.StringVar(&out, "out", "bench-results.json", "JSON report file")
	flag.StringVar(&markdown, "markdown", "", "also write the table as Markdown to this file")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of hearth-bench (not of the daemon or the agent) to this file")
	flag.Parse()
	if only != "" {
		opts.Only = strings.Split(only, ",")
	}
	opts.Progress = os.Stderr

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hearth-bench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "hearth-bench: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hearth-bench: %v\n", err)
		return 1
	}
	fmt.Println()
	if err := rep.WriteTable(os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "hearth-bench: %v\n", err)
		return 1
	}
	if err := rep.WriteJSON(out); err != nil {
		fmt.Fprintf(os.Stderr, "hearth-bench: %v\n", err)
		return 1
	}
	if markdown != "" {
		if err := rep.WriteMarkdownFile(markdown); err != nil {
			fmt.Fprintf(os.Stderr, "hearth-bench: %v\n", err)
			return 1
		}
	}
	return 0
}

func defaultAssets() string {
	if dir := os.Getenv("HEARTH_ASSETS"); dir != "" {
		return dir
	}
	return "/var/lib/hearth/assets"
}
