package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// histOf returns a histogram holding values.
func histOf(t *testing.T, values ...int64) *hdrhistogram.Histogram {
	t.Helper()
	h := newHistogram()
	for _, v := range values {
		if err := h.RecordValue(v); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// series returns from, from+step, ... n values.
func series(from, step int64, n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = from + int64(i)*step
	}
	return out
}

func ptr(v float64) *float64 { return &v }

func TestSummarize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		h    *hdrhistogram.Histogram
		want Summary
	}{
		{"nil", nil, Summary{}},
		{"empty", newHistogram(), Summary{}},
		{"one value", histOf(t, 250), Summary{P50: 250, P95: 250, P99: 250, Max: 250}},
		// Values below 2048 are exact at three significant digits.
		{"1 to 100", histOf(t, series(1, 1, 100)...), Summary{P50: 50, P95: 95, P99: 99, Max: 100}},
		{"2 to 200", histOf(t, series(2, 2, 100)...), Summary{P50: 100, P95: 190, P99: 198, Max: 200}},
		// Above 2048 values share buckets: within 0.1%.
		{"one slow outlier", histOf(t, append(series(100, 0, 999), 1_000_000)...), Summary{P50: 100, P95: 100, P99: 100, Max: 1_000_447}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tc.want, Summarize(tc.h)); diff != "" {
				t.Errorf("Summarize (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRatio(t *testing.T) {
	t.Parallel()
	tests := []struct {
		scenario, baseline int64
		want               *float64
	}{
		{200, 100, ptr(2)},
		{100, 100, ptr(1)},
		{150, 100, ptr(1.5)},
		{1, 3, ptr(0.333)},
		{2, 3, ptr(0.667)},
		{100, 0, nil},
		{0, 100, nil},
		{0, 0, nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d/%d", tc.scenario, tc.baseline), func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tc.want, Ratio(tc.scenario, tc.baseline)); diff != "" {
				t.Errorf("Ratio (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRecordLatency(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want int64
	}{
		{0, 1},
		{300 * time.Nanosecond, 1},
		{1499 * time.Nanosecond, 1},
		{1500 * time.Nanosecond, 2},
		{250 * time.Microsecond, 250},
		{time.Hour, maxLatencyUS}, // clamped
	}
	for _, tc := range tests {
		t.Run(tc.d.String(), func(t *testing.T) {
			t.Parallel()
			h := newHistogram()
			recordLatency(h, tc.d)
			if h.TotalCount() != 1 {
				t.Fatalf("count = %d, want 1", h.TotalCount())
			}
			if got := h.Max(); !h.ValuesAreEquivalent(got, tc.want) {
				t.Errorf("recorded %d µs, want %d µs", got, tc.want)
			}
		})
	}
}

// knownReport has histograms whose percentiles are exact: the scenario's
// latencies are twice the baseline's.
func knownReport(t *testing.T) *Report {
	return &Report{
		Scenario:       "experiments",
		Target:         "127.0.0.1:50051",
		InProcess:      true,
		Store:          "sqlite",
		Concurrency:    2,
		GOMAXPROCS:     2,
		Warmup:         100 * time.Millisecond,
		Elapsed:        2 * time.Second,
		Errors:         3,
		BaselineErrors: 1,
		Latency:        histOf(t, series(2, 2, 100)...), // p50 100, p95 190, p99 198
		Baseline:       histOf(t, series(1, 1, 100)...), // p50 50, p95 95, p99 99
		Timings:        map[string]*hdrhistogram.Histogram{"create": histOf(t, 10, 20, 30), "get": histOf(t, 5)},
		Counters:       map[string]int64{"creates": 101, "gets": 100},
		Fields:         map[string]any{"op": "CreateExperiment+GetExperiment"},
		ErrorSamples:   []ErrorSample{{Message: "Internal: boom", Count: 3}, {Message: "baseline: Unavailable: gone", Count: 1}},
	}
}

func TestReportJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(knownReport(t))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	// Every key the command promises, with its value.
	want := map[string]any{
		"scenario":            "experiments",
		"target":              "127.0.0.1:50051",
		"in_process":          true,
		"store":               "sqlite",
		"concurrency":         2.0,
		"gomaxprocs":          2.0,
		"warmup_s":            0.1,
		"duration_s":          2.0,
		"ops":                 100.0,
		"errors":              3.0,
		"throughput_per_s":    50.0,
		"latency_us":          map[string]any{"p50": 100.0, "p95": 190.0, "p99": 198.0, "max": 200.0},
		"baseline_ops":        100.0,
		"baseline_errors":     1.0,
		"baseline_latency_us": map[string]any{"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0},
		"ratio_p50":           2.0,
		"ratio_p95":           2.0,
		"ratio_p99":           2.0,
		"error_samples": []any{
			map[string]any{"message": "Internal: boom", "count": 3.0},
			map[string]any{"message": "baseline: Unavailable: gone", "count": 1.0},
		},
		"interrupted":       false,
		"creates":           101.0,
		"creates_per_s":     50.5,
		"gets":              100.0,
		"gets_per_s":        50.0,
		"create_latency_us": map[string]any{"p50": 20.0, "p95": 30.0, "p99": 30.0, "max": 30.0},
		"get_latency_us":    map[string]any{"p50": 5.0, "p95": 5.0, "p99": 5.0, "max": 5.0},
		"op":                "CreateExperiment+GetExperiment",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
	// Standard fields come first, in the documented order.
	if !bytes.HasPrefix(b, []byte(`{"scenario":"experiments","target":`)) {
		t.Errorf("JSON does not start with scenario, target: %s", b)
	}
	if i, j := bytes.Index(b, []byte(`"interrupted"`)), bytes.Index(b, []byte(`"creates"`)); i > j {
		t.Errorf("scenario fields before standard fields: %s", b)
	}
}

func TestReportJSONEmpty(t *testing.T) {
	t.Parallel()
	r := &Report{Scenario: "health", Latency: newHistogram(), Baseline: newHistogram()}
	var got map[string]any
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ratio_p50", "ratio_p95", "ratio_p99"} {
		if v, ok := got[k]; !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
	if s, ok := got["error_samples"].([]any); !ok || len(s) != 0 {
		t.Errorf("error_samples = %v, want []", got["error_samples"])
	}
	if got["throughput_per_s"] != 0.0 {
		t.Errorf("throughput_per_s = %v, want 0", got["throughput_per_s"])
	}
}

func TestReportJSONCollisions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		counters map[string]int64
		timings  []string
		fields   map[string]any
	}{
		{name: "field over a standard field", fields: map[string]any{"ops": 1}},
		{name: "counter over a standard field", counters: map[string]int64{"errors": 1}},
		{name: "field over a counter rate", counters: map[string]int64{"metrics": 1}, fields: map[string]any{"metrics_per_s": 2}},
		{name: "field over a timing", timings: []string{"create"}, fields: map[string]any{"create_latency_us": 2}},
		{name: "timing over a standard field", timings: []string{"baseline"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := &Report{Scenario: "x", Latency: newHistogram(), Baseline: newHistogram(),
				Counters: tc.counters, Fields: tc.fields, Timings: map[string]*hdrhistogram.Histogram{}}
			for _, n := range tc.timings {
				r.Timings[n] = histOf(t, 1)
			}
			if _, err := json.Marshal(r); err == nil {
				t.Error("Marshal succeeded, want a collision error")
			}
		})
	}
}

func TestReportTable(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if err := knownReport(t).WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"scenario", "experiments", "in-process mesh, store sqlite", "2 workers",
		"baseline Health/Check", "ratio scenario/baseline", "2.00×",
		"  create", "  get", "creates", "101 (50.5/s)", "op", "CreateExperiment+GetExperiment",
		"3× Internal: boom", "1× baseline: Unavailable: gone",
		"100µs", "198µs",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatUS(t *testing.T) {
	t.Parallel()
	tests := map[int64]string{0: "-", 1: "1µs", 999: "999µs", 1000: "1.00ms", 26607: "26.61ms"}
	for us, want := range tests {
		if got := formatUS(us); got != want {
			t.Errorf("formatUS(%d) = %q, want %q", us, got, want)
		}
	}
}

func TestDescribe(t *testing.T) {
	t.Parallel()
	st := status.Error(codes.AlreadyExists, `experiment "a" exists`)
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"status", st, `AlreadyExists: experiment "a" exists`},
		{"wrapped status", fmt.Errorf("CreateExperiment: %w", st), `CreateExperiment: AlreadyExists: experiment "a" exists`},
		{"plain", errors.New("health status NOT_SERVING"), "health status NOT_SERVING"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := describe(tc.err); got != tc.want {
				t.Errorf("describe = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestErrorLog(t *testing.T) {
	t.Parallel()
	var l errorLog
	for i := range 20 {
		l.add(false, fmt.Errorf("error %d", i%8))
	}
	l.add(true, errors.New("error 0"))
	want := []ErrorSample{
		{"error 0", 3}, {"error 1", 3}, {"error 2", 3}, {"error 3", 3}, {"error 4", 2},
	}
	if diff := cmp.Diff(want, l.list()); diff != "" {
		t.Errorf("samples (-want +got):\n%s", diff)
	}
}
