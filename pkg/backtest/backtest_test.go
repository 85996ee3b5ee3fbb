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
		checkCost(t, closes, r)
	}
	if eq := rep.Results[2].Metrics; eq.ChurnRate != 0 || eq.MaxDisruption != 0 {
		t.Errorf("equal weight churns: %+v", eq)
	}
	// Its strategies trade, so it pays.
	if eq := rep.Results[2].Metrics; !(eq.TurnoverCost > 0.01) {
		t.Errorf("equal weight turnover cost %v, want its strategies' trades charged", eq.TurnoverCost)
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
		// A constant feature: the mixture fit rejects the window.
		"flat series":     func(c *Config) { c.Closes = degenerate(400, 0) },
		"constant growth": func(c *Config) { c.Closes = degenerate(400, 0.001) },
	}
	for name, mod := range cases {
		cfg := baseConfig(closes)
		mod(&cfg)
		if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

// degenerate is n closes growing by a constant rate from 100.
func degenerate(n int, rate float64) []float64 {
	c := make([]float64, n)
	for i := range c {
		c[i] = 100 * math.Pow(1+rate, float64(i))
	}
	return c
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
	// The exposure carries over from fold to fold.
	for _, r := range rep.Results {
		checkCost(t, closes, r)
	}
}

// checkCost checks a result's bars against baseConfig's cost model
// recomputed from the strategies' positions: each bar after the first
// trades the change of the net exposure, its net return is the gross one
// less 10 bps of that, and the turnover cost is their sum.
func checkCost(t *testing.T, closes []float64, r Result) {
	t.Helper()
	pos := strategy.PositionMatrix(strategy.All(), closes)
	rets := strategy.ReturnMatrix(strategy.All(), closes)
	exposure := func(p Point) float64 {
		var e float64
		for i, w := range p.Weights {
			e += w * pos[p.Index-1][i]
		}
		return e
	}
	var total float64
	for k, p := range r.Series {
		total += 0.001 * p.Traded
		var gross float64
		for i, w := range p.Weights {
			gross += w * rets[p.Index][i]
		}
		if math.Abs(p.NetReturn-(gross-0.001*p.Traded)) > 1e-15 {
			t.Fatalf("%s row %d: net return %v, gross %v, traded %v", r.Policy, p.Index, p.NetReturn, gross, p.Traded)
		}
		if k == 0 {
			continue
		}
		if want := math.Abs(exposure(p) - exposure(r.Series[k-1])); math.Abs(p.Traded-want) > 1e-12 {
			t.Fatalf("%s row %d: traded %v, the exposure changed by %v", r.Policy, p.Index, p.Traded, want)
		}
	}
	if math.Abs(r.Metrics.TurnoverCost-total) > 1e-12 {
		t.Errorf("%s: turnover cost %v, charged %v", r.Policy, r.Metrics.TurnoverCost, total)
	}
}

// scriptedPolicy serves weights[t] at bar t.
type scriptedPolicy [][]float64

func (p scriptedPolicy) NewRunner() Runner { return &scriptedRunner{weights: p} }

type scriptedRunner struct {
	weights [][]float64
	t       int
}

func (r *scriptedRunner) Step(_, w, target []float64) error {
	copy(w, r.weights[r.t])
	copy(target, r.weights[r.t])
	r.t++
	return nil
}

// The cost is charged on the change of the net exposure to the instrument,
// sum_i w_i * position_i, not on the churn of the weights: hand-computed
// cases of two strategies on a price rising 1% every bar, 10 bps.
func TestTradingCost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// weights[t] and positions[t] are decided at bar t; rows 1 to
		// len-2 are evaluated (they earn bars 2 to len-1).
		weights, positions [][]float64
		// traded is the exposure traded at each evaluated row, churn the
		// churns' sum.
		traded []float64
		churn  float64
	}{
		{
			name:      "weight moves between strategies holding the same position",
			weights:   [][]float64{{1, 0}, {0, 1}, {0, 1}},
			positions: [][]float64{{1, 1}, {1, 1}, {1, 1}},
			traded:    []float64{0}, churn: 1,
		},
		{
			name:      "a strategy flips under constant weights",
			weights:   [][]float64{{0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}},
			positions: [][]float64{{1, 1}, {-1, 1}, {-1, 1}},
			traded:    []float64{2 * 0.5}, churn: 0,
		},
		{
			name:      "weight moves from a long strategy to a short one",
			weights:   [][]float64{{1, 0}, {0, 1}, {0, 1}},
			positions: [][]float64{{1, -1}, {1, -1}, {1, -1}},
			traded:    []float64{2}, churn: 1,
		},
		{
			name:      "a strategy re-sizes under equal weights",
			weights:   [][]float64{{0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}},
			positions: [][]float64{{0.2, 1}, {0.6, 1}, {0.6, 1}},
			traded:    []float64{0.5 * 0.4}, churn: 0,
		},
		{
			name:      "several bars",
			weights:   [][]float64{{1, 0}, {0, 1}, {0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}},
			positions: [][]float64{{1, 1}, {1, 1}, {1, 1}, {-1, 1}, {-1, 1}, {-1, 1}},
			traded:    []float64{0, 0, 1, 0}, churn: 1 + 0.5,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := len(tc.weights)
			prep := &Prepared{Filtered: &Filtered{Probs: make([][]float64, n)}, States: make([][]float64, n)}
			rets := make([][]float64, n)
			rets[0] = []float64{0, 0}
			for i := range n {
				prep.Filtered.Probs[i], prep.States[i] = []float64{1}, []float64{0}
				if i > 0 {
					rets[i] = []float64{0.01 * tc.positions[i-1][0], 0.01 * tc.positions[i-1][1]}
				}
			}
			m, err := prep.Evaluate(HRL, scriptedPolicy(tc.weights), rets, tc.positions, 2, n, 10, 252)
			if err != nil {
				t.Fatal(err)
			}
			var cost float64
			equity := 1.0
			for k, traded := range tc.traded {
				e := Exposure(tc.weights[k+1], tc.positions[k+1])
				equity *= 1 + 0.01*e - 0.001*traded
				cost += 0.001 * traded
			}
			if m.Bars != n-2 || math.Abs(m.TurnoverCost-cost) > 1e-15 || math.Abs(m.TotalReturn-(equity-1)) > 1e-15 ||
				math.Abs(m.ChurnRate*float64(m.Bars)-tc.churn) > 1e-15 {
				t.Errorf("%d bars: turnover cost %v, total return %v, churn %v; want %d, %v, %v and %v",
					m.Bars, m.TurnoverCost, m.TotalReturn, m.ChurnRate*float64(m.Bars), n-2, cost, equity-1, tc.churn)
			}
		})
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
