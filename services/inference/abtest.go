package inference

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"

	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/abassign"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// abRoute is the A/B test a served model routes by: its RUNNING test, or
// the PAUSED one when none runs (which routes nothing but is reported).
// It never changes once built; a new configuration swaps in a new route.
type abRoute struct {
	testID             string
	mode               inferencev1.ABTestMode
	running            bool
	salt               abassign.Salted
	bps                int32
	controlVersion     int64
	treatmentVersion   int64
	revision           uint64
	control, treatment *loaded // nil until both are loaded
	dropped            *atomic.Int64
}

func (r *abRoute) armsLoaded() bool { return r.control != nil && r.treatment != nil }

func (r *abRoute) status() *inferencev1.ABTestStatus {
	return &inferencev1.ABTestStatus{
		AbTestId: r.testID, Mode: r.mode, Running: r.running, ControlVersion: r.controlVersion,
		TreatmentVersion: r.treatmentVersion, TreatmentBps: r.bps, ArmsLoaded: r.armsLoaded(),
		Revision: r.revision, ShadowDropped: r.dropped.Load(),
	}
}

// routing is how one request is answered under a test.
type routing struct {
	route  *abRoute
	arm    inferencev1.Arm
	answer *loaded
	// shadowRun: shadow mode, and the unit is covered: the treatment runs
	// off the request path.
	shadowRun bool
}

// routeFor routes a request of unit on m; nil when it is not routed (no
// unit, a pinned version, no test or its arms not loaded yet). A paused
// test answers every unit with control, unrouted (no arm, no observation).
func routeFor(m *served, unit string, pinned bool) (rt *routing, paused *loaded) {
	if unit == "" || pinned {
		return nil, nil
	}
	r := m.ab.Load()
	if r == nil || !r.armsLoaded() {
		return nil, nil
	}
	if !r.running {
		return nil, r.control
	}
	arm, _ := r.salt.Assign(unit, r.bps)
	if r.mode == inferencev1.ABTestMode_AB_TEST_MODE_SHADOW {
		return &routing{route: r, arm: inferencev1.Arm_ARM_CONTROL, answer: r.control, shadowRun: arm == abassign.Treatment}, nil
	}
	if arm == abassign.Treatment {
		return &routing{route: r, arm: inferencev1.Arm_ARM_TREATMENT, answer: r.treatment}, nil
	}
	return &routing{route: r, arm: inferencev1.Arm_ARM_CONTROL, answer: r.control}, nil
}

// armVersion returns a loaded arm of m's test with the given version, for
// pinned requests.
func armVersion(m *served, version int64) *loaded {
	r := m.ab.Load()
	if r == nil {
		return nil
	}
	for _, lv := range []*loaded{r.control, r.treatment} {
		if lv != nil && lv.version == version {
			return lv
		}
	}
	return nil
}

// abFollower applies WatchABTests to the served models: it keeps every
// test not stopped of each model, and installs the route of the RUNNING one
// (or a PAUSED one) after loading both arms' weights. Weights are fetched
// once per version and kept while a test uses them.
type abFollower struct {
	s        *Server
	registry experimentv1.ExperimentServiceClient
	log      *slog.Logger

	tests map[string]map[string]*experimentv1.ABTest // model → test id → test
	cache map[string]map[int64]*loaded               // model → version → weights
	// broken holds, by model and version, why a version's weights can
	// never be served (a version is immutable, so it is not fetched again).
	broken map[string]map[int64]error
	drops  map[string]*atomic.Int64 // test id → shadow drops
	after  uint64
}

// unservable is an arm that can never be served: its weights do not load,
// its version is gone, or the two arms of a split test read different
// features. Retrying does not help; the test stays unrouted until it
// changes.
type unservable struct{ err error }

func (e unservable) Error() string { return e.err.Error() }
func (e unservable) Unwrap() error { return e.err }

