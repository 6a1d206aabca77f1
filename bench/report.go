package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Units of a Result's values.
const (
	UnitSeconds = "s"
	UnitBytes   = "bytes"
)

// Ways a Result's ratio to its floor is taken.
const (
	// RatioTime is the measure's median over the floor's median: how
	// many times longer hearth takes. Lower is better.
	RatioTime = "time"
	// RatioThroughput is the floor's median time over the measure's
	// median time: the fraction of the floor's throughput that hearth
	// reaches. Higher is better.
	RatioThroughput = "throughput"
)

// Kinds of Goal.
const (
	GoalMaxRatio = "max_ratio" // the ratio must not exceed Limit
	GoalMinRatio = "min_ratio" // the ratio must be at least Limit
	GoalMaxValue = "max_value" // the median must not exceed Limit, in the unit
	GoalMaxPeak  = "max_peak"  // no sample may exceed Limit, in the unit
)

// Goal is the target a measure is held to.
type Goal struct {
	Kind  string  `json:"kind"`
	Limit float64 `json:"limit"`
}

// Floor is the measure a Result is divided by.
type Floor struct {
	Name  string `json:"name"`
	Stats Stats  `json:"stats"`
}

// Result is one row of the report.
type Result struct {
	// Name is the stable identifier, such as "exec.fcdouble.daemon".
	Name string `json:"name"`
	// Title is the row's label in the table.
	Title string `json:"title"`
	Unit  string `json:"unit"`
	Stats Stats  `json:"stats"`
	// Floor, when set, is the measure Ratio is taken against, in the way
	// RatioKind names.
	Floor     *Floor  `json:"floor,omitempty"`
	RatioKind string  `json:"ratio_kind,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"`
	Goal      *Goal   `json:"goal,omitempty"`
	// Met reports whether the goal was met; nil without a goal.
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
	// Skipped, when set, is why the measure did not run; Stats is then
	// zero.
	Skipped string `json:"skipped,omitempty"`
}

// finish computes the ratio to the floor and checks the goal.
func (r *Result) finish() {
	if r.Skipped != "" {
		return
	}
	if r.Floor != nil && r.Floor.Stats.Median > 0 && r.Stats.Median > 0 {
		switch r.RatioKind {
		case RatioThroughput:
			r.Ratio = r.Floor.Stats.Median / r.Stats.Median
		default:
			r.RatioKind = RatioTime
			r.Ratio = r.Stats.Median / r.Floor.Stats.Median
		}
	}
	if r.Goal == nil {
		return
	}
	var met bool
	switch r.Goal.Kind {
	case GoalMaxRatio:
		met = r.Ratio > 0 && r.Ratio <= r.Goal.Limit
	case GoalMinRatio:
		met = r.Ratio >= r.Goal.Limit
	case GoalMaxValue:
		met = r.Stats.N > 0 && r.Stats.Median <= r.Goal.Limit
	case GoalMaxPeak:
		met = r.Stats.N > 0 && r.Stats.Max <= r.Goal.Limit
	}
	r.Met = &met
}

