package metacontroller

import (
	"context"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

func newServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(DefaultConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantInvalid checks err is InvalidArgument naming field.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	st, ok := apierr.Status(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("err = %v, want InvalidArgument on %s", err, field)
	}
	var ie *apierr.InvalidError
	if !asInvalid(err, &ie) {
		t.Fatalf("err = %v, want an apierr.InvalidError", err)
	}
	for _, v := range ie.Violations {
		if v.Field == field {
			return
		}
	}
	t.Fatalf("err = %v, want a violation on %s", err, field)
}

func TestListStrategies(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	ctx := context.Background()
	first, err := s.ListStrategies(ctx, &metacontrollerv1.ListStrategiesRequest{PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetStrategies()) != 3 || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v", first)
	}
	rest, err := s.ListStrategies(ctx, &metacontrollerv1.ListStrategiesRequest{PageSize: 3, PageToken: first.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	all := append(first.GetStrategies(), rest.GetStrategies()...)
	if len(all) != 4 || rest.GetNextPageToken() != "" {
		t.Fatalf("pages: %v then %v", first, rest)
	}
	kinds := map[metacontrollerv1.StrategyKind]bool{}
	for i, st := range all {
		if int(st.GetIndex()) != i || st.GetName() != strategy.Names()[i] || st.GetDescription() == "" {
			t.Errorf("strategy %d: %v", i, st)
		}
		kinds[st.GetKind()] = true
	}
	if len(kinds) != 4 {
		t.Errorf("kinds %v", kinds)
	}
	_, err = s.ListStrategies(ctx, &metacontrollerv1.ListStrategiesRequest{PageSize: -1})
	wantInvalid(t, err, "page_size")
	_, err = s.ListStrategies(ctx, &metacontrollerv1.ListStrategiesRequest{PageToken: "garbage"})
	wantInvalid(t, err, "page_token")
}

func eustockDAX(r *metacontrollerv1.IndexRange) *metacontrollerv1.Dataset {
	ds := &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}}
	if r != nil {
		ds.Range = &metacontrollerv1.Dataset_IndexRange{IndexRange: r}
	}
	return ds
}

// A bundled column brings the same rows of the dataset's other columns for
// HRL's training; inline bars bring none.
func TestDatasetPool(t *testing.T) {
	t.Parallel()
	ds, err := readDataset("dataset", eustockDAX(&metacontrollerv1.IndexRange{Start: 100, End: 700}))
	if err != nil {
		t.Fatal(err)
	}
	series, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float64{}
	var others []string
	for _, s := range series {
		want[s.Symbol] = s.Closes()[100:700]
		if s.Symbol != "DAX" {
			others = append(others, s.Symbol)
		}
	}
	if !slices.Equal(ds.closes, want["DAX"]) || !slices.Equal(ds.poolNames, others) || len(others) != 3 || len(ds.pool) != 3 {
		t.Fatalf("closes of %d rows, pool %v of %d series", len(ds.closes), ds.poolNames, len(ds.pool))
	}
	for i, name := range ds.poolNames {
		if !slices.Equal(ds.pool[i], want[name]) {
			t.Errorf("pooled %s: not rows 100-700 of the column", name)
		}
	}
	inline, err := readDataset("dataset", &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_InlineBars{InlineBars: &metacontrollerv1.InlineBars{
		Symbol: "X", Bars: []*metacontrollerv1.Bar{{Open: 1, High: 1, Low: 1, Close: 1}, {Open: 1, High: 1, Low: 1, Close: 1}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if inline.pool != nil {
		t.Errorf("inline bars pooled %v", inline.poolNames)
	}
}

// A version has seen a day of a bundled dataset when it was trained on
// that row of any of its columns: the walk-forward check refuses it on every
// column, whether it names the dataset (pooled) or one column.
func TestTrainedOn(t *testing.T) {
	t.Parallel()
	smi, err := readDataset("dataset", &metacontrollerv1.Dataset{
		Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "SMI"}},
		Range:  &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 1000, End: 1860}},
	})
	if err != nil {
		t.Fatal(err)
	}
	early, err := readDataset("dataset", &metacontrollerv1.Dataset{
		Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "SMI"}},
		Range:  &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 0, End: 1000}},
	})
	if err != nil {
		t.Fatal(err)
	}
	inline := &dataset{name: "inline/X", closes: make([]float64, 500)}
	for _, c := range []struct {
		ds        *dataset
		trainedOn string
		start     int
		end       int
		firstTest int
		want      bool
	}{
		{smi, "eustock/SMI", 0, 1302, 1200, true},
		{smi, "eustock/DAX", 0, 1302, 1200, true},  // the same days of another column
		{smi, "eustock", 0, 1302, 1200, true},      // pooled over every column
		{smi, "eustock/DAX", 0, 1302, 1302, false}, // training ends where evaluation starts
		{smi, "eustock/DAX", 0, 900, 1200, false},
		{early, "eustock/DAX", 1302, 1860, 700, true}, // trained after the evaluated rows: it has seen their future
		{smi, "eustocks/DAX", 0, 1302, 1200, false},   // another dataset
		{smi, "ttrc/TTRC", 0, 1302, 1200, false},
		{smi, "inline/SMI", 0, 1302, 1200, false},
		{inline, "inline/X", 0, 300, 200, true},
		{inline, "inline/Y", 0, 300, 200, false},
	} {
		p := &hrl.Policy{TrainDataset: c.trainedOn, TrainStart: c.start, TrainEnd: c.end}
		if got := c.ds.trainedOn(p, c.firstTest); got != c.want {
			t.Errorf("%s rows %d-%d against %s from row %d: trainedOn %v, want %v", c.trainedOn, c.start, c.end, c.ds.name, c.firstTest, got, c.want)
		}
	}
}

