package experiment

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
)

// Limits of what one LogBatch carries (MLflow's).
const (
	maxBatchMetrics = 1000
	maxBatchParams  = 100
	maxBatchTags    = 100
)

// CreateRun implements ExperimentServiceServer.
func (s *Server) CreateRun(ctx context.Context, req *experimentv1.CreateRunRequest) (*experimentv1.CreateRunResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("experiment_id", req.GetExperimentId()))
	if req.GetRunName() != "" {
		naming.Name(&v, "run_name", req.GetRunName())
	}
	validateTags(&v, "tags", req.GetTags())
	now := s.now().UTC().Truncate(time.Millisecond)
	start := now
	if req.StartTime != nil {
		start = validTime(&v, "start_time", req.GetStartTime())
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("new run id: %w", err)
	}
	exp, err := s.store.GetExperiment(ctx, req.GetExperimentId())
	if err != nil {
		return nil, err
	}
	r := &Run{
		ID:           id.String(),
		ExperimentID: exp.ID,
		Name:         req.GetRunName(),
		Status:       StatusRunning,
		StartTime:    start,
		Stage:        StageActive,
		ArtifactURI:  strings.TrimSuffix(exp.ArtifactLocation, "/") + "/" + id.String() + "/artifacts",
		Tags:         req.GetTags(),
	}
	if r.Name == "" {
		r.Name = "run-" + id.String()[24:]
	}
	if err := s.store.CreateRun(ctx, r); err != nil {
		return nil, err
	}
	return &experimentv1.CreateRunResponse{Run: runToProto(r)}, nil
}

// GetRun implements ExperimentServiceServer.
func (s *Server) GetRun(ctx context.Context, req *experimentv1.GetRunRequest) (*experimentv1.GetRunResponse, error) {
	if err := validateID("run_id", req.GetRunId()); err != nil {
		return nil, err
	}
	r, err := s.store.GetRun(ctx, req.GetRunId())
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetRunResponse{Run: runToProto(r)}, nil
}

