package mesh_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

const predictMethod = "quantmesh.inference.v1.InferenceService/Predict"

// TestPredictTrace follows one prediction through the mesh: the Predict
// call's trace reaches the decision's bus publish, the forensics consumer's
// batch and the batch's write to the store, on the in-process bus and on
// Kafka. On the in-process mesh it also checks that /metrics, in
// OpenMetrics, carries the call's trace id as an exemplar of the rpc
// duration histogram.
func TestPredictTrace(t *testing.T) {
	t.Parallel()
	for _, kafka := range []bool{false, true} {
		name := "inproc"
		if kafka {
			name = "kafka"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec := tracetest.NewSpanRecorder()
			tel := telemetry.Noop() // samples every trace
			tel.TracerProvider.RegisterSpanProcessor(rec)
			cfg := meshtest.Config(t, mesh.Experiment, mesh.Inference, mesh.Forensics)
			if kafka {
				cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(cluster.Close)
				cfg.KafkaBrokers = cluster.ListenAddrs()
			}
			m, conn := meshtest.ServeWith(t, cfg, tel, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
				otelgrpc.WithTracerProvider(tel.TracerProvider), otelgrpc.WithPropagators(tel.Propagator))))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			promoteFourInputPolicy(ctx, t, experimentv1.NewExperimentServiceClient(conn))

			// The test's own root span: every call below is in its trace.
			tctx, root := tel.Tracer("test").Start(ctx, "client")
			tid := root.SpanContext().TraceID()
			inf := inferencev1.NewInferenceServiceClient(conn)
			for {
				_, err := inf.Predict(tctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "TRACE", Features: []float64{1, 2, 3, 4}})
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond) // the model is still loading
			}
			root.End()

			// The spans of the decision's path end after the store commits;
			// wait for the write (a liveness bound, not a timing goal).
			var predict, send, process, write sdktrace.ReadOnlySpan
			for predict == nil || send == nil || process == nil || write == nil {
				if ctx.Err() != nil {
					t.Fatalf("spans found: Predict %v, send %v, process %v, write %v; want all four", predict != nil, send != nil, process != nil, write != nil)
				}
				time.Sleep(20 * time.Millisecond)
				predict, send, process, write = nil, nil, nil, nil
				spans := rec.Ended()
				for _, s := range spans {
					if s.Name() == predictMethod && s.SpanKind() == trace.SpanKindServer && s.SpanContext().TraceID() == tid && s.Status().Code != codes.Error {
						predict = s // the successful call is the last one
					}
				}
				if predict == nil {
					continue
				}
				for _, s := range spans {
					switch {
					case s.Name() == "send decisions" && underOrLinked(s, predict.SpanContext()):
						send = s
					case s.Name() == "process decisions" && underOrLinked(s, predict.SpanContext()):
						process = s
					}
				}
				if process == nil {
					continue
				}
				for _, s := range spans {
					if s.Name() == "write decisions" && s.Parent().SpanID() == process.SpanContext().SpanID() {
						write = s
					}
				}
			}
			if send.SpanKind() != trace.SpanKindProducer || process.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("send span kind %v, process span kind %v; want producer and consumer", send.SpanKind(), process.SpanKind())
			}
			if kafka {
				return
			}

			// (d) The duration histogram of Predict carries an exemplar
			// with this trace's id.
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.Server.HTTPAddr()+"/metrics", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
				t.Fatalf("/metrics answered %q, want OpenMetrics", ct)
			}
			want := `trace_id="` + tid.String() + `"`
			found := false
			for _, line := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(line, "rpc_server_call_duration_seconds_bucket{") &&
					strings.Contains(line, `rpc_method="`+predictMethod+`"`) && strings.Contains(line, " # {") && strings.Contains(line, want) {
					found = true
					break
				}
			}
			if !found {
				var lines []string
				for _, line := range strings.Split(string(body), "\n") {
					if strings.HasPrefix(line, "rpc_server_call_duration_seconds_bucket{") && strings.Contains(line, predictMethod) {
						lines = append(lines, line)
					}
				}
				t.Errorf("no rpc_server_call_duration_seconds bucket of Predict has an exemplar with %s; Predict's buckets:\n%s", want, strings.Join(lines, "\n"))
			}
		})
	}
}

// underOrLinked reports whether s is a child of sc or links to it.
func underOrLinked(s sdktrace.ReadOnlySpan, sc trace.SpanContext) bool {
	if s.Parent().SpanID() == sc.SpanID() {
		return true
	}
	for _, l := range s.Links() {
		if l.SpanContext.SpanID() == sc.SpanID() {
			return true
		}
	}
	return false
}
