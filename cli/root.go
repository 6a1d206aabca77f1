// Package cli implements the hearth command line. `hearth serve` runs the
// daemon, and the other verbs are clients of its gRPC API (client.go).
// Only `hearth run` runs an in-process sandbox manager instead when no
// daemon is listening. Each verb parses its flags and makes its calls, so
// no lifecycle logic lives here.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
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

	// hostFlag is --host; host() falls back to HEARTH_HOST and the
	// default socket.
	hostFlag  string
	tlsCA     string
	tokenFile string
}

// Main runs the CLI with args (without the program name) and returns the
// process exit code.
func Main(args []string) int {
	return execute(context.Background(), args, os.Stdin, os.Stdout, os.Stderr)
}

// execute is Main with its context and standard input and output given.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
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

	root.PersistentFlags().StringVarP(&g.hostFlag, "host", "H", "",
		"daemon address: unix:///path/to/socket or tcp://host:port (env HEARTH_HOST; default "+defaultHost+")")
	root.PersistentFlags().StringVar(&g.tlsCA, "tls-ca", envOr("HEARTH_TLS_CA", ""),
		"PEM CA certificate to verify a tcp:// daemon with (env HEARTH_TLS_CA)")
	root.PersistentFlags().StringVar(&g.tokenFile, "token-file", envOr("HEARTH_TOKEN_FILE", ""),
		"file containing the bearer token of a tcp:// daemon (env HEARTH_TOKEN_FILE, or the token itself in HEARTH_TOKEN)")

	root.AddCommand(
		newRunCommand(&g),
		newServeCommand(&g),
		newCreateCommand(&g),
		newListCommand(&g),
		newInspectCommand(&g),
		newExecCommand(&g),
		newStopCommand(&g),
		newRemoveCommand(&g),
		newEventsCommand(&g),
		newTTLCommand(&g),
		newCheckpointCommand(&g),
		newRestoreCommand(&g),
		newSnapshotsCommand(&g),
		newPauseCommand(&g),
		newResumeCommand(&g),
		newCopyCommand(&g),
		newPsCommand(&g),
		newKillCommand(&g),
	)
	root.AddCommand(newDoctorCommand(&g))

	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	var exit exitCodeError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.code
	default:
		fmt.Fprintln(stderr, "hearth:", err)
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
