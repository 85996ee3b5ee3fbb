package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

func spanAttr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

func TestStartBatchSpan(t *testing.T) {
	t.Parallel()
	db, tp, rec := storetest.TracedSQLite(t)
	ctx := context.Background()
	if _, err := db.Exec(ctx, `CREATE TABLE t (x INTEGER)`); err != nil {
		t.Fatal(err)
	}

	pctx, parent := tp.Tracer("test").Start(ctx, "handler")
	bctx, end := db.StartBatch(pctx, "t", 3)
	if trace.SpanContextFromContext(bctx).SpanID() == parent.SpanContext().SpanID() {
		t.Fatal("StartBatch returned the parent's context, want the batch span's")
	}
	_, err := db.Exec(bctx, `INSERT INTO t VALUES (1), (2), (3)`)
	end(err)
	_, end = db.StartBatch(pctx, "t", 2)
	end(errors.New("disk full"))
	parent.End()

	var batches []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "write t" {
			batches = append(batches, s)
		}
	}
	if len(batches) != 2 {
		t.Fatalf("%d batch spans, want 2", len(batches))
	}
	ok, failed := batches[0], batches[1]
	for _, c := range []struct{ key, want string }{
		{"quantmesh.store.batch.rows", "3"},
		{"db.system.name", "sqlite"},
		{"db.collection.name", "t"},
		{"quantmesh.store.mode", "sqlite"},
	} {
		if got := spanAttr(ok, c.key); got != c.want {
			t.Errorf("%s = %q, want %q", c.key, got, c.want)
		}
	}
	if ok.SpanKind() != trace.SpanKindClient || ok.Parent().SpanID() != parent.SpanContext().SpanID() || ok.Status().Code == codes.Error {
		t.Errorf("batch span: kind %v, parent %s, status %v; want a client span under the handler, not failed", ok.SpanKind(), ok.Parent().SpanID(), ok.Status())
	}
	if failed.Status().Code != codes.Error || failed.Status().Description != "disk full" || spanAttr(failed, "quantmesh.store.batch.rows") != "2" {
		t.Errorf("failed batch span: status %v, rows %s; want error \"disk full\", 2 rows", failed.Status(), spanAttr(failed, "quantmesh.store.batch.rows"))
	}
}

func TestStartBatchWithoutTracer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := store.Open(ctx, store.Config{URL: filepath.Join(t.TempDir(), "t.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	bctx, end := db.StartBatch(ctx, "t", 1)
	if bctx != ctx {
		t.Error("StartBatch without a tracer changed the context")
	}
	end(errors.New("ignored"))
}
