package experiment

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/page"
)

// Limits of the model registry.
const (
	maxFormat       = 100
	maxModelMetrics = 1000
)

// CreateRegisteredModel implements ExperimentServiceServer.
func (s *Server) CreateRegisteredModel(ctx context.Context, req *experimentv1.CreateRegisteredModelRequest) (*experimentv1.CreateRegisteredModelResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "name", req.GetName())
	validateText(&v, "description", req.GetDescription(), maxDescription)
	validateTags(&v, "tags", req.GetTags())
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	m := &RegisteredModel{
		Name:        req.GetName(),
		Description: req.GetDescription(),
		Tags:        req.GetTags(),
		CreateTime:  now,
		UpdateTime:  now,
	}
	if err := s.store.CreateRegisteredModel(ctx, m); err != nil {
		return nil, err
	}
	return &experimentv1.CreateRegisteredModelResponse{RegisteredModel: modelToProto(m)}, nil
}

// GetRegisteredModel implements ExperimentServiceServer.
func (s *Server) GetRegisteredModel(ctx context.Context, req *experimentv1.GetRegisteredModelRequest) (*experimentv1.GetRegisteredModelResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "name", req.GetName())
	if err := v.Err(); err != nil {
		return nil, err
	}
	m, err := s.store.GetRegisteredModel(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetRegisteredModelResponse{RegisteredModel: modelToProto(m)}, nil
}

type modelCursor struct {
	Name string `json:"n"`
}

