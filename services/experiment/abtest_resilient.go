package experiment

import (
	"context"
	"time"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

func (r *resilientStore) CreateABTest(ctx context.Context, t *ABTest) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.CreateABTest(ctx, t) })
}

func (r *resilientStore) GetABTest(ctx context.Context, id string) (*ABTest, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*ABTest, error) { return r.next.GetABTest(ctx, id) })
}

func (r *resilientStore) ListABTests(ctx context.Context, q ABListQuery) ([]*ABTest, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]*ABTest, error) { return r.next.ListABTests(ctx, q) })
}

func (r *resilientStore) UpdateABTest(ctx context.Context, id string, mutate func(*ABTest) (*AliasMove, error)) (*ABTest, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (*ABTest, error) { return r.next.UpdateABTest(ctx, id, mutate) })
}

func (r *resilientStore) ABTestChanges(ctx context.Context, after uint64, activeOnly bool) ([]*ABTest, uint64, error) {
	type changes struct {
		tests []*ABTest
		rev   uint64
	}
	c, err := resilience.Get(ctx, r.read, func(ctx context.Context) (changes, error) {
		tests, rev, err := r.next.ABTestChanges(ctx, after, activeOnly)
		return changes{tests, rev}, err
	})
	return c.tests, c.rev, err
}

func (r *resilientStore) ABRevision(ctx context.Context) (uint64, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (uint64, error) { return r.next.ABRevision(ctx) })
}

// RecordABObservations is idempotent, so it may be retried like a read.
func (r *resilientStore) RecordABObservations(ctx context.Context, obs []*ABObservation) (int64, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (int64, error) { return r.next.RecordABObservations(ctx, obs) })
}

func (r *resilientStore) ABStats(ctx context.Context, testID string, srmSince time.Time) (*ABStats, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*ABStats, error) { return r.next.ABStats(ctx, testID, srmSince) })
}
