package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

func newTTLCommand(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ttl ID DURATION|0",
		Short: "Make a sandbox expire DURATION from now, or never with 0",
		Long: `Make a sandbox expire DURATION from now (whole seconds, such as 90s or
10m), after which the daemon removes it; 0 clears its TTL. Prints the new
expiry time.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			seconds, err := parseTTL(args[1])
			if err != nil {
				return err
			}
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				info, err := c.control.SetTTL(ctx, &sandboxv1.SetTTLRequest{Id: args[0], TtlSeconds: seconds})
				if err != nil {
					return fromRPC(err)
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), info)
				}
				if info.GetExpiresAt() == 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "%s expires never\n", info.GetId())
					return nil
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s expires at %s\n", info.GetId(), formatUnix(info.GetExpiresAt()))
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the updated record as JSON")
	return cmd
}

// parseTTL accepts "0" or a Go duration of whole seconds.
func parseTTL(s string) (uint32, error) {
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid TTL %q: use a duration such as 90s or 10m, or 0 for none", s)
	}
	return wholeSeconds("TTL", d)
}
