package regime

import (
	"context"
	"fmt"
	"math"
	"strconv"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/page"
	"github.com/quantmesh/quantmesh/pkg/regimefilter"
)

// modelPages are ListModels' page sizes.
var modelPages = page.Limits{Default: 50, Max: 500}

func validModelID(id string) error {
	if id == "" {
		return apierr.Invalid("model_id", "required")
	}
	if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
		return apierr.Invalid("model_id", "%q is not a model id (a UUID)", truncate(id))
	}
	return nil
}

// view renders a stored model in a view, with its active symbols.
func (s *Server) view(m *regimev1.Model, v regimev1.ModelView) *regimev1.Model {
	out := proto.Clone(m).(*regimev1.Model)
	out.ActiveSymbols = s.engine.ActiveSymbols(m.GetModelId())
	if v == regimev1.ModelView_MODEL_VIEW_BASIC {
		if out.Fit != nil {
			out.Fit.LowerBounds = nil
		}
		for _, r := range out.GetRegimes() {
			r.Covariance = nil
		}
		if mx := out.GetMixture(); mx != nil {
			mx.MeanPrior, mx.CovariancePrior = nil, nil
		}
	}
	return out
}

// GetModel implements RegimeServiceServer.
func (s *Server) GetModel(ctx context.Context, req *regimev1.GetModelRequest) (*regimev1.GetModelResponse, error) {
	if err := validModelID(req.GetModelId()); err != nil {
		return nil, err
	}
	if _, ok := regimev1.ModelView_name[int32(req.GetView())]; !ok {
		return nil, apierr.Invalid("view", "unknown view %d", int32(req.GetView()))
	}
	sm, err := s.engine.st.GetModel(ctx, req.GetModelId())
	if err != nil {
		return nil, err
	}
	v := req.GetView()
	if v == regimev1.ModelView_MODEL_VIEW_UNSPECIFIED {
		v = regimev1.ModelView_MODEL_VIEW_FULL
	}
	return &regimev1.GetModelResponse{Model: s.view(sm.Model, v)}, nil
}

type modelCursor struct {
	ID string `json:"id"`
}

// ListModels implements RegimeServiceServer.
func (s *Server) ListModels(ctx context.Context, req *regimev1.ListModelsRequest) (*regimev1.ListModelsResponse, error) {
	var v apierr.Violations
	size, err := modelPages.Size("page_size", req.GetPageSize())
	v.Merge(err)
	if _, ok := regimev1.ModelView_name[int32(req.GetView())]; !ok {
		v.Add("view", "unknown view %d", int32(req.GetView()))
	}
	fp := page.Fingerprint("regime-models", strconv.FormatBool(req.GetActiveOnly()))
	var cur modelCursor
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	list, err := s.engine.st.ListModels(ctx, cur.ID, size+1, req.GetActiveOnly())
	if err != nil {
		return nil, err
	}
	resp := &regimev1.ListModelsResponse{}
	if list, resp.NextPageToken, err = page.Cut(list, size, fp, func(m StoredModel) any { return modelCursor{ID: m.Model.GetModelId()} }); err != nil {
		return nil, err
	}
	view := req.GetView()
	if view == regimev1.ModelView_MODEL_VIEW_UNSPECIFIED {
		view = regimev1.ModelView_MODEL_VIEW_BASIC
	}
	for _, m := range list {
		resp.Models = append(resp.Models, s.view(m.Model, view))
	}
	return resp, nil
}

