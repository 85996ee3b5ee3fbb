package experiment

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/page"
)

// Checkpoint limits.
const (
	maxCheckpointURI = 2048
	// maxRetentionDeleted bounds ApplyRetentionPolicyResponse.deleted.
	maxRetentionDeleted = 1000
)

// WithServerMeter sets the meter of the server's checkpoint instruments
// (the default is a no-op meter).
func WithServerMeter(m metric.Meter) ServerOption {
	return func(s *Server) {
		ins, err := newCheckpointInstruments(m)
		if err != nil {
			s.log.Error("experiment checkpoint instruments", "err", err)
			return
		}
		s.ckpt = ins
	}
}

// LogCheckpoint implements ExperimentServiceServer.
func (s *Server) LogCheckpoint(ctx context.Context, req *experimentv1.LogCheckpointRequest) (*experimentv1.LogCheckpointResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("run_id", req.GetRunId()))
	if req.GetStep() < 0 {
		v.Add("step", "must not be negative, got %d", req.GetStep())
	}
	naming.Text(&v, "uri", req.GetUri(), maxCheckpointURI)
	if req.GetSizeBytes() < 0 {
		v.Add("size_bytes", "must not be negative, got %d", req.GetSizeBytes())
	}
	naming.Name(&v, "metric_key", req.GetMetricKey())
	if x := req.GetMetricValue(); math.IsNaN(x) || math.IsInf(x, 0) {
		v.Add("metric_value", "must be finite, got %v", x)
	}
	validateModelRef(&v, req.GetModelName(), req.GetModelVersion())
	if err := v.Err(); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("new checkpoint id: %w", err)
	}
	c := &Checkpoint{
		ID:           id.String(),
		RunID:        req.GetRunId(),
		Step:         req.GetStep(),
		URI:          req.GetUri(),
		SizeBytes:    req.GetSizeBytes(),
		MetricKey:    req.GetMetricKey(),
		MetricValue:  req.GetMetricValue(),
		ModelName:    req.GetModelName(),
		ModelVersion: req.GetModelVersion(),
		CreateTime:   s.now().UTC().Truncate(time.Millisecond),
	}
	if err := s.store.LogCheckpoint(ctx, c); err != nil {
		return nil, err
	}
	return &experimentv1.LogCheckpointResponse{Checkpoint: checkpointToProto(c)}, nil
}

type checkpointCursor struct {
	ID string `json:"id"`
}

