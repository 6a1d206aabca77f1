package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newCheckpointCommand(g *globalOptions) *cobra.Command {
	var (
		name   string
		labels []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "checkpoint [flags] ID",
		Short: "Snapshot a ready sandbox and print the snapshot's ID",
		Long: `Snapshot a ready sandbox: pause it, write its memory, device state and a
copy of its disk, and resume it. Prints the snapshot's ID, which restore
takes. A sandbox with a running command cannot be checkpointed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			parsed, err := parseLabels("label", labels)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				resp, err := c.snapshot.Checkpoint(ctx, &sandboxv1.CheckpointRequest{
					SandboxId: args[0], Name: name, Labels: parsed,
				})
				if err != nil {
					return fromRPC(err)
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.GetSnapshotId())
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "name of the snapshot, free text")
	f.StringArrayVarP(&labels, "label", "l", nil, "label KEY=VALUE of the snapshot (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func newRestoreCommand(g *globalOptions) *cobra.Command {
	var (
		id     string
		labels []string
		ttl    time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "restore [flags] SNAPSHOT",
		Short: "Start a new sandbox from a snapshot and print its ID",
		Long: `Start a new sandbox from a snapshot, with its own copy of the disk and a
fresh address, and print its ID once it is ready.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			parsed, err := parseLabels("label", labels)
			if err != nil {
				return err
			}
			seconds, err := wholeSeconds("--ttl", ttl)
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				resp, err := c.snapshot.Restore(ctx, &sandboxv1.RestoreRequest{
					Id: id, SnapshotId: args[0], Labels: parsed, TtlSeconds: seconds, NetworkOverride: true,
				})
				if err != nil {
					return fromRPC(err)
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.GetId())
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "ID of the new sandbox (default generated)")
	f.StringArrayVarP(&labels, "label", "l", nil, "label KEY=VALUE of the new sandbox (repeatable)")
	f.DurationVar(&ttl, "ttl", 0, "remove the new sandbox this long after the restore, in whole seconds (default never)")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}
