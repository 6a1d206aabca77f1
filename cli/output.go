package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jsonOptions prints messages with the field names of the .proto file
// (snake_case), which are also the contract's JSON names, and with every
// field present, so scripts need no defaults. As in every proto3 JSON
// encoding, 64-bit integers are strings.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// printJSON writes m as one line of JSON.
func printJSON(w io.Writer, m proto.Message) error {
	data, err := jsonOptions.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// newTable returns a writer that aligns tab-separated columns; call
// Flush when done.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
}

// formatLabels returns k=v pairs sorted by key, comma-separated.
func formatLabels(labels map[string]string) string {
	pairs := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		pairs = append(pairs, k+"="+labels[k])
	}
	return strings.Join(pairs, ",")
}

// parseLabels parses repeated KEY=VALUE flags.
func parseLabels(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	labels := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("invalid --%s %q: use KEY=VALUE", flag, p)
		}
		labels[k] = v
	}
	return labels, nil
}

// formatUnix formats Unix seconds as local time, or "-" for 0.
func formatUnix(sec int64) string {
	if sec == 0 {
		return "-"
	}
	return time.Unix(sec, 0).Format("2006-01-02 15:04:05")
}

// formatAge returns how long ago Unix second sec was, as "42s ago".
func formatAge(sec int64, now time.Time) string {
	if sec == 0 {
		return "-"
	}
	d := now.Sub(time.Unix(sec, 0))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// orDash returns s, or "-" for an empty column.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// withClient connects to the daemon, runs fn and closes the connection.
// It is the body of every verb that only talks to the daemon.
func withClient(cmd *cobra.Command, g *globalOptions, fn func(ctx context.Context, c *daemonClient) error) error {
	ctx := cmd.Context()
	c, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, c)
}

// forEachID runs fn for every id, prints each id that succeeded, and
// returns the failures joined, so one bad id does not stop the others.
func forEachID(w io.Writer, ids []string, fn func(id string) error) error {
	var failed []string
	for _, id := range ids {
		if err := fn(id); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		fmt.Fprintln(w, id)
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%s", failed[0])
	}
	return fmt.Errorf("%d of %d failed:\n  %s", len(failed), len(ids), strings.Join(failed, "\n  "))
}
