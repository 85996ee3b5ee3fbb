package regime

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/google/go-cmp/cmp"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr/apierrtest"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

func eustockFit(columns ...string) *regimev1.FitModelRequest {
	return &regimev1.FitModelRequest{
		Source:  &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: "eustock", Columns: columns}}},
		Mixture: &regimev1.MixtureConfig{Seed: proto.Int64(7)},
	}
}

func TestFitModelOnEustock(t *testing.T) {
	t.Parallel()
	db := storetest.SQLite(t, Migrations())
	c, _ := serveRegimeDPGMM(t, db)
	ctx := context.Background()
	resp, err := c.FitModel(ctx, eustockFit("DAX"))
	if err != nil {
		t.Fatal(err)
	}
	m := resp.GetModel()
	fit := m.GetFit()
	t.Logf("eustock DAX: %d regimes, lower bound %.2f after %d iterations (converged %v), flips per 100 bars raw %.2f smoothed %.2f, fit %s",
		fit.GetEffectiveRegimes(), fit.GetLowerBound(), fit.GetIterations(), fit.GetConverged(), fit.GetRawFlipsPer_100Bars(), fit.GetSmoothedFlipsPer_100Bars(), fit.GetFitDuration().AsDuration())
	if fit.GetSamples() != 1860-30 || len(fit.GetLowerBounds()) != int(fit.GetIterations()) || fit.GetEffectiveRegimes() < 2 ||
		len(m.GetRegimes()) != int(fit.GetEffectiveRegimes()) || len(m.GetFeatureNames()) != 6 || m.GetFeatureNames()[1] != "volatility_10" {
		t.Fatalf("model: %v", m)
	}
	var weight float64
	for i, r := range m.GetRegimes() {
		weight += r.GetWeight()
		if r.GetIndex() != int32(i) || len(r.GetMean()) != 6 || len(r.GetCovariance()) != 36 || r.GetWeight() <= 0.01 {
			t.Errorf("regime %d: %v", i, r)
		}
		if i > 0 && r.GetVolatility() < m.GetRegimes()[i-1].GetVolatility() {
			t.Errorf("regimes not in volatility order at %d", i)
		}
	}
	if math.Abs(weight+fit.GetPrunedWeight()-1) > 1e-9 {
		t.Errorf("regime weights %v + pruned %v != 1", weight, fit.GetPrunedWeight())
	}
	if fit.GetSmoothedFlipsPer_100Bars() > flipGoal*fit.GetRawFlipsPer_100Bars() {
		t.Errorf("default smoothing: %.2f flips per 100 bars, raw %.2f; goal at most %v of raw", fit.GetSmoothedFlipsPer_100Bars(), fit.GetRawFlipsPer_100Bars(), flipGoal)
	}
	if diff := cmp.Diff(smoothingToProto(DefaultSmoothing()), m.GetSmoothing(), protocmp.Transform()); diff != "" {
		t.Errorf("the model records other than the default smoothing:\n%s", diff)
	}
	// Same request and seed, same model.
	again, err := c.FitModel(ctx, eustockFit("DAX"))
	if err != nil {
		t.Fatal(err)
	}
	ignore := protocmp.IgnoreFields(&regimev1.Model{}, "model_id", "create_time")
	if diff := cmp.Diff(m, again.GetModel(), protocmp.Transform(), ignore, protocmp.IgnoreFields(&regimev1.FitReport{}, "fit_duration")); diff != "" {
		t.Errorf("refit with the same seed differs:\n%s", diff)
	}
	// A mean in raw units: the log-return mean of the calmest regime is a
	// small daily return.
	if mr := m.GetRegimes()[0].GetMean()[0]; math.Abs(mr) > 0.01 {
		t.Errorf("calm regime's mean log return %v is not in raw units", mr)
	}
}

