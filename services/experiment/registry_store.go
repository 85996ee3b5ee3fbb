package experiment

import (
	"context"
	"time"
)

// RegisteredModel is a named model with versions and aliases.
type RegisteredModel struct {
	Name        string
	Description string
	Tags        map[string]string
	// Aliases maps each alias that is set to its version. Deleted aliases
	// (tombstones) are not listed.
	Aliases map[string]int64
	// LatestVersion is the highest version number, 0 without versions.
	LatestVersion int64
	CreateTime    time.Time
	UpdateTime    time.Time
}

// ModelVersion is one immutable set of weights of a registered model; only
// its description and tags change.
type ModelVersion struct {
	ModelName string
	Version   int64
	Format    string
	// Weights is nil unless they were asked for.
	Weights []byte
	// ChecksumSHA256 is the lowercase hex SHA-256 of the weights.
	ChecksumSHA256 string
	SizeBytes      int64
	// SourceRunID is empty when no run produced the version.
	SourceRunID string
	Metrics     map[string]float64
	Tags        map[string]string
	// Aliases lists the aliases that point to this version, sorted.
	Aliases     []string
	Description string
	CreateTime  time.Time
}

// AliasMove points an alias at a version.
type AliasMove struct {
	Model   string
	Alias   string
	Version int64
	// ExpectedRevision, when set, makes the move conditional: it happens
	// only if the alias's current revision is this one, 0 meaning "the
	// alias is unset" (never set, or deleted). A deleted alias also matches
	// its tombstone's revision. Otherwise the move fails with Aborted.
	ExpectedRevision *uint64
	// Now is recorded as the model's update time.
	Now time.Time
}

// AliasState is an alias at one revision: the version it points to, or its
// deletion.
type AliasState struct {
	Model    string
	Alias    string
	Revision uint64
	// Version, with weights, is nil when the alias (or its model) was
	// deleted.
	Version *ModelVersion
}

// ModelListQuery selects a page of registered models in name order.
type ModelListQuery struct {
	// AfterName continues after this name (exclusive); empty starts at the
	// first.
	AfterName string
	Limit     int
}

// VersionListQuery selects a page of a model's versions, newest first.
type VersionListQuery struct {
	Model string
	// BeforeVersion continues below this version (exclusive); 0 starts at
	// the newest.
	BeforeVersion int64
	Limit         int
}

// RegistryStore persists the model registry: registered models, versions
// and aliases.
//
// Every alias change takes the next value of one registry-wide revision
// counter in the transaction that makes it, so revisions only grow and a
// committed alias row always carries the revision of its latest change. A
// deleted alias, and each alias of a deleted model, keeps its row as a
// tombstone (no version) with the revision of the deletion, so a watcher
// that resumes learns of it.
type RegistryStore interface {
	// CreateRegisteredModel inserts m; AlreadyExists when the name is
	// taken.
	CreateRegisteredModel(ctx context.Context, m *RegisteredModel) error
	// GetRegisteredModel reads a model with its aliases and latest version.
	GetRegisteredModel(ctx context.Context, name string) (*RegisteredModel, error)
	// ListRegisteredModels reads a page of models in name order.
	ListRegisteredModels(ctx context.Context, q ModelListQuery) ([]*RegisteredModel, error)
	// UpdateRegisteredModel reads the model, applies mutate and writes its
	// description, tags and update time back, atomically. An error from
	// mutate aborts without writing.
	UpdateRegisteredModel(ctx context.Context, name string, mutate func(*RegisteredModel) error) (*RegisteredModel, error)
	// DeleteRegisteredModel deletes a model and its versions, and turns
	// each of its aliases into a tombstone with its own new revision.
	DeleteRegisteredModel(ctx context.Context, name string) error

	// CreateModelVersion stores v under the next version number of its
	// model (consecutive from 1, also under concurrent calls) and sets
	// v.Version. NotFound when the model, or v.SourceRunID, does not exist.
	CreateModelVersion(ctx context.Context, v *ModelVersion) error
	// GetModelVersion reads one version, with its weights when asked.
	GetModelVersion(ctx context.Context, model string, version int64, withWeights bool) (*ModelVersion, error)
	// ListModelVersions reads a page of a model's versions, newest first,
	// without weights; NotFound when the model does not exist.
	ListModelVersions(ctx context.Context, q VersionListQuery) ([]*ModelVersion, error)
	// UpdateModelVersion reads the version (without weights), applies
	// mutate and writes its description and tags back, atomically.
	UpdateModelVersion(ctx context.Context, model string, version int64, mutate func(*ModelVersion) error) (*ModelVersion, error)

	// SetModelAlias points an alias at an existing version and returns the
	// revision of the move. Pointing an alias at the version it already
	// points to changes nothing and returns the alias's current revision,
	// whatever ExpectedRevision says (the call is idempotent).
	SetModelAlias(ctx context.Context, m AliasMove) (uint64, error)
	// DeleteModelAlias turns a set alias into a tombstone and returns the
	// revision of the deletion; NotFound when the alias is not set.
	DeleteModelAlias(ctx context.Context, model, alias string, now time.Time) (uint64, error)
	// GetModelVersionByAlias reads the version an alias points to;
	// NotFound when the model does not exist or the alias is not set.
	GetModelVersionByAlias(ctx context.Context, model, alias string, withWeights bool) (*ModelVersion, error)
	// AliasChange reads an alias's state, weights included, if its
	// revision is greater than after; nil when it is not (or the alias was
	// never set). The state is one consistent snapshot.
	AliasChange(ctx context.Context, model, alias string, after uint64) (*AliasState, error)
	// RegistryRevision reads the registry's latest revision.
	RegistryRevision(ctx context.Context) (uint64, error)
}
