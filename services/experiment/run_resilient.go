package experiment

import (
	"context"

	"github.com/quantmesh/quantmesh/pkg/resilience"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

func (r *resilientStore) CreateRun(ctx context.Context, run *Run) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.CreateRun(ctx, run) })
}

func (r *resilientStore) GetRun(ctx context.Context, id string) (*Run, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*Run, error) { return r.next.GetRun(ctx, id) })
}

func (r *resilientStore) UpdateRun(ctx context.Context, id string, mutate func(*Run) error) (*Run, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (*Run, error) { return r.next.UpdateRun(ctx, id, mutate) })
}

func (r *resilientStore) SetRunTag(ctx context.Context, runID string, tag KV) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.SetRunTag(ctx, runID, tag) })
}

func (r *resilientStore) DeleteRunTag(ctx context.Context, runID, key string) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.DeleteRunTag(ctx, runID, key) })
}

func (r *resilientStore) LogBatch(ctx context.Context, runID string, b Batch) (bool, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (bool, error) { return r.next.LogBatch(ctx, runID, b) })
}

func (r *resilientStore) ActiveRunKey(ctx context.Context, runID string) (int64, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (int64, error) { return r.next.ActiveRunKey(ctx, runID) })
}

func (r *resilientStore) RunKey(ctx context.Context, runID string) (int64, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (int64, error) { return r.next.RunKey(ctx, runID) })
}

// Append is not wrapped: the writer retries transient failures itself, and
// a message must not be queued twice.
func (r *resilientStore) Append(ctx context.Context, m StreamMessage) (<-chan AppendResult, error) {
	return r.next.Append(ctx, m)
}

func (r *resilientStore) MetricHistory(ctx context.Context, q HistoryQuery) ([]Point, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]Point, error) { return r.next.MetricHistory(ctx, q) })
}

func (r *resilientStore) CountMetric(ctx context.Context, runKey int64, key string) (int64, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (int64, error) { return r.next.CountMetric(ctx, runKey, key) })
}

func (r *resilientStore) SearchRuns(ctx context.Context, q filter.Query) ([]*Run, []*filter.Cursor, error) {
	type page struct {
		runs    []*Run
		cursors []*filter.Cursor
	}
	p, err := resilience.Get(ctx, r.read, func(ctx context.Context) (page, error) {
		runs, cursors, err := r.next.SearchRuns(ctx, q)
		return page{runs, cursors}, err
	})
	return p.runs, p.cursors, err
}
