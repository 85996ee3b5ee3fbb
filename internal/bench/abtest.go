package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

func init() {
	Register(Spec{
		Name:    "predict-shadow",
		Summary: "Predict with a running 100% shadow A/B test against unrouted Predict, interleaved; overhead_p99_ratio",
		New:     func() Scenario { return &shadowScenario{} },
	})
	Register(Spec{
		Name:    "abtest-split",
		Summary: "Predict routed by a 20% split A/B test, one new unit per request; split_error_pp over 100,000 units",
		New:     func() Scenario { return &splitScenario{} },
	})
}

// Goals of the A/B scenarios (issue 8).
const (
	shadowOverheadGoal = 1.10
	splitErrorGoalPP   = 0.5
	splitBPS           = 2000
	splitUnits         = 100_000
)

// measuring reports whether ctx belongs to an operation inside the
// measured window (not the warm-up).
func measuring(ctx context.Context) bool {
	r, ok := ctx.Value(recorderKey{}).(*recorder)
	return ok && r.measuring
}

// abSetup registers a treatment version of the served model (a network
// initialised with another seed, same shape), creates and starts an A/B
// test between the production version and it, and waits until
// InferenceService routes by it. It fails when the model already has a
// running test.
func abSetup(ctx context.Context, env Env, mode experimentv1.ABTestMode, bps int32, salt string) (features int, testID string, err error) {
	if features, err = ensureServedModel(ctx, env); err != nil {
		return 0, "", err
	}
	exp := experimentv1.NewExperimentServiceClient(env.Conn)
	inf := inferencev1.NewInferenceServiceClient(env.Conn)
	prod, err := exp.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: benchModel, Alias: benchAlias})
	if err != nil {
		return 0, "", fmt.Errorf("GetModelVersionByAlias: %w", err)
	}
	net, err := policy.New(policy.DefaultConfig(features), 2)
	if err != nil {
		return 0, "", err
	}
	w, err := net.MarshalBinary()
	if err != nil {
		return 0, "", err
	}
	mv, err := exp.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: benchModel, Format: policy.Format, Weights: w, Description: "quantmesh bench A/B treatment"})
	if err != nil {
		return 0, "", fmt.Errorf("CreateModelVersion: %w", err)
	}
	created, err := exp.CreateABTest(ctx, &experimentv1.CreateABTestRequest{
		Name: benchPrefix() + "abtest", ModelName: benchModel, ControlVersion: prod.GetModelVersion().GetVersion(),
		TreatmentVersion: mv.GetModelVersion().GetVersion(), TreatmentBps: bps, Mode: mode, Salt: salt, Description: "quantmesh bench",
	})
	if err != nil {
		return 0, "", fmt.Errorf("CreateABTest: %w", err)
	}
	testID = created.GetAbTest().GetAbTestId()
	started, err := exp.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: testID})
	if err != nil {
		return 0, testID, fmt.Errorf("StartABTest (stop the model's running test first): %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: benchModel})
		if err != nil {
			return 0, testID, fmt.Errorf("GetModelStatus: %w", err)
		}
		if ab := st.GetModels()[0].GetAbTest(); ab.GetAbTestId() == testID && ab.GetRunning() && ab.GetArmsLoaded() &&
			ab.GetRevision() >= started.GetAbTest().GetRevision() {
			return features, testID, nil
		}
		if time.Now().After(deadline) {
			return 0, testID, fmt.Errorf("InferenceService did not apply A/B test %s in 30s", testID)
		}
		select {
		case <-ctx.Done():
			return 0, testID, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// abTest is a scenario's A/B test, which it stops once.
type abTest struct {
	env     Env
	testID  string
	stopped bool
}

// stop stops the test (no promotion) unless it is stopped already.
func (a *abTest) stop(ctx context.Context) error {
	if a.testID == "" || a.stopped {
		return nil
	}
	_, err := experimentv1.NewExperimentServiceClient(a.env.Conn).StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: a.testID})
	if err == nil || status.Code(err) == codes.FailedPrecondition { // stopped already
		a.stopped = true
	}
	return err
}

// Cleanup implements Cleaner: the test does not outlive the run.
func (a *abTest) Cleanup(ctx context.Context) error { return a.stop(ctx) }

var (
	_ Cleaner = (*shadowScenario)(nil)
	_ Cleaner = (*splitScenario)(nil)
)

// shadowScenario measures what a running shadow test costs a Predict. One
// operation is two Predicts of the served model on the same worker, in
// alternating order: one with a unit id under a 100% shadow test (control
// answers, the treatment is queued for the shadow runner), one without a
// unit id (not routed). overhead_p99_ratio is the p99 of the first over the
// p99 of the second, in the same run on the same connection. Both share the
// machine with the shadow runner, whose forward passes are the real cost
// of a shadow test on a busy server; the ratio isolates what the request
// path pays (routing, the observation, the queue hand-off).
type shadowScenario struct {
	abTest
	client   inferencev1.InferenceServiceClient
	features int
	rngs     []*rand.Rand
	symbol   string
	shadowed []*hdrhistogram.Histogram
	plain    []*hdrhistogram.Histogram
	fields   map[string]any
}

// Name implements Scenario.
func (s *shadowScenario) Name() string { return "predict-shadow" }

// Setup implements Scenario.
func (s *shadowScenario) Setup(ctx context.Context, env Env) error {
	s.env, s.client = env, inferencev1.NewInferenceServiceClient(env.Conn)
	var err error
	if s.features, s.testID, err = abSetup(ctx, env, experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, 10000, benchPrefix()+"shadow"); err != nil {
		return err
	}
	s.symbol = benchPrefix() + "shadow"
	s.rngs = make([]*rand.Rand, env.Concurrency)
	s.shadowed = make([]*hdrhistogram.Histogram, env.Concurrency)
	s.plain = make([]*hdrhistogram.Histogram, env.Concurrency)
	for i := range s.rngs {
		s.rngs[i] = rand.New(rand.NewPCG(uint64(i), 5))
		s.shadowed[i], s.plain[i] = newHistogram(), newHistogram()
	}
	return nil
}

// Op implements Scenario.
func (s *shadowScenario) Op(ctx context.Context, worker, i int) error {
	routed := randomRequest(s.rngs[worker], s.features, s.symbol)
	routed.UnitId = "unit-" + strconv.Itoa(worker) + "-" + strconv.Itoa(i%1000)
	plain := randomRequest(s.rngs[worker], s.features, s.symbol)
	plain.UnitId = ""
	timed := func(req *inferencev1.PredictRequest, name string, h *hdrhistogram.Histogram) error {
		t := time.Now()
		resp, err := s.client.Predict(ctx, req)
		d := time.Since(t)
		if err != nil {
			return fmt.Errorf("predict (%s): %w", name, err)
		}
		if (req.GetUnitId() != "") != (resp.GetAbTestId() == s.testID && resp.GetShadow()) {
			return fmt.Errorf("predict (%s): routed to test %q shadow %v", name, resp.GetAbTestId(), resp.GetShadow())
		}
		Record(ctx, name, d)
		if measuring(ctx) {
			recordLatency(h, d)
		}
		return nil
	}
	if i%2 == 0 {
		if err := timed(routed, "shadowed", s.shadowed[worker]); err != nil {
			return err
		}
		return timed(plain, "unrouted", s.plain[worker])
	}
	if err := timed(plain, "unrouted", s.plain[worker]); err != nil {
		return err
	}
	return timed(routed, "shadowed", s.shadowed[worker])
}

// Finish implements Finisher: it computes the ratio and reads the shadow
// drops, then stops the test.
func (s *shadowScenario) Finish(ctx context.Context) error {
	shadowed, plain := newHistogram(), newHistogram()
	for i := range s.shadowed {
		shadowed.Merge(s.shadowed[i])
		plain.Merge(s.plain[i])
	}
	s.fields = map[string]any{"model": benchModel, "features": s.features, "ab_test_id": s.testID, "treatment_bps": 10000,
		"shadowed_p99_us": shadowed.ValueAtQuantile(99), "unrouted_p99_us": plain.ValueAtQuantile(99),
		"shadowed_p50_us": shadowed.ValueAtQuantile(50), "unrouted_p50_us": plain.ValueAtQuantile(50),
		"overhead_goal": shadowOverheadGoal}
	if p := plain.ValueAtQuantile(99); p > 0 {
		ratio := float64(shadowed.ValueAtQuantile(99)) / float64(p)
		s.fields["overhead_p99_ratio"] = math.Round(ratio*1000) / 1000
		s.fields["overhead_goal_met"] = ratio <= shadowOverheadGoal
	}
	st, err := s.client.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: benchModel})
	if err != nil {
		return fmt.Errorf("GetModelStatus: %w", err)
	}
	s.fields["shadow_dropped"] = st.GetModels()[0].GetAbTest().GetShadowDropped()
	return s.stop(ctx)
}