func TestRunBacktestBaselines(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	resp, err := s.RunBacktest(context.Background(), &metacontrollerv1.RunBacktestRequest{
		Dataset:  eustockDAX(nil),
		Policies: []metacontrollerv1.PolicyKind{metacontrollerv1.PolicyKind_POLICY_KIND_NAIVE_ROUTER, metacontrollerv1.PolicyKind_POLICY_KIND_EQUAL_WEIGHT},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != 2 || resp.GetResults()[0].GetMetrics().GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_NAIVE_ROUTER {
		t.Fatalf("results: %v", resp.GetResults())
	}
	f := resp.GetFolds()[0]
	if f.GetTrain().GetEnd() != 1302 || f.GetTest().GetStart() != 1302 || f.GetTest().GetEnd() != 1860 {
		t.Errorf("fold %v", f)
	}
	if m := resp.GetResults()[0].GetMetrics(); m.GetBarsEvaluated() != 558 || m.GetMaxDisruption() > 1 {
		t.Errorf("naive metrics %v", m)
	}

	// Unseeded, the response names the seed it drew; sending it back
	// repeats the backtest exactly.
	if resp.GetSeed() == 0 || resp.GetHrl() != nil {
		t.Fatalf("seed %d, hrl %v: want the drawn seed and no HRL config (no HRL trained)", resp.GetSeed(), resp.GetHrl())
	}
	again, err := s.RunBacktest(context.Background(), &metacontrollerv1.RunBacktestRequest{
		Dataset:  eustockDAX(nil),
		Policies: []metacontrollerv1.PolicyKind{metacontrollerv1.PolicyKind_POLICY_KIND_NAIVE_ROUTER, metacontrollerv1.PolicyKind_POLICY_KIND_EQUAL_WEIGHT},
		Hrl:      &metacontrollerv1.HrlConfig{Seed: proto.Int64(resp.GetSeed())},
	})
	if err != nil {
		t.Fatal(err)
	}
	if again.GetSeed() != resp.GetSeed() {
		t.Errorf("seeded run reports seed %d, sent %d", again.GetSeed(), resp.GetSeed())
	}
	for i := range resp.GetResults() {
		if a, b := resp.GetResults()[i].GetMetrics(), again.GetResults()[i].GetMetrics(); !proto.Equal(a, b) {
			t.Errorf("policy %v: repeated with the reported seed, metrics differ:\n%v\n%v", a.GetPolicy(), a, b)
		}
	}
}

// every_column evaluates each column of the dataset and their equal-capital
// portfolio; the named column's results are the usual ones.
func TestRunBacktestEveryColumn(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	policies := []metacontrollerv1.PolicyKind{metacontrollerv1.PolicyKind_POLICY_KIND_NAIVE_ROUTER, metacontrollerv1.PolicyKind_POLICY_KIND_EQUAL_WEIGHT}
	ctx := context.Background()
	one, err := s.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), Policies: policies, Hrl: &metacontrollerv1.HrlConfig{Seed: proto.Int64(1)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(one.GetColumns()) != 0 || len(one.GetPortfolio()) != 0 {
		t.Fatalf("one column: columns %v, portfolio %v", one.GetColumns(), one.GetPortfolio())
	}
	all, err := s.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), Policies: policies, Hrl: &metacontrollerv1.HrlConfig{Seed: proto.Int64(1)}, EveryColumn: true})
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range all.GetColumns() {
		cols = append(cols, c.GetColumn())
	}
	if !slices.Equal(cols, []string{"DAX", "CAC", "FTSE", "SMI"}) || len(all.GetPortfolio()) != 2 {
		t.Fatalf("columns %v, %d portfolio results", cols, len(all.GetPortfolio()))
	}
	for pi := range policies {
		if !proto.Equal(all.GetResults()[pi], one.GetResults()[pi]) || !proto.Equal(all.GetColumns()[0].GetResults()[pi], one.GetResults()[pi]) {
			t.Errorf("policy %d: DAX's results differ with every_column", pi)
		}
		var churn float64
		for _, c := range all.GetColumns() {
			churn += c.GetResults()[pi].GetMetrics().GetChurnRate() / 4
		}
		m := all.GetPortfolio()[pi].GetMetrics()
		if m.GetPolicy() != policies[pi] || m.GetBarsEvaluated() != 558 || math.Abs(m.GetChurnRate()-churn) > 1e-12 {
			t.Errorf("portfolio %v: want %v over 558 bars, churn rate the columns' mean %v", m, policies[pi], churn)
		}
	}
	for name, ds := range map[string]*metacontrollerv1.Dataset{
		"one column": {Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "ttrc", Column: "TTRC"}}},
		"inline bars": {Source: &metacontrollerv1.Dataset_InlineBars{InlineBars: &metacontrollerv1.InlineBars{
			Symbol: "X", Bars: []*metacontrollerv1.Bar{{Open: 1, High: 1, Low: 1, Close: 1}, {Open: 1, High: 1, Low: 1, Close: 1}},
		}}},
	} {
		_, err := s.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{Dataset: ds, Policies: policies, EveryColumn: true})
		t.Run(name, func(t *testing.T) { wantInvalid(t, err, "every_column") })
	}
}

