package experiment

import (
	"context"
	"time"
)

// Checkpoint is a saved training state written by a run.
type Checkpoint struct {
	ID           string
	RunID        string
	ExperimentID string
	Step         int64
	// URI is where the bytes are; file:// URIs under the artifact root are
	// removed with the record.
	URI       string
	SizeBytes int64
	// MetricKey and MetricValue rank the checkpoint under a retention
	// policy.
	MetricKey   string
	MetricValue float64
	// ModelName is empty and ModelVersion 0 when the checkpoint did not
	// become a registered model version.
	ModelName    string
	ModelVersion int64
	CreateTime   time.Time
}

// CheckpointQuery selects a page of checkpoints, newest first.
type CheckpointQuery struct {
	// ExperimentID, when set, selects the experiment's checkpoints; the
	// experiment must exist.
	ExperimentID string
	// RunID, when set, selects the run's checkpoints; the run must exist.
	RunID string
	// AfterID continues after this id (exclusive); empty starts at the
	// newest.
	AfterID string
	// Limit is the page size.
	Limit int
}

// RetentionCandidate is a checkpoint as a retention policy sees it: the
// record and what protects it.
type RetentionCandidate struct {
	Checkpoint *Checkpoint
	// Aliased is true when an alias of the registered model points at the
	// checkpoint's model version.
	Aliased bool
	// Production is true when the checkpoint's model version carries a
	// production tag (see ProductionTagRule).
	Production bool
}

// RetentionOutcome is what ApplyRetention did (or, in a dry run, would do)
// to one experiment.
type RetentionOutcome struct {
	// Deleted are the checkpoints deleted (or that would be), newest first.
	Deleted []*Checkpoint
	// Kept counts the experiment's checkpoints that remain.
	Kept int64
	// Protected counts the checkpoints an alias or a production tag
	// protected at the read.
	Protected int64
	// Reprieved counts checkpoints planned for deletion that became
	// protected before the delete ran, and were kept.
	Reprieved int64
	// Survivors are the distinct URIs of the checkpoints that remain, in
	// any experiment, that may name the local file of a deleted one: the
	// same URI, or a file:// URI containing the file's name (the caller
	// compares resolved paths). Read after the delete, in its transaction;
	// not set in a dry run.
	Survivors []string
}

// CheckpointStore persists checkpoints and applies retention policies.
type CheckpointStore interface {
	// LogCheckpoint inserts c for an active run and sets c.ExperimentID to
	// the run's experiment. NotFound for an unknown run,
	// FailedPrecondition (RUN_DELETED) for a deleted one.
	LogCheckpoint(ctx context.Context, c *Checkpoint) error
	// ListCheckpoints reads a page in descending id order. NotFound when
	// the query's experiment or run does not exist.
	ListCheckpoints(ctx context.Context, q CheckpointQuery) ([]*Checkpoint, error)
	// CheckpointExperiments lists, in ascending order, the ids of the
	// experiments that have checkpoints.
	CheckpointExperiments(ctx context.Context) ([]string, error)
	// ApplyRetention reads every checkpoint of the experiment with its
	// protection in one consistent read, asks plan which to keep (plan
	// returns one verdict per candidate, KeepNone to delete), and deletes
	// the others, all in one transaction. The delete checks the protection
	// again, so a checkpoint that became protected after the read is kept.
	// The outcome's Survivors tell which deleted files are still named.
	// With dryRun nothing is written. plan may be called more than once
	// (retries) and must not have side effects. Concurrent calls on one
	// experiment are serialised. NotFound for an unknown experiment.
	ApplyRetention(ctx context.Context, experimentID string, plan func([]RetentionCandidate) []KeepReason, dryRun bool) (*RetentionOutcome, error)
}
