// Package experiment implements ExperimentService: experiment tracking, the
// model registry and A/B tests. The handler validates and translates
// requests; the Store does the persistence.
//
// Built: experiments; runs with params, tags and metrics (LogBatch,
// StreamMetrics through a group-committing writer, history, SearchRuns);
// checkpoints and their retention policy; the model registry with
// WatchModel; A/B tests (abtest*.go) with WatchABTests and the
// abtest.observations consumer.
package experiment

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/page"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Config is the experiment service's configuration.
type Config struct {
	// ArtifactRoot is the prefix of default artifact locations; an
	// experiment without one gets ArtifactRoot/<experiment id>.
	ArtifactRoot string
}

// DefaultConfig returns the embedded defaults.
func DefaultConfig() Config {
	return Config{ArtifactRoot: "file://./data/artifacts"}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.ArtifactRoot == "" {
		return fmt.Errorf("experiment artifact root must not be empty")
	}
	return nil
}

// Server implements experimentv1.ExperimentServiceServer.
type Server struct {
	experimentv1.UnimplementedExperimentServiceServer

	cfg   Config
	store Store
	log   *slog.Logger
	now   func() time.Time
	ckpt  *checkpointInstruments

	aliases aliasHub // wakes WatchModel streams
	ab      abHub    // feeds WatchABTests streams
	guard   guardrails
}

var _ experimentv1.ExperimentServiceServer = (*Server)(nil)

// ServerOption configures a Server.
type ServerOption func(*Server)

