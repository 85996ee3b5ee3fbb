package mesh_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// registerVersions registers model with n versions of different weights
// and points production at version 1.
func registerVersions(t *testing.T, ctx context.Context, exp experimentv1.ExperimentServiceClient, model string, inputs, n int) {
	t.Helper()
	if _, err := exp.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: model}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		net, err := policy.New(policy.DefaultConfig(inputs), int64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		w, _ := net.MarshalBinary()
		if _, err := exp.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: model, Format: policy.Format, Weights: w}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := exp.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: model, Alias: "production", Version: 1}); err != nil {
		t.Fatal(err)
	}
}

// pollUntil calls check every interval until it reports true or ctx ends
// (a failure, with what).
func pollUntil(t *testing.T, ctx context.Context, what string, interval time.Duration, check func() bool) {
	t.Helper()
	for !check() {
		if ctx.Err() != nil {
			t.Fatalf("%s: not reached before the test's deadline", what)
		}
		time.Sleep(interval)
	}
}

func features(i int) []float64 {
	return []float64{math.Sin(float64(i)), math.Cos(float64(i) / 3), float64(i%7) - 3, float64(i%11) / 5}
}

// TestABTestAcrossTheMesh drives an A/B test through the mesh as a client
// would: ExperimentService configures it, InferenceService routes by it
// and publishes observations on the bus, ExperimentService aggregates
// them, and a promotion reaches inference through WatchModel.
func TestABTestAcrossTheMesh(t *testing.T) {
	t.Parallel()
	_, conn := meshtest.Serve(t, meshtest.Config(t, mesh.Experiment, mesh.Inference))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exp := experimentv1.NewExperimentServiceClient(conn)
	inf := inferencev1.NewInferenceServiceClient(conn)
	registerVersions(t, ctx, exp, "policy", 4, 2)
	pollUntil(t, ctx, "production v1 loaded", 5*time.Millisecond, func() bool {
		st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "policy"})
		return err == nil && st.GetModels()[0].GetLoadedVersion() == 1
	})

	created, err := exp.CreateABTest(ctx, &experimentv1.CreateABTestRequest{
		Name: "v2 vs v1", ModelName: "policy", ControlVersion: 1, TreatmentVersion: 2, TreatmentBps: 10000,
		Mode: experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, Salt: "mesh-e2e",
	})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetAbTest().GetAbTestId()
	started, err := exp.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id})
	if err != nil {
		t.Fatal(err)
	}
	waitApplied := func(rev uint64) {
		t.Helper()
		pollUntil(t, ctx, fmt.Sprintf("A/B revision %d applied by inference", rev), 5*time.Millisecond, func() bool {
			st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "policy"})
			ab := st.GetModels()[0].GetAbTest()
			return err == nil && ab.GetAbTestId() == id && ab.GetRevision() >= rev && ab.GetArmsLoaded()
		})
	}
	waitApplied(started.GetAbTest().GetRevision())

	// Shadow: 10,000 predictions, control answers every one, every one is
	// paired with the treatment's answer.
	const n = 10000
	predictAll := func(unit func(i int) string, seen func(*inferencev1.PredictResponse)) {
		t.Helper()
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for w := range 4 {
			wg.Go(func() {
				for i := w; i < n; i += 4 {
					resp, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", UnitId: unit(i), Symbol: "AB", Features: features(i)})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						seen(resp)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d predictions failed, first: %v", len(errs), errs[0])
		}
	}
	begin := time.Now()
	predictAll(func(i int) string { return fmt.Sprintf("acct-%d", i%500) }, func(r *inferencev1.PredictResponse) {
		if r.GetAbTestId() != id || r.GetArm() != inferencev1.Arm_ARM_CONTROL || !r.GetShadow() || r.GetModelVersion() != 1 || r.GetAlias() != "production" {
			t.Errorf("shadow answer %v: want control v1 under test %s", r, id)
		}
	})
	var res *experimentv1.ABTestResults
	t.Logf("shadow predictions done after %v", time.Since(begin))
	pollUntil(t, ctx, "10,000 paired observations aggregated", 200*time.Millisecond, func() bool {
		r, err := exp.GetABTestResults(ctx, &experimentv1.GetABTestResultsRequest{AbTestId: id})
		if err != nil {
			t.Fatal(err)
		}
		res = r.GetResults()
		return res.GetPairedObservations() >= n
	})
	t.Logf("shadow observations aggregated after %v", time.Since(begin))
	st, _ := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "policy"})
	if d := st.GetModels()[0].GetAbTest().GetShadowDropped(); d != 0 {
		t.Errorf("%d shadow runs dropped", d)
	}
	if res.GetPairedObservations() != n || res.GetArms()[0].GetRequests() != n || res.GetArms()[1].GetRequests() != n ||
		res.GetArms()[0].GetUnits() != 500 || res.GetSrmWarning() {
		t.Fatalf("shadow results: %v", res)
	}
	if a := res.GetAgreementRate(); a < 0 || a > 1 {
		t.Errorf("agreement rate %v", a)
	}

	// Split at 20%: the realised split over 10,000 units is within one
	// point, and each unit's arm is AssignUnit's.
	upd, err := exp.UpdateABTest(ctx, &experimentv1.UpdateABTestRequest{
		AbTest:     &experimentv1.ABTest{AbTestId: id, Mode: experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, TreatmentBps: 2000},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"mode", "treatment_bps"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitApplied(upd.GetAbTest().GetRevision())
	var treated int
	predictAll(func(i int) string { return fmt.Sprintf("unit-%d", i) }, func(r *inferencev1.PredictResponse) {
		if r.GetShadow() || r.GetAbTestId() != id {
			t.Errorf("split answer %v", r)
		}
		want, alias := int64(1), "production"
		if r.GetArm() == inferencev1.Arm_ARM_TREATMENT {
			treated++
			want, alias = 2, ""
		}
		if r.GetModelVersion() != want || r.GetAlias() != alias {
			t.Errorf("arm %v answered by version %d", r.GetArm(), r.GetModelVersion())
		}
	})
	if got := float64(treated) / n * 100; math.Abs(got-20) > 1 {
		t.Errorf("realised treatment share %.2f%%, want 20%% ± 1 point", got)
	}
	for i := range 20 {
		a, err := exp.AssignUnit(ctx, &experimentv1.AssignUnitRequest{AbTestId: id, UnitId: fmt.Sprintf("unit-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		r, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", UnitId: fmt.Sprintf("unit-%d", i), Symbol: "AB", Features: features(i)})
		if err != nil {
			t.Fatal(err)
		}
		if int32(a.GetArm()) != int32(r.GetArm()) {
			t.Errorf("unit-%d: AssignUnit says %v, inference answered with %v", i, a.GetArm(), r.GetArm())
		}
	}

	// Stop with promotion: production moves to the treatment, and
	// inference serves it (routed or not) within a second.
	if _, err := exp.StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: id, PromoteTreatment: true}); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	pollUntil(t, ctx, "promoted version served", time.Millisecond, func() bool {
		r, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", UnitId: "unit-0", Symbol: "AB", Features: features(0)})
		return err == nil && r.GetModelVersion() == 2 && r.GetArm() == inferencev1.Arm_ARM_UNSPECIFIED && r.GetAlias() == "production"
	})
	if took := time.Since(stopped); took > time.Second {
		t.Errorf("the promoted version was served %v after StopABTest, want within 1s", took)
	}
}

