package experiment_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/abassign"
	"github.com/quantmesh/quantmesh/pkg/apierr/apierrtest"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/services/experiment"
)

// abModel registers a model with two versions and points production at
// the first.
func abModel(t *testing.T, c experimentv1.ExperimentServiceClient, name string) {
	t.Helper()
	mustModel(t, c, name)
	mustVersion(t, c, name, weightsOf(name+" v1"))
	mustVersion(t, c, name, weightsOf(name+" v2"))
	setAlias(t, c, name, "production", 1)
}

func createAB(t *testing.T, c experimentv1.ExperimentServiceClient, model string, mode experimentv1.ABTestMode, bps int32) *experimentv1.ABTest {
	t.Helper()
	resp, err := c.CreateABTest(context.Background(), &experimentv1.CreateABTestRequest{
		Name: "ab " + model, ModelName: model, ControlVersion: 1, TreatmentVersion: 2, TreatmentBps: bps, Mode: mode, Salt: "salt-" + model,
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAbTest()
}

func abWantCode(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v: want code %s", err, code)
	}
	if field != "" {
		apierrtest.Field(t, "call", field, func() error { return err })
	}
}

func TestABTestLifecycle(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		ab := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, 5000)
		if ab.GetState() != experimentv1.ABTestState_AB_TEST_STATE_DRAFT || ab.GetSalt() != "salt-policy" || ab.GetRevision() == 0 {
			t.Fatalf("created %v", ab)
		}
		id := ab.GetAbTestId()

		_, err := c.PauseABTest(ctx, &experimentv1.PauseABTestRequest{AbTestId: id})
		abWantCode(t, err, codes.FailedPrecondition, "")

		started, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id})
		if err != nil {
			t.Fatal(err)
		}
		if started.GetAbTest().GetState() != experimentv1.ABTestState_AB_TEST_STATE_RUNNING || started.GetAbTest().GetStartTime() == nil ||
			started.GetAbTest().GetRevision() <= ab.GetRevision() {
			t.Fatalf("started %v", started.GetAbTest())
		}
		_, err = c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id})
		abWantCode(t, err, codes.FailedPrecondition, "")

		// A second test of the model may be drafted, not started.
		second := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, 100)
		_, err = c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: second.GetAbTestId()})
		abWantCode(t, err, codes.FailedPrecondition, "")
		if err != nil && !contains(status.Convert(err).Message(), "model_name") {
			t.Errorf("second running test: message %q does not name model_name", status.Convert(err).Message())
		}

		// Salt is frozen outside DRAFT; traffic and mode are not.
		_, err = c.UpdateABTest(ctx, &experimentv1.UpdateABTestRequest{
			AbTest: &experimentv1.ABTest{AbTestId: id, Salt: "other"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"salt"}},
		})
		abWantCode(t, err, codes.FailedPrecondition, "")
		upd, err := c.UpdateABTest(ctx, &experimentv1.UpdateABTestRequest{
			AbTest:     &experimentv1.ABTest{AbTestId: id, TreatmentBps: 2000, Mode: experimentv1.ABTestMode_AB_TEST_MODE_SPLIT},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"treatment_bps", "mode"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if upd.GetAbTest().GetTreatmentBps() != 2000 || upd.GetAbTest().GetMode() != experimentv1.ABTestMode_AB_TEST_MODE_SPLIT {
			t.Fatalf("updated %v", upd.GetAbTest())
		}

		// AssignUnit agrees with the shared assignment, for any unit
		// InferenceService routes (up to 250 characters, not bytes).
		units := []string{strings.Repeat("é", 250)}
		for i := range 50 {
			units = append(units, fmt.Sprintf("acct-%d", i))
		}
		for _, unit := range units {
			got, err := c.AssignUnit(ctx, &experimentv1.AssignUnitRequest{AbTestId: id, UnitId: unit})
			if err != nil {
				t.Fatal(err)
			}
			arm, bucket := abassign.Assign("salt-policy", unit, 2000)
			want := experimentv1.ABArm_AB_ARM_CONTROL
			if arm == abassign.Treatment {
				want = experimentv1.ABArm_AB_ARM_TREATMENT
			}
			if got.GetArm() != want || got.GetBucket() != bucket {
				t.Fatalf("AssignUnit(%s) = %v, want %v bucket %d", unit, got, want, bucket)
			}
		}

		paused, err := c.PauseABTest(ctx, &experimentv1.PauseABTestRequest{AbTestId: id})
		if err != nil || paused.GetAbTest().GetState() != experimentv1.ABTestState_AB_TEST_STATE_PAUSED {
			t.Fatalf("pause: %v %v", paused, err)
		}
		// Paused: every unit is control.
		for i := range 20 {
			got, err := c.AssignUnit(ctx, &experimentv1.AssignUnitRequest{AbTestId: id, UnitId: fmt.Sprintf("acct-%d", i)})
			if err != nil || got.GetArm() != experimentv1.ABArm_AB_ARM_CONTROL || got.GetModelVersion() != 1 {
				t.Fatalf("paused AssignUnit: %v %v", got, err)
			}
		}
		if _, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id}); err != nil {
			t.Fatal(err)
		}
		stopped, err := c.StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: id, PromoteTreatment: true})
		if err != nil {
			t.Fatal(err)
		}
		if s := stopped.GetAbTest(); s.GetState() != experimentv1.ABTestState_AB_TEST_STATE_STOPPED || !s.GetPromoted() || s.GetStopTime() == nil {
			t.Fatalf("stopped %v", s)
		}
		mv, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: "policy", Alias: "production"})
		if err != nil || mv.GetModelVersion().GetVersion() != 2 {
			t.Fatalf("production after promotion: %v %v", mv, err)
		}
		for _, call := range []func() error{
			func() error { _, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id}); return err },
			func() error { _, err := c.PauseABTest(ctx, &experimentv1.PauseABTestRequest{AbTestId: id}); return err },
			func() error { _, err := c.StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: id}); return err },
		} {
			abWantCode(t, call(), codes.FailedPrecondition, "")
		}
		// The model is free again.
		if _, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: second.GetAbTestId()}); err != nil {
			t.Fatal(err)
		}

		got, err := c.GetABTest(ctx, &experimentv1.GetABTestRequest{AbTestId: id})
		if err != nil || got.GetAbTest().GetRevision() != stopped.GetAbTest().GetRevision() {
			t.Fatalf("get: %v %v", got, err)
		}
		list, err := c.ListABTests(ctx, &experimentv1.ListABTestsRequest{ModelName: "policy", PageSize: 1})
		if err != nil || len(list.GetAbTests()) != 1 || list.GetAbTests()[0].GetAbTestId() != second.GetAbTestId() || list.GetNextPageToken() == "" {
			t.Fatalf("list page 1: %v %v", list, err)
		}
		list, err = c.ListABTests(ctx, &experimentv1.ListABTestsRequest{ModelName: "policy", PageSize: 1, PageToken: list.GetNextPageToken()})
		if err != nil || len(list.GetAbTests()) != 1 || list.GetAbTests()[0].GetAbTestId() != id || list.GetNextPageToken() != "" {
			t.Fatalf("list page 2: %v %v", list, err)
		}
		list, err = c.ListABTests(ctx, &experimentv1.ListABTestsRequest{State: experimentv1.ABTestState_AB_TEST_STATE_STOPPED})
		if err != nil || len(list.GetAbTests()) != 1 {
			t.Fatalf("list stopped: %v %v", list, err)
		}
	})
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestABTestBadInput(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		valid := func() *experimentv1.CreateABTestRequest {
			return &experimentv1.CreateABTestRequest{Name: "t", ModelName: "policy", ControlVersion: 1, TreatmentVersion: 2,
				TreatmentBps: 5000, Mode: experimentv1.ABTestMode_AB_TEST_MODE_SPLIT}
		}
		cases := []struct {
			name  string
			edit  func(r *experimentv1.CreateABTestRequest)
			code  codes.Code
			field string
		}{
			{"bps negative", func(r *experimentv1.CreateABTestRequest) { r.TreatmentBps = -1 }, codes.InvalidArgument, "treatment_bps"},
			{"bps above 10000", func(r *experimentv1.CreateABTestRequest) { r.TreatmentBps = 10001 }, codes.InvalidArgument, "treatment_bps"},
			{"control equals treatment", func(r *experimentv1.CreateABTestRequest) { r.TreatmentVersion = 1 }, codes.InvalidArgument, "treatment_version"},
			{"unknown treatment", func(r *experimentv1.CreateABTestRequest) { r.TreatmentVersion = 9 }, codes.InvalidArgument, "treatment_version"},
			{"unknown control", func(r *experimentv1.CreateABTestRequest) { r.ControlVersion = 7 }, codes.InvalidArgument, "control_version"},
			{"unknown model", func(r *experimentv1.CreateABTestRequest) { r.ModelName = "nope" }, codes.InvalidArgument, "model_name"},
			{"no mode", func(r *experimentv1.CreateABTestRequest) { r.Mode = 0 }, codes.InvalidArgument, "mode"},
			{"no name", func(r *experimentv1.CreateABTestRequest) { r.Name = "" }, codes.InvalidArgument, "name"},
			{"zero version", func(r *experimentv1.CreateABTestRequest) { r.ControlVersion = 0 }, codes.InvalidArgument, "control_version"},
			{"agreement in split", func(r *experimentv1.CreateABTestRequest) { r.Outcome = experimentv1.ABOutcome_AB_OUTCOME_AGREEMENT }, codes.InvalidArgument, "outcome"},
			{"bad guardrail", func(r *experimentv1.CreateABTestRequest) {
				r.Guardrails = &experimentv1.ABGuardrails{MinAgreementRate: math.NaN()}
			}, codes.InvalidArgument, "guardrails.min_agreement_rate"},
		}
		for _, tc := range cases {
			req := valid()
			tc.edit(req)
			_, err := c.CreateABTest(ctx, req)
			if status.Code(err) != tc.code {
				t.Errorf("%s: error %v, want %s", tc.name, err, tc.code)
				continue
			}
			apierrtest.Field(t, tc.name, tc.field, func() error { return err })
		}
		// Nothing was written.
		list, err := c.ListABTests(ctx, &experimentv1.ListABTestsRequest{})
		if err != nil || len(list.GetAbTests()) != 0 {
			t.Fatalf("after bad input: %v %v", list, err)
		}
		_, err = c.GetABTest(ctx, &experimentv1.GetABTestRequest{AbTestId: "x"})
		abWantCode(t, err, codes.InvalidArgument, "ab_test_id")
		_, err = c.AssignUnit(ctx, &experimentv1.AssignUnitRequest{AbTestId: "0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f"})
		abWantCode(t, err, codes.InvalidArgument, "unit_id")
		_, err = c.GetABTest(ctx, &experimentv1.GetABTestRequest{AbTestId: "0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f"})
		abWantCode(t, err, codes.NotFound, "")
		ab := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, 100)
		_, err = c.UpdateABTest(ctx, &experimentv1.UpdateABTestRequest{
			AbTest: &experimentv1.ABTest{AbTestId: ab.GetAbTestId(), TreatmentBps: 20000}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"treatment_bps"}},
		})
		abWantCode(t, err, codes.InvalidArgument, "ab_test.treatment_bps")
		_, err = c.UpdateABTest(ctx, &experimentv1.UpdateABTestRequest{
			AbTest: &experimentv1.ABTest{AbTestId: ab.GetAbTestId()}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"model_name"}},
		})
		abWantCode(t, err, codes.InvalidArgument, "update_mask")
		_, err = c.StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: ab.GetAbTestId(), PromoteTreatment: true, PromoteAlias: "bad alias!"})
		abWantCode(t, err, codes.InvalidArgument, "promote_alias")
		_, err = c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: []*experimentv1.ABObservation{
			{ObservationId: "o1", AbTestId: ab.GetAbTestId(), UnitId: "u", Arm: experimentv1.ABArm_AB_ARM_CONTROL, ModelVersion: 1,
				Action: experimentv1.TradeAction_TRADE_ACTION_BUY, Confidence: 1.5},
		}})
		abWantCode(t, err, codes.InvalidArgument, "observations[0].confidence")
		// observe_time is required: a retry stamped with the server's "now"
		// would not be recognised as a redelivery (TimescaleDB keys
		// observations by it).
		for _, ts := range []*timestamppb.Timestamp{nil, {Seconds: -1 << 62}} {
			o := obs(ab.GetAbTestId(), "o2", "u", experimentv1.ABArm_AB_ARM_CONTROL, experimentv1.TradeAction_TRADE_ACTION_BUY, 0.5, 1)
			o.ObserveTime = ts
			_, err = c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: []*experimentv1.ABObservation{o}})
			abWantCode(t, err, codes.InvalidArgument, "observations[0].observe_time")
		}
	})
}

