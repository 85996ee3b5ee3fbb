package experiment

import (
	"context"
	"time"

	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

// RunStatus is the state of a run, stored by name.
type RunStatus string

// Run statuses.
const (
	StatusRunning   RunStatus = "RUNNING"
	StatusScheduled RunStatus = "SCHEDULED"
	StatusFinished  RunStatus = "FINISHED"
	StatusFailed    RunStatus = "FAILED"
	StatusKilled    RunStatus = "KILLED"
)

// Terminal reports whether a run in status s has ended.
func (s RunStatus) Terminal() bool {
	return s == StatusFinished || s == StatusFailed || s == StatusKilled
}

// Run is one execution inside an experiment.
type Run struct {
	// Key is the store's internal key of the run; CreateRun sets it.
	Key          int64
	ID           string
	ExperimentID string
	Name         string
	Status       RunStatus
	StartTime    time.Time
	// EndTime is zero while the run has not ended.
	EndTime     time.Time
	Stage       Stage
	ArtifactURI string
	// DeleteTime is zero while the run is active.
	DeleteTime time.Time
	Params     map[string]string
	Tags       map[string]string
	// Latest holds the latest point of each metric, by key.
	Latest []Point
}

// Point is one metric value.
type Point struct {
	Key   string
	Value float64
	Step  int64
	// Time is when the value was observed, in Unix epoch milliseconds.
	Time int64
}

// after reports whether p is later than q in the order that decides a
// metric's latest value: step, then time, then value.
func (p Point) after(q Point) bool {
	if p.Step != q.Step {
		return p.Step > q.Step
	}
	if p.Time != q.Time {
		return p.Time > q.Time
	}
	return p.Value > q.Value
}

// KV is a param or tag.
type KV struct {
	Key, Value string
}

// Batch is what LogBatch writes to one run, all or nothing.
type Batch struct {
	Metrics []Point
	Params  []KV
	Tags    []KV
	// IdempotencyKey, when set, makes a retried batch a no-op.
	IdempotencyKey string
	// Now is the time recorded with the idempotency key.
	Now time.Time
}

// StreamMessage is one StreamMetrics message, validated, for a run known to
// be active.
type StreamMessage struct {
	RunKey int64
	// StreamID is empty when the client does not deduplicate.
	StreamID string
	Sequence uint64
	Points   []Point
}

// AppendResult is the outcome of a queued StreamMessage.
type AppendResult struct {
	// Duplicate is true when the message's (stream id, sequence) had been
	// stored before and nothing was written.
	Duplicate bool
	// Err is nil when the message is durable (or a duplicate).
	Err error
}

// HistoryQuery selects points of one metric of a run, in (step, time,
// value) order.
type HistoryQuery struct {
	RunKey int64
	Key    string
	// After continues after this point (exclusive), skipping Skip points
	// equal to it first; nil starts at the beginning.
	After *Point
	Skip  int
	// Limit bounds the points returned; 0 means all.
	Limit int
}

// RunStore persists runs, their params and tags, and metric points.
type RunStore interface {
	// CreateRun inserts r and sets r.Key. The experiment must exist
	// (NotFound) and be active (FailedPrecondition).
	CreateRun(ctx context.Context, r *Run) error
	// GetRun reads a run with its params, tags and latest metrics.
	GetRun(ctx context.Context, id string) (*Run, error)
	// UpdateRun reads the run (without params, tags and metrics), applies
	// mutate and writes its attributes back, atomically. An error from
	// mutate aborts without writing.
	UpdateRun(ctx context.Context, id string, mutate func(*Run) error) (*Run, error)
	// SetRunTag sets one tag of an active run.
	SetRunTag(ctx context.Context, runID string, tag KV) error
	// DeleteRunTag removes one tag of an active run; NotFound when absent.
	DeleteRunTag(ctx context.Context, runID, key string) error
	// LogBatch writes b to an active run in one transaction. A param
	// logged before with another value is FailedPrecondition. replayed is
	// true when b's idempotency key had been applied and nothing was
	// written.
	LogBatch(ctx context.Context, runID string, b Batch) (replayed bool, err error)
	// ActiveRunKey returns the key of an active run: NotFound for an
	// unknown run, FailedPrecondition for a deleted one.
	ActiveRunKey(ctx context.Context, runID string) (int64, error)
	// RunKey returns the key of a run, deleted or not.
	RunKey(ctx context.Context, runID string) (int64, error)
	// Append queues m for a durable write and returns a channel that
	// yields the outcome once. Messages of one stream id are written in the
	// order they are appended. Append blocks while the write queue is full
	// (backpressure) and fails only when ctx ends or the store is closed.
	Append(ctx context.Context, m StreamMessage) (<-chan AppendResult, error)
	// MetricHistory reads points of one metric in (step, time, value)
	// order.
	MetricHistory(ctx context.Context, q HistoryQuery) ([]Point, error)
	// CountMetric counts the stored points of one metric of a run.
	CountMetric(ctx context.Context, runKey int64, key string) (int64, error)
	// SearchRuns reads the runs q selects, in its order, with their
	// params, tags and latest metrics, and each run's cursor (its sort
	// key, to continue after it). A cursor that does not fit the order is
	// filter.ErrCursor.
	SearchRuns(ctx context.Context, q filter.Query) ([]*Run, []*filter.Cursor, error)
}
