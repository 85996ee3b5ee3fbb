// Package telemetrytest reads what instruments recorded, for tests.
package telemetrytest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Points collects r and returns every data point by its series name, the
// instrument's name followed by its attributes in key order as
// name{k1=v1,k2=v2} (the bare name when it has none). A histogram gives
// name_count, name_sum and cumulative name_bucket{…,le=bound} series.
func Points(t testing.TB, r *sdkmetric.ManualReader) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				values(out, m.Name, d.DataPoints)
			case metricdata.Sum[float64]:
				values(out, m.Name, d.DataPoints)
			case metricdata.Gauge[int64]:
				values(out, m.Name, d.DataPoints)
			case metricdata.Gauge[float64]:
				values(out, m.Name, d.DataPoints)
			case metricdata.Histogram[int64]:
				histograms(out, m.Name, d.DataPoints)
			case metricdata.Histogram[float64]:
				histograms(out, m.Name, d.DataPoints)
			}
		}
	}
	return out
}

func values[N int64 | float64](out map[string]float64, name string, points []metricdata.DataPoint[N]) {
	for _, p := range points {
		out[series(name, p.Attributes)] = float64(p.Value)
	}
}

func histograms[N int64 | float64](out map[string]float64, name string, points []metricdata.HistogramDataPoint[N]) {
	for _, p := range points {
		out[series(name+"_count", p.Attributes)] = float64(p.Count)
		out[series(name+"_sum", p.Attributes)] = float64(p.Sum)
		var cum uint64
		for i, b := range p.Bounds {
			cum += p.BucketCounts[i]
			out[series(name+"_bucket", p.Attributes, attribute.String("le", fmt.Sprint(b)))] = float64(cum)
		}
	}
}

func series(name string, attrs attribute.Set, extra ...attribute.KeyValue) string {
	kvs := append(attrs.ToSlice(), extra...)
	if len(kvs) == 0 {
		return name
	}
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		parts[i] = string(kv.Key) + "=" + kv.Value.String()
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}
