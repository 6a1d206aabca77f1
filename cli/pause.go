package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newPauseCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID...",
		Short: "Pause ready sandboxes' VMs in place",
		Long: `Pause ready sandboxes' VMs in place: their vCPUs stop and their memory
stays allocated. A sandbox with a running command cannot be paused.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return forEachID(cmd.OutOrStdout(), args, func(id string) error {
					_, err := c.control.Pause(ctx, &sandboxv1.PauseSandboxRequest{Id: id})
					return fromRPC(err)
				})
			})
		},
	}
}

func newResumeCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "resume ID...",
		Short: "Resume paused sandboxes and set their guest clocks",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return forEachID(cmd.OutOrStdout(), args, func(id string) error {
					_, err := c.control.Resume(ctx, &sandboxv1.ResumeSandboxRequest{Id: id})
					return fromRPC(err)
				})
			})
		},
	}
}
