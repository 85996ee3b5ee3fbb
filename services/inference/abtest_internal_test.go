package inference

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/abassign"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

type memObservations struct {
	mu  sync.Mutex
	obs []*experimentv1.ABObservation
}

func (m *memObservations) RecordObservation(_ context.Context, o *experimentv1.ABObservation) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.obs = append(m.obs, o)
	return true
}

func testRoute(t *testing.T, mode inferencev1.ABTestMode, bps int32) *abRoute {
	t.Helper()
	lv := func(version, seed int64) *loaded {
		net, err := policy.New(policy.DefaultConfig(4), seed)
		if err != nil {
			t.Fatal(err)
		}
		return &loaded{version: version, net: net}
	}
	return &abRoute{testID: "t", mode: mode, running: true, salt: abassign.Salt("s"), bps: bps,
		controlVersion: 1, treatmentVersion: 2, control: lv(1, 1), treatment: lv(2, 2), dropped: &atomic.Int64{}}
}

// With no shadow runner draining it, the queue fills: further shadow runs
// are dropped and counted, never waited for, and their control answers are
// recorded unpaired.
func TestShadowOverflowDropsAndNeverBlocks(t *testing.T) {
	t.Parallel()
	runner, err := newShadowRunner(noop.NewMeterProvider().Meter(""))
	if err != nil {
		t.Fatal(err)
	}
	rec := &memObservations{}
	s := &Server{shadow: runner, observe: rec}
	r := testRoute(t, inferencev1.ABTestMode_AB_TEST_MODE_SHADOW, abassign.Buckets)
	m := &served{spec: ModelSpec{Name: "policy", Alias: "production"}}
	m.ab.Store(r)
	const extra = 10
	for i := range shadowQueue + extra {
		rt, _ := routeFor(m, fmt.Sprintf("u%d", i), false)
		if rt == nil || !rt.shadowRun || rt.answer != r.control || rt.arm != inferencev1.Arm_ARM_CONTROL {
			t.Fatalf("routing %+v: want control answering with a shadow run", rt)
		}
		var out policy.Output
		if err := rt.answer.net.Predict([]float64{1, 2, 3, 4}, &out); err != nil {
			t.Fatal(err)
		}
		s.observeAB(context.Background(), &inferencev1.PredictRequest{UnitId: "u", Features: []float64{1, 2, 3, 4}},
			&inferencev1.PredictResponse{DecisionId: fmt.Sprint(i), ModelVersion: 1}, rt, &out, 0)
	}
	if got := r.dropped.Load(); got != extra {
		t.Errorf("dropped %d shadow runs, want %d", got, extra)
	}
	if len(runner.queue) != shadowQueue {
		t.Errorf("queue holds %d, want %d", len(runner.queue), shadowQueue)
	}
	if len(rec.obs) != extra {
		t.Fatalf("%d observations recorded at once, want the %d dropped ones", len(rec.obs), extra)
	}
	for _, o := range rec.obs {
		if o.GetPaired() || o.GetArm() != experimentv1.ABArm_AB_ARM_CONTROL {
			t.Errorf("dropped shadow run recorded as %v, want an unpaired control observation", o)
		}
	}
}

func TestRouting(t *testing.T) {
	t.Parallel()
	m := &served{spec: ModelSpec{Name: "policy", Alias: "production"}}
	route := func(unit string, pinned bool) *routing {
		rt, paused := routeFor(m, unit, pinned)
		if paused != nil {
			t.Fatalf("unit %q: answered by the paused test's control", unit)
		}
		return rt
	}
	if route("u", false) != nil {
		t.Error("routed without a test")
	}
	split := testRoute(t, inferencev1.ABTestMode_AB_TEST_MODE_SPLIT, 2000)
	m.ab.Store(split)
	if route("", false) != nil || route("u", true) != nil {
		t.Error("routed a request without a unit, or a pinned one")
	}
	treated := 0
	for i := range 10000 {
		unit := fmt.Sprintf("unit-%d", i)
		rt := route(unit, false)
		arm, _ := abassign.Assign("s", unit, 2000)
		want := split.control
		if arm == abassign.Treatment {
			want = split.treatment
			treated++
		}
		if rt.answer != want || rt.shadowRun {
			t.Fatalf("unit %s: answered by version %d (shadow %v)", unit, rt.answer.version, rt.shadowRun)
		}
	}
	if treated < 1900 || treated > 2100 {
		t.Errorf("%d of 10000 units treated at 20%%", treated)
	}
	paused := *split
	paused.running = false
	m.ab.Store(&paused)
	// A paused test answers units with control, unrouted.
	if rt, lv := routeFor(m, "u", false); rt != nil || lv != split.control {
		t.Errorf("paused test: routing %+v, answered by %v; want control, unrouted", rt, lv)
	}
	if rt, lv := routeFor(m, "", false); rt != nil || lv != nil {
		t.Errorf("paused test, no unit: routing %+v, answered by %v; want the alias's version", rt, lv)
	}
	unloaded := *split
	unloaded.treatment = nil
	m.ab.Store(&unloaded)
	if route("u", false) != nil {
		t.Error("routed before both arms were loaded")
	}
	if armVersion(m, 1) != split.control || armVersion(m, 3) != nil {
		t.Error("armVersion")
	}
}