// TestABObservationsOverKafka runs the observation path on Kafka (kfake):
// every shadowed prediction becomes one paired observation, aggregated once.
func TestABObservationsOverKafka(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg := meshtest.Config(t, mesh.Experiment, mesh.Inference)
	cfg.KafkaBrokers = cluster.ListenAddrs()
	_, conn := meshtest.Serve(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	exp := experimentv1.NewExperimentServiceClient(conn)
	inf := inferencev1.NewInferenceServiceClient(conn)
	registerVersions(t, ctx, exp, "policy", 4, 2)
	created, err := exp.CreateABTest(ctx, &experimentv1.CreateABTestRequest{
		Name: "kafka", ModelName: "policy", ControlVersion: 1, TreatmentVersion: 2, TreatmentBps: 10000,
		Mode: experimentv1.ABTestMode_AB_TEST_MODE_SHADOW,
	})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetAbTest().GetAbTestId()
	if _, err := exp.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id}); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, ctx, "A/B test applied by inference", 5*time.Millisecond, func() bool {
		st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "policy"})
		return err == nil && st.GetModels()[0].GetLoadedVersion() == 1 && st.GetModels()[0].GetAbTest().GetArmsLoaded()
	})
	const n = 1000
	for i := range n {
		resp, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", UnitId: fmt.Sprintf("k-%d", i%50), Symbol: "AB", Features: features(i)})
		if err != nil || !resp.GetShadow() {
			t.Fatalf("predict: %v %v", resp, err)
		}
	}
	var res *experimentv1.ABTestResults
	pollUntil(t, ctx, "1,000 paired observations over Kafka", 100*time.Millisecond, func() bool {
		r, err := exp.GetABTestResults(ctx, &experimentv1.GetABTestResultsRequest{AbTestId: id})
		if err != nil {
			t.Fatal(err)
		}
		res = r.GetResults()
		return res.GetPairedObservations() >= n
	})
	if res.GetPairedObservations() != n || res.GetArms()[0].GetRequests() != n || res.GetArms()[0].GetUnits() != 50 {
		t.Fatalf("results: %v", res)
	}
}
