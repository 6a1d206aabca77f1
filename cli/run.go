package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/api/sandboxv1"
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
	local     bool
	// signals carries the SIGINT and SIGTERM hearth receives.
	signals <-chan os.Signal
}

func newRunCommand(g *globalOptions) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Create a sandbox, run one command in it, and remove it",
		Long: `Create a sandbox, run one command in it with its output streamed to this
terminal, remove the sandbox, and exit with the command's exit code.
Errors of hearth itself exit with 125.

The sandbox is created by the daemon at --host, HEARTH_HOST or the default
socket. When no address is given and no daemon listens on the default
socket, or with --local, hearth runs the sandbox itself, in this process,
which needs root.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOnce(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.vcpus, "vcpus", 0, "number of virtual CPUs (default 1)")
	f.IntVar(&o.memoryMiB, "memory", 0, "guest memory in MiB (default 256)")
	f.StringVar(&o.network, "network", sandbox.NetworkTAP, "network mode: tap (own TAP and address) or none")
	f.StringVar(&o.driver, "driver", "auto", "VMM driver of an in-process run: auto, qemu or firecracker")
	f.BoolVar(&o.local, "local", false, "run the sandbox in this process even when a daemon is listening")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE for the command (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory of the command in the guest")
	f.StringVarP(&o.user, "user", "u", "", "user to run the command as: name, uid or uid:gid")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the command after this long, e.g. 30s (default none)")
	return cmd
}

// runOnce runs argv through the daemon when one is listening, else in
// process. An address given with --host or HEARTH_HOST must be
// listening, so a run meant for a remote daemon never starts a VM here.
func runOnce(cmd *cobra.Command, g *globalOptions, o runOptions, argv []string) error {
	env, err := parseEnv(o.env)
	if err != nil {
		return err
	}
	// As with exec, SIGINT and SIGTERM go to the command once it runs,
	// and a hangup ends the call. Before the command runs, SIGINT or
	// SIGTERM abandons the run. The sandbox is removed either way.
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGHUP)
	defer stop()
	forward := make(chan os.Signal, 4)
	signal.Notify(forward, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(forward)
	o.signals = forward
	if o.local {
		return runLocal(ctx, g, o, env, argv)
	}

	addr, explicit, err := g.host()
	if err != nil {
		return err
	}
	c, err := dial(ctx, addr, g)
	if errors.Is(err, errNoDaemon) && !explicit {
		slog.Debug("no daemon is listening; running the sandbox in process", "host", addr.String())
		return runLocal(ctx, g, o, env, argv)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if cmd.Flag("driver").Changed {
		return fmt.Errorf("--driver applies only to an in-process run, but the daemon at %s is listening; set [hearth].driver in its configuration, or pass --local",
			addr)
	}
	return runThroughDaemon(ctx, cmd, c, o, env, argv)
}

// runThroughDaemon creates a sandbox on the daemon, runs argv in it and
// removes it, also when the run fails or is interrupted.
func runThroughDaemon(ctx context.Context, cmd *cobra.Command, c *daemonClient, o runOptions, env map[string]string, argv []string) error {
	if o.vcpus < 0 || o.memoryMiB < 0 {
		return errors.New("--vcpus and --memory must not be negative; leave them 0 for the daemon's defaults")
	}
	created, err := c.sandbox.Create(ctx, &sandboxv1.CreateSandboxRequest{
		Limits:  &sandboxv1.ResourceLimits{Vcpus: uint32(o.vcpus), MemoryMib: uint64(o.memoryMiB)},
		Network: &sandboxv1.NetworkSpec{Mode: o.network},
	})
	if err != nil {
		return fromRPC(err)
	}
	id := created.GetId()
	defer func() {
		// The removal must run after Ctrl-C too, so it gets a context of
		// its own.
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := c.sandbox.Remove(cleanup, &sandboxv1.RemoveSandboxRequest{Id: id, Force: true}); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "hearth: remove sandbox %s: %v\n", id, fromRPC(err))
		}
	}()

	exit, err := runRemoteForwarding(ctx, c, &sandboxv1.RunRequest{
		Id: id, Cmd: argv, Env: env, WorkingDir: o.workdir, User: o.user,
		TimeoutSeconds: uint32((o.timeout + time.Second - 1) / time.Second),
	}, o.signals, cmd.OutOrStdout(), cmd.ErrOrStderr())
	if err != nil {
		return fmt.Errorf("run in sandbox %s: %w", id, err)
	}
	return exitStatus(exit, nil, cmd.ErrOrStderr())
}

// runLocal runs argv in a sandbox of an in-process manager.
func runLocal(ctx context.Context, g *globalOptions, o runOptions, env map[string]string, argv []string) error {
	mgr, err := newManager(g, o.driver)
	if err != nil {
		return err
	}

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
	if err := waitReadyOrSignal(ctx, sb, o.signals); err != nil {
		return err
	}

	req := agentproto.StartRequest{
		Cmd: argv, Env: env, WorkingDir: o.workdir, User: o.user,
		TimeoutSeconds: uint32((o.timeout + time.Second - 1) / time.Second),
	}
	signals := make(chan syscall.Signal, 4)
	done := make(chan struct{})
	defer close(done)
	go relaySignals(o.signals, signals, done)
	res, err := sb.ExecWorkload(ctx, req,
		agentclient.ExecIO{Stdout: os.Stdout, Stderr: os.Stderr, Signals: signals}, nil)
	if err != nil {
		return fmt.Errorf("run in sandbox %s: %w", info.ID, err)
	}
	exit := commandExit{code: res.Code, signal: res.Signal, reason: res.Reason, timedOut: res.TimedOut}
	return exitStatus(exit, nil, os.Stderr)
}

// waitReadyOrSignal waits until the sandbox is ready. SIGINT or SIGTERM
// while it boots abandons the run with exit code 128+N.
func waitReadyOrSignal(ctx context.Context, sb *sandbox.Sandbox, signals <-chan os.Signal) error {
	ready := make(chan error, 1)
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { ready <- sb.WaitReady(waitCtx) }()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("sandbox %s did not start: %w", sb.ID(), err)
		}
		return nil
	case sig := <-signals:
		fmt.Fprintf(os.Stderr, "hearth: interrupted by %s while sandbox %s was starting; removing it\n",
			signalName(sig), sb.ID())
		return exitCodeError{code: 128 + int(sig.(syscall.Signal))}
	}
}

// relaySignals passes the signals hearth receives on to the command.
func relaySignals(in <-chan os.Signal, out chan<- syscall.Signal, done <-chan struct{}) {
	for {
		select {
		case sig := <-in:
			if s, ok := sig.(syscall.Signal); ok {
				select {
				case out <- s:
				case <-done:
					return
				}
			}
		case <-done:
			return
		}
	}
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
