package experiment

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// instruments are the experiment service's own metrics. Prometheus names:
//
//	quantmesh_experiment_metric_points_total{path}           metric points persisted (path: stream, batch)
//	quantmesh_experiment_metric_points_duplicate_total       streamed points skipped as already stored
//	quantmesh_experiment_metric_write_rows                   points per write transaction (histogram)
//	quantmesh_experiment_metric_write_duration_seconds       time to commit one write transaction
//	quantmesh_experiment_store_errors_total{op}              store operations that failed
type instruments struct {
	points     metric.Int64Counter
	duplicates metric.Int64Counter
	rows       metric.Int64Histogram
	duration   metric.Float64Histogram
	errors     metric.Int64Counter
}

func newInstruments(meter metric.Meter) (*instruments, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	var (
		ins instruments
		err error
	)
	if ins.points, err = meter.Int64Counter("quantmesh.experiment.metric.points",
		metric.WithDescription("Metric points persisted, by path (stream: StreamMetrics, batch: LogBatch).")); err != nil {
		return nil, err
	}
	if ins.duplicates, err = meter.Int64Counter("quantmesh.experiment.metric.points.duplicate",
		metric.WithDescription("Streamed metric points skipped because their message had been stored before.")); err != nil {
		return nil, err
	}
	if ins.rows, err = meter.Int64Histogram("quantmesh.experiment.metric.write.rows",
		metric.WithDescription("Metric points per write transaction."),
		metric.WithExplicitBucketBoundaries(1, 10, 100, 1000, 5000, 10000, 25000, 50000)); err != nil {
		return nil, err
	}
	if ins.duration, err = meter.Float64Histogram("quantmesh.experiment.metric.write.duration", metric.WithUnit("s"),
		metric.WithDescription("Time to commit one metric write transaction.")); err != nil {
		return nil, err
	}
	if ins.errors, err = meter.Int64Counter("quantmesh.experiment.store.errors",
		metric.WithDescription("Experiment store operations that failed, by operation.")); err != nil {
		return nil, err
	}
	ctx := context.Background()
	for _, path := range []string{"stream", "batch"} {
		ins.points.Add(ctx, 0, metric.WithAttributes(attribute.String("path", path)))
	}
	ins.duplicates.Add(ctx, 0)
	return &ins, nil
}

// written records one committed write of n points.
func (ins *instruments) written(ctx context.Context, path string, n int, took time.Duration) {
	ins.points.Add(ctx, int64(n), metric.WithAttributes(attribute.String("path", path)))
	ins.rows.Record(ctx, int64(n))
	ins.duration.Record(ctx, took.Seconds())
}

func (ins *instruments) storeError(op string) {
	ins.errors.Add(context.Background(), 1, metric.WithAttributes(attribute.String("op", op)))
}