func TestRunBacktestHRL(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	resp, err := s.RunBacktest(context.Background(), &metacontrollerv1.RunBacktestRequest{
		Dataset:       eustockDAX(&metacontrollerv1.IndexRange{Start: 0, End: 600}),
		Hrl:           &metacontrollerv1.HrlConfig{Epochs: proto.Int32(2), Seed: proto.Int64(3), HiddenUnits: proto.Int32(4)},
		IncludeSeries: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != 4 {
		t.Fatalf("%d results", len(resp.GetResults()))
	}
	if resp.GetSeed() != 3 || resp.GetHrl().GetSeed() != 3 || resp.GetHrl().GetEpochs() != 2 || resp.GetHrl().GetHiddenUnits() != 4 {
		t.Errorf("seed %d, hrl %v: want the request's seed and hyperparameters echoed", resp.GetSeed(), resp.GetHrl())
	}
	h := resp.GetResults()[0]
	if h.GetMetrics().GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_HRL || len(h.GetSeries()) != 180 {
		t.Fatalf("hrl: %v, %d points", h.GetMetrics(), len(h.GetSeries()))
	}
	for _, p := range h.GetSeries() {
		var sum float64
		for _, w := range p.GetWeights() {
			sum += w
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Fatalf("point %d: weights sum to %v", p.GetIndex(), sum)
		}
	}
	// Blending bounds every bar's move by the blend rate.
	if md := h.GetMetrics().GetMaxDisruption(); md > 0.2+1e-12 {
		t.Errorf("max disruption %v > blend rate 0.2", md)
	}
}

func TestRunBacktestInvalid(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	ctx := context.Background()
	bundled := func(id, col string) *metacontrollerv1.Dataset {
		return &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: id, Column: col}}}
	}
	for _, tc := range []struct {
		name  string
		req   *metacontrollerv1.RunBacktestRequest
		field string
	}{
		{"no dataset", &metacontrollerv1.RunBacktestRequest{}, "dataset"},
		{"unknown dataset", &metacontrollerv1.RunBacktestRequest{Dataset: bundled("nope", "DAX")}, "dataset.bundled.dataset_id"},
		{"unknown column", &metacontrollerv1.RunBacktestRequest{Dataset: bundled("eustock", "NIKKEI")}, "dataset.bundled.column"},
		{"unknown strategy", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), Strategies: []string{"trend", "astrology"}}, "strategies"},
		{"one strategy", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), Strategies: []string{"trend"}}, "strategies"},
		{"unknown policy", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), Policies: []metacontrollerv1.PolicyKind{42}}, "policies[0]"},
		{"empty range", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(&metacontrollerv1.IndexRange{Start: 100, End: 100})}, "dataset.index_range.end"},
		{"range outside", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(&metacontrollerv1.IndexRange{Start: 0, End: 5000})}, "dataset.index_range.end"},
		{"start outside", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(&metacontrollerv1.IndexRange{Start: 3000})}, "dataset.index_range.start"},
		{"time range without times", &metacontrollerv1.RunBacktestRequest{Dataset: &metacontrollerv1.Dataset{
			Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}},
			Range:  &metacontrollerv1.Dataset_TimeRange{TimeRange: &metacontrollerv1.TimeRange{StartTime: timestamppb.Now()}}}}, "dataset.time_range"},
		{"short training", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(&metacontrollerv1.IndexRange{End: 80})}, "dataset"},
		{"bad fraction", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), WalkForward: &metacontrollerv1.WalkForward{TrainFraction: proto.Float64(1)}}, "walk_forward.train_fraction"},
		{"bad folds", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), WalkForward: &metacontrollerv1.WalkForward{Folds: proto.Int32(0)}}, "walk_forward.folds"},
		{"nan cost", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), SwitchingCostBps: proto.Float64(math.NaN())}, "switching_cost_bps"},
		{"bad blend", &metacontrollerv1.RunBacktestRequest{Dataset: eustockDAX(nil), Hrl: &metacontrollerv1.HrlConfig{BlendRate: proto.Float64(0)}}, "hrl.blend_rate"},
		{"inline one bar", &metacontrollerv1.RunBacktestRequest{Dataset: &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_InlineBars{InlineBars: &metacontrollerv1.InlineBars{
			Symbol: "X", Bars: []*metacontrollerv1.Bar{{Open: 1, High: 1, Low: 1, Close: 1}}}}}}, "dataset.inline_bars.bars"},
		{"inline bad bar", &metacontrollerv1.RunBacktestRequest{Dataset: &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_InlineBars{InlineBars: &metacontrollerv1.InlineBars{
			Symbol: "X", Bars: []*metacontrollerv1.Bar{{Open: 1, High: 1, Low: 1, Close: 1}, {Open: 1, High: 0.5, Low: 1, Close: 1}}}}}}, "dataset.inline_bars.bars[1]"},
		// The regime fit rejects a constant feature.
		{"flat series", &metacontrollerv1.RunBacktestRequest{Dataset: flatBars(400)}, "dataset"},
	} {
		_, err := s.RunBacktest(ctx, tc.req)
		t.Run(tc.name, func(t *testing.T) { wantInvalid(t, err, tc.field) })
	}
}

