package inference_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/inference"
)

// TestDecisionBatchSpan: each batch the decisions writer stores is one
// span carrying its row count and the store's dialect, under the caller's
// span.
func TestDecisionBatchSpan(t *testing.T) {
	t.Parallel()
	for _, backend := range []struct{ name, system string }{{"sqlite", "sqlite"}, {"postgres", "postgresql"}} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			url := filepath.Join(t.TempDir(), "q.db")
			if backend.name == "postgres" {
				url = storetest.NewPostgresDatabase(t)
			}
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			ctx := context.Background()
			db, err := store.Open(ctx, store.Config{URL: url, TracerProvider: tp})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Migrate(ctx, inference.Migrations()); err != nil {
				t.Fatal(err)
			}
			st := inference.NewSQLDecisions(db)
			now := time.Now()
			hctx, handler := tp.Tracer("test").Start(ctx, "process decisions")
			for _, n := range []int{3, 5} {
				ds := make([]*inferencev1.Decision, n)
				for i := range ds {
					ds[i] = decision(i, now.Add(time.Duration(n*10+i)*time.Microsecond))
				}
				if _, err := st.InsertDecisions(hctx, ds, now); err != nil {
					t.Fatal(err)
				}
			}
			handler.End()
			var rows []string
			for _, s := range rec.Ended() {
				if s.Name() != "write decisions" {
					continue
				}
				attrs := map[string]string{}
				for _, kv := range s.Attributes() {
					attrs[string(kv.Key)] = kv.Value.String()
				}
				if attrs["db.system.name"] != backend.system || s.Parent().SpanID() != handler.SpanContext().SpanID() {
					t.Errorf("batch span: db.system.name %q, parent %s; want %q under the handler span", attrs["db.system.name"], s.Parent().SpanID(), backend.system)
				}
				rows = append(rows, attrs["quantmesh.store.batch.rows"])
			}
			if len(rows) != 2 || rows[0] != "3" || rows[1] != "5" {
				t.Errorf("batch spans with rows %v, want [3 5]", rows)
			}
		})
	}
}