// Fields implements Scenario.
func (s *shadowScenario) Fields() map[string]any { return s.fields }

// splitScenario measures a split test's routing: one operation is one
// Predict for a unit never seen before in the run, under a 20% split test.
// Finish keeps predicting (untimed, in batches) until splitUnits units
// have been answered, and reports the realised treatment share against the
// configured one: split_error_pp = |realised - configured| in percentage
// points.
type splitScenario struct {
	abTest
	client   inferencev1.InferenceServiceClient
	features int
	rngs     []*rand.Rand
	symbol   string
	next     atomic.Int64 // units handed out

	mu             sync.Mutex
	units, treated int64
	fields         map[string]any
}

// Name implements Scenario.
func (s *splitScenario) Name() string { return "abtest-split" }

// Setup implements Scenario.
func (s *splitScenario) Setup(ctx context.Context, env Env) error {
	s.env, s.client = env, inferencev1.NewInferenceServiceClient(env.Conn)
	var err error
	if s.features, s.testID, err = abSetup(ctx, env, experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, splitBPS, benchPrefix()+"split"); err != nil {
		return err
	}
	s.symbol = benchPrefix() + "split"
	s.rngs = make([]*rand.Rand, env.Concurrency)
	for i := range s.rngs {
		s.rngs[i] = rand.New(rand.NewPCG(uint64(i), 7))
	}
	return nil
}