func obs(test, id, unit string, arm experimentv1.ABArm, action experimentv1.TradeAction, conf, lat float64) *experimentv1.ABObservation {
	return &experimentv1.ABObservation{ObservationId: id, AbTestId: test, UnitId: unit, Arm: arm, ModelVersion: int64(arm),
		Action: action, Confidence: conf, LatencyMs: lat, ObserveTime: timestamppb.Now()}
}

func TestABTestResults(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		shadow := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, 10000)
		var batch []*experimentv1.ABObservation
		for i := range 100 {
			o := obs(shadow.GetAbTestId(), fmt.Sprintf("d%d", i), fmt.Sprintf("u%d", i%10), experimentv1.ABArm_AB_ARM_CONTROL,
				experimentv1.TradeAction_TRADE_ACTION_BUY, 0.6, float64(i+1))
			o.Paired = true
			o.ShadowAction = experimentv1.TradeAction_TRADE_ACTION_BUY
			if i%4 == 0 {
				o.ShadowAction = experimentv1.TradeAction_TRADE_ACTION_SELL
			}
			o.ShadowConfidence = 0.7
			o.ShadowLatencyMs = float64(i + 3)
			batch = append(batch, o)
		}
		rec, err := c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: batch})
		if err != nil || rec.GetAccepted() != 100 || rec.GetDuplicates() != 0 {
			t.Fatalf("record: %v %v", rec, err)
		}
		// Redelivery changes nothing.
		rec, err = c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: batch[:50]})
		if err != nil || rec.GetAccepted() != 0 || rec.GetDuplicates() != 50 {
			t.Fatalf("re-record: %v %v", rec, err)
		}
		res, err := c.GetABTestResults(ctx, &experimentv1.GetABTestResultsRequest{AbTestId: shadow.GetAbTestId()})
		if err != nil {
			t.Fatal(err)
		}
		r := res.GetResults()
		ctl, trt := r.GetArms()[0], r.GetArms()[1]
		if r.GetPairedObservations() != 100 || math.Abs(r.GetAgreementRate()-0.75) > 1e-9 || math.Abs(r.GetMeanConfidenceDelta()-0.1) > 1e-9 {
			t.Errorf("pairs: %v", r)
		}
		if ctl.GetRequests() != 100 || ctl.GetUnits() != 10 || ctl.GetActionCounts()["BUY"] != 100 || ctl.GetLatencyP50Ms() != 50 || ctl.GetLatencyP95Ms() != 95 {
			t.Errorf("control arm: %v", ctl)
		}
		if trt.GetRequests() != 100 || trt.GetUnits() != 10 || trt.GetActionCounts()["SELL"] != 25 || trt.GetLatencyP50Ms() != 52 {
			t.Errorf("treatment arm: %v", trt)
		}
		if r.GetLatencyP50DeltaMs() != 2 || r.GetLatencyP95DeltaMs() != 2 || r.GetSrmWarning() {
			t.Errorf("deltas / srm: %v", r)
		}

		// Split: a z-test on BUY, and a sample ratio mismatch when the
		// realised split is far from the configured one.
		split := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, 5000)
		batch = nil
		for i := range 1000 {
			arm, act := experimentv1.ABArm_AB_ARM_CONTROL, experimentv1.TradeAction_TRADE_ACTION_HOLD
			if i%10 == 0 { // 10% treatment where 50% was configured
				arm, act = experimentv1.ABArm_AB_ARM_TREATMENT, experimentv1.TradeAction_TRADE_ACTION_BUY
			}
			batch = append(batch, obs(split.GetAbTestId(), fmt.Sprintf("s%d", i), fmt.Sprintf("u%d", i), arm, act, 0.5, 1))
		}
		if _, err := c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: batch}); err != nil {
			t.Fatal(err)
		}
		res, err = c.GetABTestResults(ctx, &experimentv1.GetABTestResultsRequest{AbTestId: split.GetAbTestId()})
		if err != nil {
			t.Fatal(err)
		}
		r = res.GetResults()
		if !r.GetSrmWarning() || r.GetSrmPValue() >= 0.001 {
			t.Errorf("srm not flagged: chi %v p %v", r.GetSrmChiSquare(), r.GetSrmPValue())
		}
		if !r.GetSignificant() || r.GetZScore() <= 0 || r.GetArms()[1].GetOutcomeRate() != 1 || r.GetArms()[0].GetOutcomeRate() != 0 {
			t.Errorf("z-test: %v", r)
		}

		// Observations of an unknown test write nothing.
		_, err = c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: []*experimentv1.ABObservation{
			obs(split.GetAbTestId(), "new", "u", experimentv1.ABArm_AB_ARM_CONTROL, experimentv1.TradeAction_TRADE_ACTION_BUY, 0.5, 1),
			obs("0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f", "x", "u", experimentv1.ABArm_AB_ARM_CONTROL, experimentv1.TradeAction_TRADE_ACTION_BUY, 0.5, 1),
		}})
		abWantCode(t, err, codes.NotFound, "")
		res, _ = c.GetABTestResults(ctx, &experimentv1.GetABTestResultsRequest{AbTestId: split.GetAbTestId()})
		if n := res.GetResults().GetArms()[0].GetRequests() + res.GetResults().GetArms()[1].GetRequests(); n != 1000 {
			t.Errorf("partial write: %d requests", n)
		}
	})
}