func TestFitActivatesAndServes(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		c, _ := serveRegimeDPGMM(t, db)
		ctx := context.Background()
		t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
		if _, err := ingest(t, c, pbBars("LIVE", t0, randomWalk(300, 1))); err != nil {
			t.Fatal(err)
		}
		// Fit on the stored bars and make it the default model.
		req := &regimev1.FitModelRequest{
			Source:          &regimev1.TrainingSource{Source: &regimev1.TrainingSource_StoredBars{StoredBars: &regimev1.StoredBars{Symbols: []string{"LIVE"}}}},
			Mixture:         &regimev1.MixtureConfig{Seed: proto.Int64(1), NComponents: proto.Int32(4)},
			ActivateSymbols: []string{DefaultSymbol},
		}
		fit, err := c.FitModel(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if fit.GetModel().GetFit().GetSamples() != 300-30 || fit.GetModel().GetFirstBarTime() == nil {
			t.Errorf("stored-bar fit: %v", fit.GetModel().GetFit())
		}
		// The latest bar was classified at activation.
		st, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "LIVE"})
		if err != nil || st.GetState().GetModelId() != fit.GetModel().GetModelId() {
			t.Fatalf("after activation: %v %v", st, err)
		}
		resp, err := ingest(t, c, pbBars("LIVE", t0.Add(300*time.Minute), randomWalk(10, 2)))
		if err != nil || resp.GetRegimesUpdated() != 10 {
			t.Fatalf("ingest under the fitted model: %v %v", resp, err)
		}
	})
}

