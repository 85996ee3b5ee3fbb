package learner_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/quantmesh/quantmesh/pkg/telemetry/telemetrytest"
)

// meterReader returns a meter and a function reading its points
// (telemetrytest.Points).
func meterReader(t *testing.T) (metric.Meter, func() map[string]float64) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp.Meter("test"), func() map[string]float64 { return telemetrytest.Points(t, reader) }
}
