package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newRemoveCommand(g *globalOptions) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] ID...",
		Short: "Remove sandboxes and release their VM, TAP and address",
		Long: `Remove sandboxes and release their VM, TAP and address. A sandbox with
a running command is removed only with -f, which kills the command.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return forEachID(cmd.OutOrStdout(), args, func(id string) error {
					_, err := c.sandbox.Remove(ctx, &sandboxv1.RemoveSandboxRequest{Id: id, Force: force})
					return fromRPC(err)
				})
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove also while commands run, killing them")
	return cmd
}
