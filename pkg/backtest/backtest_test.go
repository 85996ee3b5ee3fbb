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
