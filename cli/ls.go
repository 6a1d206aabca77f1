package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newListCommand(g *globalOptions) *cobra.Command {
	var (
		state  string
		labels []string
		quiet  bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list"},
		Short:   "List the daemon's sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := parseLabels("label", labels)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				resp, err := c.sandbox.List(ctx, &sandboxv1.ListSandboxesRequest{State: state, Labels: filter})
				if err != nil {
					return fromRPC(err)
				}
				w := cmd.OutOrStdout()
				switch {
				case asJSON:
					return printJSON(w, resp)
				case quiet:
					for _, s := range resp.GetSandboxes() {
						fmt.Fprintln(w, s.GetId())
					}
					return nil
				}
				return printSandboxes(w, resp.GetSandboxes(), time.Now())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only sandboxes in this state: starting, ready, running, paused, stopping, stopped or failed")
	f.StringArrayVarP(&labels, "label", "l", nil, "only sandboxes with label KEY=VALUE (repeatable; all must match)")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the IDs")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func printSandboxes(w io.Writer, list []*sandboxv1.SandboxSummary, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tSTATE\tADDRESS\tCREATED\tLABELS")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.GetId(), s.GetState(), orDash(s.GetIpAddress()),
			formatAge(s.GetCreatedAt(), now), orDash(formatLabels(s.GetLabels())))
	}
	return tw.Flush()
}