// TestABTestSRMAfterSplitChange: ramping the treatment share mid-test is
// not a sample ratio mismatch, since the check counts only the units
// observed after the split last changed; a mismatch after it still is.
func TestABTestSRMAfterSplitChange(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		id := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, 1000).GetAbTestId()
		if _, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id}); err != nil {
			t.Fatal(err)
		}
		// record observes units[i] under a split of bps, as inference
		// assigns them, at a time.
		record := func(prefix string, units []string, bps int32, at time.Time) {
			t.Helper()
			var batch []*experimentv1.ABObservation
			for _, u := range units {
				arm := experimentv1.ABArm_AB_ARM_CONTROL
				if a, _ := abassign.Assign("salt-policy", u, bps); a == abassign.Treatment {
					arm = experimentv1.ABArm_AB_ARM_TREATMENT
				}
				o := obs(id, prefix+u, u, arm, experimentv1.TradeAction_TRADE_ACTION_HOLD, 0.5, 1)
				o.ObserveTime = timestamppb.New(at)
				batch = append(batch, o)
			}
			if _, err := c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: batch}); err != nil {
				t.Fatal(err)
			}
		}
		results := func() *experimentv1.ABTestResults {
			t.Helper()
			res, err := c.GetABTestResults(ctx, &experimentv1.GetABTestResultsRequest{AbTestId: id})
			if err != nil {
				t.Fatal(err)
			}
			return res.GetResults()
		}
		var units []string
		for i := range 2000 {
			units = append(units, fmt.Sprintf("acct-%d", i))
		}
		record("ramp10-", units, 1000, time.Now().Add(-time.Hour))
		if r := results(); r.GetSrmWarning() {
			t.Fatalf("at 10%%: srm warning (chi %v p %v)", r.GetSrmChiSquare(), r.GetSrmPValue())
		}
		// Ramp to 50%: the same units again, a fifth of them now treated.
		if _, err := c.UpdateABTest(ctx, &experimentv1.UpdateABTestRequest{
			AbTest: &experimentv1.ABTest{AbTestId: id, TreatmentBps: 5000}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"treatment_bps"}},
		}); err != nil {
			t.Fatal(err)
		}
		record("ramp50-", units, 5000, time.Now().Add(time.Second))
		r := results()
		if r.GetSrmWarning() || r.GetSrmPValue() < 0.001 {
			t.Errorf("after a ramp from 10%% to 50%%: srm warning %v (chi %v p %v)", r.GetSrmWarning(), r.GetSrmChiSquare(), r.GetSrmPValue())
		}
		if ctl, trt := r.GetArms()[0].GetUnits(), r.GetArms()[1].GetUnits(); ctl+trt <= 2000 {
			t.Errorf("arms count %d + %d units; want every unit of both phases (more than 2000)", ctl, trt)
		}
		// New units all answered by control after the ramp are a mismatch.
		var extra []string
		for i := range 600 {
			extra = append(extra, fmt.Sprintf("late-%d", i))
		}
		record("", extra, 0, time.Now().Add(time.Second))
		if r := results(); !r.GetSrmWarning() {
			t.Errorf("control-only units after the ramp: no srm warning (chi %v p %v)", r.GetSrmChiSquare(), r.GetSrmPValue())
		}
	})
}