// Machine describes the host the run measured.
type Machine struct {
	Cores     int    `json:"cores"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	MemTotal  string `json:"mem_total"`
	GoVersion string `json:"go_version"`
	// LoadAvgStart and LoadAvgEnd are the 1, 5 and 15 minute load
	// averages of /proc/loadavg before the first and after the last
	// measure.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	// Revision is hearth's VCS revision as stamped into the binary,
	// with "+dirty" when the tree had changes.
	Revision string `json:"revision,omitempty"`
}

// Report is the outcome of one run.
type Report struct {
	Started  time.Time `json:"started"`
	Duration float64   `json:"duration_s"`
	Quick    bool      `json:"quick"`
	Machine  Machine   `json:"machine"`
	Results  []Result  `json:"results"`
}

// WriteJSON writes the report to path, indented.
func (rep *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

// WriteTable prints the machine and one line per result.
func (rep *Report) WriteTable(w io.Writer) error {
	m := rep.Machine
	fmt.Fprintf(w, "hearth benchmarks, %s, %.0f s\n", rep.Started.UTC().Format("2006-01-02 15:04 MST"), rep.Duration)
	fmt.Fprintf(w, "machine: %d cores (%s), %s memory, kernel %s, %s\n", m.Cores, m.CPUModel, m.MemTotal, m.Kernel, m.GoVersion)
	fmt.Fprintf(w, "load average: %s at start, %s at end\n", m.LoadAvgStart, m.LoadAvgEnd)
	if m.Revision != "" {
		fmt.Fprintf(w, "revision: %s\n", m.Revision)
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measure\tn\tmedian\tp90\tp99\tfloor (median)\tratio\tgoal\tmet\t")
	for _, r := range rep.Results {
		fmt.Fprintln(tw, r.tableRow())
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	var notes []string
	for _, r := range rep.Results {
		switch {
		case r.Skipped != "":
			notes = append(notes, fmt.Sprintf("%s: skipped: %s", r.Title, r.Skipped))
		case r.Note != "":
			notes = append(notes, fmt.Sprintf("%s: %s", r.Title, r.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n%s\n", strings.Join(notes, "\n"))
	}
	return nil
}

// WriteMarkdownFile writes the machine line and the results as a
// Markdown table to path, for the documentation.
func (rep *Report) WriteMarkdownFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write markdown table: %w", err)
	}
	m := rep.Machine
	fmt.Fprintf(f, "Measured %s on %d cores (%s), %s memory, kernel %s, load average %s at start and %s at end; %.0f s in all.\n\n",
		rep.Started.Format("2006-01-02"), m.Cores, m.CPUModel, m.MemTotal, m.Kernel, m.LoadAvgStart, m.LoadAvgEnd, rep.Duration)
	rep.WriteMarkdown(f)
	return f.Close()
}

// WriteMarkdown prints the results as a Markdown table.
func (rep *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintln(w, "| measure | n | median | p90 | p99 | floor (median) | ratio | goal | met |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|:-:|")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "| %s |\n", strings.ReplaceAll(strings.TrimSuffix(r.tableRow(), "\t"), "\t", " | "))
	}
}

func (r Result) tableRow() string {
	if r.Skipped != "" {
		return strings.Join([]string{r.Title, "-", "-", "-", "-", "-", "-", r.goalText(), "skipped", ""}, "\t")
	}
	floor, ratio := "", ""
	if r.Floor != nil {
		floor = formatValue(r.Floor.Stats.Median, r.Unit)
	}
	if r.Ratio > 0 {
		ratio = formatRatio(r.Ratio, r.RatioKind)
	}
	met := ""
	if r.Met != nil {
		met = "no"
		if *r.Met {
			met = "yes"
		}
	}
	return strings.Join([]string{
		r.Title, fmt.Sprint(r.Stats.N),
		formatValue(r.Stats.Median, r.Unit), formatValue(r.Stats.P90, r.Unit), formatValue(r.Stats.P99, r.Unit),
		floor, ratio, r.goalText(), met, "",
	}, "\t")
}

func (r Result) goalText() string {
	if r.Goal == nil {
		return ""
	}
	switch r.Goal.Kind {
	case GoalMaxRatio:
		return "≤ " + formatRatio(r.Goal.Limit, RatioTime)
	case GoalMinRatio:
		return "≥ " + formatRatio(r.Goal.Limit, RatioThroughput)
	case GoalMaxValue:
		return "< " + formatValue(r.Goal.Limit, r.Unit)
	case GoalMaxPeak:
		return "max < " + formatValue(r.Goal.Limit, r.Unit)
	}
	return ""
}

func formatRatio(v float64, kind string) string {
	if kind == RatioThroughput {
		return fmt.Sprintf("%.2f of floor", v)
	}
	return fmt.Sprintf("%.2f×", v)
}

// formatValue prints seconds or bytes with a unit that keeps three
// significant digits readable.
func formatValue(v float64, unit string) string {
	switch unit {
	case UnitBytes:
		switch a := math.Abs(v); {
		case a >= 1<<30:
			return fmt.Sprintf("%.2f GiB", v/(1<<30))
		case a >= 1<<20:
			return fmt.Sprintf("%.1f MiB", v/(1<<20))
		case a >= 1<<10:
			return fmt.Sprintf("%.0f KiB", v/(1<<10))
		default:
			return fmt.Sprintf("%.0f B", v)
		}
	default:
		switch a := math.Abs(v); {
		case a >= 1:
			return fmt.Sprintf("%.2f s", v)
		case a >= 1e-3:
			return fmt.Sprintf("%.2f ms", v*1e3)
		default:
			return fmt.Sprintf("%.0f µs", v*1e6)
		}
	}
}
