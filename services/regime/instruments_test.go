package regime

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// probabilities reads quantmesh.regime.probability as symbol → regime
// index → value, and quantmesh.regime.symbols.
func probabilities(t *testing.T, reader *sdkmetric.ManualReader) (map[string]map[int]float64, int64) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[int]float64{}
	symbols := int64(-1)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "quantmesh.regime.probability":
				for _, p := range m.Data.(metricdata.Gauge[float64]).DataPoints {
					sym, _ := p.Attributes.Value("symbol")
					reg, _ := p.Attributes.Value("regime")
					k, err := strconv.Atoi(reg.AsString())
					if err != nil {
						t.Fatalf("regime label %q: %v", reg.AsString(), err)
					}
					if out[sym.AsString()] == nil {
						out[sym.AsString()] = map[int]float64{}
					}
					out[sym.AsString()][k] = p.Value
				}
			case "quantmesh.regime.symbols":
				symbols = m.Data.(metricdata.Gauge[int64]).DataPoints[0].Value
			}
		}
	}
	return out, symbols
}

// TestRegimeProbabilityGauge checks that the probability gauge is the
// smoothed posterior of each symbol's latest state, follows it, and is
// exported for the first maxSymbolSeries symbols only.
func TestRegimeProbabilityGauge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storetest.SQLite(t, Migrations())
	st := NewSQLStore(db)
	fakeModel(t, st, "0192f1f0-5b7e-7c3a-9d2e-000000000002", DefaultSymbol)
	reader := sdkmetric.NewManualReader()
	e, err := NewEngine(ctx, EngineConfig{}, st, quiet, sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	e.decode = decodeFake
	if got, n := probabilities(t, reader); len(got) != 0 || n != 0 {
		t.Fatalf("before any state: %v, %d symbols", got, n)
	}
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	closes := walkCloses(40)
	closes[35] = closes[34] * math.Exp(-0.05) // a crash bar
	bars := series("DAX", t0, closes...)
	same := func(when string) {
		t.Helper()
		got, _ := probabilities(t, reader)
		want := e.Latest("DAX").GetSmoothedProbabilities()
		if len(got["DAX"]) != len(want) || len(want) != 2 {
			t.Fatalf("%s: gauge %v, latest state %v", when, got["DAX"], want)
		}
		for k, p := range want {
			if got["DAX"][k] != p {
				t.Errorf("%s: regime %d: gauge %v, latest state %v", when, k, got["DAX"][k], p)
			}
		}
	}
	if _, err := e.Ingest(ctx, bars[:35]); err != nil {
		t.Fatal(err)
	}
	same("calm")
	calm, _ := probabilities(t, reader)
	if _, err := e.Ingest(ctx, bars[35:36]); err != nil {
		t.Fatal(err)
	}
	same("after the crash bar")
	crash, _ := probabilities(t, reader)
	if !(crash["DAX"][1] > calm["DAX"][1]) {
		t.Errorf("the crash regime's probability went from %v to %v on a crash bar", calm["DAX"][1], crash["DAX"][1])
	}

	// More symbols than the cap: the first maxSymbolSeries in name order
	// (DAX and S000...) are exported, and all are counted.
	var more []Bar
	for i := range maxSymbolSeries {
		more = append(more, series(fmt.Sprintf("S%03d", i), t0, walkCloses(32)...)...)
	}
	if _, err := e.Ingest(ctx, more); err != nil {
		t.Fatal(err)
	}
	got, n := probabilities(t, reader)
	if n != maxSymbolSeries+1 || len(got) != maxSymbolSeries {
		t.Fatalf("%d symbols counted and %d exported, want %d and %d", n, len(got), maxSymbolSeries+1, maxSymbolSeries)
	}
	last := fmt.Sprintf("S%03d", maxSymbolSeries-1)
	if got["DAX"] == nil || got[last] != nil {
		t.Errorf("exported DAX: %v, %s: %v; want DAX and not %s", got["DAX"] != nil, last, got[last] != nil, last)
	}
}