// flatBars is an inline dataset of n bars all at 100.
func flatBars(n int) *metacontrollerv1.Dataset {
	bars := make([]*metacontrollerv1.Bar, n)
	for i := range bars {
		bars[i] = &metacontrollerv1.Bar{Open: 100, High: 100, Low: 100, Close: 100}
	}
	return &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_InlineBars{InlineBars: &metacontrollerv1.InlineBars{Symbol: "FLAT", Bars: bars}}}
}

// A policy with the prior's parameters only (untrained).
func testPolicy(t *testing.T) *hrl.Policy {
	t.Helper()
	cfg := hrl.DefaultConfig()
	cfg.Epochs, cfg.HiddenUnits = 1, 4
	var states, rets [][]float64
	for i := range 100 {
		p := make([]float64, 4)
		p[i%4] = 1
		states = append(states, backtest.StateVector(p, 0.5, 3))
		rets = append(rets, []float64{0.001, -0.001, 0.0005, 0.0002})
	}
	p, _, err := hrl.Train(context.Background(), cfg, strategy.Names(), states, rets, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var testRegimeModel = &regimev1.Model{ModelId: "m1", Regimes: []*regimev1.Regime{
	{Index: 0, Label: "r0", Weight: 0.5, Volatility: 0.005, MeanReturn: 0.001},
	{Index: 1, Label: "r1", Weight: 0.3, Volatility: 0.01, MeanReturn: 0.002},
	{Index: 2, Label: "r2", Weight: 0.2, Volatility: 0.02, MeanReturn: -0.003},
}}

func regimeState(sym string, seq uint64, probs ...float64) *regimev1.RegimeState {
	dom := 0
	for i, p := range probs {
		if p > probs[dom] {
			dom = i
		}
	}
	return &regimev1.RegimeState{Symbol: sym, Sequence: seq, ModelId: "m1", SmoothedProbabilities: probs, DominantRegime: int32(dom), Entropy: 0.5, BarTime: timestamppb.Now()}
}

func checkWeights(t *testing.T, a *metacontrollerv1.Allocation) {
	t.Helper()
	var sum float64
	for _, w := range a.GetWeights() {
		if !(w.GetWeight() >= 0 && w.GetWeight() <= 1) {
			t.Fatalf("weight %v", w)
		}
		sum += w.GetWeight()
	}
	if len(a.GetWeights()) != 4 || math.Abs(sum-1) > 1e-9 {
		t.Fatalf("weights %v sum to %v", a.GetWeights(), sum)
	}
}

func TestAllocationFallbacks(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	ctx := context.Background()
	model := newRegimeModel(testRegimeModel, s.strats)
	// Regime model mapping: r0 and r1 rise at or below the median
	// volatility -> trend, r2 falls above it -> defensive.
	if got := model.mapping; got[0] != 0 || got[1] != 0 || got[2] != 3 {
		t.Fatalf("mapping %v", got)
	}
	_, err := s.GetAllocation(ctx, &metacontrollerv1.GetAllocationRequest{Symbol: "DAX"})
	if st, _ := apierr.Status(err); st.Code() != codes.NotFound {
		t.Fatalf("before any regime: %v, want NotFound", err)
	}
	_, err = s.GetAllocation(ctx, &metacontrollerv1.GetAllocationRequest{Symbol: "bad symbol!"})
	wantInvalid(t, err, "symbol")

	// No policy loaded: regime-proportional, and said so.
	s.onRegime(regimeState("DAX", 1, 0.6, 0.3, 0.1), model, "")
	got, err := s.GetAllocation(ctx, &metacontrollerv1.GetAllocationRequest{Symbol: "DAX"})
	if err != nil {
		t.Fatal(err)
	}
	a := got.GetAllocation()
	checkWeights(t, a)
	if !a.GetFallback() || a.GetFallbackReason() != metacontrollerv1.FallbackReason_FALLBACK_REASON_POLICY_NOT_LOADED ||
		a.GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_REGIME_PROPORTIONAL {
		t.Fatalf("no policy: %v", a)
	}
	if w := a.GetWeights(); math.Abs(w[0].GetWeight()-0.9) > 1e-12 || w[1].GetWeight() != 0 || w[2].GetWeight() != 0 || math.Abs(w[3].GetWeight()-0.1) > 1e-12 {
		t.Fatalf("proportional weights %v", w)
	}
	if a.GetRegime().GetProbabilities()[2].GetStrategy() != "defensive" {
		t.Errorf("regime input %v", a.GetRegime())
	}

	// A policy arrives: HRL, a new allocation without a new bar.
	s.setPolicy(&loadedPolicy{p: testPolicy(t), model: &metacontrollerv1.PolicyModel{ModelName: "metacontroller", Version: 1, Alias: "production"}}, "")
	a = latest(t, s, "DAX")
	checkWeights(t, a)
	if a.GetFallback() || a.GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_HRL || a.GetOption() == nil || a.GetModel().GetVersion() != 1 {
		t.Fatalf("with a policy: %v", a)
	}
	// A stale or repeated regime state changes nothing.
	seq := a.GetSequence()
	s.onRegime(regimeState("DAX", 1, 0.1, 0.1, 0.8), model, "")
	if latest(t, s, "DAX").GetSequence() != seq {
		t.Fatal("a repeated regime state made a new allocation")
	}
	s.onRegime(regimeState("DAX", 2, 0.1, 0.1, 0.8), model, "")
	b := latest(t, s, "DAX")
	checkWeights(t, b)
	if b.GetSequence() <= seq || b.GetChurn() > 0.2+1e-12 {
		t.Fatalf("next allocation: sequence %d after %d, churn %v", b.GetSequence(), seq, b.GetChurn())
	}

	// The regime stream drops: proportional from the last regime, stale.
	s.setRegimeDown(true, "regime stream: unavailable")
	c := latest(t, s, "DAX")
	if c.GetFallbackReason() != metacontrollerv1.FallbackReason_FALLBACK_REASON_REGIME_STREAM_UNAVAILABLE || !c.GetRegime().GetStale() ||
		c.GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_REGIME_PROPORTIONAL {
		t.Fatalf("regime down: %v", c)
	}
	s.setRegimeDown(false, "")
	if r := latest(t, s, "DAX"); r.GetFallback() || r.GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_HRL || r.GetSequence() <= c.GetSequence() || r.GetRegime().GetStale() {
		t.Fatalf("regime back: %v", r)
	}

	// An incompatible version falls back and says why.
	bad := testPolicy(t)
	bad.Strategies = []string{"a", "b", "c", "d"}
	s.setPolicy(&loadedPolicy{p: bad, model: &metacontrollerv1.PolicyModel{Version: 2}}, "")
	if d := latest(t, s, "DAX"); d.GetFallbackReason() != metacontrollerv1.FallbackReason_FALLBACK_REASON_POLICY_INCOMPATIBLE {
		t.Fatalf("incompatible: %v", d)
	}

	// A regime model that cannot be read: equal weights.
	s.onRegime(regimeState("SMI", 5, 0.5, 0.5), nil, "GetModel m9: unavailable")
	if e := latest(t, s, "SMI"); e.GetFallbackReason() != metacontrollerv1.FallbackReason_FALLBACK_REASON_NO_REGIME ||
		e.GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_EQUAL_WEIGHT {
		t.Fatalf("unreadable regime model: %v", e)
	}
}

func latest(t *testing.T, s *Server, sym string) *metacontrollerv1.Allocation {
	t.Helper()
	got, err := s.GetAllocation(context.Background(), &metacontrollerv1.GetAllocationRequest{Symbol: sym})
	if err != nil {
		t.Fatal(err)
	}
	return got.GetAllocation()
}

func TestWatchAllocations(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	model := newRegimeModel(testRegimeModel, s.strats)
	s.onRegime(regimeState("DAX", 1, 0.6, 0.3, 0.1), model, "")
	s.onRegime(regimeState("SMI", 2, 0.2, 0.3, 0.5), model, "")

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	metacontrollerv1.RegisterMetaControllerServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := metacontrollerv1.NewMetaControllerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	stream, err := client.WatchAllocations(ctx, &metacontrollerv1.WatchAllocationsRequest{Symbols: []string{"DAX"}})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *metacontrollerv1.WatchAllocationsResponse {
		t.Helper()
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	snap := recv()
	if snap.GetKind() != metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT || snap.GetAllocation().GetSymbol() != "DAX" {
		t.Fatalf("first message %v", snap)
	}
	end := recv()
	if end.GetKind() != metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END || end.GetSequence() < snap.GetSequence() {
		t.Fatalf("second message %v", end)
	}
	s.onRegime(regimeState("SMI", 3, 0.2, 0.3, 0.5), model, "")
	s.onRegime(regimeState("DAX", 4, 0.1, 0.1, 0.8), model, "")
	up := recv()
	if up.GetKind() != metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || up.GetAllocation().GetSymbol() != "DAX" || up.GetSequence() <= end.GetSequence() {
		t.Fatalf("update %v", up)
	}
	cancel()

	// Resume after the snapshot: exactly the DAX update, as UPDATE, no
	// snapshot.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	resumed, err := client.WatchAllocations(ctx2, &metacontrollerv1.WatchAllocationsRequest{Symbols: []string{"DAX"}, AfterSequence: end.GetSequence()})
	if err != nil {
		t.Fatal(err)
	}
	m, err := resumed.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.GetKind() != metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || m.GetSequence() != up.GetSequence() {
		t.Fatalf("resumed with %v, want update %d", m, up.GetSequence())
	}
	// Beyond the newest: OutOfRange.
	bad, err := client.WatchAllocations(ctx2, &metacontrollerv1.WatchAllocationsRequest{AfterSequence: up.GetSequence() + 1000})
	if err == nil {
		_, err = bad.Recv()
	}
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("after the newest: %v, want OutOfRange", err)
	}
}

func TestTrainPolicyInvalid(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		req   *metacontrollerv1.TrainPolicyRequest
		field string
	}{
		{"no dataset", &metacontrollerv1.TrainPolicyRequest{}, "dataset"},
		{"bad fraction", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), TrainFraction: proto.Float64(0)}, "train_fraction"},
		{"unknown strategy", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Strategies: []string{"x", "y"}}, "strategies"},
		{"bad epochs", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Hrl: &metacontrollerv1.HrlConfig{Epochs: proto.Int32(0)}}, "hrl.epochs"},
		{"bad options", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Hrl: &metacontrollerv1.HrlConfig{NumOptions: proto.Int32(17)}}, "hrl.num_options"},
		{"nan learning rate", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Hrl: &metacontrollerv1.HrlConfig{LearningRate: proto.Float64(math.NaN())}}, "hrl.learning_rate"},
		{"long request id", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), RequestId: string(make([]byte, 129))}, "request_id"},
		// The registry's naming rules, checked before training.
		{"uppercase alias", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Promote: true, PromoteAlias: "Production"}, "promote_alias"},
		{"version alias", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Promote: true, PromoteAlias: "v2"}, "promote_alias"},
		{"latest alias", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), Promote: true, PromoteAlias: "latest"}, "promote_alias"},
		{"model name with a space", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), ModelName: "my model"}, "model_name"},
		{"dot dot model name", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), ModelName: ".."}, "model_name"},
		{"long model name", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), ModelName: strings.Repeat("m", 251)}, "model_name"},
		{"blank experiment", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), ExperimentName: "  "}, "experiment_name"},
		{"experiment with a newline", &metacontrollerv1.TrainPolicyRequest{Dataset: eustockDAX(nil), ExperimentName: "a\nb"}, "experiment_name"},
	} {
		_, err := s.TrainPolicy(ctx, tc.req)
		t.Run(tc.name, func(t *testing.T) { wantInvalid(t, err, tc.field) })
	}
	// Valid, but ExperimentService is not reachable: Unavailable, nothing
	// trained.
	for _, req := range []*metacontrollerv1.TrainPolicyRequest{
		{Dataset: eustockDAX(nil)},
		{Dataset: eustockDAX(nil), ExperimentName: "Policy trainings / 2", ModelName: "hrl.policy-2_x", Promote: true, PromoteAlias: "staging-v2_1"},
	} {
		_, err := s.TrainPolicy(ctx, req)
		if st, _ := apierr.Status(err); st.Code() != codes.Unavailable {
			t.Fatalf("without a registry: %v, want Unavailable", err)
		}
	}
}
