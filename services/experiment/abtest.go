package experiment

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/abassign"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/page"
)

// A/B test lifecycle:
//
//	DRAFT ──start──► RUNNING ──pause──► PAUSED ──start──► RUNNING
//	DRAFT, RUNNING, PAUSED ──stop (optionally promote)──► STOPPED (final)
//
// Any other transition is FAILED_PRECONDITION. At most one test of a model
// is RUNNING (a unique index enforces it, also across processes).

const (
	maxSalt      = 128
	maxUnit      = 250
	maxObsID     = 128
	maxObsBatch  = 10000
	promoteAlias = "production"
)

var (
	stateDraft   = experimentv1.ABTestState_AB_TEST_STATE_DRAFT
	stateRunning = experimentv1.ABTestState_AB_TEST_STATE_RUNNING
	statePaused  = experimentv1.ABTestState_AB_TEST_STATE_PAUSED
	stateStopped = experimentv1.ABTestState_AB_TEST_STATE_STOPPED
	modeSplit    = experimentv1.ABTestMode_AB_TEST_MODE_SPLIT
	modeShadow   = experimentv1.ABTestMode_AB_TEST_MODE_SHADOW
	armControl   = experimentv1.ABArm_AB_ARM_CONTROL
	armTreatment = experimentv1.ABArm_AB_ARM_TREATMENT
)

func errTransition(t *ABTest, action string) error {
	return &apierr.Error{
		Kind:     apierr.ErrFailedPrecondition,
		Reason:   "AB_TEST_INVALID_TRANSITION",
		Message:  fmt.Sprintf("A/B test %s is %s; it cannot be %s", t.ID, stateName(t.State), action),
		Metadata: map[string]string{"ab_test_id": t.ID, "state": t.State.String()},
	}
}

func stateName(s experimentv1.ABTestState) string {
	switch s {
	case stateDraft:
		return "DRAFT"
	case stateRunning:
		return "RUNNING"
	case statePaused:
		return "PAUSED"
	case stateStopped:
		return "STOPPED"
	}
	return s.String()
}

func validateMode(v *apierr.Violations, field string, m experimentv1.ABTestMode) {
	if m != modeSplit && m != modeShadow {
		v.Add(field, "required: AB_TEST_MODE_SPLIT or AB_TEST_MODE_SHADOW, got %s", m)
	}
}

func validateBPS(v *apierr.Violations, field string, bps int32) {
	if bps < 0 || bps > abassign.Buckets {
		v.Add(field, "must be between 0 and 10000 basis points, got %d", bps)
	}
}

func validateSalt(v *apierr.Violations, field, salt string, required bool) {
	switch {
	case salt == "" && required:
		v.Add(field, "required")
	case len(salt) > maxSalt:
		v.Add(field, "must be at most %d bytes, got %d", maxSalt, len(salt))
	case hasControl(salt):
		v.Add(field, "must not contain control characters")
	}
}

func validateGuardrails(v *apierr.Violations, field string, g *experimentv1.ABGuardrails) {
	if g == nil {
		return
	}
	if r := g.GetMaxLatencyP95Ratio(); math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
		v.Add(field+".max_latency_p95_ratio", "must be a finite ratio >= 0 (0 disables), got %v", r)
	}
	if a := g.GetMinAgreementRate(); math.IsNaN(a) || a < 0 || a > 1 {
		v.Add(field+".min_agreement_rate", "must be between 0 and 1 (0 disables), got %v", a)
	}
	if n := g.GetMinObservations(); n < 0 {
		v.Add(field+".min_observations", "must not be negative, got %d", n)
	}
}

func validateOutcome(v *apierr.Violations, field string, o experimentv1.ABOutcome, mode experimentv1.ABTestMode) {
	if _, ok := experimentv1.ABOutcome_name[int32(o)]; !ok {
		v.Add(field, "unknown outcome %d", int32(o))
		return
	}
	if o == experimentv1.ABOutcome_AB_OUTCOME_AGREEMENT && mode != modeShadow {
		v.Add(field, "AB_OUTCOME_AGREEMENT needs mode AB_TEST_MODE_SHADOW")
	}
}

func validateUnit(v *apierr.Violations, field, unit string) {
	switch {
	case unit == "":
		v.Add(field, "required")
	case utf8.RuneCountInString(unit) > maxUnit: // as InferenceService counts a unit_id
		v.Add(field, "must be at most %d characters, got %d", maxUnit, utf8.RuneCountInString(unit))
	}
}