// versionRegistry answers GetModelVersion from versions and counts calls.
type versionRegistry struct {
	experimentv1.ExperimentServiceClient
	versions map[int64]*experimentv1.ModelVersion
	calls    atomic.Int64
}

func (r *versionRegistry) GetModelVersion(_ context.Context, req *experimentv1.GetModelVersionRequest, _ ...grpc.CallOption) (*experimentv1.GetModelVersionResponse, error) {
	r.calls.Add(1)
	mv := r.versions[req.GetVersion()]
	if mv == nil {
		return nil, status.Errorf(codes.NotFound, "version %d not found", req.GetVersion())
	}
	return &experimentv1.GetModelVersionResponse{ModelVersion: mv}, nil
}

// An arm that can never be served (weights in another format, a version
// gone, split arms reading different features) leaves the test unrouted
// without asking for a retry, and its version is not fetched again.
func TestFollowerUnservableArms(t *testing.T) {
	t.Parallel()
	weights := func(inputs int) []byte {
		net, err := policy.New(policy.DefaultConfig(inputs), 1)
		if err != nil {
			t.Fatal(err)
		}
		b, err := net.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	reg := &versionRegistry{versions: map[int64]*experimentv1.ModelVersion{
		1: {Version: 1, Format: policy.Format, Weights: weights(4)},
		2: {Version: 2, Format: "onnx", Weights: []byte("x")},
		3: {Version: 3, Format: policy.Format, Weights: weights(5)},
		4: {Version: 4, Format: policy.Format, Weights: weights(4)},
	}}
	s := &Server{log: slog.New(slog.DiscardHandler), now: time.Now, models: map[string]*served{"policy": newServed(ModelSpec{Name: "policy", Alias: "production"}, time.Now())}}
	f := &abFollower{s: s, registry: reg, log: slog.New(slog.DiscardHandler), tests: map[string]map[string]*experimentv1.ABTest{}, cache: map[string]map[int64]*loaded{},
		broken: map[string]map[int64]error{}, drops: map[string]*atomic.Int64{}}
	test := func(mode experimentv1.ABTestMode, treatment int64) {
		f.tests["policy"] = map[string]*experimentv1.ABTest{"t": {AbTestId: "t", ModelName: "policy", State: experimentv1.ABTestState_AB_TEST_STATE_RUNNING,
			Mode: mode, ControlVersion: 1, TreatmentVersion: treatment, TreatmentBps: 5000, Salt: "s", Revision: uint64(treatment)}}
	}
	split := experimentv1.ABTestMode_AB_TEST_MODE_SPLIT
	for _, tc := range []struct {
		name      string
		mode      experimentv1.ABTestMode
		treatment int64
	}{
		{"other format", split, 2},
		{"version gone", split, 9},
		{"different features", split, 3},
	} {
		test(tc.mode, tc.treatment)
		for range 3 {
			if err := f.install(context.Background(), "policy"); err != nil {
				t.Fatalf("%s: install asks for a retry: %v", tc.name, err)
			}
		}
		if r := s.models["policy"].ab.Load(); r == nil || r.armsLoaded() || r.treatmentVersion != tc.treatment {
			t.Errorf("%s: route %+v, want the test with its arms not loaded", tc.name, r)
		}
		if rt, lv := routeFor(s.models["policy"], "u", false); rt != nil || lv != nil {
			t.Errorf("%s: a request was routed", tc.name)
		}
	}
	// Each version was fetched once: 1 (then cached), 2, 9 and 3.
	if n := reg.calls.Load(); n != 4 {
		t.Errorf("%d fetches, want 4 (one per version)", n)
	}
	// A servable test is then installed and routes.
	test(split, 4)
	if err := f.install(context.Background(), "policy"); err != nil {
		t.Fatal(err)
	}
	if rt, _ := routeFor(s.models["policy"], "u", false); rt == nil {
		t.Error("a servable test does not route")
	}
	// A shadow test may compare arms that read different features; switched
	// to split with the same versions (its arms already loaded), it cannot
	// be served either.
	test(experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, 3)
	if err := f.install(context.Background(), "policy"); err != nil {
		t.Fatal(err)
	}
	if rt, _ := routeFor(s.models["policy"], "u", false); rt == nil {
		t.Error("a shadow test of arms reading different features does not route")
	}
	test(split, 3)
	if err := f.install(context.Background(), "policy"); err != nil {
		t.Fatalf("shadow to split: install asks for a retry: %v", err)
	}
	if r := s.models["policy"].ab.Load(); r == nil || r.armsLoaded() || r.mode != inferencev1.ABTestMode_AB_TEST_MODE_SPLIT {
		t.Errorf("shadow to split: route %+v, want the split test with its arms not loaded", r)
	}
	if rt, lv := routeFor(s.models["policy"], "u", false); rt != nil || lv != nil {
		t.Error("shadow to split: a request was routed to arms reading different features")
	}
}