// New returns a server on st.
func New(cfg Config, st Store, log *slog.Logger, opts ...ServerOption) *Server {
	s := &Server{cfg: cfg, store: st, log: log, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.ckpt == nil {
		s.ckpt, _ = newCheckpointInstruments(nil) // a no-op meter never fails
	}
	return s
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &experimentv1.ExperimentService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return experimentv1.RegisterExperimentServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy: traders and researchers read; researchers
// write; inference (a trader-role service key) records observations.
func Roles() auth.Policy {
	svc := experimentv1.File_quantmesh_experiment_v1_experiment_proto.Services().ByName("ExperimentService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleResearcher},
		map[string][]auth.Role{
			"RecordObservations": {auth.RoleTrader, auth.RoleResearcher},
		})
}

var experimentPages = page.Standard

// CreateExperiment implements ExperimentServiceServer.
func (s *Server) CreateExperiment(ctx context.Context, req *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error) {
	var v apierr.Violations
	naming.Name(&v, "name", req.GetName())
	validateText(&v, "description", req.GetDescription(), maxDescription)
	validateText(&v, "artifact_location", req.GetArtifactLocation(), maxArtifactLocation)
	validateTags(&v, "tags", req.GetTags())
	if err := v.Err(); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("new experiment id: %w", err)
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	e := &Experiment{
		ID:               id.String(),
		Name:             req.GetName(),
		Description:      req.GetDescription(),
		ArtifactLocation: req.GetArtifactLocation(),
		Stage:            StageActive,
		Tags:             req.GetTags(),
		CreateTime:       now,
		UpdateTime:       now,
	}
	if e.ArtifactLocation == "" {
		e.ArtifactLocation = s.cfg.ArtifactRoot + "/" + e.ID
	}
	if err := s.store.CreateExperiment(ctx, e); err != nil {
		return nil, err
	}
	return &experimentv1.CreateExperimentResponse{Experiment: experimentToProto(e)}, nil
}

// GetExperiment implements ExperimentServiceServer.
func (s *Server) GetExperiment(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
	if err := validateID("experiment_id", req.GetExperimentId()); err != nil {
		return nil, err
	}
	e, err := s.store.GetExperiment(ctx, req.GetExperimentId())
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetExperimentResponse{Experiment: experimentToProto(e)}, nil
}

// GetExperimentByName implements ExperimentServiceServer.
func (s *Server) GetExperimentByName(ctx context.Context, req *experimentv1.GetExperimentByNameRequest) (*experimentv1.GetExperimentByNameResponse, error) {
	var v apierr.Violations
	naming.Name(&v, "name", req.GetName())
	if err := v.Err(); err != nil {
		return nil, err
	}
	e, err := s.store.GetExperimentByName(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetExperimentByNameResponse{Experiment: experimentToProto(e)}, nil
}

type experimentCursor struct {
	ID string `json:"id"`
}

// ListExperiments implements ExperimentServiceServer.
func (s *Server) ListExperiments(ctx context.Context, req *experimentv1.ListExperimentsRequest) (*experimentv1.ListExperimentsResponse, error) {
	var v apierr.Violations
	size, err := experimentPages.Size("page_size", req.GetPageSize())
	v.Merge(err)
	view, err := viewFromProto("view", req.GetView())
	v.Merge(err)
	fp := page.Fingerprint("experiments", req.GetView().String())
	var cur experimentCursor
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	// Read one extra row to know whether another page follows.
	list, err := s.store.ListExperiments(ctx, ListQuery{View: view, AfterID: cur.ID, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.ListExperimentsResponse{}
	if list, resp.NextPageToken, err = page.Cut(list, size, fp, func(e *Experiment) any { return experimentCursor{ID: e.ID} }); err != nil {
		return nil, err
	}
	for _, e := range list {
		resp.Experiments = append(resp.Experiments, experimentToProto(e))
	}
	return resp, nil
}

// UpdateExperiment implements ExperimentServiceServer.
func (s *Server) UpdateExperiment(ctx context.Context, req *experimentv1.UpdateExperimentRequest) (*experimentv1.UpdateExperimentResponse, error) {
	in := req.GetExperiment()
	var v apierr.Violations
	if in == nil {
		v.Add("experiment", "required")
		return nil, v.Err()
	}
	if err := validateID("experiment.experiment_id", in.GetExperimentId()); err != nil {
		v.Merge(err)
	}
	paths := maskPaths(&v, req.GetUpdateMask().GetPaths(), []string{"name", "description", "tags"}, "")
	for _, p := range paths {
		switch p {
		case "name":
			naming.Name(&v, "experiment.name", in.GetName())
		case "description":
			validateText(&v, "experiment.description", in.GetDescription(), maxDescription)
		case "tags":
			validateTags(&v, "experiment.tags", in.GetTags())
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	e, err := s.store.UpdateExperiment(ctx, in.GetExperimentId(), func(e *Experiment) error {
		if e.Stage != StageActive {
			return apierr.FailedPrecondition("EXPERIMENT_DELETED", "experiment %s is deleted; restore it before updating", e.ID)
		}
		for _, p := range paths {
			switch p {
			case "name":
				e.Name = in.GetName()
			case "description":
				e.Description = in.GetDescription()
			case "tags":
				e.Tags = in.GetTags()
			}
		}
		e.UpdateTime = now
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.UpdateExperimentResponse{Experiment: experimentToProto(e)}, nil
}

// DeleteExperiment implements ExperimentServiceServer.
func (s *Server) DeleteExperiment(ctx context.Context, req *experimentv1.DeleteExperimentRequest) (*experimentv1.DeleteExperimentResponse, error) {
	e, err := s.setStage(ctx, req.GetExperimentId(), StageDeleted)
	if err != nil {
		return nil, err
	}
	return &experimentv1.DeleteExperimentResponse{Experiment: experimentToProto(e)}, nil
}

// RestoreExperiment implements ExperimentServiceServer.
func (s *Server) RestoreExperiment(ctx context.Context, req *experimentv1.RestoreExperimentRequest) (*experimentv1.RestoreExperimentResponse, error) {
	e, err := s.setStage(ctx, req.GetExperimentId(), StageActive)
	if err != nil {
		return nil, err
	}
	return &experimentv1.RestoreExperimentResponse{Experiment: experimentToProto(e)}, nil
}

func (s *Server) setStage(ctx context.Context, id string, to Stage) (*Experiment, error) {
	if err := validateID("experiment_id", id); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	return s.store.UpdateExperiment(ctx, id, func(e *Experiment) error {
		if e.Stage == to {
			if to == StageDeleted {
				return apierr.FailedPrecondition("EXPERIMENT_ALREADY_DELETED", "experiment %s is already deleted", e.ID)
			}
			return apierr.FailedPrecondition("EXPERIMENT_NOT_DELETED", "experiment %s is not deleted", e.ID)
		}
		e.Stage = to
		e.UpdateTime = now
		if to == StageDeleted {
			e.DeleteTime = now
		} else {
			e.DeleteTime = time.Time{}
		}
		return nil
	})
}

func experimentToProto(e *Experiment) *experimentv1.Experiment {
	out := &experimentv1.Experiment{
		ExperimentId:     e.ID,
		Name:             e.Name,
		Description:      e.Description,
		ArtifactLocation: e.ArtifactLocation,
		LifecycleStage:   stageToProto(e.Stage),
		Tags:             e.Tags,
		CreateTime:       timestamppb.New(e.CreateTime),
		UpdateTime:       timestamppb.New(e.UpdateTime),
	}
	if len(out.Tags) == 0 {
		out.Tags = nil
	}
	if !e.DeleteTime.IsZero() {
		out.DeleteTime = timestamppb.New(e.DeleteTime)
	}
	return out
}

func stageToProto(s Stage) experimentv1.LifecycleStage {
	switch s {
	case StageActive:
		return experimentv1.LifecycleStage_LIFECYCLE_STAGE_ACTIVE
	case StageDeleted:
		return experimentv1.LifecycleStage_LIFECYCLE_STAGE_DELETED
	}
	return experimentv1.LifecycleStage_LIFECYCLE_STAGE_UNSPECIFIED
}

func viewFromProto(field string, v experimentv1.ViewType) (View, error) {
	switch v {
	case experimentv1.ViewType_VIEW_TYPE_UNSPECIFIED, experimentv1.ViewType_VIEW_TYPE_ACTIVE_ONLY:
		return ViewActive, nil
	case experimentv1.ViewType_VIEW_TYPE_DELETED_ONLY:
		return ViewDeleted, nil
	case experimentv1.ViewType_VIEW_TYPE_ALL:
		return ViewAll, nil
	}
	return 0, apierr.Invalid(field, "unknown view %d", int32(v))
}
