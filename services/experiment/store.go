package experiment

import (
	"context"
	"embed"
	"time"

	"github.com/quantmesh/quantmesh/pkg/store"
)

//go:embed migrations
var migrationFiles embed.FS

// Migrations is the schema of the experiment service's tables.
func Migrations() store.MigrationSet { return store.Embedded("experiment", migrationFiles) }

// Stage is the lifecycle stage of an experiment or run.
type Stage string

// Stages.
const (
	StageActive  Stage = "active"
	StageDeleted Stage = "deleted"
)

// Experiment is a named group of runs.
type Experiment struct {
	ID               string
	Name             string
	Description      string
	ArtifactLocation string
	Stage            Stage
	Tags             map[string]string
	CreateTime       time.Time
	UpdateTime       time.Time
	// DeleteTime is zero while the experiment is active.
	DeleteTime time.Time
}

// View filters listings by stage.
type View int

// Views.
const (
	ViewActive View = iota
	ViewDeleted
	ViewAll
)

// ListQuery selects a page of experiments, newest first.
type ListQuery struct {
	View View
	// AfterID continues after this id (exclusive); empty starts at the
	// newest.
	AfterID string
	// Limit is the page size.
	Limit int
}

// Store is everything ExperimentService persists. Methods return apierr
// errors: NotFound for a missing resource, AlreadyExists for a taken name,
// FailedPrecondition for a write the resource's state forbids, Unavailable
// when the database cannot be reached. Implementations are safe for
// concurrent use.
type Store interface {
	ExperimentStore
	RunStore
	RegistryStore
	CheckpointStore
	ABTestStore
}

// ExperimentStore persists experiments.
type ExperimentStore interface {
	// CreateExperiment inserts e.
	CreateExperiment(ctx context.Context, e *Experiment) error
	// GetExperiment reads one experiment by id.
	GetExperiment(ctx context.Context, id string) (*Experiment, error)
	// GetExperimentByName reads one experiment by name.
	GetExperimentByName(ctx context.Context, name string) (*Experiment, error)
	// ListExperiments reads a page in descending id order.
	ListExperiments(ctx context.Context, q ListQuery) ([]*Experiment, error)
	// UpdateExperiment reads the experiment, applies mutate and writes the
	// result back, atomically. An error from mutate aborts without writing.
	UpdateExperiment(ctx context.Context, id string, mutate func(*Experiment) error) (*Experiment, error)
}
