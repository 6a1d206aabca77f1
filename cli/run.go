package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
)

type runOptions struct {
	vcpus     int
	memoryMiB int
	network   string
	driver    string
	env       []string
	workdir   string
	user      string
	timeout   time.Duration
}

func newRunCommand(g *globalOptions) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Create a sandbox, run one command in it, and remove it",
		Long: `Create a sandbox, run one command in it with its output streamed to this
terminal, remove the sandbox, and exit with the command's exit code.
Errors of hearth itself exit with 125.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOnce(cmd.Context(), g, o, args)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.vcpus, "vcpus", 0, "number of virtual CPUs (default 1)")
	f.IntVar(&o.memoryMiB, "memory", 0, "guest memory in MiB (default 256)")
	f.StringVar(&o.network, "network", sandbox.NetworkTAP, "network mode: tap (own TAP and address) or none")
	f.StringVar(&o.driver, "driver", "auto", "VMM driver: auto or qemu")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE for the command (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory of the command in the guest")
	f.StringVarP(&o.user, "user", "u", "", "user to run the command as: name, uid or uid:gid")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the command after this long, e.g. 30s (default none)")
	return cmd
}

func runOnce(ctx context.Context, g *globalOptions, o runOptions, argv []string) error {
	env, err := parseEnv(o.env)
	if err != nil {
		return err
	}
	mgr, err := newManager(g, o.driver)
	if err != nil {
		return err
	}

	// Ctrl-C or SIGTERM cancels the command; the sandbox is removed
	// either way.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	info, err := mgr.Create(ctx, sandbox.CreateOptions{
		VCPUs: o.vcpus, MemoryMiB: o.memoryMiB, Network: o.network,
	})
	if err != nil {
		return err
	}
	defer func() {
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := mgr.Remove(cleanup, info.ID, true); err != nil {
			fmt.Fprintf(os.Stderr, "hearth: remove sandbox %s: %v\n", info.ID, err)
		}
	}()

	sb, err := mgr.Get(info.ID)
	if err != nil {
		return err
	}
	if err := sb.WaitReady(ctx); err != nil {
		return fmt.Errorf("sandbox %s did not start: %w", info.ID, err)
	}

	req := agentproto.StartRequest{
		Cmd: argv, Env: env, WorkingDir: o.workdir, User: o.user,
		TimeoutSeconds: uint32((o.timeout + time.Second - 1) / time.Second),
	}
	code, err := sb.Exec(ctx, req, agentclient.ExecIO{Stdin: nil, Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		return fmt.Errorf("run in sandbox %s: %w", info.ID, err)
	}
	if code != 0 {
		return exitCodeError{code: int(code)}
	}
	return nil
}

func parseEnv(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	env := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("invalid --env %q: use KEY=VALUE", p)
		}
		env[k] = v
	}
	return env, nil
}
