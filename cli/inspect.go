package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newInspectCommand(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect [--json] ID",
		Short: "Show the record of one sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				info, err := c.sandbox.Inspect(ctx, &sandboxv1.InspectSandboxRequest{Id: args[0]})
				if err != nil {
					return fromRPC(err)
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), info)
				}
				return printInfo(cmd.OutOrStdout(), info)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record as JSON")
	return cmd
}

func printInfo(w io.Writer, info *sandboxv1.SandboxInfo) error {
	lastExit := "-"
	if info.GetLastExitedAt() != 0 {
		lastExit = fmt.Sprintf("%d at %s", info.GetLastExitCode(), formatUnix(info.GetLastExitedAt()))
	}
	net := info.GetNetwork()
	rows := [][2]string{
		{"ID", info.GetId()},
		{"State", info.GetState()},
		{"Labels", orDash(formatLabels(info.GetLabels()))},
		{"vCPUs", fmt.Sprint(info.GetLimits().GetVcpus())},
		{"Memory", fmt.Sprintf("%d MiB", info.GetLimits().GetMemoryMib())},
		{"Address", orDash(net.GetIpAddress())},
		{"Gateway", orDash(net.GetGateway())},
		{"TAP", orDash(net.GetTapName())},
		{"MAC", orDash(net.GetMacAddress())},
		{"Created", formatUnix(info.GetCreatedAt())},
		{"Ready", formatUnix(info.GetReadyAt())},
		{"Expires", formatUnix(info.GetExpiresAt())},
		{"Workloads", fmt.Sprint(info.GetWorkloads())},
		{"Last exit", lastExit},
	}
	if info.GetError() != "" {
		rows = append(rows, [2]string{"Error", info.GetError()})
	}
	tw := newTable(w)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}
