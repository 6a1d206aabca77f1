// Package cli implements the hearth command line. Each verb parses its
// flags and calls the sandbox manager; no lifecycle logic lives here.
package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// exitUsage is the exit code for errors of hearth itself (as opposed to
// the exit code of a command run in a sandbox), as docker run uses 125.
const exitUsage = 125

// exitCodeError carries a command's exit code out of a cobra RunE.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// globalOptions are the flags shared by every verb.
type globalOptions struct {
	dataDir  string
	assets   string
	logLevel string
}

// Main runs the CLI with args (without the program name) and returns the
// process exit code.
func Main(args []string) int {
	var g globalOptions
	root := &cobra.Command{
		Use:           "hearth",
		Short:         "Run commands in disposable microVM sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return setupLogging(g.logLevel)
		},
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", envOr("HEARTH_DATA_DIR", "/var/lib/hearth"),
		"directory for sandbox state and network leases (env HEARTH_DATA_DIR)")
	root.PersistentFlags().StringVar(&g.assets, "assets", envOr("HEARTH_ASSETS", ""),
		"directory with vmlinux, initramfs.cpio and rootfs.ext4 (env HEARTH_ASSETS; default <data-dir>/assets)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", envOr("HEARTH_LOG_LEVEL", "warn"),
		"log level: debug, info, warn or error (env HEARTH_LOG_LEVEL)")

	root.AddCommand(newRunCommand(&g))
	root.AddCommand(newServeCommand(&g))

	root.SetArgs(args)
	err := root.Execute()
	var exit exitCodeError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.code
	default:
		fmt.Fprintln(os.Stderr, "hearth:", err)
		return exitUsage
	}
}

func setupLogging(level string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", level)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
	return nil
}

func envOr(name, fallback string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return fallback
}