// existingVersion turns a missing model or version into InvalidArgument on
// the request field that named it.
func (s *Server) existingVersion(ctx context.Context, model string, version int64, modelField, field string) error {
	_, err := s.store.GetModelVersion(ctx, model, version, false)
	if errors.Is(err, apierr.ErrNotFound) {
		if _, merr := s.store.GetRegisteredModel(ctx, model); errors.Is(merr, apierr.ErrNotFound) {
			return apierr.Invalid(modelField, "registered model %q does not exist", naming.Truncate(model))
		}
		return apierr.Invalid(field, "model %q has no version %d", naming.Truncate(model), version)
	}
	return err
}

// CreateABTest implements ExperimentServiceServer.
func (s *Server) CreateABTest(ctx context.Context, req *experimentv1.CreateABTestRequest) (*experimentv1.CreateABTestResponse, error) {
	var v apierr.Violations
	naming.Name(&v, "name", req.GetName())
	naming.ModelName(&v, "model_name", req.GetModelName())
	validateVersion(&v, "control_version", req.GetControlVersion())
	validateVersion(&v, "treatment_version", req.GetTreatmentVersion())
	if req.GetControlVersion() > 0 && req.GetControlVersion() == req.GetTreatmentVersion() {
		v.Add("treatment_version", "must differ from control_version (both %d)", req.GetControlVersion())
	}
	validateBPS(&v, "treatment_bps", req.GetTreatmentBps())
	validateMode(&v, "mode", req.GetMode())
	validateSalt(&v, "salt", req.GetSalt(), false)
	validateGuardrails(&v, "guardrails", req.GetGuardrails())
	validateOutcome(&v, "outcome", req.GetOutcome(), req.GetMode())
	validateText(&v, "description", req.GetDescription(), maxDescription)
	if err := v.Err(); err != nil {
		return nil, err
	}
	if err := s.existingVersion(ctx, req.GetModelName(), req.GetControlVersion(), "model_name", "control_version"); err != nil {
		return nil, err
	}
	if err := s.existingVersion(ctx, req.GetModelName(), req.GetTreatmentVersion(), "model_name", "treatment_version"); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("new ab test id: %w", err)
	}
	t := &ABTest{
		ID:                 id.String(),
		Name:               req.GetName(),
		Model:              req.GetModelName(),
		ControlVersion:     req.GetControlVersion(),
		TreatmentVersion:   req.GetTreatmentVersion(),
		TreatmentBPS:       req.GetTreatmentBps(),
		Mode:               req.GetMode(),
		Salt:               req.GetSalt(),
		State:              stateDraft,
		MaxLatencyP95Ratio: req.GetGuardrails().GetMaxLatencyP95Ratio(),
		MinAgreementRate:   req.GetGuardrails().GetMinAgreementRate(),
		MinObservations:    req.GetGuardrails().GetMinObservations(),
		Outcome:            req.GetOutcome(),
		Description:        req.GetDescription(),
		CreateTime:         s.now().UTC().Truncate(time.Millisecond),
	}
	if t.Salt == "" {
		t.Salt = t.ID
	}
	if err := s.abWrite(func() (*ABTest, error) { return t, s.store.CreateABTest(ctx, t) }); err != nil {
		return nil, err
	}
	return &experimentv1.CreateABTestResponse{AbTest: abTestToProto(t)}, nil
}

// GetABTest implements ExperimentServiceServer.
func (s *Server) GetABTest(ctx context.Context, req *experimentv1.GetABTestRequest) (*experimentv1.GetABTestResponse, error) {
	if err := validateID("ab_test_id", req.GetAbTestId()); err != nil {
		return nil, err
	}
	t, err := s.store.GetABTest(ctx, req.GetAbTestId())
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetABTestResponse{AbTest: abTestToProto(t)}, nil
}

type abCursor struct {
	ID string `json:"id"`
}