// ListCheckpoints implements ExperimentServiceServer.
func (s *Server) ListCheckpoints(ctx context.Context, req *experimentv1.ListCheckpointsRequest) (*experimentv1.ListCheckpointsResponse, error) {
	var v apierr.Violations
	expID, runID := req.GetExperimentId(), req.GetRunId()
	switch {
	case expID == "" && runID == "":
		v.Add("experiment_id", "required unless run_id is set")
	case expID != "":
		v.Merge(validateID("experiment_id", expID))
	}
	if runID != "" {
		v.Merge(validateID("run_id", runID))
	}
	size, err := experimentPages.Size("page_size", req.GetPageSize())
	v.Merge(err)
	fp := page.Fingerprint("checkpoints", expID, runID)
	var cur checkpointCursor
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	// Read one extra row to know whether another page follows.
	list, err := s.store.ListCheckpoints(ctx, CheckpointQuery{ExperimentID: expID, RunID: runID, AfterID: cur.ID, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.ListCheckpointsResponse{}
	if list, resp.NextPageToken, err = page.Cut(list, size, fp, func(c *Checkpoint) any { return checkpointCursor{ID: c.ID} }); err != nil {
		return nil, err
	}
	for _, c := range list {
		resp.Checkpoints = append(resp.Checkpoints, checkpointToProto(c))
	}
	return resp, nil
}

// ApplyRetentionPolicy implements ExperimentServiceServer. Each experiment
// is decided and deleted in its own transaction, then the files of its
// deleted checkpoints that lie under the artifact root are removed. Without
// an experiment id, every experiment with checkpoints is processed in id
// order; an error stops the call, and the experiments already processed
// stay processed (each is logged), so running it again is safe.
func (s *Server) ApplyRetentionPolicy(ctx context.Context, req *experimentv1.ApplyRetentionPolicyRequest) (*experimentv1.ApplyRetentionPolicyResponse, error) {
	policy, err := retentionPolicyFromProto(req)
	if err != nil {
		return nil, err
	}
	ids := []string{req.GetExperimentId()}
	if req.GetExperimentId() == "" {
		if ids, err = s.store.CheckpointExperiments(ctx); err != nil {
			return nil, err
		}
	}
	dry := req.GetDryRun()
	var files *artifactFiles
	if !dry {
		files = openArtifactFiles(s.cfg.ArtifactRoot)
		defer files.Close()
	}
	now := s.now()
	resp := &experimentv1.ApplyRetentionPolicyResponse{DryRun: dry}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		out, err := s.store.ApplyRetention(ctx, id, func(cands []RetentionCandidate) []KeepReason {
			return policy.Plan(cands, now)
		}, dry)
		if err != nil {
			return nil, err
		}
		var bytes int64
		for _, c := range out.Deleted {
			bytes += c.SizeBytes
			if len(resp.Deleted) < maxRetentionDeleted {
				resp.Deleted = append(resp.Deleted, checkpointToProto(c))
			}
		}
		resp.DeletedCount += int64(len(out.Deleted))
		resp.BytesFreed += bytes
		resp.Kept += out.Kept

		attrs := []any{
			"experiment_id", id, "dry_run", dry, "deleted", len(out.Deleted), "kept", out.Kept,
			"bytes_freed", bytes, "protected", out.Protected, "reprieved", out.Reprieved,
		}
		if !dry {
			s.ckpt.deleted.Add(ctx, int64(len(out.Deleted)))
			counts := s.removeCheckpointFiles(ctx, files, out)
			for _, o := range fileOutcomes {
				attrs = append(attrs, "files_"+string(o), counts[o])
			}
		}
		s.log.InfoContext(ctx, "checkpoint retention applied", attrs...)
	}
	resp.Truncated = resp.DeletedCount > int64(len(resp.Deleted))
	return resp, nil
}

// removeCheckpointFiles removes the files of deleted checkpoints and
// counts what became of each checkpoint's file. A local file is left alone
// while a remaining checkpoint names it, by the same URI or by one
// resolving to the same path, and is considered once however many deleted
// checkpoints name it (they share its outcome). It runs after the records
// are committed, so it does not stop when the client goes away.
func (s *Server) removeCheckpointFiles(ctx context.Context, files *artifactFiles, out *RetentionOutcome) map[fileOutcome]int {
	namedURIs, namedPaths := map[string]bool{}, map[string]bool{}
	for _, u := range out.Survivors {
		namedURIs[u] = true
		if entry, target, ok := fileEntry(u); ok {
			namedPaths[entry], namedPaths[target] = true, true
		}
	}
	// A file's key: its entry when it is local, else its URI.
	type fileKey struct{ entry, uri string }
	counts := map[fileOutcome]int{}
	done := map[fileKey]fileOutcome{}
	for _, c := range out.Deleted {
		key, named := fileKey{uri: c.URI}, false
		if entry, _, ok := fileEntry(c.URI); ok {
			key, named = fileKey{entry: entry}, namedURIs[c.URI] || namedPaths[entry]
		}
		o, seen := done[key]
		if !seen {
			var err error
			if named {
				o = fileStillReferenced
			} else {
				o, err = files.remove(c.URI)
			}
			done[key] = o
			switch o {
			case fileFailed:
				s.log.WarnContext(ctx, "checkpoint file not removed", "checkpoint_id", c.ID, "uri", c.URI, "err", err)
			case fileOutsideRoot:
				s.log.InfoContext(ctx, "checkpoint file outside the artifact root left alone",
					"checkpoint_id", c.ID, "uri", c.URI, "artifact_root", s.cfg.ArtifactRoot)
			case fileStillReferenced:
				s.log.InfoContext(ctx, "checkpoint file named by a remaining checkpoint left alone", "checkpoint_id", c.ID, "uri", c.URI)
			}
		}
		counts[o]++
		s.ckpt.files.Add(context.WithoutCancel(ctx), 1, metric.WithAttributes(attribute.String("outcome", string(o))))
	}
	return counts
}

func retentionPolicyFromProto(req *experimentv1.ApplyRetentionPolicyRequest) (RetentionPolicy, error) {
	var v apierr.Violations
	if req.GetExperimentId() != "" {
		v.Merge(validateID("experiment_id", req.GetExperimentId()))
	}
	p := RetentionPolicy{MetricKey: req.GetMetricKey(), KeepBest: DefaultKeepBest, KeepDays: DefaultKeepDays}
	naming.Name(&v, "metric_key", req.GetMetricKey())
	switch req.GetGoal() {
	case experimentv1.MetricGoal_METRIC_GOAL_UNSPECIFIED, experimentv1.MetricGoal_METRIC_GOAL_MINIMIZE:
		p.Goal = Minimize
	case experimentv1.MetricGoal_METRIC_GOAL_MAXIMIZE:
		p.Goal = Maximize
	default:
		v.Add("goal", "unknown goal %d; want METRIC_GOAL_MINIMIZE or METRIC_GOAL_MAXIMIZE", int32(req.GetGoal()))
	}
	if req.KeepBest != nil {
		if p.KeepBest = int(req.GetKeepBest()); p.KeepBest < 0 {
			v.Add("keep_best", "must not be negative, got %d", p.KeepBest)
		}
	}
	if req.KeepDays != nil {
		if p.KeepDays = int(req.GetKeepDays()); p.KeepDays < 0 {
			v.Add("keep_days", "must not be negative, got %d", p.KeepDays)
		}
	}
	return p, v.Err()
}

// validateModelRef checks the optional registered model version a
// checkpoint became: both or neither, a registered model's name (1 to 250
// letters, digits, '-', '_' and '.') and a positive version. The version
// need not be registered yet.
func validateModelRef(v *apierr.Violations, name string, version int64) {
	switch {
	case version < 0:
		v.Add("model_version", "must not be negative, got %d", version)
	case name != "" && version == 0:
		v.Add("model_version", "required with model_name")
	case name == "" && version > 0:
		v.Add("model_name", "required with model_version")
	}
	if name != "" {
		naming.ModelName(v, "model_name", name)
	}
}

func checkpointToProto(c *Checkpoint) *experimentv1.Checkpoint {
	return &experimentv1.Checkpoint{
		CheckpointId: c.ID,
		RunId:        c.RunID,
		ExperimentId: c.ExperimentID,
		Step:         c.Step,
		Uri:          c.URI,
		SizeBytes:    c.SizeBytes,
		MetricKey:    c.MetricKey,
		MetricValue:  c.MetricValue,
		ModelName:    c.ModelName,
		ModelVersion: c.ModelVersion,
		CreateTime:   timestamppb.New(c.CreateTime),
	}
}
