package telemetry

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
)

func TestSecondsHistogramsGetFineBuckets(t *testing.T) {
	t.Parallel()
	tel := Noop()
	defer tel.Shutdown(context.Background())
	h, err := tel.Meter("test").Float64Histogram("quantmesh.test.latency", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	h.Record(context.Background(), 0.0003)
	other, err := tel.Meter("test").Float64Histogram("quantmesh.test.size", metric.WithUnit("By"))
	if err != nil {
		t.Fatal(err)
	}
	other.Record(context.Background(), 3)

	body := scrape(t, tel, "")
	for _, want := range []string{
		`quantmesh_test_latency_seconds_bucket{`,
		`le="5e-05"`,
		`le="0.0005"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// Byte histograms keep the SDK's default buckets.
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "quantmesh_test_size_bytes_bucket") && strings.Contains(line, `le="5e-05"`) {
			t.Errorf("a non-latency histogram got latency buckets: %s", line)
		}
	}
}

func TestMetricsHandlerSpeaksOpenMetrics(t *testing.T) {
	t.Parallel()
	tel := Noop()
	defer tel.Shutdown(context.Background())
	c, _ := tel.Meter("test").Int64Counter("quantmesh.test.events")
	c.Add(context.Background(), 2)
	body := scrape(t, tel, "application/openmetrics-text; version=1.0.0")
	if !strings.Contains(body, "quantmesh_test_events_total") || !strings.HasSuffix(strings.TrimSpace(body), "# EOF") {
		t.Errorf("OpenMetrics exposition expected, got:\n%s", body)
	}
	if !strings.Contains(scrape(t, tel, ""), "go_goroutines") {
		t.Error("runtime metrics missing")
	}
}

func scrape(t *testing.T, tel *Telemetry, accept string) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	t.Parallel()
	tel := Noop()
	defer tel.Shutdown(context.Background())
	var buf bytes.Buffer
	log, err := NewLogger(&buf, LogConfig{Format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tel.Tracer("test").Start(context.Background(), "op")
	log.InfoContext(ctx, "inside")
	span.End()
	log.Info("outside")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines = %q", lines)
	}
	if !strings.Contains(lines[0], `"trace_id":"`+span.SpanContext().TraceID().String()+`"`) {
		t.Errorf("span log lacks its trace id: %s", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("log without a span has a trace id: %s", lines[1])
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, cfg := range []LogConfig{{Level: "loud"}, {Format: "xml"}} {
		if _, err := NewLogger(io.Discard, cfg); err == nil {
			t.Errorf("NewLogger(%+v) succeeded", cfg)
		}
	}
	if _, err := Setup(context.Background(), Config{SampleRatio: 2}); err == nil {
		t.Error("sample ratio 2 accepted")
	}
}

// A bare host:port endpoint is where traces go (over TLS), not the
// default localhost:4317.
func TestBareEndpointIsDialled(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	tel, err := Setup(context.Background(), Config{OTLPEndpoint: lis.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("t").Start(context.Background(), "s")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = tel.TracerProvider.ForceFlush(ctx) // fails: the listener speaks no TLS
	_ = tel.Shutdown(ctx)
	select {
	case <-accepted:
	default:
		t.Errorf("nothing dialled %s", lis.Addr())
	}
}