// ActivateModel implements RegimeServiceServer.
func (s *Server) ActivateModel(ctx context.Context, req *regimev1.ActivateModelRequest) (*regimev1.ActivateModelResponse, error) {
	var v apierr.Violations
	v.Merge(validModelID(req.GetModelId()))
	switch n := len(req.GetSymbols()); {
	case n == 0:
		v.Add("symbols", "at least one symbol (or %q for the default model)", DefaultSymbol)
	case n > maxSymbols:
		v.Add("symbols", "at most %d symbols, got %d", maxSymbols, n)
	}
	seen := map[string]bool{}
	var symbols []string
	for i, sym := range req.GetSymbols() {
		validSymbol(&v, fmt.Sprintf("symbols[%d]", i), sym, true)
		if !seen[sym] {
			seen[sym] = true
			symbols = append(symbols, sym)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	if _, err := s.engine.Activate(ctx, req.GetModelId(), symbols); err != nil {
		return nil, err
	}
	sm, err := s.engine.st.GetModel(ctx, req.GetModelId())
	if err != nil {
		return nil, err
	}
	return &regimev1.ActivateModelResponse{Model: s.view(sm.Model, regimev1.ModelView_MODEL_VIEW_BASIC)}, nil
}

// ClassifyFeatures implements RegimeServiceServer.
func (s *Server) ClassifyFeatures(ctx context.Context, req *regimev1.ClassifyFeaturesRequest) (*regimev1.ClassifyFeaturesResponse, error) {
	var v apierr.Violations
	v.Merge(validModelID(req.GetModelId()))
	switch n := len(req.GetVectors()); {
	case n == 0:
		v.Add("vectors", "at least one vector")
	case n > maxVectors:
		v.Add("vectors", "at most %d vectors, got %d", maxVectors, n)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	lm, err := s.engine.model(ctx, req.GetModelId())
	if err != nil {
		return nil, err
	}
	for i, vec := range req.GetVectors() {
		if n := len(vec.GetValues()); n != len(lm.specs) {
			v.Add(fmt.Sprintf("vectors[%d].values", i), "model %s takes %d features (%v), got %d", lm.id, len(lm.specs), lm.proto.GetFeatureNames(), n)
			continue
		}
		for j, x := range vec.GetValues() {
			if !finite(x) {
				v.Add(fmt.Sprintf("vectors[%d].values[%d]", i, j), "must be finite, got %v", x)
			}
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	resp := &regimev1.ClassifyFeaturesResponse{ModelId: lm.id}
	f := regimefilter.New(lm.smoothing)
	buf := make([]float64, len(lm.specs))
	comp := make([]float64, lm.mix.Components())
	var raws, smooths []int
	for _, vec := range req.GetVectors() {
		z := lm.standardise(vec.GetValues(), buf)
		lm.mix.LogProb(z, comp)
		logLik := make([]float64, len(lm.components))
		for r, c := range lm.components {
			logLik[r] = comp[c]
		}
		c := &regimev1.Classification{LogLikelihood: logSumExp(comp) - lm.logJacobian()}
		if req.GetSequential() {
			st, err := f.Next(logLik, lm.prior)
			if err != nil {
				return nil, err
			}
			c.RawProbabilities, c.RawDominantRegime, c.RawEntropy = st.Raw, int32(st.RawDominant), st.RawEntropy
			c.SmoothedProbabilities, c.DominantRegime, c.Entropy = st.Smoothed, int32(st.Dominant), st.Entropy
			raws, smooths = append(raws, st.RawDominant), append(smooths, st.Dominant)
		} else {
			raw := regimefilter.SoftmaxLog(logLik, logLik)
			c.RawProbabilities, c.RawDominantRegime, c.RawEntropy = raw, int32(regimefilter.Argmax(raw)), regimefilter.Entropy(raw)
		}
		resp.Classifications = append(resp.Classifications, c)
	}
	if req.GetSequential() {
		resp.RawFlipsPer_100Bars, resp.SmoothedFlipsPer_100Bars = regimefilter.FlipsPer100(raws), regimefilter.FlipsPer100(smooths)
	}
	return resp, nil
}

// logJacobian is Σ log std of the standardisation: the log density in raw
// feature units is the standardised one minus it.
func (lm *loadedModel) logJacobian() float64 {
	if lm.scaler == nil {
		return 0
	}
	var j float64
	for _, sd := range lm.scaler.Std {
		j += math.Log(sd)
	}
	return j
}

// logSumExp of xs.
func logSumExp(xs []float64) float64 {
	m := math.Inf(-1)
	for _, x := range xs {
		m = math.Max(m, x)
	}
	if math.IsInf(m, -1) {
		return m
	}
	var s float64
	for _, x := range xs {
		s += math.Exp(x - m)
	}
	return m + math.Log(s)
}
