package experiment

import (
	"context"
	"time"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

func (r *resilientStore) CreateRegisteredModel(ctx context.Context, m *RegisteredModel) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.CreateRegisteredModel(ctx, m) })
}

func (r *resilientStore) GetRegisteredModel(ctx context.Context, name string) (*RegisteredModel, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*RegisteredModel, error) { return r.next.GetRegisteredModel(ctx, name) })
}

func (r *resilientStore) ListRegisteredModels(ctx context.Context, q ModelListQuery) ([]*RegisteredModel, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]*RegisteredModel, error) { return r.next.ListRegisteredModels(ctx, q) })
}

func (r *resilientStore) UpdateRegisteredModel(ctx context.Context, name string, mutate func(*RegisteredModel) error) (*RegisteredModel, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (*RegisteredModel, error) {
		return r.next.UpdateRegisteredModel(ctx, name, mutate)
	})
}

func (r *resilientStore) DeleteRegisteredModel(ctx context.Context, name string) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.DeleteRegisteredModel(ctx, name) })
}

func (r *resilientStore) CreateModelVersion(ctx context.Context, v *ModelVersion) error {
	return r.write.Run(ctx, func(ctx context.Context) error { return r.next.CreateModelVersion(ctx, v) })
}

func (r *resilientStore) GetModelVersion(ctx context.Context, model string, version int64, withWeights bool) (*ModelVersion, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*ModelVersion, error) {
		return r.next.GetModelVersion(ctx, model, version, withWeights)
	})
}

func (r *resilientStore) ListModelVersions(ctx context.Context, q VersionListQuery) ([]*ModelVersion, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) ([]*ModelVersion, error) { return r.next.ListModelVersions(ctx, q) })
}

func (r *resilientStore) UpdateModelVersion(ctx context.Context, model string, version int64, mutate func(*ModelVersion) error) (*ModelVersion, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (*ModelVersion, error) {
		return r.next.UpdateModelVersion(ctx, model, version, mutate)
	})
}

func (r *resilientStore) SetModelAlias(ctx context.Context, m AliasMove) (uint64, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (uint64, error) { return r.next.SetModelAlias(ctx, m) })
}

func (r *resilientStore) DeleteModelAlias(ctx context.Context, model, alias string, now time.Time) (uint64, error) {
	return resilience.Get(ctx, r.write, func(ctx context.Context) (uint64, error) { return r.next.DeleteModelAlias(ctx, model, alias, now) })
}

func (r *resilientStore) GetModelVersionByAlias(ctx context.Context, model, alias string, withWeights bool) (*ModelVersion, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*ModelVersion, error) {
		return r.next.GetModelVersionByAlias(ctx, model, alias, withWeights)
	})
}

func (r *resilientStore) AliasChange(ctx context.Context, model, alias string, after uint64) (*AliasState, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (*AliasState, error) { return r.next.AliasChange(ctx, model, alias, after) })
}

func (r *resilientStore) RegistryRevision(ctx context.Context) (uint64, error) {
	return resilience.Get(ctx, r.read, func(ctx context.Context) (uint64, error) { return r.next.RegistryRevision(ctx) })
}