func TestFitBadInput(t *testing.T) {
	t.Parallel()
	db := storetest.SQLite(t, Migrations())
	c, _ := serveRegimeDPGMM(t, db)
	ctx := context.Background()
	with := func(mutate func(r *regimev1.FitModelRequest)) func() error {
		return func() error {
			r := eustockFit("DAX")
			mutate(r)
			_, err := c.FitModel(ctx, r)
			return err
		}
	}
	ds := func(r *regimev1.FitModelRequest) *regimev1.DatasetSlice { return r.GetSource().GetDataset() }
	if _, err := ingest(t, c, pbBars("A", time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC), randomWalk(100, 1))); err != nil {
		t.Fatal(err)
	}
	stored := func(mutate func(sb *regimev1.StoredBars)) func() error {
		return with(func(r *regimev1.FitModelRequest) {
			sb := &regimev1.StoredBars{Symbols: []string{"A"}}
			mutate(sb)
			r.Source = &regimev1.TrainingSource{Source: &regimev1.TrainingSource_StoredBars{StoredBars: sb}}
		})
	}
	for _, tt := range []struct {
		name, field string
		call        func() error
	}{
		{"no source", "source", with(func(r *regimev1.FitModelRequest) { r.Source = nil })},
		{"unknown dataset", "source.dataset.dataset_id", with(func(r *regimev1.FitModelRequest) { ds(r).DatasetId = "nasdaq" })},
		{"unknown column", "source.dataset.columns[0]", with(func(r *regimev1.FitModelRequest) { ds(r).Columns = []string{"NIKKEI"} })},
		{"unknown column after a repeated one", "source.dataset.columns[2]", with(func(r *regimev1.FitModelRequest) { ds(r).Columns = []string{"DAX", "DAX", "NIKKEI"} })},
		{"symbol without bars after a repeated one", "source.stored_bars.symbols[2]", stored(func(sb *regimev1.StoredBars) { sb.Symbols = []string{"A", "A", "B"} })},
		{"start time out of range", "source.stored_bars.start_time", stored(func(sb *regimev1.StoredBars) { sb.StartTime = &timestamppb.Timestamp{Seconds: math.MaxInt64} })},
		{"end time out of range", "source.stored_bars.end_time", stored(func(sb *regimev1.StoredBars) { sb.EndTime = &timestamppb.Timestamp{Seconds: math.MinInt64} })},
		{"bad end time nanos", "source.stored_bars.end_time", stored(func(sb *regimev1.StoredBars) { sb.EndTime = &timestamppb.Timestamp{Nanos: -1} })},
		{"no regime above the threshold", "mixture.effective_weight_threshold", with(func(r *regimev1.FitModelRequest) {
			r.Mixture.EffectiveWeightThreshold = proto.Float64(0.95)
		})},
		{"empty range", "source.dataset.end_index", with(func(r *regimev1.FitModelRequest) { ds(r).StartIndex, ds(r).EndIndex = 10, 10 })},
		{"too few samples", "source", with(func(r *regimev1.FitModelRequest) { ds(r).EndIndex = 33 })},
		{"zero components", "mixture.n_components", with(func(r *regimev1.FitModelRequest) { r.Mixture.NComponents = proto.Int32(0) })},
		{"mean prior of the wrong shape", "mixture.mean_prior", with(func(r *regimev1.FitModelRequest) { r.Mixture.MeanPrior = []float64{1, 2} })},
		{"low degrees of freedom", "mixture.degrees_of_freedom_prior", with(func(r *regimev1.FitModelRequest) { r.Mixture.DegreesOfFreedomPrior = proto.Float64(4) })},
		{"NaN tol", "mixture.tol", with(func(r *regimev1.FitModelRequest) { r.Mixture.Tol = proto.Float64(math.NaN()) })},
		{"a feature twice", "features.features[1]", with(func(r *regimev1.FitModelRequest) {
			r.Features = &regimev1.FeatureConfig{Features: []*regimev1.FeatureSpec{{Kind: regimev1.FeatureKind_FEATURE_KIND_MOMENTUM, Window: 5}, {Kind: regimev1.FeatureKind_FEATURE_KIND_MOMENTUM, Window: 5}}}
		})},
		{"volume feature on closes", "features", with(func(r *regimev1.FitModelRequest) {
			r.Features = &regimev1.FeatureConfig{Features: []*regimev1.FeatureSpec{{Kind: regimev1.FeatureKind_FEATURE_KIND_VOLUME_ZSCORE, Window: 5}}}
		})},
		{"stickiness 1", "smoothing.stickiness", with(func(r *regimev1.FitModelRequest) {
			r.Smoothing = &regimev1.SmoothingConfig{Stickiness: proto.Float64(1)}
		})},
		{"negative hysteresis", "smoothing.hysteresis", with(func(r *regimev1.FitModelRequest) {
			r.Smoothing = &regimev1.SmoothingConfig{Hysteresis: proto.Float64(-0.1)}
		})},
		{"zero dwell", "smoothing.min_dwell_bars", with(func(r *regimev1.FitModelRequest) {
			r.Smoothing = &regimev1.SmoothingConfig{MinDwellBars: proto.Int32(0)}
		})},
		{"tempering 0", "smoothing.emission_tempering", with(func(r *regimev1.FitModelRequest) {
			r.Smoothing = &regimev1.SmoothingConfig{EmissionTempering: proto.Float64(0)}
		})},
		{"tempering above 1", "smoothing.emission_tempering", with(func(r *regimev1.FitModelRequest) {
			r.Smoothing = &regimev1.SmoothingConfig{EmissionTempering: proto.Float64(1.5)}
		})},
		{"NaN tempering", "smoothing.emission_tempering", with(func(r *regimev1.FitModelRequest) {
			r.Smoothing = &regimev1.SmoothingConfig{EmissionTempering: proto.Float64(math.NaN())}
		})},
		{"bad activation symbol", "activate_symbols[0]", with(func(r *regimev1.FitModelRequest) { r.ActivateSymbols = []string{"a b"} })},
	} {
		apierrtest.Field(t, tt.name, tt.field, tt.call)
	}
	list, err := c.ListModels(ctx, &regimev1.ListModelsRequest{})
	if err != nil || len(list.GetModels()) != 0 {
		t.Errorf("rejected fits stored models: %d %v", len(list.GetModels()), err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = c.FitModel(cctx, eustockFit("DAX"))
	apierrtest.Code(t, "canceled fit", codes.Canceled, func() error { return err })
}

// randomWalk returns n closes of a seeded random walk with 1% daily moves.
func randomWalk(n int, seed uint64) []float64 {
	rng := rand.New(rand.NewPCG(seed, 3))
	out := make([]float64, n)
	c := 100.0
	for i := range out {
		c *= math.Exp(rng.NormFloat64() * 0.01)
		out[i] = c
	}
	return out
}