// followABTests applies WatchABTests until ctx ends, reconnecting with
// backoff and resuming from the last revision applied.
func (s *Server) followABTests(ctx context.Context, registry experimentv1.ExperimentServiceClient) {
	f := &abFollower{s: s, registry: registry, log: s.log,
		tests: map[string]map[string]*experimentv1.ABTest{}, cache: map[string]map[int64]*loaded{}, broken: map[string]map[int64]error{},
		drops: map[string]*atomic.Int64{}}
	delay := 100 * time.Millisecond
	for {
		delivered, err := f.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			delay = 100 * time.Millisecond
		}
		if status.Code(err) == codes.Unimplemented {
			s.log.Warn("the registry does not serve A/B tests; requests are not routed", "err", err)
		} else {
			s.log.Warn("A/B test stream ended; reconnecting", "err", err, "delay", delay)
		}
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// stream reads one WatchABTests stream; delivered says whether it applied
// anything (false when it ends because arms failed to load, so that the
// retries back off).
func (f *abFollower) stream(ctx context.Context) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := f.registry.WatchABTests(ctx, &experimentv1.WatchABTestsRequest{AfterRevision: f.after})
	if err != nil {
		return false, err
	}
	var snapshot map[string]map[string]*experimentv1.ABTest
	for {
		msg, err := st.Recv()
		if err != nil {
			return delivered, err
		}
		delivered = true
		switch msg.GetKind() {
		case experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT:
			if snapshot == nil {
				snapshot = map[string]map[string]*experimentv1.ABTest{}
			}
			t := msg.GetAbTest()
			if snapshot[t.GetModelName()] == nil {
				snapshot[t.GetModelName()] = map[string]*experimentv1.ABTest{}
			}
			snapshot[t.GetModelName()][t.GetAbTestId()] = t
		case experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END:
			// A snapshot replaces everything known.
			if snapshot == nil {
				snapshot = map[string]map[string]*experimentv1.ABTest{}
			}
			old := f.tests
			f.tests = snapshot
			snapshot = nil
			var failed error
			for model := range old {
				failed = cmp.Or(f.install(ctx, model), failed)
			}
			for model := range f.tests {
				failed = cmp.Or(f.install(ctx, model), failed)
			}
			if failed != nil {
				return false, f.retry(failed)
			}
			f.after = msg.GetRevision()
		case experimentv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE:
			t := msg.GetAbTest()
			model := t.GetModelName()
			if t.GetState() == experimentv1.ABTestState_AB_TEST_STATE_STOPPED {
				delete(f.tests[model], t.GetAbTestId())
			} else {
				if f.tests[model] == nil {
					f.tests[model] = map[string]*experimentv1.ABTest{}
				}
				f.tests[model][t.GetAbTestId()] = t
			}
			if err := f.install(ctx, model); err != nil {
				return false, f.retry(err)
			}
			f.after = msg.GetRevision()
		}
	}
}

// retry makes the next stream start from a fresh snapshot, so a test
// whose arms could not be loaded is installed again after the backoff.
func (f *abFollower) retry(err error) error {
	f.after = 0
	return fmt.Errorf("A/B test arms not loaded: %w", err)
}

// install computes and swaps in the route of model, loading arm weights
// first. Until they load, the new test's route is reported with
// arms_loaded false and requests stay unrouted; an error says they could
// not be loaded this time. An arm that can never be served is logged and
// leaves the test unrouted without an error, so it is not retried.
func (f *abFollower) install(ctx context.Context, model string) error {
	m := f.s.models[model]
	if m == nil {
		return nil
	}
	var pick *experimentv1.ABTest
	for _, t := range f.tests[model] {
		switch t.GetState() {
		case experimentv1.ABTestState_AB_TEST_STATE_RUNNING:
			pick = t
		case experimentv1.ABTestState_AB_TEST_STATE_PAUSED:
			if pick == nil || (pick.GetState() == experimentv1.ABTestState_AB_TEST_STATE_PAUSED && t.GetRevision() > pick.GetRevision()) {
				pick = t
			}
		}
	}
	if pick == nil {
		if m.ab.Swap(nil) != nil {
			f.log.Info("A/B routing off", "model", model)
		}
		f.prune(model, nil)
		return nil
	}
	drops := f.drops[pick.GetAbTestId()]
	if drops == nil {
		drops = &atomic.Int64{}
		f.drops[pick.GetAbTestId()] = drops
	}
	r := &abRoute{
		testID: pick.GetAbTestId(), mode: inferencev1.ABTestMode(pick.GetMode()),
		running: pick.GetState() == experimentv1.ABTestState_AB_TEST_STATE_RUNNING,
		salt:    abassign.Salt(pick.GetSalt()), bps: pick.GetTreatmentBps(),
		controlVersion: pick.GetControlVersion(), treatmentVersion: pick.GetTreatmentVersion(),
		revision: pick.GetRevision(), dropped: drops,
	}
	// Keep the arms already loaded when the versions did not change, so a
	// traffic change never unroutes requests.
	if prev := m.ab.Load(); prev != nil && prev.controlVersion == r.controlVersion && prev.treatmentVersion == r.treatmentVersion {
		r.control, r.treatment = prev.control, prev.treatment
	}
	unloaded := *r
	unloaded.control, unloaded.treatment = nil, nil
	var err error
	if !r.armsLoaded() {
		m.ab.Store(&unloaded)
		if r.control, err = f.version(ctx, m, r.controlVersion); err == nil {
			r.treatment, err = f.version(ctx, m, r.treatmentVersion)
		}
	}
	// Whether just loaded or kept (a shadow test switched to split keeps
	// its arms), split arms must read the same features.
	if err == nil && r.mode == inferencev1.ABTestMode_AB_TEST_MODE_SPLIT && r.control.net.Inputs() != r.treatment.net.Inputs() {
		err = unservable{fmt.Errorf("split test arms read different features: control version %d takes %d, treatment version %d takes %d",
			r.controlVersion, r.control.net.Inputs(), r.treatmentVersion, r.treatment.net.Inputs())}
	}
	if _, never := errors.AsType[unservable](err); never {
		m.ab.Store(&unloaded)
		f.log.Error("A/B test cannot be served; requests stay unrouted until it changes", "model", model, "ab_test_id", r.testID, "err", err)
		f.prune(model, r)
		return nil
	}
	if err != nil {
		f.log.Error("A/B test arms not loaded; requests stay unrouted", "model", model, "ab_test_id", r.testID, "err", err)
		return err
	}
	m.ab.Store(r)
	f.prune(model, r)
	f.log.Info("A/B routing applied", "model", model, "ab_test_id", r.testID, "mode", r.mode.String(), "running", r.running,
		"treatment_bps", r.bps, "revision", r.revision)
	return nil
}

