package bench

import (
	"math"
	"strings"
	"testing"
)

func TestResultFinish(t *testing.T) {
	floor := &Floor{Name: "floor", Stats: Stats{N: 10, Median: 2}}
	tests := []struct {
		name      string
		result    Result
		wantRatio float64
		wantMet   *bool
	}{
		{"time ratio within goal",
			Result{Stats: Stats{N: 10, Median: 2.5}, Floor: floor, Goal: &Goal{Kind: GoalMaxRatio, Limit: 1.3}},
			1.25, ptr(true)},
		{"time ratio over goal",
			Result{Stats: Stats{N: 10, Median: 3}, Floor: floor, Goal: &Goal{Kind: GoalMaxRatio, Limit: 1.3}},
			1.5, ptr(false)},
		{"throughput ratio under goal",
			Result{Stats: Stats{N: 5, Median: 4}, Floor: floor, RatioKind: RatioThroughput, Goal: &Goal{Kind: GoalMinRatio, Limit: 0.6}},
			0.5, ptr(false)},
		{"throughput ratio meets goal",
			Result{Stats: Stats{N: 5, Median: 2.5}, Floor: floor, RatioKind: RatioThroughput, Goal: &Goal{Kind: GoalMinRatio, Limit: 0.6}},
			0.8, ptr(true)},
		{"value goal checks median",
			Result{Stats: Stats{N: 3, Median: 1e-3, Max: 9e-3}, Goal: &Goal{Kind: GoalMaxValue, Limit: 2e-3}},
			0, ptr(true)},
		{"peak goal checks max",
			Result{Stats: Stats{N: 3, Median: 1, Max: 9}, Goal: &Goal{Kind: GoalMaxPeak, Limit: 5}},
			0, ptr(false)},
		{"no goal", Result{Stats: Stats{N: 1, Median: 1}, Floor: floor}, 0.5, nil},
		{"skipped has no ratio",
			Result{Skipped: "no qemu", Floor: floor, Goal: &Goal{Kind: GoalMaxRatio, Limit: 1}}, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.result
			r.finish()
			if math.Abs(r.Ratio-tc.wantRatio) > 1e-9 {
				t.Errorf("got ratio %v, want %v", r.Ratio, tc.wantRatio)
			}
			switch {
			case tc.wantMet == nil && r.Met != nil:
				t.Errorf("got met %v, want none", *r.Met)
			case tc.wantMet != nil && r.Met == nil:
				t.Errorf("got no met, want %v", *tc.wantMet)
			case tc.wantMet != nil && *r.Met != *tc.wantMet:
				t.Errorf("got met %v, want %v", *r.Met, *tc.wantMet)
			}
		})
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		name  string
		value float64
		unit  string
		want  string
	}{
		{"microseconds", 580e-6, UnitSeconds, "580 µs"},
		{"milliseconds", 1.524e-3, UnitSeconds, "1.52 ms"},
		{"seconds", 1.7, UnitSeconds, "1.70 s"},
		{"kibibytes", 42 << 10, UnitBytes, "42 KiB"},
		{"mebibytes", 3.8 * (1 << 20), UnitBytes, "3.8 MiB"},
		{"gibibytes", 1 << 30, UnitBytes, "1.00 GiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatValue(tc.value, tc.unit); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWriteMarkdownRowPerResult(t *testing.T) {
	rep := &Report{Results: []Result{
		{Title: "a", Unit: UnitSeconds, Stats: Stats{N: 1, Median: 1}},
		{Title: "b", Unit: UnitSeconds, Skipped: "no qemu"},
	}}
	var out strings.Builder
	rep.WriteMarkdown(&out)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want 4 (header, rule, two rows):\n%s", len(lines), out.String())
	}
	for i, line := range lines[2:] {
		if got := strings.Count(line, "|"); got != 10 {
			t.Errorf("row %d: got %d column separators, want 10: %q", i, got, line)
		}
	}
}

func ptr[T any](v T) *T { return &v }
