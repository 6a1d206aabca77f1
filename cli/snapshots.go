package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newSnapshotsCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "List and delete snapshots",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newSnapshotsListCommand(g), newSnapshotsRemoveCommand(g))
	return cmd
}

func newSnapshotsListCommand(g *globalOptions) *cobra.Command {
	var (
		sandboxID string
		labels    []string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list"},
		Short:   "List snapshots, oldest first",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := parseLabels("label", labels)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				resp, err := c.snapshot.ListSnapshots(ctx, &sandboxv1.ListSnapshotsRequest{SandboxId: sandboxID, Labels: filter})
				if err != nil {
					return fromRPC(err)
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				return printSnapshots(cmd.OutOrStdout(), resp.GetSnapshots(), time.Now())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&sandboxID, "sandbox", "", "only snapshots taken of this sandbox")
	f.StringArrayVarP(&labels, "label", "l", nil, "only snapshots with label KEY=VALUE (repeatable; all must match)")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func printSnapshots(w io.Writer, list []*sandboxv1.SnapshotSummary, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tSANDBOX\tNAME\tCREATED\tLABELS")
	for _, s := range list {
		created := s.GetCreatedAt()
		if t, err := time.Parse(time.RFC3339, created); err == nil {
			created = formatAge(t.Unix(), now)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.GetId(), s.GetSandboxId(), orDash(s.GetName()),
			orDash(created), orDash(formatLabels(s.GetLabels())))
	}
	return tw.Flush()
}

func newSnapshotsRemoveCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "rm SNAPSHOT...",
		Short: "Delete snapshots and their files",
		Long: `Delete snapshots and their files. A snapshot that a restored sandbox still
runs from cannot be deleted until that sandbox is stopped or removed.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return forEachID(cmd.OutOrStdout(), args, func(id string) error {
					_, err := c.snapshot.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: id})
					return fromRPC(err)
				})
			})
		},
	}
}
