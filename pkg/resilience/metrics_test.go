package resilience_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

// TestPrometheusNames pins the series names dashboards and alerts use, as
// the OpenTelemetry Prometheus exporter (default options) produces them.
func TestPrometheusNames(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		t.Fatalf("prometheus exporter: %v", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	cfg := fastConfig()
	cfg.Timeout = 5 * time.Millisecond
	cfg.MaxAttempts = 2
	cfg.FailureThreshold = 2
	cfg.FailureWindow = 2
	p, err := resilience.New("bus", cfg, mp.Meter("github.com/quantmesh/quantmesh/pkg/resilience"),
		resilience.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx := context.Background()
	// Two timed-out attempts (one retry) open the breaker; the next call is rejected.
	_ = p.Run(ctx, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	if err := p.Run(ctx, func(context.Context) error { return nil }); !errors.Is(err, resilience.ErrOpen) {
		t.Fatalf("Run() = %v, want ErrOpen", err)
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "target" && l.GetValue() == "bus" {
					v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
					got[mf.GetName()] = v
				}
			}
		}
	}
	want := map[string]float64{
		"quantmesh_resilience_breaker_state":            2,
		"quantmesh_resilience_retries_total":            1,
		"quantmesh_resilience_timeouts_total":           2,
		"quantmesh_resilience_breaker_rejections_total": 1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Prometheus series mismatch (-want +got):\n%s", diff)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "store", fastConfig())
	if _, ok := h.metric(t, stateMetric); !ok {
		t.Fatal("breaker state gauge not reported")
	}
	if err := h.p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, ok := h.metric(t, stateMetric); ok {
		t.Error("breaker state gauge still reported after Close")
	}
	if err := h.p.Run(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Run after Close = %v, want nil", err)
	}
}
