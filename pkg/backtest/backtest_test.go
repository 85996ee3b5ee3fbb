package backtest

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

func eustock(t testing.TB, col string) []float64 {
	t.Helper()
	series, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range series {
		if s.Symbol == col {
			return s.Closes()
		}
	}
	t.Fatalf("no column %s", col)
	return nil
}

func baseConfig(closes []float64) Config {
	return Config{
		Closes: closes, Strategies: strategy.All(), Policies: []PolicyKind{NaiveRouter, RegimeProportional, EqualWeight},
		TrainFraction: 0.7, Folds: 1, SwitchingCostBps: 10, PeriodsPerYear: 252, Seed: 1, Series: true,
	}
}

func TestBaselines(t *testing.T) {
	t.Parallel()
	closes := eustock(t, "DAX")
	rep, err := Run(context.Background(), baseConfig(closes))
	if err != nil {
		t.Fatal(err)
	}
	trainEnd := int(float64(len(closes)) * 0.7)
	if f := rep.Folds[0]; f.TrainEnd != trainEnd || f.TestEnd != len(closes) {
		t.Fatalf("fold = %d..%d, want %d..%d", f.TrainEnd, f.TestEnd, trainEnd, len(closes))
	}
	for _, r := range rep.Results {
		m := r.Metrics
		if m.Bars != len(closes)-trainEnd || len(r.Series) != m.Bars {
			t.Fatalf("%s: %d bars, %d points, want %d", r.Policy, m.Bars, len(r.Series), len(closes)-trainEnd)
		}
		if r.Series[0].Index != trainEnd {
			t.Fatalf("%s: first evaluated row %d, want %d", r.Policy, r.Series[0].Index, trainEnd)
		}
		for _, p := range r.Series {
			var s float64
			for _, w := range p.Weights {
				if w < 0 || w > 1 {
					t.Fatalf("%s: weight %v", r.Policy, w)
				}
				s += w
			}
			if math.Abs(s-1) > 1e-9 {
				t.Fatalf("%s: weights sum to %v", r.Policy, s)
			}
		}
		for _, v := range []float64{m.Sharpe, m.TotalReturn, m.MaxDrawdown, m.ChurnRate, m.MaxDisruption, m.TurnoverCost} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("%s: metrics %+v", r.Policy, m)
			}
		}
		if math.Abs(m.TurnoverCost-m.ChurnRate*float64(m.Bars)*0.001) > 1e-12 {
			t.Errorf("%s: turnover cost %v, churn rate %v", r.Policy, m.TurnoverCost, m.ChurnRate)
		}
	}
	if eq := rep.Results[2].Metrics; eq.ChurnRate != 0 || eq.MaxDisruption != 0 {
		t.Errorf("equal weight churns: %+v", eq)
	}
	if nv := rep.Results[0].Metrics; nv.MaxDisruption != 0 && nv.MaxDisruption != 1 {
		t.Errorf("naive router max disruption %v, want 0 or 1", nv.MaxDisruption)
	}
}

