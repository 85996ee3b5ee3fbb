package resilience_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

// fastConfig is a valid Config with delays short enough for tests.
func fastConfig() resilience.Config {
	return resilience.Config{
		Timeout:          0,
		MaxAttempts:      3,
		BaseDelay:        time.Millisecond,
		MaxDelay:         2 * time.Millisecond,
		JitterFactor:     0,
		FailureThreshold: 100,
		FailureWindow:    100,
		OpenDelay:        time.Minute,
		SuccessThreshold: 1,
	}
}

// harness is a Policy with its metrics reader and captured logs.
type harness struct {
	p      *resilience.Policy
	reader *sdkmetric.ManualReader
	logs   *syncBuffer
}

func newHarness(t *testing.T, name string, cfg resilience.Config) *harness {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := resilience.New(name, cfg, mp.Meter("test"), resilience.WithLogger(logger))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &harness{p: p, reader: reader, logs: logs}
}

// metric returns the value of the named instrument's data point for the
// harness's target, and whether there was one.
func (h *harness) metric(t *testing.T, name string) (int64, bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			case metricdata.Sum[int64]:
				points = d.DataPoints
			default:
				t.Fatalf("metric %s has unexpected data %T", name, m.Data)
			}
			for _, dp := range points {
				if v, ok := dp.Attributes.Value("target"); ok && v.AsString() == h.p.Name() {
					return dp.Value, true
				}
			}
		}
	}
	return 0, false
}

// counter returns a counter's value, 0 when it was never incremented.
func (h *harness) counter(t *testing.T, name string) int64 {
	t.Helper()
	v, _ := h.metric(t, name)
	return v
}

// transitions returns the "from->to" pairs logged as state changes.
func (h *harness) transitions(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
		if line == "" {
			continue
		}
		var rec struct {
			Msg    string `json:"msg"`
			Target string `json:"target"`
			From   string `json:"from"`
			To     string `json:"to"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec.Msg == "circuit breaker state changed" {
			if rec.Target != h.p.Name() {
				t.Errorf("state change logged with target %q, want %q", rec.Target, h.p.Name())
			}
			out = append(out, rec.From+"->"+rec.To)
		}
	}
	return out
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// script returns a function that returns errs[i] on its i-th call (nil
// once errs is used up), and a counter of calls.
func script(errs ...error) (func(context.Context) error, func() int) {
	var mu sync.Mutex
	calls := 0
	fn := func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= len(errs) {
			return errs[calls-1]
		}
		return nil
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
	return fn, count
}
