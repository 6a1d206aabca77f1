package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newEventsCommand(g *globalOptions) *cobra.Command {
	var (
		id     string
		action string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "events [flags]",
		Short: "Print sandbox lifecycle events as they happen, until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cmd.SetContext(ctx)
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				stream, err := c.sandbox.Events(ctx, &sandboxv1.SandboxEventsRequest{Id: id, Action: action})
				if err != nil {
					return fromRPC(err)
				}
				err = printEvents(cmd.OutOrStdout(), stream, asJSON)
				if ctx.Err() != nil {
					// Interrupted, which is how the verb ends.
					return nil
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "only events of this sandbox")
	f.StringVar(&action, "action", "", "only this action: created, ready, running, idle, stopping, stopped, failed, removed, checkpointed, paused or resumed")
	f.BoolVar(&asJSON, "json", false, "print each event as one line of JSON")
	return cmd
}

// printEvents writes each event as it arrives, one per line.
func printEvents(w io.Writer, stream interface {
	Recv() (*sandboxv1.SandboxEvent, error)
}, asJSON bool) error {
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fromRPC(err)
		}
		if asJSON {
			err = printJSON(w, ev)
		} else {
			_, err = fmt.Fprintln(w, formatEvent(ev))
		}
		if err != nil {
			return err
		}
	}
}

// formatEvent returns "TIME SANDBOX ACTION key=value...".
func formatEvent(ev *sandboxv1.SandboxEvent) string {
	ts := time.Unix(0, ev.GetTimestamp()).Format("2006-01-02T15:04:05.000Z07:00")
	parts := []string{ts, ev.GetSandboxId(), ev.GetAction()}
	attrs := ev.GetAttributes()
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		parts = append(parts, fmt.Sprintf("%s=%q", k, attrs[k]))
	}
	return strings.Join(parts, " ")
}
