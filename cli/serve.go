package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/config"
	"github.com/hearthvm/hearth/daemon"
)

func newServeCommand(g *globalOptions) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve [--config FILE]",
		Short: "Run the hearth daemon, serving the sandbox.v1 gRPC API",
		Long: `Run the hearth daemon: serve the sandbox.v1 gRPC API on the Unix socket of
[grpc].unix_socket (and on [grpc].tcp_addr with TLS and a bearer token)
until SIGINT or SIGTERM. Stopping the daemon removes every sandbox;
sandboxes do not survive a restart.

The configuration is a TOML file; hearth.example.toml lists every key with
its default. Without --config, ` + config.DefaultPath + ` is read if it
exists. --data-dir, --assets and --log-level override the file when given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd, g, configPath)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", envOr("HEARTH_CONFIG", config.DefaultPath),
		"TOML configuration file (env HEARTH_CONFIG)")
	return cmd
}

func serve(cmd *cobra.Command, g *globalOptions, configPath string) error {
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	if cmd.Flag("data-dir").Changed || os.Getenv("HEARTH_DATA_DIR") != "" {
		cfg.Hearth.DataDir = g.dataDir
	}
	if g.assets != "" {
		cfg.Hearth.AssetsDir = g.assets
	}
	if !cmd.Flag("log-level").Changed && os.Getenv("HEARTH_LOG_LEVEL") == "" {
		if err := setupLogging(cfg.Hearth.LogLevel); err != nil {
			return fmt.Errorf("[hearth].log_level: %w", err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, daemon.Options{Config: cfg})
}
