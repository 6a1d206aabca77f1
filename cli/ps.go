package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newPsCommand(g *globalOptions) *cobra.Command {
	var (
		quiet  bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "ps [flags] ID",
		Short: "List the commands running in a sandbox",
		Long: `List the commands running in a sandbox, oldest first. The WORKLOAD
column is the ID that hearth kill takes.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				control := sandboxv1.NewSandboxControlServiceClient(c.conn)
				resp, err := control.ListWorkloads(ctx, &sandboxv1.ListWorkloadsRequest{Id: args[0]})
				if err != nil {
					return fromRPC(err)
				}
				w := cmd.OutOrStdout()
				switch {
				case asJSON:
					return printJSON(w, resp)
				case quiet:
					for _, wl := range resp.GetWorkloads() {
						fmt.Fprintln(w, wl.GetId())
					}
					return nil
				}
				return printWorkloads(w, resp.GetWorkloads(), time.Now())
			})
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the workload IDs")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func printWorkloads(w io.Writer, list []*sandboxv1.Workload, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "WORKLOAD\tSTARTED\tTTY\tUSER\tCOMMAND")
	for _, wl := range list {
		tty := "no"
		if wl.GetTty() {
			tty = "yes"
		}
		started := formatAge(time.Unix(0, wl.GetStartedAt()).Unix(), now)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", wl.GetId(), started, tty, orDash(wl.GetUser()),
			strings.Join(wl.GetCmd(), " "))
	}
	return tw.Flush()
}
