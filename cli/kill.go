package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newKillCommand(g *globalOptions) *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:   "kill [-s SIGNAL] ID WORKLOAD",
		Short: "Send a signal to a command running in a sandbox",
		Long: `Send a signal to a command running in a sandbox: to its process group, or
for a command with a terminal to the terminal's foreground process group.
WORKLOAD is an ID that hearth ps lists. The command's own exec or run
reports how it ended: 128+N for a command that signal N killed.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				control := sandboxv1.NewSandboxControlServiceClient(c.conn)
				_, err := control.Signal(ctx, &sandboxv1.SignalRequest{Id: args[0], WorkloadId: args[1], Signal: sig})
				if err != nil {
					return fromRPC(err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), args[1])
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "SIGKILL",
		"signal to send: a name such as TERM or SIGINT, or a Linux signal number")
	return cmd
}
