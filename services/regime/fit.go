package regime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/dpgmm"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/regimefilter"
)

// Fit limits.
const (
	maxFitSamples      = 1_000_000
	maxFitSymbols      = 100
	maxDescription     = 1000
	defaultEffective   = 0.01
	maxComponentsLimit = 100
)

// trainingSeries is one symbol's training bars.
type trainingSeries struct {
	symbol string
	bars   []Bar
}

// trainingData is a fit's samples: feature vectors and, beside each, the
// one-bar log return of its bar, with each symbol's run of samples kept
// together (for flip rates).
type trainingData struct {
	X          [][]float64
	returns    []float64
	runs       [][2]int // [start, end) of each symbol's samples
	first, end time.Time
}

// FitModel implements RegimeServiceServer.
func (s *Server) FitModel(ctx context.Context, req *regimev1.FitModelRequest) (*regimev1.FitModelResponse, error) {
	var v apierr.Violations
	specs := specsFromProto(&v, req.GetFeatures())
	standardize := req.GetFeatures() == nil || req.GetFeatures().Standardize == nil || req.GetFeatures().GetStandardize()
	smoothing := smoothingFromProto(&v, req.GetSmoothing())
	if n := len(req.GetActivateSymbols()); n > maxSymbols {
		v.Add("activate_symbols", "at most %d symbols, got %d", maxSymbols, n)
	}
	for i, sym := range req.GetActivateSymbols() {
		validSymbol(&v, fmt.Sprintf("activate_symbols[%d]", i), sym, true)
	}
	if n := len([]rune(req.GetDescription())); n > maxDescription {
		v.Add("description", "at most %d characters, got %d", maxDescription, n)
	}
	mc := req.GetMixture()
	if mc == nil {
		mc = &regimev1.MixtureConfig{}
	}
	validateMixture(&v, mc, len(specs))
	if err := v.Err(); err != nil {
		return nil, err
	}
	series, err := s.trainingSeries(ctx, req.GetSource())
	if err != nil {
		return nil, err
	}
	data, err := buildTraining(series, specs)
	if err != nil {
		return nil, err
	}
	if len(data.X) < 2 || len(data.X) < len(specs) {
		return nil, apierr.Invalid("source", "%d usable samples after the feature windows' warm-up (%d bars); need at least %d (the number of features, and 2)",
			len(data.X), specsWarmup(specs), max(2, len(specs)))
	}
	if len(data.X) > maxFitSamples {
		return nil, apierr.Invalid("source", "%d samples; at most %d per fit", len(data.X), maxFitSamples)
	}
	var scaler *Scaler
	X := data.X
	if standardize {
		scaler = fitScaler(data.X)
		X = scaler.apply(data.X)
	}
	cfg, err := mixtureConfig(mc, scaler, len(specs))
	if err != nil {
		return nil, err
	}
	start := time.Now()
	mix, rep, err := dpgmm.Fit(ctx, X, cfg)
	took := time.Since(start)
	var inErr *dpgmm.InputError
	switch {
	case errors.As(err, &inErr):
		return nil, apierr.Invalid(fitField(inErr.Field), "%s", inErr.Reason)
	case errors.Is(err, dpgmm.ErrFitFailed):
		return nil, apierr.FailedPrecondition("FIT_FAILED", "%v; more reg_covar or fewer components help", err)
	case err != nil:
		return nil, err
	}
	threshold := defaultEffective
	if mc.EffectiveWeightThreshold != nil {
		threshold = mc.GetEffectiveWeightThreshold()
	}
	model, meta := describe(mix, rep, data, X, scaler, threshold)
	if len(model.GetRegimes()) == 0 {
		// A model without regimes would fail every bar of every symbol it
		// classifies.
		return nil, apierr.Invalid("mixture.effective_weight_threshold", "%v leaves no regime: the largest of the mixture's %d component weights is %.4g; lower the threshold",
			threshold, mix.Components(), slices.Max(mix.Weights()))
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	model.ModelId = id.String()
	model.Description = req.GetDescription()
	model.Source = req.GetSource()
	if !data.first.IsZero() {
		model.FirstBarTime, model.LastBarTime = timestamppb.New(data.first), timestamppb.New(data.end)
	}
	model.Features = &regimev1.FeatureConfig{Standardize: proto.Bool(standardize)}
	for _, sp := range specs {
		model.Features.Features = append(model.Features.Features, &regimev1.FeatureSpec{Kind: regimev1.FeatureKind(sp.Kind), Window: int32(sp.Window)})
		model.FeatureNames = append(model.FeatureNames, sp.Name())
	}
	model.Mixture = mixtureToProto(mix.Config(), scaler, threshold)
	model.Smoothing = smoothingToProto(smoothing)
	model.Fit.FitDuration = durationpb.New(took)
	model.Fit.Samples = int64(len(data.X))
	model.CreateTime = timestamppb.Now()
	// Flip rates over the training data, with the model's own smoothing.
	model.Fit.RawFlipsPer_100Bars, model.Fit.SmoothedFlipsPer_100Bars = trainingFlips(mix, meta.Components, X, data.runs, smoothing, regimePrior(model))
	blob, err := mix.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := s.engine.st.CreateModel(ctx, StoredModel{Model: model, Mixture: blob, Meta: meta}, nil, time.Now()); err != nil {
		return nil, err
	}
	if len(req.GetActivateSymbols()) > 0 {
		if _, err := s.engine.Activate(ctx, model.GetModelId(), uniq(req.GetActivateSymbols())); err != nil {
			return nil, fmt.Errorf("model %s was stored but not activated: %w", model.GetModelId(), err)
		}
	}
	return &regimev1.FitModelResponse{Model: s.view(model, regimev1.ModelView_MODEL_VIEW_FULL)}, nil
}

func uniq(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// fitField maps a dpgmm input field to the request's.
func fitField(f string) string {
	switch {
	case strings.HasPrefix(f, "X"):
		return "source"
	case f == "Components":
		return "mixture.n_components"
	case f == "CovariancePrior":
		return "mixture.covariance_prior"
	case f == "MeanPrior":
		return "mixture.mean_prior"
	case f == "DegreesOfFreedom":
		return "mixture.degrees_of_freedom_prior"
	}
	return "mixture"
}

func specsWarmup(specs []features.Spec) int {
	c, err := features.NewComputer(specs)
	if err != nil {
		return 0
	}
	return c.Warmup()
}

func specsFromProto(v *apierr.Violations, fc *regimev1.FeatureConfig) []features.Spec {
	if len(fc.GetFeatures()) == 0 {
		return features.DefaultSpecs()
	}
	if len(fc.GetFeatures()) > 64 {
		v.Add("features.features", "at most 64 features, got %d", len(fc.GetFeatures()))
		return nil
	}
	var out []features.Spec
	seen := map[string]bool{}
	for i, f := range fc.GetFeatures() {
		sp := features.Spec{Kind: features.Kind(f.GetKind()), Window: int(f.GetWindow())}
		if err := sp.Validate(); err != nil {
			v.Add(fmt.Sprintf("features.features[%d]", i), "%v", err)
			continue
		}
		if seen[sp.Name()] {
			v.Add(fmt.Sprintf("features.features[%d]", i), "%s appears twice", sp.Name())
			continue
		}
		seen[sp.Name()] = true
		out = append(out, sp)
	}
	return out
}

func smoothingFromProto(v *apierr.Violations, sc *regimev1.SmoothingConfig) Smoothing {
	s := DefaultSmoothing()
	if sc == nil {
		return s
	}
	if sc.Stickiness != nil {
		s.Stickiness = sc.GetStickiness()
	}
	if sc.Hysteresis != nil {
		s.Hysteresis = sc.GetHysteresis()
	}
	if sc.MinDwellBars != nil {
		s.MinDwell = int(sc.GetMinDwellBars())
	}
	if sc.EmissionTempering != nil {
		s.Tempering = sc.GetEmissionTempering()
	}
	s.Check(func(field, format string, args ...any) { v.Add("smoothing."+field, format, args...) })
	return s
}

// smoothingToProto is the configuration with every field set, as a model
// records it.
func smoothingToProto(s Smoothing) *regimev1.SmoothingConfig {
	return &regimev1.SmoothingConfig{
		Stickiness: proto.Float64(s.Stickiness), Hysteresis: proto.Float64(s.Hysteresis),
		MinDwellBars: proto.Int32(int32(s.MinDwell)), EmissionTempering: proto.Float64(s.Tempering),
	}
}

// smoothingFromModel is a stored model's smoothing. Models fitted before
// emission tempering existed have none recorded and filter untempered.
func smoothingFromModel(sc *regimev1.SmoothingConfig) Smoothing {
	s := Smoothing{Stickiness: sc.GetStickiness(), Hysteresis: sc.GetHysteresis(), MinDwell: int(sc.GetMinDwellBars()), Tempering: 1}
	if sc.EmissionTempering != nil {
		s.Tempering = sc.GetEmissionTempering()
	}
	return s
}

func validateMixture(v *apierr.Violations, mc *regimev1.MixtureConfig, d int) {
	if mc.NComponents != nil && (mc.GetNComponents() < 1 || mc.GetNComponents() > maxComponentsLimit) {
		v.Add("mixture.n_components", "must be 1 to %d, got %d", maxComponentsLimit, mc.GetNComponents())
	}
	pos := func(field string, set bool, x float64) {
		if set && !(x > 0 && finite(x)) {
			v.Add(field, "must be finite and positive, got %v", x)
		}
	}
	pos("mixture.weight_concentration_prior", mc.WeightConcentrationPrior != nil, mc.GetWeightConcentrationPrior())
	pos("mixture.mean_precision_prior", mc.MeanPrecisionPrior != nil, mc.GetMeanPrecisionPrior())
	pos("mixture.tol", mc.Tol != nil, mc.GetTol())
	if mc.DegreesOfFreedomPrior != nil && !(mc.GetDegreesOfFreedomPrior() > float64(d-1) && finite(mc.GetDegreesOfFreedomPrior())) {
		v.Add("mixture.degrees_of_freedom_prior", "must be greater than n_features - 1 = %d, got %v", d-1, mc.GetDegreesOfFreedomPrior())
	}
	if mc.RegCovar != nil && !(mc.GetRegCovar() >= 0 && finite(mc.GetRegCovar())) {
		v.Add("mixture.reg_covar", "must be finite and not negative, got %v", mc.GetRegCovar())
	}
	if mc.MaxIter != nil && (mc.GetMaxIter() < 1 || mc.GetMaxIter() > 100_000) {
		v.Add("mixture.max_iter", "must be 1 to 100000, got %d", mc.GetMaxIter())
	}
	if mc.NInit != nil && (mc.GetNInit() < 1 || mc.GetNInit() > 100) {
		v.Add("mixture.n_init", "must be 1 to 100, got %d", mc.GetNInit())
	}
	if _, ok := regimev1.InitMethod_name[int32(mc.GetInit())]; !ok {
		v.Add("mixture.init", "unknown method %d", int32(mc.GetInit()))
	}
	if mc.EffectiveWeightThreshold != nil && !(mc.GetEffectiveWeightThreshold() > 0 && mc.GetEffectiveWeightThreshold() < 1) {
		v.Add("mixture.effective_weight_threshold", "must be in (0, 1), got %v", mc.GetEffectiveWeightThreshold())
	}
	if n := len(mc.GetMeanPrior()); n != 0 && n != d {
		v.Add("mixture.mean_prior", "needs %d values (one per feature), got %d", d, n)
	}
	if n := len(mc.GetCovariancePrior()); n != 0 && n != d*d {
		v.Add("mixture.covariance_prior", "needs %d values (n_features squared, row-major), got %d", d*d, n)
	}
	for i, x := range append(slices.Clone(mc.GetMeanPrior()), mc.GetCovariancePrior()...) {
		if !finite(x) {
			v.Add("mixture", "prior value %d is not finite", i)
			break
		}
	}
}

// mixtureConfig turns the request's hyperparameters into dpgmm's, priors
// moved into the standardised space.
func mixtureConfig(mc *regimev1.MixtureConfig, sc *Scaler, d int) (dpgmm.Config, error) {
	cfg := dpgmm.Config{
		Components: int(mc.GetNComponents()), WeightConcentration: mc.GetWeightConcentrationPrior(), MeanPrecision: mc.GetMeanPrecisionPrior(),
		DegreesOfFreedom: mc.GetDegreesOfFreedomPrior(), Tol: mc.GetTol(), MaxIter: int(mc.GetMaxIter()), NInit: int(mc.GetNInit()),
	}
	if mc.RegCovar != nil {
		cfg.RegCovar = mc.GetRegCovar()
		if cfg.RegCovar == 0 {
			cfg.RegCovar = dpgmm.NoRegCovar
		}
	}
	switch mc.GetInit() {
	case regimev1.InitMethod_INIT_METHOD_K_MEANS_PLUS_PLUS:
		cfg.Init = dpgmm.InitKMeansPlusPlus
	case regimev1.InitMethod_INIT_METHOD_RANDOM:
		cfg.Init = dpgmm.InitRandom
	case regimev1.InitMethod_INIT_METHOD_RANDOM_FROM_DATA:
		cfg.Init = dpgmm.InitRandomFromData
	default:
		cfg.Init = dpgmm.InitKMeans
	}
	if mc.Seed != nil {
		cfg.Seed = mc.GetSeed()
	} else {
		cfg.Seed = time.Now().UnixNano()
	}
	if mp := mc.GetMeanPrior(); len(mp) == d {
		cfg.MeanPrior = slices.Clone(mp)
		if sc != nil {
			for i := range cfg.MeanPrior {
				cfg.MeanPrior[i] = (mp[i] - sc.Mean[i]) / sc.Std[i]
			}
		}
	}
	if cp := mc.GetCovariancePrior(); len(cp) == d*d {
		cfg.CovariancePrior = slices.Clone(cp)
		if sc != nil {
			for i := range d {
				for j := range d {
					cfg.CovariancePrior[i*d+j] = cp[i*d+j] / (sc.Std[i] * sc.Std[j])
				}
			}
		}
	}
	return cfg, nil
}

// mixtureToProto reports the hyperparameters used, priors back in raw
// feature units.
func mixtureToProto(c dpgmm.Config, sc *Scaler, threshold float64) *regimev1.MixtureConfig {
	d := len(c.MeanPrior)
	out := &regimev1.MixtureConfig{
		NComponents: proto.Int32(int32(c.Components)), WeightConcentrationPrior: proto.Float64(c.WeightConcentration),
		MeanPrecisionPrior: proto.Float64(c.MeanPrecision), DegreesOfFreedomPrior: proto.Float64(c.DegreesOfFreedom),
		Tol: proto.Float64(c.Tol), RegCovar: proto.Float64(c.RegCovar), MaxIter: proto.Int32(int32(c.MaxIter)), NInit: proto.Int32(int32(c.NInit)),
		Seed: proto.Int64(c.Seed), EffectiveWeightThreshold: proto.Float64(threshold),
		MeanPrior: slices.Clone(c.MeanPrior), CovariancePrior: slices.Clone(c.CovariancePrior),
	}
	switch c.Init {
	case dpgmm.InitKMeansPlusPlus:
		out.Init = regimev1.InitMethod_INIT_METHOD_K_MEANS_PLUS_PLUS
	case dpgmm.InitRandom:
		out.Init = regimev1.InitMethod_INIT_METHOD_RANDOM
	case dpgmm.InitRandomFromData:
		out.Init = regimev1.InitMethod_INIT_METHOD_RANDOM_FROM_DATA
	default:
		out.Init = regimev1.InitMethod_INIT_METHOD_KMEANS
	}
	if sc != nil {
		for i := range out.MeanPrior {
			out.MeanPrior[i] = out.MeanPrior[i]*sc.Std[i] + sc.Mean[i]
		}
		for i := range d {
			for j := range d {
				out.CovariancePrior[i*d+j] *= sc.Std[i] * sc.Std[j]
			}
		}
	}
	return out
}

// trainingSeries reads the bars a fit's source selects.
func (s *Server) trainingSeries(ctx context.Context, src *regimev1.TrainingSource) ([]trainingSeries, error) {
	switch x := src.GetSource().(type) {
	case *regimev1.TrainingSource_StoredBars:
		sb := x.StoredBars
		var v apierr.Violations
		switch n := len(sb.GetSymbols()); {
		case n == 0:
			v.Add("source.stored_bars.symbols", "at least one symbol")
		case n > maxFitSymbols:
			v.Add("source.stored_bars.symbols", "at most %d symbols, got %d", maxFitSymbols, n)
		}
		for i, sym := range sb.GetSymbols() {
			validSymbol(&v, fmt.Sprintf("source.stored_bars.symbols[%d]", i), sym, false)
		}
		var start, end time.Time
		if ts := sb.GetStartTime(); ts != nil {
			if err := ts.CheckValid(); err != nil {
				v.Add("source.stored_bars.start_time", "invalid timestamp: %v", err)
			} else {
				start = ts.AsTime()
			}
		}
		if ts := sb.GetEndTime(); ts != nil {
			if err := ts.CheckValid(); err != nil {
				v.Add("source.stored_bars.end_time", "invalid timestamp: %v", err)
			} else if end = ts.AsTime(); !start.IsZero() && !end.After(start) {
				v.Add("source.stored_bars.end_time", "must be after start_time")
			}
		}
		if err := v.Err(); err != nil {
			return nil, err
		}
		var out []trainingSeries
		seen := map[string]bool{}
		for i, sym := range sb.GetSymbols() {
			if seen[sym] {
				continue
			}
			seen[sym] = true
			bars, err := s.engine.st.Bars(ctx, sym, start, end)
			if err != nil {
				return nil, err
			}
			if len(bars) == 0 {
				return nil, apierr.Invalid(fmt.Sprintf("source.stored_bars.symbols[%d]", i), "%s has no stored bars in the range", sym)
			}
			out = append(out, trainingSeries{symbol: sym, bars: bars})
		}
		return out, nil
	case *regimev1.TrainingSource_Dataset:
		ds := x.Dataset
		series, err := marketdata.Bundled(ds.GetDatasetId())
		if err != nil {
			return nil, apierr.Invalid("source.dataset.dataset_id", "unknown dataset %q (bundled: %s, %s)", truncate(ds.GetDatasetId()), marketdata.EuStock, marketdata.TTRC)
		}
		var v apierr.Violations
		if n := len(ds.GetColumns()); n == 0 || n > maxFitSymbols {
			v.Add("source.dataset.columns", "1 to %d columns, got %d", maxFitSymbols, n)
		}
		rows := len(series[0].Bars)
		start, end := int(ds.GetStartIndex()), int(ds.GetEndIndex())
		if end == 0 {
			end = rows
		}
		switch {
		case start < 0:
			v.Add("source.dataset.start_index", "must not be negative, got %d", start)
		case end > rows:
			v.Add("source.dataset.end_index", "the dataset has %d rows, got %d", rows, end)
		case end <= start:
			v.Add("source.dataset.end_index", "must be greater than start_index %d, got %d", start, end)
		}
		byName := map[string]marketdata.Series{}
		var names []string
		for _, s := range series {
			byName[s.Symbol] = s
			names = append(names, s.Symbol)
		}
		var out []trainingSeries
		seen := map[string]bool{}
		for i, col := range ds.GetColumns() {
			if seen[col] {
				continue
			}
			seen[col] = true
			s, ok := byName[col]
			if !ok {
				v.Add(fmt.Sprintf("source.dataset.columns[%d]", i), "unknown column %q (have %s)", truncate(col), strings.Join(names, ", "))
				continue
			}
			if v.Err() != nil {
				continue
			}
			ts := trainingSeries{symbol: col}
			for _, b := range s.Bars[start:end] {
				ts.bars = append(ts.bars, Bar{Symbol: col, Time: b.Time, Open: b.Open, High: b.High, Low: b.Low, Close: b.Close, Volume: b.Volume, HasVolume: s.HasVolume})
			}
			out = append(out, ts)
		}
		if err := v.Err(); err != nil {
			return nil, err
		}
		return out, nil
	}
	return nil, apierr.Invalid("source", "required: stored_bars or dataset")
}

// buildTraining computes each series' features and stacks them.
func buildTraining(series []trainingSeries, specs []features.Spec) (*trainingData, error) {
	data := &trainingData{}
	for _, s := range series {
		comp, err := features.NewComputer(specs)
		if err != nil {
			return nil, apierr.Invalid("features", "%v", err)
		}
		start := len(data.X)
		vec := make([]float64, comp.Len())
		prev := 0.0
		for i, b := range s.bars {
			ready, err := comp.Update(point(b), vec)
			if errors.Is(err, features.ErrNoVolume) {
				return nil, apierr.Invalid("features", "%s bar %d has no volume, which the volume z-score feature needs", s.symbol, i)
			}
			if err != nil {
				return nil, apierr.Invalid("source", "%s bar %d: %v", s.symbol, i, err)
			}
			ret := 0.0
			if i > 0 {
				ret = math.Log(b.Close / prev)
			}
			prev = b.Close
			if !ready {
				continue
			}
			data.X = append(data.X, slices.Clone(vec))
			data.returns = append(data.returns, ret)
		}
		data.runs = append(data.runs, [2]int{start, len(data.X)})
		if len(s.bars) > 0 {
			if data.first.IsZero() || s.bars[0].Time.Before(data.first) {
				data.first = s.bars[0].Time
			}
			if last := s.bars[len(s.bars)-1].Time; last.After(data.end) {
				data.end = last
			}
		}
	}
	return data, nil
}

// fitScaler returns each feature's mean and standard deviation (1 for a
// constant feature).
func fitScaler(X [][]float64) *Scaler {
	mean, std := features.Standardiser(X)
	return &Scaler{Mean: mean, Std: std}
}

func (sc *Scaler) apply(X [][]float64) [][]float64 {
	out := make([][]float64, len(X))
	for i, x := range X {
		z := make([]float64, len(x))
		for j, v := range x {
			z[j] = (v - sc.Mean[j]) / sc.Std[j]
		}
		out[i] = z
	}
	return out
}

// describe builds the model's regimes and fit report: the effective
// components ordered by the volatility of the training bars' returns each
// is responsible for.
func describe(mix *dpgmm.Model, rep dpgmm.Report, data *trainingData, X [][]float64, sc *Scaler, threshold float64) (*regimev1.Model, ModelMeta) {
	eff := mix.Effective(threshold)
	weights := mix.Weights()
	k := mix.Components()
	// Responsibility-weighted return statistics per component.
	sumW, sumR, sumR2 := make([]float64, k), make([]float64, k), make([]float64, k)
	resp := make([]float64, k)
	for i, x := range X {
		mix.PredictProba(x, resp)
		r := data.returns[i]
		for c, p := range resp {
			sumW[c] += p
			sumR[c] += p * r
			sumR2[c] += p * r * r
		}
	}
	type reg struct {
		comp         int
		vol, meanRet float64
	}
	var regs []reg
	for _, c := range eff {
		m, vol := 0.0, 0.0
		if sumW[c] > 0 {
			m = sumR[c] / sumW[c]
			vol = math.Sqrt(max(0, sumR2[c]/sumW[c]-m*m))
		}
		regs = append(regs, reg{c, vol, m})
	}
	slices.SortStableFunc(regs, func(a, b reg) int {
		switch {
		case a.vol < b.vol:
			return -1
		case a.vol > b.vol:
			return 1
		}
		return a.comp - b.comp
	})
	means, covs := mix.Means(), mix.Covariances()
	d := len(X[0])
	model := &regimev1.Model{Fit: &regimev1.FitReport{
		Converged: rep.Converged, Iterations: int32(rep.Iterations), LowerBound: rep.LowerBound, LowerBounds: rep.LowerBounds,
		BestInit: int32(rep.BestInit), EffectiveRegimes: int32(len(regs)),
	}}
	meta := ModelMeta{Scaler: sc}
	pruned := 1.0
	for i, r := range regs {
		mean, cov := slices.Clone(means[r.comp]), slices.Clone(covs[r.comp])
		if sc != nil {
			for a := range d {
				mean[a] = mean[a]*sc.Std[a] + sc.Mean[a]
				for b := range d {
					cov[a*d+b] *= sc.Std[a] * sc.Std[b]
				}
			}
		}
		model.Regimes = append(model.Regimes, &regimev1.Regime{
			Index: int32(i), Label: fmt.Sprintf("r%d", i), Weight: weights[r.comp], Mean: mean, Covariance: cov,
			Volatility: r.vol, MeanReturn: r.meanRet,
		})
		meta.Components = append(meta.Components, r.comp)
		pruned -= weights[r.comp]
	}
	model.Fit.PrunedWeight = max(0, pruned)
	return model, meta
}

func regimePrior(m *regimev1.Model) []float64 {
	var total float64
	for _, r := range m.GetRegimes() {
		total += r.GetWeight()
	}
	out := make([]float64, len(m.GetRegimes()))
	for i, r := range m.GetRegimes() {
		out[i] = r.GetWeight() / total
	}
	return out
}

// trainingFlips runs each symbol's training samples through the
// classifier and the filter and returns the raw and smoothed flips per 100
// bars, pooled over symbols.
func trainingFlips(mix *dpgmm.Model, comps []int, X [][]float64, runs [][2]int, sm Smoothing, prior []float64) (raw, smoothed float64) {
	comp := make([]float64, mix.Components())
	var rawFlips, smoothFlips, pairs int
	for _, run := range runs {
		f := regimefilter.New(sm)
		prevRaw, prevDom := -1, -1
		for i := run[0]; i < run[1]; i++ {
			mix.LogProb(X[i], comp)
			ll := make([]float64, len(comps))
			for r, c := range comps {
				ll[r] = comp[c]
			}
			st, err := f.Next(ll, prior)
			if err != nil {
				return 0, 0
			}
			if prevRaw >= 0 {
				pairs++
				if st.RawDominant != prevRaw {
					rawFlips++
				}
				if st.Dominant != prevDom {
					smoothFlips++
				}
			}
			prevRaw, prevDom = st.RawDominant, st.Dominant
		}
	}
	if pairs == 0 {
		return 0, 0
	}
	return 100 * float64(rawFlips) / float64(pairs), 100 * float64(smoothFlips) / float64(pairs)
}