// ListABTests implements ExperimentServiceServer.
func (s *Server) ListABTests(ctx context.Context, req *experimentv1.ListABTestsRequest) (*experimentv1.ListABTestsResponse, error) {
	var v apierr.Violations
	size, err := experimentPages.Size("page_size", req.GetPageSize())
	v.Merge(err)
	if req.GetModelName() != "" {
		naming.ModelName(&v, "model_name", req.GetModelName())
	}
	if _, ok := experimentv1.ABTestState_name[int32(req.GetState())]; !ok {
		v.Add("state", "unknown state %d", int32(req.GetState()))
	}
	fp := page.Fingerprint("abtests", req.GetModelName(), req.GetState().String())
	var cur abCursor
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	list, err := s.store.ListABTests(ctx, ABListQuery{Model: req.GetModelName(), State: req.GetState(), AfterID: cur.ID, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.ListABTestsResponse{}
	if list, resp.NextPageToken, err = page.Cut(list, size, fp, func(t *ABTest) any { return abCursor{ID: t.ID} }); err != nil {
		return nil, err
	}
	for _, t := range list {
		resp.AbTests = append(resp.AbTests, abTestToProto(t))
	}
	return resp, nil
}

// UpdateABTest implements ExperimentServiceServer.
func (s *Server) UpdateABTest(ctx context.Context, req *experimentv1.UpdateABTestRequest) (*experimentv1.UpdateABTestResponse, error) {
	in := req.GetAbTest()
	var v apierr.Violations
	if in == nil {
		v.Add("ab_test", "required")
		return nil, v.Err()
	}
	v.Merge(validateID("ab_test.ab_test_id", in.GetAbTestId()))
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		v.Add("update_mask", "must name at least one of treatment_bps, mode, guardrails, description, salt")
	}
	for _, p := range paths {
		switch p {
		case "treatment_bps":
			validateBPS(&v, "ab_test.treatment_bps", in.GetTreatmentBps())
		case "mode":
			validateMode(&v, "ab_test.mode", in.GetMode())
		case "guardrails":
			validateGuardrails(&v, "ab_test.guardrails", in.GetGuardrails())
		case "description":
			validateText(&v, "ab_test.description", in.GetDescription(), maxDescription)
		case "salt":
			validateSalt(&v, "ab_test.salt", in.GetSalt(), true)
		default:
			v.Add("update_mask", "path %q cannot be updated; allowed: treatment_bps, mode, guardrails, description, salt", p)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	t, err := s.abUpdate(ctx, in.GetAbTestId(), func(t *ABTest) (*AliasMove, error) {
		if t.State == stateStopped {
			return nil, errTransition(t, "updated")
		}
		bps, mode := t.TreatmentBPS, t.Mode
		for _, p := range paths {
			switch p {
			case "treatment_bps":
				t.TreatmentBPS = in.GetTreatmentBps()
			case "mode":
				if in.GetMode() != modeShadow && t.Outcome == experimentv1.ABOutcome_AB_OUTCOME_AGREEMENT {
					return nil, apierr.Invalid("ab_test.mode", "the test's outcome AB_OUTCOME_AGREEMENT needs mode AB_TEST_MODE_SHADOW")
				}
				t.Mode = in.GetMode()
			case "guardrails":
				g := in.GetGuardrails()
				t.MaxLatencyP95Ratio, t.MinAgreementRate, t.MinObservations = g.GetMaxLatencyP95Ratio(), g.GetMinAgreementRate(), g.GetMinObservations()
			case "description":
				t.Description = in.GetDescription()
			case "salt":
				if t.State != stateDraft {
					return nil, &apierr.Error{
						Kind:    apierr.ErrFailedPrecondition,
						Reason:  "AB_TEST_SALT_FROZEN",
						Message: fmt.Sprintf("A/B test %s is %s: its salt can change only in DRAFT (a new salt reshuffles units)", t.ID, stateName(t.State)),
					}
				}
				t.Salt = in.GetSalt()
			}
		}
		if t.TreatmentBPS != bps || t.Mode != mode {
			// A new split starts a new sample-ratio-mismatch window.
			t.SplitTime = now
		}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.UpdateABTestResponse{AbTest: abTestToProto(t)}, nil
}

// StartABTest implements ExperimentServiceServer.
func (s *Server) StartABTest(ctx context.Context, req *experimentv1.StartABTestRequest) (*experimentv1.StartABTestResponse, error) {
	if err := validateID("ab_test_id", req.GetAbTestId()); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	t, err := s.abUpdate(ctx, req.GetAbTestId(), func(t *ABTest) (*AliasMove, error) {
		if t.State != stateDraft && t.State != statePaused {
			return nil, errTransition(t, "started")
		}
		t.State, t.StartTime = stateRunning, now
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.StartABTestResponse{AbTest: abTestToProto(t)}, nil
}

// PauseABTest implements ExperimentServiceServer.
func (s *Server) PauseABTest(ctx context.Context, req *experimentv1.PauseABTestRequest) (*experimentv1.PauseABTestResponse, error) {
	if err := validateID("ab_test_id", req.GetAbTestId()); err != nil {
		return nil, err
	}
	t, err := s.abUpdate(ctx, req.GetAbTestId(), func(t *ABTest) (*AliasMove, error) {
		if t.State != stateRunning {
			return nil, errTransition(t, "paused")
		}
		t.State = statePaused
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.PauseABTestResponse{AbTest: abTestToProto(t)}, nil
}

// StopABTest implements ExperimentServiceServer. A promotion moves the
// alias in the transaction that stops the test, so both happen or neither.
func (s *Server) StopABTest(ctx context.Context, req *experimentv1.StopABTestRequest) (*experimentv1.StopABTestResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("ab_test_id", req.GetAbTestId()))
	alias := req.GetPromoteAlias()
	if alias != "" {
		naming.Alias(&v, "promote_alias", alias)
		if !req.GetPromoteTreatment() {
			v.Add("promote_alias", "set only with promote_treatment")
		}
	}
	if alias == "" {
		alias = promoteAlias
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	t, err := s.abUpdate(ctx, req.GetAbTestId(), func(t *ABTest) (*AliasMove, error) {
		if t.State == stateStopped {
			return nil, errTransition(t, "stopped")
		}
		t.State, t.StopTime = stateStopped, now
		if !req.GetPromoteTreatment() {
			return nil, nil
		}
		t.Promoted = true
		return &AliasMove{Model: t.Model, Alias: alias, Version: t.TreatmentVersion, Now: now}, nil
	})
	if err != nil {
		return nil, err
	}
	if t.Promoted {
		s.aliases.changed()
	}
	return &experimentv1.StopABTestResponse{AbTest: abTestToProto(t)}, nil
}

// AssignUnit implements ExperimentServiceServer.
func (s *Server) AssignUnit(ctx context.Context, req *experimentv1.AssignUnitRequest) (*experimentv1.AssignUnitResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("ab_test_id", req.GetAbTestId()))
	validateUnit(&v, "unit_id", req.GetUnitId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	t, err := s.store.GetABTest(ctx, req.GetAbTestId())
	if err != nil {
		return nil, err
	}
	arm, bucket := abassign.Assign(t.Salt, req.GetUnitId(), t.TreatmentBPS)
	resp := &experimentv1.AssignUnitResponse{Arm: armControl, Bucket: bucket, ModelVersion: t.ControlVersion}
	if t.State == stateRunning && arm == abassign.Treatment {
		resp.Arm, resp.ModelVersion = armTreatment, t.TreatmentVersion
	}
	return resp, nil
}

// abUpdate applies mutate to a test and publishes the change.
func (s *Server) abUpdate(ctx context.Context, id string, mutate func(*ABTest) (*AliasMove, error)) (*ABTest, error) {
	var out *ABTest
	err := s.abWrite(func() (*ABTest, error) {
		var err error
		out, err = s.store.UpdateABTest(ctx, id, mutate)
		return out, err
	})
	return out, err
}

func abTestToProto(t *ABTest) *experimentv1.ABTest {
	out := &experimentv1.ABTest{
		AbTestId:         t.ID,
		Name:             t.Name,
		ModelName:        t.Model,
		ControlVersion:   t.ControlVersion,
		TreatmentVersion: t.TreatmentVersion,
		TreatmentBps:     t.TreatmentBPS,
		Mode:             t.Mode,
		Salt:             t.Salt,
		State:            t.State,
		Outcome:          t.Outcome,
		Description:      t.Description,
		CreateTime:       timestamppb.New(t.CreateTime),
		Promoted:         t.Promoted,
		Revision:         t.Revision,
	}
	if t.MaxLatencyP95Ratio != 0 || t.MinAgreementRate != 0 || t.MinObservations != 0 {
		out.Guardrails = &experimentv1.ABGuardrails{
			MaxLatencyP95Ratio: t.MaxLatencyP95Ratio,
			MinAgreementRate:   t.MinAgreementRate,
			MinObservations:    t.MinObservations,
		}
	}
	if !t.StartTime.IsZero() {
		out.StartTime = timestamppb.New(t.StartTime)
	}
	if !t.StopTime.IsZero() {
		out.StopTime = timestamppb.New(t.StopTime)
	}
	return out
}
