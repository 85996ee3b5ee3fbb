package experiment

import (
	"context"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

func (r *resilientStore) LogCheckpoint(ctx context.Context, c *Checkpoint) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.LogCheckpoint(ctx, c) })
}

func (r *resilientStore) ListCheckpoints(ctx context.Context, q CheckpointQuery) ([]*Checkpoint, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]*Checkpoint, error) { return r.next.ListCheckpoints(ctx, q) })
}

func (r *resilientStore) CheckpointExperiments(ctx context.Context) ([]string, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]string, error) { return r.next.CheckpointExperiments(ctx) })
}

// ApplyRetention runs a dry run as a read (retried) and a real one as a
// write (one attempt: a timed-out delete may have committed).
func (r *resilientStore) ApplyRetention(ctx context.Context, experimentID string, plan func([]RetentionCandidate) []KeepReason, dryRun bool) (*RetentionOutcome, error) {
	p := r.write
	if dryRun {
		p = r.read
	}
	return resilience.Get(ctx, p, func(ctx context.Context) (*RetentionOutcome, error) {
		return r.next.ApplyRetention(ctx, experimentID, plan, dryRun)
	})
}
