package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Report is the outcome of one run. Histograms hold microseconds.
type Report struct {
	// Scenario is the scenario's name.
	Scenario string
	// Target is the gRPC address driven.
	Target string
	// InProcess reports whether the bench started the mesh itself.
	InProcess bool
	// Store is the mesh's storage mode, or "unknown".
	Store string
	// Concurrency is the number of workers.
	Concurrency int
	// GOMAXPROCS of the bench process; with an in-process mesh the load
	// generator and the server share these CPUs.
	GOMAXPROCS int
	// Warmup is the unrecorded warm-up before the window.
	Warmup time.Duration
	// Elapsed is the measured window, from its start until the last worker
	// stopped.
	Elapsed time.Duration
	// Errors counts scenario operations that failed in the window.
	Errors int64
	// BaselineErrors counts baseline Health/Checks that failed in the window.
	BaselineErrors int64
	// Latency holds the successful scenario operations; its count is Ops.
	Latency *hdrhistogram.Histogram
	// Baseline holds the successful baseline Health/Checks.
	Baseline *hdrhistogram.Histogram
	// Timings are the named sub-latencies recorded with Record.
	Timings map[string]*hdrhistogram.Histogram
	// Counters are the named counters recorded with Count.
	Counters map[string]int64
	// Fields are the scenario's own fields.
	Fields map[string]any
	// ErrorSamples are the first distinct error messages.
	ErrorSamples []ErrorSample
	// Interrupted reports that the run was cancelled before its end.
	Interrupted bool
}

// Ops is the number of scenario operations that succeeded in the window.
func (r *Report) Ops() int64 { return count(r.Latency) }

// BaselineOps is the number of baseline Health/Checks that succeeded in the
// window.
func (r *Report) BaselineOps() int64 { return count(r.Baseline) }

// Throughput is successful scenario operations per second of the window.
func (r *Report) Throughput() float64 { return rate(r.Ops(), r.Elapsed) }

// Summary is the percentiles of a latency histogram, in microseconds.
type Summary struct {
	P50 int64 `json:"p50"`
	P95 int64 `json:"p95"`
	P99 int64 `json:"p99"`
	Max int64 `json:"max"`
}

// Summarize returns the percentiles of h (all zero when h is nil or empty).
func Summarize(h *hdrhistogram.Histogram) Summary {
	if count(h) == 0 {
		return Summary{}
	}
	return Summary{
		P50: h.ValueAtQuantile(50),
		P95: h.ValueAtQuantile(95),
		P99: h.ValueAtQuantile(99),
		Max: h.Max(),
	}
}

// Ratio returns scenario / baseline rounded to three decimals, or nil when
// either is zero (no samples): a ratio that cannot be computed is reported
// as null, never as 0 or infinity.
func Ratio(scenario, baseline int64) *float64 {
	if scenario <= 0 || baseline <= 0 {
		return nil
	}
	r := round(float64(scenario)/float64(baseline), 3)
	return &r
}

// field is one key of the JSON object, in output order.
type field struct {
	key   string
	value any
}

