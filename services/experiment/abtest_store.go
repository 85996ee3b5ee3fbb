package experiment

import (
	"context"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

// ABTest is an A/B test between two versions of one registered model. The
// enums are the contract's: they are stored by name.
type ABTest struct {
	ID               string
	Name             string
	Model            string
	ControlVersion   int64
	TreatmentVersion int64
	// TreatmentBPS is the treatment share in basis points, 0 to 10000.
	TreatmentBPS int32
	Mode         experimentv1.ABTestMode
	Salt         string
	State        experimentv1.ABTestState
	// Guardrails; zero disables one.
	MaxLatencyP95Ratio float64
	MinAgreementRate   float64
	MinObservations    int64
	// Outcome as given; UNSPECIFIED resolves by mode (see resolvedOutcome).
	Outcome     experimentv1.ABOutcome
	Description string
	CreateTime  time.Time
	// StartTime is the last start; zero before the first.
	StartTime time.Time
	// StopTime is zero until stopped.
	StopTime time.Time
	Promoted bool
	// Revision is the A/B revision of the test's latest change.
	Revision uint64
	// SplitTime is when TreatmentBPS or Mode last changed after the test
	// was created; zero when they never did. Units observed before it were
	// assigned under another split, so the sample-ratio-mismatch check
	// counts only those observed since.
	SplitTime time.Time
}

// ABListQuery selects a page of tests, newest first.
type ABListQuery struct {
	// Model and State filter when set.
	Model string
	State experimentv1.ABTestState
	// AfterID continues after this id (exclusive, descending).
	AfterID string
	Limit   int
}

// ABObservation is one request served under a test, as inference saw it.
// Action and ShadowAction are TradeAction numbers.
type ABObservation struct {
	TestID           string
	ID               string
	Unit             string
	Arm              experimentv1.ABArm
	ModelVersion     int64
	Action           experimentv1.TradeAction
	Confidence       float64
	LatencyMS        float64
	Paired           bool
	ShadowAction     experimentv1.TradeAction
	ShadowConfidence float64
	ShadowLatencyMS  float64
	Time             time.Time
}

// ABArmAgg aggregates what one arm answered: in split mode the requests
// routed to it, and for treatment also its shadow runs.
type ABArmAgg struct {
	Requests        int64
	Buy, Hold, Sell int64
	ConfidenceSum   float64
	// Units is the number of distinct units.
	Units        int64
	LatencyP50MS float64
	LatencyP95MS float64
}

// ABStats are a test's aggregates: per-arm sums from the per-minute
// rollups, distinct units and latency percentiles from the observations.
type ABStats struct {
	Control, Treatment ABArmAgg
	// Shadow pairs: how many, how many agreed, the sum of treatment minus
	// control confidence, and both sides' latency percentiles over them.
	Paired, Agreements   int64
	ConfidenceDeltaSum   float64
	PairedControlP50MS   float64
	PairedControlP95MS   float64
	PairedTreatmentP50MS float64
	PairedTreatmentP95MS float64
	// SRMControlUnits and SRMTreatmentUnits are Control.Units and
	// Treatment.Units counted over the observations since the window
	// ABStats was given: what the sample-ratio-mismatch check compares
	// with the current split.
	SRMControlUnits, SRMTreatmentUnits int64
}

// ABTestStore persists A/B tests, their observations and rollups.
//
// Every change of a test takes the next value of one A/B revision counter
// in the transaction that makes it, so a test's row always carries the
// revision of its latest change and revisions only grow.
type ABTestStore interface {
	// CreateABTest inserts t and sets t.Revision.
	CreateABTest(ctx context.Context, t *ABTest) error
	// GetABTest reads one test; NotFound when it does not exist.
	GetABTest(ctx context.Context, id string) (*ABTest, error)
	// ListABTests reads a page in descending id order.
	ListABTests(ctx context.Context, q ABListQuery) ([]*ABTest, error)
	// UpdateABTest reads the test, applies mutate and writes it back with a
	// new revision, atomically. An error from mutate aborts without
	// writing. When mutate returns a non-nil AliasMove, the alias moves in
	// the same transaction (a promotion). Making a second test of one model
	// RUNNING fails with FailedPrecondition.
	UpdateABTest(ctx context.Context, id string, mutate func(*ABTest) (*AliasMove, error)) (*ABTest, error)
	// ABTestChanges reads the tests whose revision is greater than after,
	// in revision order, with the A/B revision they reflect. With
	// activeOnly, stopped tests are left out (a snapshot).
	ABTestChanges(ctx context.Context, after uint64, activeOnly bool) ([]*ABTest, uint64, error)
	// ABRevision reads the latest A/B revision.
	ABRevision(ctx context.Context) (uint64, error)
	// RecordABObservations stores the observations not stored yet and adds
	// them to the rollups, in one transaction; it returns how many were
	// new. Observations of tests that do not exist are NotFound.
	RecordABObservations(ctx context.Context, obs []*ABObservation) (int64, error)
	// ABStats reads a test's aggregates, as of one snapshot, with the
	// units of the sample-ratio-mismatch check counted over the
	// observations observed at or after srmSince (all of them when it is
	// zero).
	ABStats(ctx context.Context, testID string, srmSince time.Time) (*ABStats, error)
}
