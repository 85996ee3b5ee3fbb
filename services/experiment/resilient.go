package experiment

import (
	"context"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

// resilientStore runs every store call under resilience policies: reads
// with retries, writes with a single attempt (a write that timed out may
// have committed), both behind the circuit breaker and timeout.
type resilientStore struct {
	next        Store
	read, write *resilience.Policy
}

// WithResilience wraps st so each call goes through read or write.
func WithResilience(st Store, read, write *resilience.Policy) Store {
	return &resilientStore{next: st, read: read, write: write}
}

func (r *resilientStore) CreateExperiment(ctx context.Context, e *Experiment) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.CreateExperiment(ctx, e) })
}

func (r *resilientStore) GetExperiment(ctx context.Context, id string) (*Experiment, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*Experiment, error) { return r.next.GetExperiment(ctx, id) })
}

func (r *resilientStore) GetExperimentByName(ctx context.Context, name string) (*Experiment, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*Experiment, error) { return r.next.GetExperimentByName(ctx, name) })
}

func (r *resilientStore) ListExperiments(ctx context.Context, q ListQuery) ([]*Experiment, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]*Experiment, error) { return r.next.ListExperiments(ctx, q) })
}

func (r *resilientStore) UpdateExperiment(ctx context.Context, id string, mutate func(*Experiment) error) (*Experiment, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (*Experiment, error) { return r.next.UpdateExperiment(ctx, id, mutate) })
}