// prune forgets weights, and why versions could not be served, that no
// route uses.
func (f *abFollower) prune(model string, r *abRoute) {
	used := func(v int64) bool { return r != nil && (v == r.controlVersion || v == r.treatmentVersion) }
	for v := range f.cache[model] {
		if !used(v) {
			delete(f.cache[model], v)
		}
	}
	for v := range f.broken[model] {
		if !used(v) {
			delete(f.broken[model], v)
		}
	}
}

// version returns a version's weights: the alias's loaded version when it
// is the one, else from the cache or the registry.
func (f *abFollower) version(ctx context.Context, m *served, version int64) (*loaded, error) {
	if lv := m.current.Load(); lv != nil && lv.version == version {
		return lv, nil
	}
	if lv := f.cache[m.spec.Name][version]; lv != nil {
		return lv, nil
	}
	if err := f.broken[m.spec.Name][version]; err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := f.registry.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{
		ModelName: m.spec.Name, Version: version, View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL,
	})
	if status.Code(err) == codes.NotFound {
		return nil, f.markBroken(m.spec.Name, version, fmt.Errorf("version %d: %w", version, err))
	}
	if err != nil {
		return nil, fmt.Errorf("fetch version %d: %w", version, err)
	}
	lv, err := load(&experimentv1.WatchModelResponse{ModelVersion: resp.GetModelVersion()}, f.s.now())
	if err != nil {
		return nil, f.markBroken(m.spec.Name, version, err)
	}
	if f.cache[m.spec.Name] == nil {
		f.cache[m.spec.Name] = map[int64]*loaded{}
	}
	f.cache[m.spec.Name][version] = lv
	return lv, nil
}

// markBroken remembers that a version can never be served.
func (f *abFollower) markBroken(model string, version int64, err error) error {
	if f.broken[model] == nil {
		f.broken[model] = map[int64]error{}
	}
	e := unservable{err}
	f.broken[model][version] = e
	return e
}

// observeAB records what a routed request saw: at once, or, when its
// treatment runs in the shadow, after that run (which completes the pair).
// The observation's latency is the arm's forward pass, so that control and
// treatment latencies compare like with like.
func (s *Server) observeAB(ctx context.Context, req *inferencev1.PredictRequest, resp *inferencev1.PredictResponse, rt *routing, out *policy.Output, fwd time.Duration) {
	if s.observe == nil {
		return
	}
	arm := experimentv1.ABArm_AB_ARM_CONTROL
	if rt.arm == inferencev1.Arm_ARM_TREATMENT {
		arm = experimentv1.ABArm_AB_ARM_TREATMENT
	}
	obs := &experimentv1.ABObservation{
		ObservationId: resp.GetDecisionId(), AbTestId: rt.route.testID, UnitId: req.GetUnitId(), Arm: arm,
		ModelVersion: resp.GetModelVersion(), Action: tradeAction(out.Action), Confidence: out.Confidence,
		LatencyMs: millis(fwd), ObserveTime: resp.GetDecisionTime(),
	}
	if rt.shadowRun && s.shadow.submit(shadowJob{route: rt.route, features: req.GetFeatures(), obs: obs, span: trace.SpanContextFromContext(ctx)}) {
		return
	}
	s.observe.RecordObservation(ctx, obs)
}
