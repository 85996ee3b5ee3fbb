package inference

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/metric/noop"

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
		rt := routeFor(m, fmt.Sprintf("u%d", i), false)
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
	if routeFor(m, "u", false) != nil {
		t.Error("routed without a test")
	}
	split := testRoute(t, inferencev1.ABTestMode_AB_TEST_MODE_SPLIT, 2000)
	m.ab.Store(split)
	if routeFor(m, "", false) != nil || routeFor(m, "u", true) != nil {
		t.Error("routed a request without a unit, or a pinned one")
	}
	treated := 0
	for i := range 10000 {
		unit := fmt.Sprintf("unit-%d", i)
		rt := routeFor(m, unit, false)
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
	if routeFor(m, "u", false) != nil {
		t.Error("a paused test routed a request")
	}
	unloaded := *split
	unloaded.treatment = nil
	m.ab.Store(&unloaded)
	if routeFor(m, "u", false) != nil {
		t.Error("routed before both arms were loaded")
	}
	if armVersion(m, 1) != split.control || armVersion(m, 3) != nil {
		t.Error("armVersion")
	}
}
