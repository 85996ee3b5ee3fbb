package store

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Attributes of batch spans besides the semantic conventions' db.*.
const (
	// AttrBatchRows is the number of rows a batched write carries.
	AttrBatchRows = attribute.Key("quantmesh.store.batch.rows")
	// AttrMode is the storage mode: sqlite, postgres or timescaledb.
	AttrMode = attribute.Key("quantmesh.store.mode")
)

// noEnd ends nothing: what StartBatch returns without a tracer.
func noEnd(error) {}

// StartBatch starts the span of one batched write: rows rows written
// together (one transaction, one COPY) into what, a table or, for a write
// that spans tables, the writer's name. End it with the write's outcome,
// which the span records (an error sets its status):
//
//	ctx, end := db.StartBatch(ctx, "decisions", len(ds))
//	err := write(ctx)
//	end(err)
//
// The span is "write <what>", of kind client, with db.system.name
// (postgresql or sqlite), db.collection.name (what),
// quantmesh.store.batch.rows and quantmesh.store.mode. It is a child of
// ctx's span, or starts a trace for background writers; links connect it
// to the requests whose rows it writes (a background writer's batch mixes
// several). Without Config.TracerProvider StartBatch returns ctx and costs
// nothing.
func (db *DB) StartBatch(ctx context.Context, what string, rows int, links ...trace.Link) (context.Context, func(error)) {
	if db.tracer == nil {
		return ctx, noEnd
	}
	ctx, span := db.tracer.Start(ctx, "write "+what,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithLinks(links...),
		trace.WithAttributes(
			db.system,
			semconv.DBOperationName("write"),
			semconv.DBCollectionName(what),
			AttrBatchRows.Int(rows),
			AttrMode.String(db.Mode()),
		))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// setTracer makes the database trace its batched writes with tp.
func (db *DB) setTracer(tp trace.TracerProvider) {
	if tp == nil {
		return
	}
	db.tracer = tp.Tracer("github.com/quantmesh/quantmesh/pkg/store")
	db.system = semconv.DBSystemNameSQLite
	if db.dialect == Postgres {
		db.system = semconv.DBSystemNamePostgreSQL
	}
}