// The evaluated weights of a bar never depend on later bars.
func TestWalkForwardIsCausal(t *testing.T) {
	t.Parallel()
	closes := eustock(t, "SMI")[:1000]
	prep, err := Prepare(context.Background(), closes, 700, strategy.All(), 1, DefaultSmoothing())
	if err != nil {
		t.Fatal(err)
	}
	short, err := Prepare(context.Background(), closes[:850], 700, strategy.All(), 1, DefaultSmoothing())
	if err != nil {
		t.Fatal(err)
	}
	for _, pk := range []PolicyKind{NaiveRouter, RegimeProportional} {
		a, _ := prep.Weights(pk, nil, 4)
		b, _ := short.Weights(pk, nil, 4)
		for t2 := range b {
			for i := range b[t2] {
				if a[t2][i] != b[t2][i] {
					t.Fatalf("%s: weight %d,%d differs with later bars", pk, t2, i)
				}
			}
		}
	}
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	closes := eustock(t, "DAX")
	cases := map[string]func(*Config){
		"one strategy":   func(c *Config) { c.Strategies = c.Strategies[:1] },
		"fraction 0":     func(c *Config) { c.TrainFraction = 0 },
		"fraction 1":     func(c *Config) { c.TrainFraction = 1 },
		"no policies":    func(c *Config) { c.Policies = nil },
		"short training": func(c *Config) { c.Closes = closes[:100] },
		"too many folds": func(c *Config) { c.Closes = closes[:200]; c.Folds = 100 },
		"hrl untrained":  func(c *Config) { c.Policies = []PolicyKind{HRL} },
		"bad price":      func(c *Config) { c.Closes = append([]float64{-1}, closes...) },
	}
	for name, mod := range cases {
		cfg := baseConfig(closes)
		mod(&cfg)
		if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestFolds(t *testing.T) {
	t.Parallel()
	closes := eustock(t, "FTSE")
	cfg := baseConfig(closes)
	cfg.Folds = 3
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Folds) != 3 {
		t.Fatalf("%d folds", len(rep.Folds))
	}
	prevEnd := rep.Folds[0].TrainEnd
	for i, f := range rep.Folds {
		// Expanding window: each fold trains on every row before its test
		// segment, and the segments tile the evaluated rows.
		if f.TrainEnd != prevEnd || f.TestEnd <= f.TrainEnd {
			t.Fatalf("fold %d: %+v after %d", i, f, prevEnd)
		}
		prevEnd = f.TestEnd
	}
	if prevEnd != len(closes) {
		t.Fatalf("folds end at %d, want %d", prevEnd, len(closes))
	}
	if m := rep.Results[0].Metrics; m.Bars != len(closes)-rep.Folds[0].TrainEnd {
		t.Fatalf("%d bars evaluated", m.Bars)
	}
}

type fixedPolicy struct{}

func (fixedPolicy) NewRunner() Runner { return fixedRunner{} }

type fixedRunner struct{}

func (fixedRunner) Step(_, w, target []float64) error {
	Equal(w)
	Equal(target)
	return nil
}

// Pooled series add their training rows, and only those, to the HRL
// training data.
func TestPool(t *testing.T) {
	t.Parallel()
	dax, smi := eustock(t, "DAX"), eustock(t, "SMI")
	var seen []int
	cfg := baseConfig(dax)
	cfg.Policies = []PolicyKind{HRL}
	cfg.TrainHRL = func(_ context.Context, states, returns [][]float64) (Policy, error) {
		seen = append(seen, len(states))
		return fixedPolicy{}, nil
	}
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Pool = [][]float64{smi}
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[1] != 2*seen[0] {
		t.Fatalf("training bars without and with a pooled series: %v, want the second twice the first", seen)
	}
	cfg.Pool = [][]float64{smi[:100]}
	if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short pooled series: err = %v, want ErrInvalid", err)
	}
}