func (s *splitScenario) count(resp *inferencev1.PredictResponse) error {
	if resp.GetAbTestId() != s.testID || resp.GetArm() == inferencev1.Arm_ARM_UNSPECIFIED {
		return fmt.Errorf("predict: not routed by test %s (got %q, arm %v)", s.testID, resp.GetAbTestId(), resp.GetArm())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.units >= splitUnits {
		return nil
	}
	s.units++
	if resp.GetArm() == inferencev1.Arm_ARM_TREATMENT {
		s.treated++
	}
	return nil
}

func (s *splitScenario) request(rng *rand.Rand) *inferencev1.PredictRequest {
	req := randomRequest(rng, s.features, s.symbol)
	req.UnitId = s.symbol + "-" + strconv.FormatInt(s.next.Add(1), 10)
	return req
}

// Op implements Scenario.
func (s *splitScenario) Op(ctx context.Context, worker, _ int) error {
	resp, err := s.client.Predict(ctx, s.request(s.rngs[worker]))
	if err != nil {
		return fmt.Errorf("predict: %w", err)
	}
	return s.count(resp)
}

// Finish implements Finisher.
func (s *splitScenario) Finish(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(99, 7))
	for {
		s.mu.Lock()
		left := splitUnits - s.units
		s.mu.Unlock()
		if left <= 0 {
			break
		}
		batch := &inferencev1.PredictBatchRequest{}
		for range min(left, 1000) {
			batch.Requests = append(batch.Requests, s.request(rng))
		}
		resp, err := s.client.PredictBatch(ctx, batch)
		if err != nil {
			return fmt.Errorf("predict batch: %w", err)
		}
		for _, r := range resp.GetResponses() {
			if err := s.count(r); err != nil {
				return err
			}
		}
	}
	if s.units == 0 {
		return errors.New("no unit answered")
	}
	realised := float64(s.treated) / float64(s.units) * 100
	configured := float64(splitBPS) / 100
	errPP := math.Abs(realised - configured)
	s.fields = map[string]any{"model": benchModel, "ab_test_id": s.testID, "units": s.units, "treated_units": s.treated,
		"configured_pct": configured, "realised_pct": math.Round(realised*1000) / 1000,
		"split_error_pp": math.Round(errPP*1000) / 1000, "split_error_goal_pp": splitErrorGoalPP, "split_error_goal_met": errPP <= splitErrorGoalPP}
	return s.stop(ctx)
}

// Fields implements Scenario.
func (s *splitScenario) Fields() map[string]any { return s.fields }
