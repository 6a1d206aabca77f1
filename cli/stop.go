package cli

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newStopCommand(g *globalOptions) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop [--timeout DURATION] ID...",
		Short: "Shut sandboxes down gracefully; they stay listed until removed",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seconds, err := wholeSeconds("--timeout", timeout)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return forEachID(cmd.OutOrStdout(), args, func(id string) error {
					_, err := c.sandbox.Stop(ctx, &sandboxv1.StopSandboxRequest{Id: id, TimeoutSeconds: seconds})
					return fromRPC(err)
				})
			})
		},
	}
	cmd.Flags().DurationVarP(&timeout, "timeout", "t", 0,
		"time the guest gets to shut down before its VM is killed, in whole seconds (default 30s)")
	return cmd
}
