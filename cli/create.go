package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

type createOptions struct {
	id        string
	labels    []string
	vcpus     uint32
	memoryMiB uint64
	network   string
	ttl       time.Duration
	kernel    string
	rootfs    string
	bootArgs  string
	env       []string
	workdir   string
	user      string
	wait      bool
	json      bool
}

func newCreateCommand(g *globalOptions) *cobra.Command {
	var o createOptions
	cmd := &cobra.Command{
		Use:   "create [flags] [-- CMD [ARG...]]",
		Short: "Create a sandbox on the daemon and print its ID",
		Long: `Create a sandbox on the daemon and print its ID. The sandbox boots in the
background (state starting); --wait waits until it is ready. A command
after -- runs once the sandbox is ready, with its output written to
init-cmd.log in the sandbox's directory on the daemon's host.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return create(ctx, cmd, c, o, args)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.id, "id", "", "sandbox ID: 1 to 64 letters, digits or '-' (default generated)")
	f.StringArrayVarP(&o.labels, "label", "l", nil, "label KEY=VALUE (repeatable)")
	f.Uint32Var(&o.vcpus, "vcpus", 0, "number of virtual CPUs (default: the daemon's [defaults].vcpus)")
	f.Uint64Var(&o.memoryMiB, "memory", 0, "guest memory in MiB (default: the daemon's [defaults].memory_mib)")
	f.StringVar(&o.network, "network", "", "network mode: tap (own TAP and address, the default) or none")
	f.DurationVar(&o.ttl, "ttl", 0, "remove the sandbox this long after creation, in whole seconds, e.g. 10m (default never)")
	f.StringVar(&o.kernel, "kernel", "", "guest kernel on the daemon's host (default: the daemon's)")
	f.StringVar(&o.rootfs, "rootfs", "", "root filesystem image on the daemon's host (default: the daemon's)")
	f.StringVar(&o.bootArgs, "boot-args", "", "kernel command line (default: the driver's)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE for the initial command (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory of the initial command")
	f.StringVarP(&o.user, "user", "u", "", "user of the initial command: name, uid or uid:gid")
	f.BoolVar(&o.wait, "wait", false, "wait until the sandbox is ready, and fail if its boot fails")
	f.BoolVar(&o.json, "json", false, "print the response as JSON")
	return cmd
}

func create(ctx context.Context, cmd *cobra.Command, c *daemonClient, o createOptions, argv []string) error {
	labels, err := parseLabels("label", o.labels)
	if err != nil {
		return err
	}
	env, err := parseEnv(o.env)
	if err != nil {
		return err
	}
	ttl, err := wholeSeconds("--ttl", o.ttl)
	if err != nil {
		return err
	}

	req := &sandboxv1.CreateSandboxRequest{
		Id: o.id, Labels: labels, Kernel: o.kernel, Rootfs: o.rootfs, BootArgs: o.bootArgs,
		Limits:     &sandboxv1.ResourceLimits{Vcpus: o.vcpus, MemoryMib: o.memoryMiB},
		Cmd:        argv,
		Env:        env,
		WorkingDir: o.workdir,
		User:       o.user,
		TtlSeconds: ttl,
	}
	if o.network != "" {
		req.Network = &sandboxv1.NetworkSpec{Mode: o.network}
	}
	resp, err := c.sandbox.Create(ctx, req)
	if err != nil {
		return fromRPC(err)
	}

	if o.wait {
		// An interrupted wait must still name the sandbox, which the
		// daemon keeps booting.
		waitCtx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		err := waitReady(waitCtx, c, resp.GetId())
		interrupted := waitCtx.Err() != nil && ctx.Err() == nil
		stop()
		if interrupted {
			return fmt.Errorf("interrupted while sandbox %s was starting; the daemon keeps booting it: remove it with hearth rm -f %s",
				resp.GetId(), resp.GetId())
		}
		if err != nil {
			return err
		}
		resp.State = "ready"
	}
	if o.json {
		return printJSON(cmd.OutOrStdout(), resp)
	}
	fmt.Fprintln(cmd.OutOrStdout(), resp.GetId())
	return nil
}

// waitReady polls the sandbox until it has left state starting. It
// fails when the sandbox ends up failed or gone.
func waitReady(ctx context.Context, c *daemonClient, id string) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := c.sandbox.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			return fmt.Errorf("wait for sandbox %s: %w", id, fromRPC(err))
		}
		switch info.GetState() {
		case "starting":
		case "failed":
			return fmt.Errorf("sandbox %s failed to start: %s", id, info.GetError())
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for sandbox %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

// wholeSeconds converts a duration flag to the API's seconds, rejecting
// fractions and values beyond uint32.
func wholeSeconds(flag string, d time.Duration) (uint32, error) {
	if d < 0 || d%time.Second != 0 || d/time.Second > 1<<32-1 {
		return 0, fmt.Errorf("invalid %s %s: use whole seconds from 0 to 4294967295, such as 90s or 10m", flag, d)
	}
	return uint32(d / time.Second), nil
}