func TestWatchABTests(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0", experiment.WithABPollInterval(50*time.Millisecond))
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		abModel(t, c, "other")
		a := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, 10000)
		createAB(t, c, "other", experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, 10)

		wctx, cancel := context.WithTimeout(ctx, streamGuard)
		defer cancel()
		st, err := c.WatchABTests(wctx, &experimentv1.WatchABTestsRequest{ModelName: "policy"})
		if err != nil {
			t.Fatal(err)
		}
		recv := func() *experimentv1.WatchABTestsResponse {
			t.Helper()
			m, err := st.Recv()
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			return m
		}
		m := recv()
		if m.GetKind() != experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT || m.GetAbTest().GetAbTestId() != a.GetAbTestId() {
			t.Fatalf("snapshot: %v", m)
		}
		end := recv()
		if end.GetKind() != experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END || end.GetRevision() < a.GetRevision() {
			t.Fatalf("snapshot end: %v", end)
		}
		started, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: a.GetAbTestId()})
		if err != nil {
			t.Fatal(err)
		}
		m = recv()
		if m.GetKind() != experimentv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || m.GetRevision() != started.GetAbTest().GetRevision() ||
			m.GetAbTest().GetState() != experimentv1.ABTestState_AB_TEST_STATE_RUNNING {
			t.Fatalf("update: %v", m)
		}
		cancel()

		// Resume after the start: only what changed since comes, once.
		if _, err := c.PauseABTest(ctx, &experimentv1.PauseABTestRequest{AbTestId: a.GetAbTestId()}); err != nil {
			t.Fatal(err)
		}
		stopped, err := c.StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: a.GetAbTestId()})
		if err != nil {
			t.Fatal(err)
		}
		wctx2, cancel2 := context.WithTimeout(ctx, streamGuard)
		defer cancel2()
		st, err = c.WatchABTests(wctx2, &experimentv1.WatchABTestsRequest{ModelName: "policy", AfterRevision: m.GetRevision()})
		if err != nil {
			t.Fatal(err)
		}
		m = recv()
		if m.GetKind() != experimentv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || m.GetRevision() != stopped.GetAbTest().GetRevision() ||
			m.GetAbTest().GetState() != experimentv1.ABTestState_AB_TEST_STATE_STOPPED {
			t.Fatalf("resumed update: %v", m)
		}
	})
}