// ListRegisteredModels implements ExperimentServiceServer.
func (s *Server) ListRegisteredModels(ctx context.Context, req *experimentv1.ListRegisteredModelsRequest) (*experimentv1.ListRegisteredModelsResponse, error) {
	var v apierr.Violations
	size, err := page.Standard.Size("page_size", req.GetPageSize())
	v.Merge(err)
	fp := page.Fingerprint("registered_models")
	var cur modelCursor
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	// One extra row says whether another page follows.
	list, err := s.store.ListRegisteredModels(ctx, ModelListQuery{AfterName: cur.Name, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.ListRegisteredModelsResponse{}
	if list, resp.NextPageToken, err = page.Cut(list, size, fp, func(m *RegisteredModel) any { return modelCursor{Name: m.Name} }); err != nil {
		return nil, err
	}
	for _, m := range list {
		resp.RegisteredModels = append(resp.RegisteredModels, modelToProto(m))
	}
	return resp, nil
}

// UpdateRegisteredModel implements ExperimentServiceServer.
func (s *Server) UpdateRegisteredModel(ctx context.Context, req *experimentv1.UpdateRegisteredModelRequest) (*experimentv1.UpdateRegisteredModelResponse, error) {
	in := req.GetRegisteredModel()
	var v apierr.Violations
	if in == nil {
		v.Add("registered_model", "required")
		return nil, v.Err()
	}
	naming.ModelName(&v, "registered_model.name", in.GetName())
	paths := maskPaths(&v, req.GetUpdateMask().GetPaths(), []string{"description", "tags"}, "")
	for _, p := range paths {
		switch p {
		case "description":
			validateText(&v, "registered_model.description", in.GetDescription(), maxDescription)
		case "tags":
			validateTags(&v, "registered_model.tags", in.GetTags())
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	m, err := s.store.UpdateRegisteredModel(ctx, in.GetName(), func(m *RegisteredModel) error {
		for _, p := range paths {
			switch p {
			case "description":
				m.Description = in.GetDescription()
			case "tags":
				m.Tags = in.GetTags()
			}
		}
		m.UpdateTime = now
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.UpdateRegisteredModelResponse{RegisteredModel: modelToProto(m)}, nil
}

// DeleteRegisteredModel implements ExperimentServiceServer.
func (s *Server) DeleteRegisteredModel(ctx context.Context, req *experimentv1.DeleteRegisteredModelRequest) (*experimentv1.DeleteRegisteredModelResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "name", req.GetName())
	if err := v.Err(); err != nil {
		return nil, err
	}
	// TODO(abtests): the contract says a model with a running A/B test
	// cannot be deleted (FailedPrecondition). A/B tests do not exist yet;
	// the issue that adds them checks for a running test inside the
	// store's delete transaction, so a test started concurrently cannot
	// slip through.
	if err := s.store.DeleteRegisteredModel(ctx, req.GetName()); err != nil {
		return nil, err
	}
	s.aliases.changed()
	return &experimentv1.DeleteRegisteredModelResponse{}, nil
}

// CreateModelVersion implements ExperimentServiceServer.
func (s *Server) CreateModelVersion(ctx context.Context, req *experimentv1.CreateModelVersionRequest) (*experimentv1.CreateModelVersionResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	naming.Text(&v, "format", req.GetFormat(), maxFormat)
	sum := sha256.Sum256(req.GetWeights())
	checksum := hex.EncodeToString(sum[:])
	if len(req.GetWeights()) == 0 {
		v.Add("weights", "required")
	} else if given := req.GetChecksumSha256(); given != "" {
		if !isSHA256Hex(given) {
			v.Add("checksum_sha256", "must be a hex SHA-256 (64 hexadecimal characters), got %q", naming.Truncate(given))
		} else if !strings.EqualFold(given, checksum) {
			v.Add("checksum_sha256", "does not match the weights: their SHA-256 is %s", checksum)
		}
	}
	if req.GetSourceRunId() != "" {
		v.Merge(validateID("source_run_id", req.GetSourceRunId()))
	}
	validateMetrics(&v, "metrics", req.GetMetrics())
	validateTags(&v, "tags", req.GetTags())
	validateText(&v, "description", req.GetDescription(), maxDescription)
	if err := v.Err(); err != nil {
		return nil, err
	}
	mv := &ModelVersion{
		ModelName:      req.GetModelName(),
		Format:         req.GetFormat(),
		Weights:        req.GetWeights(),
		ChecksumSHA256: checksum,
		SizeBytes:      int64(len(req.GetWeights())),
		SourceRunID:    req.GetSourceRunId(),
		Metrics:        req.GetMetrics(),
		Tags:           req.GetTags(),
		Description:    req.GetDescription(),
		CreateTime:     s.now().UTC().Truncate(time.Millisecond),
	}
	if err := s.store.CreateModelVersion(ctx, mv); err != nil {
		return nil, err
	}
	mv.Weights = nil // the response carries no weights
	return &experimentv1.CreateModelVersionResponse{ModelVersion: versionToProto(mv)}, nil
}

// GetModelVersion implements ExperimentServiceServer.
func (s *Server) GetModelVersion(ctx context.Context, req *experimentv1.GetModelVersionRequest) (*experimentv1.GetModelVersionResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	validateVersion(&v, "version", req.GetVersion())
	weights := weightsWanted(&v, "view", req.GetView())
	if err := v.Err(); err != nil {
		return nil, err
	}
	mv, err := s.store.GetModelVersion(ctx, req.GetModelName(), req.GetVersion(), weights)
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetModelVersionResponse{ModelVersion: versionToProto(mv)}, nil
}

type versionCursor struct {
	Version int64 `json:"v"`
}

// ListModelVersions implements ExperimentServiceServer.
func (s *Server) ListModelVersions(ctx context.Context, req *experimentv1.ListModelVersionsRequest) (*experimentv1.ListModelVersionsResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	size, err := page.Standard.Size("page_size", req.GetPageSize())
	v.Merge(err)
	fp := page.Fingerprint("model_versions", req.GetModelName())
	var cur versionCursor
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	list, err := s.store.ListModelVersions(ctx, VersionListQuery{Model: req.GetModelName(), BeforeVersion: cur.Version, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.ListModelVersionsResponse{}
	if list, resp.NextPageToken, err = page.Cut(list, size, fp, func(mv *ModelVersion) any { return versionCursor{Version: mv.Version} }); err != nil {
		return nil, err
	}
	for _, mv := range list {
		resp.ModelVersions = append(resp.ModelVersions, versionToProto(mv))
	}
	return resp, nil
}

// UpdateModelVersion implements ExperimentServiceServer.
func (s *Server) UpdateModelVersion(ctx context.Context, req *experimentv1.UpdateModelVersionRequest) (*experimentv1.UpdateModelVersionResponse, error) {
	in := req.GetModelVersion()
	var v apierr.Violations
	if in == nil {
		v.Add("model_version", "required")
		return nil, v.Err()
	}
	naming.ModelName(&v, "model_version.model_name", in.GetModelName())
	validateVersion(&v, "model_version.version", in.GetVersion())
	paths := maskPaths(&v, req.GetUpdateMask().GetPaths(), []string{"description", "tags"}, " (versions are immutable otherwise)")
	for _, p := range paths {
		switch p {
		case "description":
			validateText(&v, "model_version.description", in.GetDescription(), maxDescription)
		case "tags":
			validateTags(&v, "model_version.tags", in.GetTags())
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	mv, err := s.store.UpdateModelVersion(ctx, in.GetModelName(), in.GetVersion(), func(mv *ModelVersion) error {
		for _, p := range paths {
			switch p {
			case "description":
				mv.Description = in.GetDescription()
			case "tags":
				mv.Tags = in.GetTags()
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &experimentv1.UpdateModelVersionResponse{ModelVersion: versionToProto(mv)}, nil
}

// SetModelAlias implements ExperimentServiceServer.
func (s *Server) SetModelAlias(ctx context.Context, req *experimentv1.SetModelAliasRequest) (*experimentv1.SetModelAliasResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	naming.Alias(&v, "alias", req.GetAlias())
	validateVersion(&v, "version", req.GetVersion())
	if err := v.Err(); err != nil {
		return nil, err
	}
	rev, err := s.store.SetModelAlias(ctx, AliasMove{
		Model:            req.GetModelName(),
		Alias:            req.GetAlias(),
		Version:          req.GetVersion(),
		ExpectedRevision: req.ExpectedRevision,
		Now:              s.now().UTC().Truncate(time.Millisecond),
	})
	if err != nil {
		return nil, err
	}
	s.aliases.changed()
	return &experimentv1.SetModelAliasResponse{Revision: rev}, nil
}

// DeleteModelAlias implements ExperimentServiceServer.
func (s *Server) DeleteModelAlias(ctx context.Context, req *experimentv1.DeleteModelAliasRequest) (*experimentv1.DeleteModelAliasResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	naming.Alias(&v, "alias", req.GetAlias())
	if err := v.Err(); err != nil {
		return nil, err
	}
	if _, err := s.store.DeleteModelAlias(ctx, req.GetModelName(), req.GetAlias(), s.now().UTC().Truncate(time.Millisecond)); err != nil {
		return nil, err
	}
	s.aliases.changed()
	return &experimentv1.DeleteModelAliasResponse{}, nil
}

// GetModelVersionByAlias implements ExperimentServiceServer.
func (s *Server) GetModelVersionByAlias(ctx context.Context, req *experimentv1.GetModelVersionByAliasRequest) (*experimentv1.GetModelVersionByAliasResponse, error) {
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	naming.Alias(&v, "alias", req.GetAlias())
	weights := weightsWanted(&v, "view", req.GetView())
	if err := v.Err(); err != nil {
		return nil, err
	}
	mv, err := s.store.GetModelVersionByAlias(ctx, req.GetModelName(), req.GetAlias(), weights)
	if err != nil {
		return nil, err
	}
	return &experimentv1.GetModelVersionByAliasResponse{ModelVersion: versionToProto(mv)}, nil
}

// WatchModel implements ExperimentServiceServer. The stream is
// level-triggered: it sends an alias's state whenever its revision is newer
// than the last one sent, so a change superseded before the stream read it
// is skipped and the client converges on the latest state, each state
// exactly once. Response headers are sent once the stream watches (before
// the first read), so a client that has them knows no later change can
// miss it. It ends only with the client, an error, or the server's drain
// (UNAVAILABLE, from the server's stream interceptor).
func (s *Server) WatchModel(req *experimentv1.WatchModelRequest, stream grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error {
	ctx := stream.Context()
	var v apierr.Violations
	naming.ModelName(&v, "model_name", req.GetModelName())
	naming.Alias(&v, "alias", req.GetAlias())
	if err := v.Err(); err != nil {
		return err
	}
	model, alias, after := req.GetModelName(), req.GetAlias(), req.GetAfterRevision()
	if _, err := s.store.GetRegisteredModel(ctx, model); err != nil {
		return err
	}
	if after > 0 {
		latest, err := s.store.RegistryRevision(ctx)
		if err != nil {
			return err
		}
		if after > latest {
			// A revision from another database (or a restored backup):
			// waiting for the counter to pass it would hide every change
			// until then.
			return status.Errorf(codes.OutOfRange, "after_revision %d is beyond the registry's latest revision %d; start again from 0", after, latest)
		}
	}
	leave := s.aliases.join(s.store, s.log)
	defer leave()
	// Headers now say the stream is watching: whatever changes from here
	// on reaches it.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		// Taken before the read: a change committed after it wakes us.
		wake := s.aliases.wait()
		st, err := s.store.AliasChange(ctx, model, alias, after)
		if err != nil {
			return err
		}
		if st != nil {
			if err := stream.Send(aliasStateToProto(st)); err != nil {
				return err
			}
			after = st.Revision
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func validateVersion(v *apierr.Violations, field string, version int64) {
	if version <= 0 {
		v.Add(field, "must be a version number (1 or more), got %d", version)
	}
}

// validateMetrics checks evaluation metrics: keys like metric keys, finite
// values (NaN and infinities are rejected, as for run metrics).
func validateMetrics(v *apierr.Violations, field string, metrics map[string]float64) {
	if len(metrics) > maxModelMetrics {
		v.Add(field, "at most %d metrics, got %d", maxModelMetrics, len(metrics))
		return
	}
	for k, x := range metrics {
		f := field + "[" + naming.Truncate(k) + "]"
		naming.Name(v, f, k)
		validateValue(v, f, x)
	}
}

func isSHA256Hex(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func weightsWanted(v *apierr.Violations, field string, view experimentv1.ModelVersionView) bool {
	switch view {
	case experimentv1.ModelVersionView_MODEL_VERSION_VIEW_UNSPECIFIED, experimentv1.ModelVersionView_MODEL_VERSION_VIEW_BASIC:
		return false
	case experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL:
		return true
	}
	v.Add(field, "unknown view %d", int32(view))
	return false
}

func modelToProto(m *RegisteredModel) *experimentv1.RegisteredModel {
	out := &experimentv1.RegisteredModel{
		Name:          m.Name,
		Description:   m.Description,
		LatestVersion: m.LatestVersion,
		CreateTime:    timestamppb.New(m.CreateTime),
		UpdateTime:    timestamppb.New(m.UpdateTime),
	}
	if len(m.Tags) > 0 {
		out.Tags = m.Tags
	}
	if len(m.Aliases) > 0 {
		out.Aliases = m.Aliases
	}
	return out
}

func versionToProto(mv *ModelVersion) *experimentv1.ModelVersion {
	out := &experimentv1.ModelVersion{
		ModelName:      mv.ModelName,
		Version:        mv.Version,
		Format:         mv.Format,
		Weights:        mv.Weights,
		ChecksumSha256: mv.ChecksumSHA256,
		SizeBytes:      mv.SizeBytes,
		SourceRunId:    mv.SourceRunID,
		Aliases:        mv.Aliases,
		Description:    mv.Description,
		CreateTime:     timestamppb.New(mv.CreateTime),
	}
	if len(mv.Metrics) > 0 {
		out.Metrics = mv.Metrics
	}
	if len(mv.Tags) > 0 {
		out.Tags = mv.Tags
	}
	return out
}

func aliasStateToProto(st *AliasState) *experimentv1.WatchModelResponse {
	out := &experimentv1.WatchModelResponse{Revision: st.Revision, Alias: st.Alias, Deleted: st.Version == nil}
	if st.Version != nil {
		out.ModelVersion = versionToProto(st.Version)
	}
	return out
}
