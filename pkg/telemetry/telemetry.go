// Package telemetry sets up OpenTelemetry for a quantmesh process: a tracer
// provider (exporting OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set), a meter
// provider exported to Prometheus, and the /metrics handler (OpenMetrics, so
// histogram exemplars carry trace ids).
//
// Providers are passed explicitly to instrumentation rather than read from
// the otel globals, so several meshes can run in one process (tests, bench).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// LatencyBuckets are the histogram boundaries, in seconds, of every latency
// histogram in the mesh: fine below a millisecond, where the decision path
// lives, up to 10 s. (otelgrpc's own default starts at 5 ms.)
var LatencyBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.00075,
	0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Config describes the process for telemetry.
type Config struct {
	// ServiceName is the OTel service.name; "quantmesh" when empty.
	ServiceName string
	// Version is the build version.
	Version string
	// OTLPEndpoint receives traces over OTLP/gRPC; empty means the
	// OTEL_EXPORTER_OTLP_ENDPOINT variable, and no export when that is
	// empty too.
	OTLPEndpoint string
	// SampleRatio is the share of root traces sampled, 0 to 1; 0 means 1.
	SampleRatio float64
	// NoExport disables trace export whatever the environment says.
	NoExport bool
}

// Telemetry owns the providers of one process.
type Telemetry struct {
	TracerProvider *sdktrace.TracerProvider
	MeterProvider  *sdkmetric.MeterProvider
	Registry       *prometheus.Registry
	Propagator     propagation.TextMapPropagator
}

// Setup builds the providers. Call Shutdown to flush them.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if cfg.ServiceName == "" {
		cfg.ServiceName = "quantmesh"
	}
	if cfg.SampleRatio < 0 || cfg.SampleRatio > 1 {
		return nil, fmt.Errorf("trace sample ratio must be in [0, 1], got %v", cfg.SampleRatio)
	}
	if cfg.SampleRatio == 0 {
		cfg.SampleRatio = 1
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(cfg.ServiceName),
		semconv.ServiceVersion(cfg.Version),
	))
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(exporter),
		sdkmetric.WithView(latencyView),
	)

	tpOpts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
	}
	endpoint := cfg.OTLPEndpoint
	if endpoint == "" {
		endpoint = os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if endpoint != "" && !cfg.NoExport {
		// A URL says its scheme (http:// is plaintext); a bare host:port
		// is dialled with TLS. (WithEndpointURL drops a bare host:port it
		// cannot parse, and the exporter falls back to localhost:4317.)
		opt := otlptracegrpc.WithEndpoint(endpoint)
		if strings.Contains(endpoint, "://") {
			opt = otlptracegrpc.WithEndpointURL(endpoint)
		}
		exp, err := otlptracegrpc.New(ctx, opt)
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter %s: %w", endpoint, err)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)

	return &Telemetry{
		TracerProvider: tp,
		MeterProvider:  mp,
		Registry:       reg,
		Propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}, nil
}

// latencyView gives every histogram measured in seconds the fine
// LatencyBuckets.
func latencyView(inst sdkmetric.Instrument) (sdkmetric.Stream, bool) {
	if inst.Kind != sdkmetric.InstrumentKindHistogram || inst.Unit != "s" {
		return sdkmetric.Stream{}, false
	}
	return sdkmetric.Stream{
		Name:        inst.Name,
		Description: inst.Description,
		Unit:        inst.Unit,
		Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: LatencyBuckets},
	}, true
}

// Meter returns a meter for an instrumentation scope.
func (t *Telemetry) Meter(name string) metric.Meter { return t.MeterProvider.Meter(name) }

// Tracer returns a tracer for an instrumentation scope.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.TracerProvider.Tracer(name) }

// MetricsHandler serves the registry in the Prometheus text format, or
// OpenMetrics (with exemplars) when the scraper asks for it.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.TracerProvider.Shutdown(ctx), t.MeterProvider.Shutdown(ctx))
}

// Noop returns telemetry that records into a private registry and exports
// nothing, for tests.
func Noop() *Telemetry {
	t, err := Setup(context.Background(), Config{ServiceName: "quantmesh-test", NoExport: true})
	if err != nil {
		panic(err) // Setup without an endpoint cannot fail
	}
	return t
}