func TestABTestOverREST(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		abModel(t, h.client, "policy")
		code, body := h.rest(t, http.MethodPost, "/v1/abtests", `{"name":"v2 vs v1","modelName":"policy",
			"controlVersion":"1","treatmentVersion":"2","treatmentBps":10000,"mode":"AB_TEST_MODE_SHADOW","salt":"rest"}`)
		if code != http.StatusOK || body["state"] != "AB_TEST_STATE_DRAFT" {
			t.Fatalf("create: %d %v", code, body)
		}
		id := body["abTestId"].(string)
		code, body = h.rest(t, http.MethodPost, "/v1/abtests/"+id+":start", `{}`)
		if code != http.StatusOK || body["state"] != "AB_TEST_STATE_RUNNING" {
			t.Fatalf("start: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPatch, "/v1/abtests/"+id, `{"mode":"AB_TEST_MODE_SPLIT","treatmentBps":2000}`)
		if code != http.StatusOK || body["mode"] != "AB_TEST_MODE_SPLIT" || body["treatmentBps"] != float64(2000) {
			t.Fatalf("patch: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/abtests/"+id+"/assignments/desk-1", ``)
		if _, bucket := abassign.Assign("rest", "desk-1", 2000); code != http.StatusOK || body["bucket"] != float64(bucket) {
			t.Fatalf("assignment: %d %v (bucket %d)", code, body, bucket)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/abtests/"+id+"/results", ``)
		if code != http.StatusOK || body["abTestId"] != id {
			t.Fatalf("results: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/abtests/"+id+":pause", `{}`)
		if code != http.StatusOK || body["state"] != "AB_TEST_STATE_PAUSED" {
			t.Fatalf("pause: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/abtests/"+id+":stop", `{"promoteTreatment":true}`)
		if code != http.StatusOK || body["state"] != "AB_TEST_STATE_STOPPED" || body["promoted"] != true {
			t.Fatalf("stop: %d %v", code, body)
		}
		code, _ = h.rest(t, http.MethodPost, "/v1/abtests/"+id+":start", `{}`)
		if code != http.StatusBadRequest {
			t.Errorf("start after stop over REST: %d, want 400 (FAILED_PRECONDITION)", code)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/abtests?modelName=policy", ``)
		if list, _ := body["abTests"].([]any); code != http.StatusOK || len(list) != 1 {
			t.Fatalf("list: %d %v", code, body)
		}
	})
}

func TestABTestGuardrailPauses(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		abModel(t, c, "other")
		create := func(model string) string {
			resp, err := c.CreateABTest(ctx, &experimentv1.CreateABTestRequest{
				Name: "guarded", ModelName: model, ControlVersion: 1, TreatmentVersion: 2, TreatmentBps: 5000,
				Mode: experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, Guardrails: &experimentv1.ABGuardrails{MaxLatencyP95Ratio: 1.5, MinObservations: 10},
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: resp.GetAbTest().GetAbTestId()}); err != nil {
				t.Fatal(err)
			}
			return resp.GetAbTest().GetAbTestId()
		}
		slow, few := create("policy"), create("other")
		record := func(id string, n int) {
			var batch []*experimentv1.ABObservation
			for i := range n {
				batch = append(batch,
					obs(id, fmt.Sprintf("c%d", i), fmt.Sprintf("u%d", i), experimentv1.ABArm_AB_ARM_CONTROL, experimentv1.TradeAction_TRADE_ACTION_HOLD, 0.5, 1),
					obs(id, fmt.Sprintf("t%d", i), fmt.Sprintf("v%d", i), experimentv1.ABArm_AB_ARM_TREATMENT, experimentv1.TradeAction_TRADE_ACTION_HOLD, 0.5, 10))
			}
			if _, err := c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: batch}); err != nil {
				t.Fatal(err)
			}
		}
		record(slow, 20)
		record(few, 5) // below min_observations: not evaluated
		for id, want := range map[string]experimentv1.ABTestState{
			slow: experimentv1.ABTestState_AB_TEST_STATE_PAUSED,
			few:  experimentv1.ABTestState_AB_TEST_STATE_RUNNING,
		} {
			got, err := c.GetABTest(ctx, &experimentv1.GetABTestRequest{AbTestId: id})
			if err != nil || got.GetAbTest().GetState() != want {
				t.Errorf("test %s: %v %v, want %s", id, got.GetAbTest().GetState(), err, want)
			}
		}
	})
}

// A change committed through one server reaches WatchABTests streams of
// another server on the same database (its feeder polls the revision).
func TestWatchABTestsAcrossServers(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		a := serveRegistry(t, db, "127.0.0.1:0", experiment.WithABPollInterval(20*time.Millisecond))
		b := serveRegistry(t, db, "127.0.0.1:0", experiment.WithABPollInterval(20*time.Millisecond))
		ctx := context.Background()
		abModel(t, b.client, "policy")
		wctx, cancel := context.WithTimeout(ctx, streamGuard)
		defer cancel()
		st, err := a.client.WatchABTests(wctx, &experimentv1.WatchABTestsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := st.Recv(); err != nil || m.GetKind() != experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END {
			t.Fatalf("empty snapshot: %v %v", m, err)
		}
		var last uint64
		for range 3 { // create, start, stop: each reaches a's stream once, in order
			var ab *experimentv1.ABTest
			switch last {
			case 0:
				ab = createAB(t, b.client, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SPLIT, 100)
			default:
				m, err := b.client.ListABTests(ctx, &experimentv1.ListABTestsRequest{})
				if err != nil {
					t.Fatal(err)
				}
				id := m.GetAbTests()[0].GetAbTestId()
				if m.GetAbTests()[0].GetState() == experimentv1.ABTestState_AB_TEST_STATE_DRAFT {
					r, err := b.client.StartABTest(ctx, &experimentv1.StartABTestRequest{AbTestId: id})
					if err != nil {
						t.Fatal(err)
					}
					ab = r.GetAbTest()
				} else {
					r, err := b.client.StopABTest(ctx, &experimentv1.StopABTestRequest{AbTestId: id})
					if err != nil {
						t.Fatal(err)
					}
					ab = r.GetAbTest()
				}
			}
			m, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if m.GetKind() != experimentv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || m.GetRevision() != ab.GetRevision() ||
				m.GetAbTest().GetState() != ab.GetState() || m.GetRevision() <= last {
				t.Fatalf("update %v, want %v at revision %d", m, ab.GetState(), ab.GetRevision())
			}
			last = m.GetRevision()
		}
	})
}