// fields lists the report's JSON object: the standard fields first, then
// counters, timings and the scenario's fields, each sorted by name. It fails
// when a scenario name collides with another.
func (r *Report) fields() ([]field, error) {
	lat, base := Summarize(r.Latency), Summarize(r.Baseline)
	samples := r.ErrorSamples
	if samples == nil {
		samples = []ErrorSample{}
	}
	out := []field{
		{"scenario", r.Scenario},
		{"target", r.Target},
		{"in_process", r.InProcess},
		{"store", r.Store},
		{"concurrency", r.Concurrency},
		{"gomaxprocs", r.GOMAXPROCS},
		{"warmup_s", round(r.Warmup.Seconds(), 3)},
		{"duration_s", round(r.Elapsed.Seconds(), 3)},
		{"ops", r.Ops()},
		{"errors", r.Errors},
		{"throughput_per_s", round(r.Throughput(), 1)},
		{"latency_us", lat},
		{"baseline_ops", r.BaselineOps()},
		{"baseline_errors", r.BaselineErrors},
		{"baseline_latency_us", base},
		{"ratio_p50", Ratio(lat.P50, base.P50)},
		{"ratio_p95", Ratio(lat.P95, base.P95)},
		{"ratio_p99", Ratio(lat.P99, base.P99)},
		{"error_samples", samples},
		{"interrupted", r.Interrupted},
	}
	seen := map[string]bool{}
	for _, f := range out {
		seen[f.key] = true
	}
	add := func(key string, v any) error {
		if seen[key] {
			return fmt.Errorf("bench: scenario %s reports field %q twice or over a standard field", r.Scenario, key)
		}
		seen[key] = true
		out = append(out, field{key, v})
		return nil
	}
	for _, name := range sortedKeys(r.Counters) {
		n := r.Counters[name]
		if err := add(name, n); err != nil {
			return nil, err
		}
		if err := add(name+"_per_s", round(rate(n, r.Elapsed), 1)); err != nil {
			return nil, err
		}
	}
	for _, name := range sortedKeys(r.Timings) {
		if err := add(name+"_latency_us", Summarize(r.Timings[name])); err != nil {
			return nil, err
		}
	}
	for _, name := range sortedKeys(r.Fields) {
		if err := add(name, r.Fields[name]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// check reports a collision of scenario field names, or a field encoding
// cannot marshal.
func (r *Report) check() error {
	_, err := r.MarshalJSON()
	return err
}

// MarshalJSON encodes the report as one JSON object with the standard
// fields in a fixed order:
//
//	{"scenario", "target", "in_process", "store", "concurrency", "gomaxprocs",
//	 "warmup_s", "duration_s", "ops", "errors", "throughput_per_s",
//	 "latency_us": {"p50", "p95", "p99", "max"}, "baseline_ops",
//	 "baseline_errors", "baseline_latency_us": {"p50", "p95", "p99", "max"},
//	 "ratio_p50", "ratio_p95", "ratio_p99", "error_samples", "interrupted",
//	 ...counters (and "<name>_per_s"), ...timings ("<name>_latency_us"),
//	 ...scenario fields}
//
// Latencies are whole microseconds; ratios are scenario / baseline
// percentiles, null when either has no samples.
func (r *Report) MarshalJSON() ([]byte, error) {
	fs, err := r.fields()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range fs {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, fmt.Errorf("bench: field %q: %w", f.key, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// WriteJSON writes the report as one JSON object and a newline.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := r.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteTable writes the report for a person to read.
func (r *Report) WriteTable(w io.Writer) error {
	lat, base := Summarize(r.Latency), Summarize(r.Baseline)
	where := "running mesh"
	if r.InProcess {
		where = "in-process mesh"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\t%s\n", r.Scenario)
	fmt.Fprintf(tw, "target\t%s (%s, store %s)\n", r.Target, where, r.Store)
	fmt.Fprintf(tw, "load\t%d workers, GOMAXPROCS %d, %s measured after %s warm-up\n",
		r.Concurrency, r.GOMAXPROCS, r.Elapsed.Round(time.Millisecond), r.Warmup)
	if r.Interrupted {
		fmt.Fprintf(tw, "note\tinterrupted: partial results\n")
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "\tops\terrors\tops/s\tp50\tp95\tp99\tmax\n")
	row := func(name string, ops, errs any, perS string, s Summary) {
		fmt.Fprintf(tw, "%s\t%v\t%v\t%s\t%s\t%s\t%s\t%s\n", name, ops, errs, perS,
			formatUS(s.P50), formatUS(s.P95), formatUS(s.P99), formatUS(s.Max))
	}
	row(r.Scenario, r.Ops(), r.Errors, fmt.Sprintf("%.1f", r.Throughput()), lat)
	for _, name := range sortedKeys(r.Timings) {
		h := r.Timings[name]
		row("  "+name, count(h), "", fmt.Sprintf("%.1f", rate(count(h), r.Elapsed)), Summarize(h))
	}
	row("baseline Health/Check", r.BaselineOps(), r.BaselineErrors, fmt.Sprintf("%.1f", rate(r.BaselineOps(), r.Elapsed)), base)
	fmt.Fprintf(tw, "ratio scenario/baseline\t\t\t\t%s\t%s\t%s\t\n",
		formatRatio(Ratio(lat.P50, base.P50)), formatRatio(Ratio(lat.P95, base.P95)), formatRatio(Ratio(lat.P99, base.P99)))
	if len(r.Counters) > 0 || len(r.Fields) > 0 {
		fmt.Fprintln(tw)
	}
	for _, name := range sortedKeys(r.Counters) {
		n := r.Counters[name]
		fmt.Fprintf(tw, "%s\t%d (%.1f/s)\n", name, n, rate(n, r.Elapsed))
	}
	for _, name := range sortedKeys(r.Fields) {
		fmt.Fprintf(tw, "%s\t%v\n", name, r.Fields[name])
	}
	if len(r.ErrorSamples) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintf(tw, "errors\tfirst %d distinct messages:\n", len(r.ErrorSamples))
		for _, s := range r.ErrorSamples {
			fmt.Fprintf(tw, "\t%d× %s\n", s.Count, oneLine(s.Message))
		}
	}
	return tw.Flush()
}

func count(h *hdrhistogram.Histogram) int64 {
	if h == nil {
		return 0
	}
	return h.TotalCount()
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

// formatUS prints microseconds as µs below a millisecond and ms above.
func formatUS(us int64) string {
	switch {
	case us == 0:
		return "-"
	case us < 1000:
		return fmt.Sprintf("%dµs", us)
	default:
		return fmt.Sprintf("%.2fms", float64(us)/1000)
	}
}

func formatRatio(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f×", *r)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
