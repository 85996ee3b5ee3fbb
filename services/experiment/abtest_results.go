package experiment

import (
	"context"
	"fmt"
	"math"
	"time"

	"gonum.org/v1/gonum/stat/distuv"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// srmAlpha is the sample-ratio-mismatch threshold: below it the realised
// split is suspect.
const srmAlpha = 0.001

// resolvedOutcome is the outcome the significance test compares:
// AGREEMENT in shadow mode and ACTION_BUY in split mode when unset.
func resolvedOutcome(t *ABTest) experimentv1.ABOutcome {
	if t.Outcome != experimentv1.ABOutcome_AB_OUTCOME_UNSPECIFIED {
		return t.Outcome
	}
	if t.Mode == modeShadow {
		return experimentv1.ABOutcome_AB_OUTCOME_AGREEMENT
	}
	return experimentv1.ABOutcome_AB_OUTCOME_ACTION_BUY
}

// GetABTestResults implements ExperimentServiceServer.
func (s *Server) GetABTestResults(ctx context.Context, req *experimentv1.GetABTestResultsRequest) (*experimentv1.GetABTestResultsResponse, error) {
	if err := validateID("ab_test_id", req.GetAbTestId()); err != nil {
		return nil, err
	}
	t, err := s.store.GetABTest(ctx, req.GetAbTestId())
	if err != nil {
		return nil, err
	}
	st, err := s.store.ABStats(ctx, t.ID, t.SplitTime)
	if err != nil {
		return nil, err
	}
	res := computeResults(t, st)
	res.ComputeTime = timestamppb.New(s.now())
	return &experimentv1.GetABTestResultsResponse{Results: res}, nil
}

// computeResults turns a test's aggregates into its results.
func computeResults(t *ABTest, st *ABStats) *experimentv1.ABTestResults {
	outcome := resolvedOutcome(t)
	res := &experimentv1.ABTestResults{AbTestId: t.ID, PairedObservations: st.Paired}
	var hits [2]int64
	for i, a := range []struct {
		arm     experimentv1.ABArm
		version int64
		agg     ABArmAgg
	}{
		{armControl, t.ControlVersion, st.Control},
		{armTreatment, t.TreatmentVersion, st.Treatment},
	} {
		ar := &experimentv1.ArmResults{
			Arm:          a.arm,
			ModelVersion: a.version,
			Units:        a.agg.Units,
			Requests:     a.agg.Requests,
			ActionCounts: map[string]int64{"BUY": a.agg.Buy, "HOLD": a.agg.Hold, "SELL": a.agg.Sell},
			LatencyP50Ms: a.agg.LatencyP50MS,
			LatencyP95Ms: a.agg.LatencyP95MS,
		}
		if a.agg.Requests > 0 {
			ar.MeanConfidence = a.agg.ConfidenceSum / float64(a.agg.Requests)
		}
		switch outcome {
		case experimentv1.ABOutcome_AB_OUTCOME_ACTION_BUY:
			hits[i] = a.agg.Buy
		case experimentv1.ABOutcome_AB_OUTCOME_ACTION_SELL:
			hits[i] = a.agg.Sell
		case experimentv1.ABOutcome_AB_OUTCOME_ACTION_HOLD:
			hits[i] = a.agg.Hold
		}
		if a.agg.Requests > 0 {
			ar.OutcomeRate = float64(hits[i]) / float64(a.agg.Requests)
		}
		res.Arms = append(res.Arms, ar)
	}
	if st.Paired > 0 {
		res.AgreementRate = float64(st.Agreements) / float64(st.Paired)
		res.MeanConfidenceDelta = st.ConfidenceDeltaSum / float64(st.Paired)
		res.LatencyP50DeltaMs = st.PairedTreatmentP50MS - st.PairedControlP50MS
		res.LatencyP95DeltaMs = st.PairedTreatmentP95MS - st.PairedControlP95MS
	}
	if outcome == experimentv1.ABOutcome_AB_OUTCOME_AGREEMENT {
		// Agreement is a property of a pair, not of one arm: the rate is
		// reported for both arms and no two-proportion test applies.
		for _, ar := range res.Arms {
			ar.OutcomeRate = res.AgreementRate
		}
		res.PValue = 1
	} else {
		res.ZScore, res.PValue = twoProportionZ(hits[0], st.Control.Requests, hits[1], st.Treatment.Requests)
		res.Significant = res.PValue < 0.05
	}
	res.SrmChiSquare, res.SrmPValue = srm(t, st)
	res.SrmWarning = res.SrmPValue < srmAlpha
	return res
}

// twoProportionZ tests whether the rates x1/n1 (control) and x2/n2
// (treatment) differ, with the pooled standard error; it returns the z
// statistic of treatment against control and the two-sided p-value (z 0
// and p 1 when either arm is empty or the pooled rate is 0 or 1).
func twoProportionZ(x1, n1, x2, n2 int64) (z, p float64) {
	if n1 == 0 || n2 == 0 {
		return 0, 1
	}
	p1, p2 := float64(x1)/float64(n1), float64(x2)/float64(n2)
	pool := float64(x1+x2) / float64(n1+n2)
	se := math.Sqrt(pool * (1 - pool) * (1/float64(n1) + 1/float64(n2)))
	if se == 0 {
		return 0, 1
	}
	z = (p2 - p1) / se
	return z, 2 * distuv.UnitNormal.Survival(math.Abs(z))
}

// srm is the sample-ratio-mismatch check: a chi-square goodness-of-fit
// test (1 degree of freedom) of the realised units per arm against the
// configured split. In split mode the arms are the units answered by each;
// in shadow mode, the units whose requests were shadowed against those
// never shadowed. Only units observed since the split last changed count
// (ABTest.SplitTime): those before were assigned under another split, and
// a ramp from 10% to 50% would otherwise always look like a mismatch.
// (Requests served under the old split until inference learns the new one
// fall in the window: seconds against a test of hours.) A cell expected
// empty but observed non-empty is a certain mismatch (p = 0).
func srm(t *ABTest, st *ABStats) (chi, p float64) {
	var treated, total int64
	if t.Mode == modeShadow {
		treated, total = st.SRMTreatmentUnits, st.SRMControlUnits
	} else {
		treated, total = st.SRMTreatmentUnits, st.SRMControlUnits+st.SRMTreatmentUnits
	}
	control := total - treated
	if total == 0 {
		return 0, 1
	}
	share := float64(t.TreatmentBPS) / 10000
	exp := [2]float64{float64(total) * (1 - share), float64(total) * share}
	obs := [2]float64{float64(control), float64(treated)}
	for i := range obs {
		if exp[i] == 0 {
			if obs[i] > 0 {
				return math.Inf(1), 0
			}
			continue
		}
		d := obs[i] - exp[i]
		chi += d * d / exp[i]
	}
	return chi, distuv.ChiSquared{K: 1}.Survival(chi)
}

// RecordObservations implements ExperimentServiceServer.
func (s *Server) RecordObservations(ctx context.Context, req *experimentv1.RecordObservationsRequest) (*experimentv1.RecordObservationsResponse, error) {
	in := req.GetObservations()
	var v apierr.Violations
	if len(in) > maxObsBatch {
		v.Add("observations", "at most %d per request, got %d", maxObsBatch, len(in))
		return nil, v.Err()
	}
	obs := make([]*ABObservation, 0, len(in))
	for i, o := range in {
		field := fmt.Sprintf("observations[%d]", i)
		if o == nil {
			v.Add(field, "required")
			continue
		}
		validateObservation(&v, field, o)
		// Required here, not defaulted to now: with TimescaleDB the
		// observe_time is part of the key that makes a redelivered
		// observation a no-op, so a retry stamped with another "now" would
		// be stored twice. (InferenceService always sets it; the bus path
		// defaults it to the message's time, which a redelivery keeps.)
		switch ts := o.GetObserveTime(); {
		case ts == nil:
			v.Add(field+".observe_time", "required: the time the request was served")
		case !ts.IsValid():
			v.Add(field+".observe_time", "must be a valid timestamp: %v", ts.CheckValid())
		}
		obs = append(obs, observationFromProto(o, s.now()))
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	stored, err := s.store.RecordABObservations(ctx, obs)
	if err != nil {
		return nil, err
	}
	s.checkGuardrails(ctx, testIDs(obs))
	return &experimentv1.RecordObservationsResponse{Accepted: stored, Duplicates: int64(len(obs)) - stored}, nil
}

func validateObservation(v *apierr.Violations, field string, o *experimentv1.ABObservation) {
	switch id := o.GetObservationId(); {
	case id == "":
		v.Add(field+".observation_id", "required")
	case len(id) > maxObsID:
		v.Add(field+".observation_id", "must be at most %d bytes, got %d", maxObsID, len(id))
	}
	v.Merge(validateID(field+".ab_test_id", o.GetAbTestId()))
	validateUnit(v, field+".unit_id", o.GetUnitId())
	if a := o.GetArm(); a != armControl && a != armTreatment {
		v.Add(field+".arm", "must be AB_ARM_CONTROL or AB_ARM_TREATMENT, got %s", a)
	}
	validateVersion(v, field+".model_version", o.GetModelVersion())
	validateAction(v, field+".action", o.GetAction())
	validateUnitInterval(v, field+".confidence", o.GetConfidence())
	validateLatency(v, field+".latency_ms", o.GetLatencyMs())
	if o.GetPaired() {
		validateAction(v, field+".shadow_action", o.GetShadowAction())
		validateUnitInterval(v, field+".shadow_confidence", o.GetShadowConfidence())
		validateLatency(v, field+".shadow_latency_ms", o.GetShadowLatencyMs())
	}
}

func validateAction(v *apierr.Violations, field string, a experimentv1.TradeAction) {
	if a < experimentv1.TradeAction_TRADE_ACTION_BUY || a > experimentv1.TradeAction_TRADE_ACTION_SELL {
		v.Add(field, "must be BUY, HOLD or SELL, got %s", a)
	}
}

func validateUnitInterval(v *apierr.Violations, field string, x float64) {
	if math.IsNaN(x) || x < 0 || x > 1 {
		v.Add(field, "must be between 0 and 1, got %v", x)
	}
}

func validateLatency(v *apierr.Violations, field string, x float64) {
	if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
		v.Add(field, "must be a finite number of milliseconds >= 0, got %v", x)
	}
}

func observationFromProto(o *experimentv1.ABObservation, now time.Time) *ABObservation {
	out := &ABObservation{
		TestID:           o.GetAbTestId(),
		ID:               o.GetObservationId(),
		Unit:             o.GetUnitId(),
		Arm:              o.GetArm(),
		ModelVersion:     o.GetModelVersion(),
		Action:           o.GetAction(),
		Confidence:       o.GetConfidence(),
		LatencyMS:        o.GetLatencyMs(),
		Paired:           o.GetPaired(),
		ShadowAction:     o.GetShadowAction(),
		ShadowConfidence: o.GetShadowConfidence(),
		ShadowLatencyMS:  o.GetShadowLatencyMs(),
		Time:             now.UTC(),
	}
	if !out.Paired {
		out.ShadowAction, out.ShadowConfidence, out.ShadowLatencyMS = 0, 0, 0
	}
	if ts := o.GetObserveTime(); ts != nil && ts.IsValid() {
		out.Time = ts.AsTime().UTC()
	}
	return out
}

func testIDs(obs []*ABObservation) map[string]bool {
	ids := map[string]bool{}
	for _, o := range obs {
		ids[o.TestID] = true
	}
	return ids
}