// A regime model fitted elsewhere and passed in Config.Regime gives the
// same backtest as fitting it per fold, and it is what every fold uses.
func TestFixedRegimeModel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	closes := eustock(t, "SMI")
	cfg := baseConfig(closes)
	want, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	trainEnd := want.Folds[0].TrainEnd
	fitted, err := FitRegimes(ctx, closes[:trainEnd], cfg.Seed)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	fixed, err := NewRegimeModel(fitted.Regimes, func(ctx context.Context, c []float64) ([][]float64, error) {
		calls++
		ll, err := fitted.logLikelihoods(ctx, c)
		// A per-bar constant must not matter: the filter normalises.
		for t, row := range ll {
			for j := range row {
				row[j] -= float64(t % 7)
			}
		}
		return ll, err
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Regime, cfg.Seed = fixed, 99 // the seed would only matter to a fit
	got, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("classifier called %d times for one fold, want 1", calls)
	}
	for i := range want.Results {
		w, g := want.Results[i].Metrics, got.Results[i].Metrics
		if math.Abs(w.Sharpe-g.Sharpe) > 1e-9 || math.Abs(w.TotalReturn-g.TotalReturn) > 1e-9 || w.ChurnRate != g.ChurnRate {
			t.Errorf("%s: fixed model %+v, fitted %+v", want.Results[i].Policy, g, w)
		}
	}

	// A classifier that answers for the wrong number of regimes or bars is
	// an error, not a silent misalignment.
	bad, err := NewRegimeModel(fitted.Regimes, func(_ context.Context, c []float64) ([][]float64, error) {
		return make([][]float64, len(c)-1), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Regime = bad
	if _, err := Run(ctx, cfg); err == nil {
		t.Error("a classifier short of one bar: no error")
	}
	if _, err := NewRegimeModel(nil, fitted.logLikelihoods); !errors.Is(err, ErrInvalid) {
		t.Errorf("no regimes: %v, want ErrInvalid", err)
	}
}

// RunPortfolio evaluates every series as Run evaluates one, trains HRL once
// per fold on the same rows Run pools, and combines the series into an
// equal-capital portfolio bar by bar.
func TestRunPortfolio(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dax, smi, cac := eustock(t, "DAX"), eustock(t, "SMI"), eustock(t, "CAC")
	cfg := baseConfig(dax)
	cfg.Policies = append(cfg.Policies, HRL)
	cfg.Pool = [][]float64{smi, cac}
	cfg.Folds = 2
	var trained [][][]float64
	cfg.TrainHRL = func(_ context.Context, states, _ [][]float64) (Policy, error) {
		trained = append(trained, states)
		return fixedPolicy{}, nil
	}
	want, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	runStates := trained
	trained = nil
	got, err := RunPortfolio(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(trained) != 2 || len(runStates) != 2 {
		t.Fatalf("HRL trained %d times for 2 folds (Run: %d), want once per fold", len(trained), len(runStates))
	}
	for f := range trained {
		if !equalRows(trained[f], runStates[f]) {
			t.Fatalf("fold %d: RunPortfolio trained HRL on %d states, not the %d Run pools", f, len(trained[f]), len(runStates[f]))
		}
	}
	if len(got.Series) != 3 || len(got.Combined) != len(cfg.Policies) {
		t.Fatalf("%d series reports and %d combined results", len(got.Series), len(got.Combined))
	}
	// Each series' report is its own backtest.
	for s, closes := range [][]float64{dax, smi, cac} {
		one := cfg
		one.Closes, one.Pool = closes, nil
		w, err := Run(ctx, one)
		if err != nil {
			t.Fatal(err)
		}
		if s == 0 {
			w = want
		}
		for pi := range cfg.Policies {
			if g, w := got.Series[s].Results[pi].Metrics, w.Results[pi].Metrics; g.Sharpe != w.Sharpe || g.ChurnRate != w.ChurnRate || g.TotalReturn != w.TotalReturn {
				t.Errorf("series %d %s: %+v, want %+v", s, cfg.Policies[pi], g, w)
			}
		}
	}
	// The portfolio: each bar the mean of the series' net returns and churns.
	for pi, c := range got.Combined {
		if c.Policy != cfg.Policies[pi] || len(c.Series) != c.Metrics.Bars || c.Metrics.Bars != want.Results[pi].Metrics.Bars {
			t.Fatalf("combined %d: policy %s, %d points, %d bars", pi, c.Policy, len(c.Series), c.Metrics.Bars)
		}
		var churn float64
		for i, p := range c.Series {
			var net, ch float64
			for _, rep := range got.Series {
				q := rep.Results[pi].Series[i]
				if q.Index != p.Index {
					t.Fatalf("bar %d: series at row %d, portfolio at %d", i, q.Index, p.Index)
				}
				net += q.NetReturn / 3
				ch += q.Churn / 3
			}
			if math.Abs(p.NetReturn-net) > 1e-15 || math.Abs(p.Churn-ch) > 1e-15 {
				t.Fatalf("%s bar %d: net %v churn %v, want %v and %v", c.Policy, i, p.NetReturn, p.Churn, net, ch)
			}
			churn += ch
		}
		if m := c.Metrics; math.Abs(m.ChurnRate-churn/float64(len(c.Series))) > 1e-12 || math.Abs(m.TotalReturn-(c.Series[len(c.Series)-1].Equity-1)) > 1e-12 {
			t.Errorf("%s: churn rate %v, total return %v from the bars", c.Policy, m.ChurnRate, m.TotalReturn)
		}
	}
	// The naive router switches whole series, but not all at once.
	naive := got.Combined[0].Metrics
	if naive.MaxDisruption >= 1 || naive.MaxDisruption < 1.0/3-1e-12 {
		t.Errorf("portfolio naive max disruption %v, want in [1/3, 1)", naive.MaxDisruption)
	}
}

func equalRows(a, b [][]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if a[i][j] != b[i][j] {
				return false
			}
		}
	}
	return true
}