// UpdateRun implements ExperimentServiceServer.
func (s *Server) UpdateRun(ctx context.Context, req *experimentv1.UpdateRunRequest) (*experimentv1.UpdateRunResponse, error) {
	in := req.GetRun()
	var v apierr.Violations
	if in == nil {
		v.Add("run", "required")
		return nil, v.Err()
	}
	v.Merge(validateID("run.run_id", in.GetRunId()))
	var (
		status RunStatus
		end    time.Time
		mask   = map[string]bool{}
	)
	for _, p := range maskPaths(&v, req.GetUpdateMask().GetPaths(), []string{"status", "end_time", "run_name"}, "") {
		mask[p] = true
		switch p {
		case "status":
			var err error
			status, err = statusFromProto("run.status", in.GetStatus())
			v.Merge(err)
		case "end_time":
			if in.EndTime != nil {
				end = validTime(&v, "run.end_time", in.GetEndTime())
			}
		case "run_name":
			naming.Name(&v, "run.run_name", in.GetRunName())
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	r, err := s.store.UpdateRun(ctx, in.GetRunId(), func(r *Run) error {
		if r.Stage != StageActive {
			return errRunDeleted(r.ID)
		}
		if mask["run_name"] {
			r.Name = in.GetRunName()
		}
		if mask["status"] {
			r.Status = status
			if status.Terminal() && !mask["end_time"] && r.EndTime.IsZero() {
				r.EndTime = now
			}
		}
		if mask["end_time"] {
			if !end.IsZero() && end.Before(r.StartTime) {
				return apierr.Invalid("run.end_time", "must not be before the run's start_time %s", r.StartTime.Format(time.RFC3339Nano))
			}
			r.EndTime = end
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.UpdateRunResponse{Run: runToProto(r)}, nil
}

// DeleteRun implements ExperimentServiceServer.
func (s *Server) DeleteRun(ctx context.Context, req *experimentv1.DeleteRunRequest) (*experimentv1.DeleteRunResponse, error) {
	r, err := s.setRunStage(ctx, req.GetRunId(), StageDeleted)
	if err != nil {
		return nil, err
	}
	return &experimentv1.DeleteRunResponse{Run: runToProto(r)}, nil
}

// RestoreRun implements ExperimentServiceServer.
func (s *Server) RestoreRun(ctx context.Context, req *experimentv1.RestoreRunRequest) (*experimentv1.RestoreRunResponse, error) {
	r, err := s.setRunStage(ctx, req.GetRunId(), StageActive)
	if err != nil {
		return nil, err
	}
	return &experimentv1.RestoreRunResponse{Run: runToProto(r)}, nil
}

func (s *Server) setRunStage(ctx context.Context, id string, to Stage) (*Run, error) {
	if err := validateID("run_id", id); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	return s.store.UpdateRun(ctx, id, func(r *Run) error {
		if r.Stage == to {
			if to == StageDeleted {
				return apierr.FailedPrecondition("RUN_ALREADY_DELETED", "run %s is already deleted", r.ID)
			}
			return apierr.FailedPrecondition("RUN_NOT_DELETED", "run %s is not deleted", r.ID)
		}
		r.Stage = to
		r.DeleteTime = time.Time{}
		if to == StageDeleted {
			r.DeleteTime = now
		}
		return nil
	})
}

// SetRunTag implements ExperimentServiceServer.
func (s *Server) SetRunTag(ctx context.Context, req *experimentv1.SetRunTagRequest) (*experimentv1.SetRunTagResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("run_id", req.GetRunId()))
	naming.Name(&v, "key", req.GetKey())
	validateText(&v, "value", req.GetValue(), maxTagValue)
	if err := v.Err(); err != nil {
		return nil, err
	}
	if err := s.store.SetRunTag(ctx, req.GetRunId(), KV{req.GetKey(), req.GetValue()}); err != nil {
		return nil, err
	}
	return &experimentv1.SetRunTagResponse{}, nil
}

// DeleteRunTag implements ExperimentServiceServer.
func (s *Server) DeleteRunTag(ctx context.Context, req *experimentv1.DeleteRunTagRequest) (*experimentv1.DeleteRunTagResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("run_id", req.GetRunId()))
	naming.Name(&v, "key", req.GetKey())
	if err := v.Err(); err != nil {
		return nil, err
	}
	if err := s.store.DeleteRunTag(ctx, req.GetRunId(), req.GetKey()); err != nil {
		return nil, err
	}
	return &experimentv1.DeleteRunTagResponse{}, nil
}

// LogBatch implements ExperimentServiceServer.
func (s *Server) LogBatch(ctx context.Context, req *experimentv1.LogBatchRequest) (*experimentv1.LogBatchResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("run_id", req.GetRunId()))
	if n := len(req.GetMetrics()); n > maxBatchMetrics {
		v.Add("metrics", "at most %d metric points per batch, got %d", maxBatchMetrics, n)
	}
	if n := len(req.GetParams()); n > maxBatchParams {
		v.Add("params", "at most %d params per batch, got %d", maxBatchParams, n)
	}
	if n := len(req.GetTags()); n > maxBatchTags {
		v.Add("tags", "at most %d tags per batch, got %d", maxBatchTags, n)
	}
	validateText(&v, "idempotency_key", req.GetIdempotencyKey(), maxIdempotencyKey)
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	b := Batch{IdempotencyKey: req.GetIdempotencyKey(), Now: now}
	b.Metrics = pointsFromProto(&v, "metrics", req.GetMetrics(), now.UnixMilli())
	params := map[string]string{}
	for i, p := range req.GetParams() {
		field := fmt.Sprintf("params[%d]", i)
		naming.Name(&v, field+".key", p.GetKey())
		validateText(&v, field+".value", p.GetValue(), maxParamValue)
		if prev, dup := params[p.GetKey()]; dup && prev != p.GetValue() {
			v.Add(field+".key", "param %q appears twice in the batch with different values", naming.Truncate(p.GetKey()))
		}
		params[p.GetKey()] = p.GetValue()
		b.Params = append(b.Params, KV{p.GetKey(), p.GetValue()})
	}
	tags := map[string]int{}
	for i, t := range req.GetTags() {
		field := fmt.Sprintf("tags[%d]", i)
		naming.Name(&v, field+".key", t.GetKey())
		validateText(&v, field+".value", t.GetValue(), maxTagValue)
		if j, dup := tags[t.GetKey()]; dup {
			b.Tags[j].Value = t.GetValue() // the last value wins
			continue
		}
		tags[t.GetKey()] = len(b.Tags)
		b.Tags = append(b.Tags, KV{t.GetKey(), t.GetValue()})
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	replayed, err := s.store.LogBatch(ctx, req.GetRunId(), b)
	if err != nil {
		return nil, err
	}
	return &experimentv1.LogBatchResponse{Replayed: replayed}, nil
}

// pointsFromProto validates metric points and converts them; a zero
// timestamp becomes now (Unix milliseconds).
func pointsFromProto(v *apierr.Violations, field string, in []*experimentv1.Metric, now int64) []Point {
	out := make([]Point, len(in))
	for i, m := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		naming.Name(v, f+".key", m.GetKey())
		validateValue(v, f+".value", m.GetValue())
		if m.GetTimestampMs() < 0 {
			v.Add(f+".timestamp_ms", "must not be negative, got %d", m.GetTimestampMs())
		}
		out[i] = Point{Key: m.GetKey(), Value: m.GetValue(), Step: m.GetStep(), Time: m.GetTimestampMs()}
		if out[i].Time == 0 {
			out[i].Time = now
		}
	}
	return out
}

func runToProto(r *Run) *experimentv1.Run {
	out := &experimentv1.Run{
		RunId:          r.ID,
		ExperimentId:   r.ExperimentID,
		RunName:        r.Name,
		Status:         statusToProto(r.Status),
		StartTime:      timestamppb.New(r.StartTime),
		LifecycleStage: stageToProto(r.Stage),
		ArtifactUri:    r.ArtifactURI,
	}
	if !r.EndTime.IsZero() {
		out.EndTime = timestamppb.New(r.EndTime)
	}
	if len(r.Params) > 0 {
		out.Params = r.Params
	}
	if len(r.Tags) > 0 {
		out.Tags = r.Tags
	}
	for _, p := range r.Latest {
		out.LatestMetrics = append(out.LatestMetrics, pointToProto(p))
	}
	return out
}

func pointToProto(p Point) *experimentv1.Metric {
	return &experimentv1.Metric{Key: p.Key, Value: p.Value, Step: p.Step, TimestampMs: p.Time}
}

func statusToProto(s RunStatus) experimentv1.RunStatus {
	if v, ok := experimentv1.RunStatus_value["RUN_STATUS_"+string(s)]; ok {
		return experimentv1.RunStatus(v)
	}
	return experimentv1.RunStatus_RUN_STATUS_UNSPECIFIED
}

func statusFromProto(field string, st experimentv1.RunStatus) (RunStatus, error) {
	name, ok := experimentv1.RunStatus_name[int32(st)]
	if !ok || st == experimentv1.RunStatus_RUN_STATUS_UNSPECIFIED {
		return "", apierr.Invalid(field, "must be one of RUNNING, SCHEDULED, FINISHED, FAILED, KILLED, got %d", int32(st))
	}
	return RunStatus(strings.TrimPrefix(name, "RUN_STATUS_")), nil
}

// validTime checks a timestamp and returns it truncated to milliseconds.
func validTime(v *apierr.Violations, field string, ts *timestamppb.Timestamp) time.Time {
	if err := ts.CheckValid(); err != nil {
		v.Add(field, "invalid timestamp: %v", err)
		return time.Time{}
	}
	t := ts.AsTime().Truncate(time.Millisecond)
	if t.Before(time.Unix(0, 0)) {
		v.Add(field, "must not be before 1970-01-01")
	}
	return t
}
