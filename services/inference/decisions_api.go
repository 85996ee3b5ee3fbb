package inference

import (
	"context"
	"strconv"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/page"
)

// GetDecision implements InferenceServiceServer.
func (s *Server) GetDecision(ctx context.Context, req *inferencev1.GetDecisionRequest) (*inferencev1.GetDecisionResponse, error) {
	if err := validDecisionID(req.GetDecisionId()); err != nil {
		return nil, err
	}
	d, err := s.decisions.GetDecision(ctx, req.GetDecisionId())
	if err != nil {
		return nil, err
	}
	return &inferencev1.GetDecisionResponse{Decision: d}, nil
}

func validDecisionID(id string) error {
	if id == "" {
		return apierr.Invalid("decision_id", "required")
	}
	if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
		return apierr.Invalid("decision_id", "%q is not a decision id (a UUID)", truncate(id, 40))
	}
	return nil
}

// ListDecisions implements InferenceServiceServer.
func (s *Server) ListDecisions(ctx context.Context, req *inferencev1.ListDecisionsRequest) (*inferencev1.ListDecisionsResponse, error) {
	var v apierr.Violations
	size, err := page.Standard.Size("page_size", req.GetPageSize())
	v.Merge(err)
	q := DecisionQuery{Symbol: req.GetSymbol(), ModelName: req.GetModelName(), ModelVersion: req.GetModelVersion(), OldestFirst: req.GetOldestFirst(), Limit: size + 1}
	if ts := req.GetStartTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			v.Add("start_time", "invalid timestamp: %v", err)
		}
		q.Start = ts.AsTime()
	}
	if ts := req.GetEndTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			v.Add("end_time", "invalid timestamp: %v", err)
		}
		q.End = ts.AsTime()
		if !q.Start.IsZero() && q.End.Before(q.Start) {
			v.Add("end_time", "must not be before start_time")
		}
	}
	if n := utf8.RuneCountInString(q.Symbol); n > maxSymbol { // as Predict counts it
		v.Add("symbol", "must be at most %d characters, got %d", maxSymbol, n)
	}
	if len(q.ModelName) > maxModelName {
		v.Add("model_name", "must be at most %d characters", maxModelName)
	}
	switch {
	case q.ModelVersion < 0:
		v.Add("model_version", "must not be negative, got %d", q.ModelVersion)
	case q.ModelVersion > 0 && q.ModelName == "":
		v.Add("model_version", "requires model_name")
	}
	fp := page.Fingerprint("decisions", stamp(req.GetStartTime()), stamp(req.GetEndTime()), q.Symbol, q.ModelName,
		strconv.FormatInt(q.ModelVersion, 10), strconv.FormatBool(q.OldestFirst))
	var cur DecisionCursor
	resumed, err := page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	if resumed {
		q.After = &cur
	}
	list, err := s.decisions.ListDecisions(ctx, q)
	if err != nil {
		return nil, err
	}
	resp := &inferencev1.ListDecisionsResponse{}
	if resp.Decisions, resp.NextPageToken, err = page.Cut(list, size, fp, func(d *inferencev1.Decision) any {
		return DecisionCursor{TimeUS: d.GetDecisionTime().AsTime().UnixMicro(), ID: d.GetDecisionId()}
	}); err != nil {
		return nil, err
	}
	return resp, nil
}

func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().String()
}

// Limits on request fields.
const (
	maxSymbol    = 64
	maxModelName = 250
)

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
