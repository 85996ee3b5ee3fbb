// Package backtest evaluates allocation policies over a price series,
// walk-forward: models (the regime mixture and, for HRL, the policy) are
// fitted on a training window and evaluated only on the bars after it.
//
// Timing: the weights w_t are decided at the close of bar t from bars up to
// t; the portfolio's return over bar t+1 is sum_i w_t,i * r_t+1,i minus the
// trading cost of bar t's close, where r_t+1,i is strategy i's return over
// bar t+1 (pkg/strategy). A policy runs causally from the first bar of the
// range, so its state at the first evaluated bar is what it would have been
// live; only bars after the training window count in the metrics.
//
// Cost: every evaluated series is one instrument, and every strategy holds
// a position in it (pkg/strategy), so the portfolio holds the net exposure
// e_t = sum_i w_t,i * p_t,i over bar t+1, where p_t,i is strategy i's
// position decided at bar t. At bar t's close it trades |e_t - e_t-1| of
// capital (the drift of the exposure with the price over the bar is
// ignored) and is charged cost * |e_t - e_t-1|, cost being
// Config.SwitchingCostBps / 10000. So a strategy's own trades are charged
// (trend following flipping from long to short under a constant weight w
// trades 2w), and moving weight between strategies that hold the same
// position is free. Churn (the change of the weights) is an allocation
// stability metric, not a cost.
package backtest

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/quantmesh/quantmesh/pkg/dpgmm"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// PolicyKind is an allocation policy (the contract's PolicyKind, same
// numbering).
type PolicyKind int

// Policies.
const (
	HRL                PolicyKind = 1
	NaiveRouter        PolicyKind = 2
	RegimeProportional PolicyKind = 3
	EqualWeight        PolicyKind = 4
)

// AllPolicies lists the policies in PolicyKind order.
var AllPolicies = []PolicyKind{HRL, NaiveRouter, RegimeProportional, EqualWeight}

func (k PolicyKind) String() string {
	switch k {
	case HRL:
		return "hrl"
	case NaiveRouter:
		return "naive"
	case RegimeProportional:
		return "proportional"
	case EqualWeight:
		return "equal"
	}
	return fmt.Sprintf("policy_%d", int(k))
}

// ParsePolicy parses hrl, naive, proportional or equal.
func ParsePolicy(s string) (PolicyKind, bool) {
	for _, k := range AllPolicies {
		if k.String() == s {
			return k, true
		}
	}
	return 0, false
}

// Runner is a trained allocation policy running over one series, bar by
// bar. Step receives the bar's state vector (StateVector) and writes the
// weights served (each in [0, 1], summing to 1) and the policy's target
// before blending.
type Runner interface {
	Step(state, weights, target []float64) error
}

// Policy is a trained policy that can run over series.
type Policy interface {
	NewRunner() Runner
}

// Trainer trains a policy on a training window: states[t] is the state
// vector of bar t and returns[t] the strategies' returns over bar t+1
// (both the same length).
type Trainer func(ctx context.Context, states, returns [][]float64) (Policy, error)

// Config is a backtest.
type Config struct {
	// Closes is the range's closing prices, oldest first.
	Closes []float64
	// Strategies to allocate across, at least 2.
	Strategies []strategy.Strategy
	// Policies to evaluate.
	Policies []PolicyKind
	// TrainFraction is the share of the range in the first training
	// window, in (0, 1).
	TrainFraction float64
	// Folds is the number of test segments (expanding window), >= 1.
	Folds int
	// SwitchingCostBps is the trading cost in basis points of the capital
	// traded: each bar is charged SwitchingCostBps / 10000 times the change
	// of the portfolio's net exposure to the instrument (see the package
	// comment), not times the churn of the weights. (HRL training, in
	// pkg/hrl, has its own objective, which charges it per unit of churn.)
	SwitchingCostBps float64
	// PeriodsPerYear annualises Sharpe and volatility.
	PeriodsPerYear int
	// Seed seeds the regime fits.
	Seed int64
	// Regime, when set, is the regime model of every fold (and of the
	// pooled series) instead of one fitted on each fold's training window:
	// a model fitted elsewhere (NewRegimeModel). The caller makes sure it
	// was not fitted on evaluated rows.
	Regime *RegimeModel
	// Smoothing is the forward filter's; DefaultSmoothing when zero.
	Smoothing Smoothing
	// HRLPolicy, when set, is evaluated as-is on every fold; otherwise
	// TrainHRL trains one per fold. One of them is needed for HRL.
	HRLPolicy Policy
	TrainHRL  Trainer
	// Series asks for per-bar detail.
	Series bool
	// Pool holds other price series aligned row by row with Closes (same
	// length, same bar times). A fresh HRL policy is trained on each
	// fold's training rows of Closes and of every pooled series (each
	// with its own regime model fitted on those rows), so it sees more
	// market history without ever seeing an evaluated row. Only Closes is
	// evaluated.
	Pool [][]float64
}

// Fold is one training window and the test segment after it, as row
// indices into the range: [0, TrainEnd) trained, [TrainEnd, TestEnd)
// evaluated.
type Fold struct {
	TrainEnd, TestEnd int
	Regimes           []Regime
	Mapping           []int
}

// Point is one evaluated bar of a policy.
type Point struct {
	// Index is the row of the bar whose return this is.
	Index int
	// Weights were decided at the close of the previous bar and earned
	// this bar's return.
	Weights   []float64
	NetReturn float64
	Equity    float64
	Churn     float64
	// Traded is the change of net exposure at the previous bar's close,
	// |e_t - e_t-1| (see the package comment); NetReturn is net of cost *
	// Traded.
	Traded float64
}

// Result is one policy's backtest.
type Result struct {
	Policy  PolicyKind
	Metrics Metrics
	Series  []Point
}

// Report is a backtest's outcome.
type Report struct {
	Results []Result
	Folds   []Fold
}

// Input errors.
var (
	ErrInvalid = errors.New("invalid backtest")
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Splits returns the folds' [TrainEnd, TestEnd) boundaries of n rows.
func Splits(n int, trainFraction float64, folds int) ([][2]int, error) {
	if !(trainFraction > 0 && trainFraction < 1) {
		return nil, invalid("train fraction %v: must be in (0, 1)", trainFraction)
	}
	if folds < 1 {
		return nil, invalid("folds %d: must be at least 1", folds)
	}
	trainEnd := int(math.Floor(float64(n) * trainFraction))
	test := n - trainEnd
	if trainEnd < 2 || test < folds {
		return nil, invalid("%d rows split %v: %d training and %d test rows, need at least 2 and %d", n, trainFraction, trainEnd, test, folds)
	}
	out := make([][2]int, folds)
	seg := test / folds
	for k := range out {
		start := trainEnd + k*seg
		end := start + seg
		if k == folds-1 {
			end = n
		}
		out[k] = [2]int{start, end}
	}
	return out, nil
}

// Run runs a backtest of cfg.Closes.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	p, err := run(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	return p.Series[0], nil
}

// Portfolio is a backtest of several aligned series at once.
type Portfolio struct {
	// Series holds each series' own backtest: Config.Closes first, then
	// every series of Config.Pool in order.
	Series []*Report
	// Combined holds, per policy (in Config.Policies order), the portfolio
	// that puts equal capital behind each series and rebalances it every
	// bar: its net return of a bar is the mean of the series' net returns,
	// its churn the mean of their churns (the share of all capital that
	// moves, so a switch in one of four series is a churn of a quarter),
	// its traded exposure and cost the mean of theirs (each series is its
	// own instrument: exposures to different series do not net), and its
	// mean weights the mean of theirs.
	Combined []Result
}

// RunPortfolio backtests cfg.Closes and every series of cfg.Pool, each on
// its own rows with its own regime model, as Run does cfg.Closes. Per fold,
// HRL is trained once, on the training rows of every series (as Run trains
// it with a Pool), and that one policy is evaluated on each series.
func RunPortfolio(ctx context.Context, cfg Config) (*Portfolio, error) {
	return run(ctx, cfg, true)
}

type accumulator struct {
	net, churn, traded []float64
	weights            [][]float64
	index              []int
	// prev and prevExposure are the weights and the net exposure decided
	// at the bar before the next one to add.
	prev         []float64
	prevExposure float64
}

func run(ctx context.Context, cfg Config, portfolio bool) (*Portfolio, error) {
	if len(cfg.Strategies) < 2 {
		return nil, invalid("%d strategies: need at least 2", len(cfg.Strategies))
	}
	if len(cfg.Policies) == 0 {
		return nil, invalid("no policies")
	}
	for _, c := range cfg.Closes {
		if !(c > 0) || math.IsInf(c, 0) {
			return nil, invalid("close %v: prices must be positive and finite", c)
		}
	}
	if cfg.PeriodsPerYear < 1 {
		return nil, invalid("periods per year %d: must be at least 1", cfg.PeriodsPerYear)
	}
	if cfg.Smoothing == (Smoothing{}) {
		cfg.Smoothing = DefaultSmoothing()
	}
	splits, err := Splits(len(cfg.Closes), cfg.TrainFraction, cfg.Folds)
	if err != nil {
		return nil, err
	}
	for i, p := range cfg.Pool {
		if len(p) != len(cfg.Closes) {
			return nil, invalid("pooled series %d has %d rows, the evaluated one %d", i, len(p), len(cfg.Closes))
		}
		for _, c := range p {
			if !(c > 0) || math.IsInf(c, 0) {
				return nil, invalid("pooled series %d: close %v: prices must be positive and finite", i, c)
			}
		}
	}
	for _, p := range cfg.Policies {
		if p == HRL && cfg.HRLPolicy == nil && cfg.TrainHRL == nil {
			return nil, invalid("HRL needs a policy or a trainer")
		}
	}
	evaluated := [][]float64{cfg.Closes}
	if portfolio {
		evaluated = append(evaluated, cfg.Pool...)
	}
	n := len(cfg.Strategies)
	cost := cfg.SwitchingCostBps / 10000
	out := &Portfolio{Series: make([]*Report, len(evaluated))}
	rets := make([][][]float64, len(evaluated))
	pos := make([][][]float64, len(evaluated))
	acc := make([][]accumulator, len(evaluated))
	for s, closes := range evaluated {
		rets[s], pos[s] = strategy.Matrices(cfg.Strategies, closes)
		out.Series[s] = &Report{Results: make([]Result, len(cfg.Policies))}
		acc[s] = make([]accumulator, len(cfg.Policies))
		for i := range acc[s] {
			out.Series[s].Results[i].Policy = cfg.Policies[i]
		}
	}
	preps := make([]*Prepared, len(evaluated))
	for _, sp := range splits {
		trainEnd, testEnd := sp[0], sp[1]
		for s, closes := range evaluated {
			if preps[s], err = cfg.prepare(ctx, closes[:testEnd], trainEnd); err != nil {
				if s > 0 {
					err = fmt.Errorf("pooled series %d: %w", s-1, err)
				}
				return nil, err
			}
			out.Series[s].Folds = append(out.Series[s].Folds, Fold{TrainEnd: trainEnd, TestEnd: testEnd, Regimes: preps[s].Model.Regimes, Mapping: preps[s].Mapping})
		}
		for pi, pk := range cfg.Policies {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			var hrl Policy
			if pk == HRL {
				if hrl, err = cfg.foldHRL(ctx, preps, rets, trainEnd); err != nil {
					return nil, err
				}
			}
			for s, prep := range preps {
				W, err := prep.Weights(pk, hrl, n)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", pk, err)
				}
				acc[s][pi].add(W, rets[s], pos[s], trainEnd, testEnd, cost)
			}
		}
	}
	for s := range evaluated {
		for pi := range cfg.Policies {
			a := &acc[s][pi]
			r := &out.Series[s].Results[pi]
			r.Metrics = compute(a, cost, cfg.PeriodsPerYear)
			if cfg.Series {
				r.Series = a.points()
			}
		}
	}
	if portfolio {
		for pi, pk := range cfg.Policies {
			c := combine(acc, pi)
			r := Result{Policy: pk, Metrics: compute(c, cost, cfg.PeriodsPerYear)}
			if cfg.Series {
				r.Series = c.points()
			}
			out.Combined = append(out.Combined, r)
		}
	}
	return out, nil
}

// foldHRL is the fold's HRL policy: the fixed one, or one trained on the
// fold's training rows of the evaluated series (and of the pooled ones).
func (cfg Config) foldHRL(ctx context.Context, preps []*Prepared, rets [][][]float64, trainEnd int) (Policy, error) {
	if cfg.HRLPolicy != nil {
		return cfg.HRLPolicy, nil
	}
	var states, next [][]float64
	for s, prep := range preps {
		st, nx := prep.TrainingData(rets[s], trainEnd)
		states, next = append(states, st...), append(next, nx...)
	}
	if len(preps) == 1 {
		ps, pn, err := PooledTrainingData(ctx, cfg, trainEnd)
		if err != nil {
			return nil, err
		}
		states, next = append(states, ps...), append(next, pn...)
	}
	return cfg.TrainHRL(ctx, states, next)
}

// add accumulates the evaluated bars of one fold: the weights decided at
// bars trainEnd-1 to testEnd-2 earn the next bar's returns, net of the cost
// of the exposure traded at that bar's close (pos is
// strategy.PositionMatrix of the series, rets its ReturnMatrix).
func (a *accumulator) add(W, rets, pos [][]float64, trainEnd, testEnd int, cost float64) {
	if a.prev == nil {
		a.prev = W[trainEnd-2]
		a.prevExposure = Exposure(a.prev, pos[trainEnd-2])
	}
	for t := trainEnd - 1; t < testEnd-1; t++ {
		w := W[t]
		e := Exposure(w, pos[t])
		traded := math.Abs(e - a.prevExposure)
		var r float64
		for i, x := range w {
			r += x * rets[t+1][i]
		}
		a.net = append(a.net, r-cost*traded)
		a.churn = append(a.churn, Churn(w, a.prev))
		a.traded = append(a.traded, traded)
		a.weights = append(a.weights, w)
		a.index = append(a.index, t+1)
		a.prev, a.prevExposure = w, e
	}
}

// Exposure is the net position in the instrument of a portfolio holding
// weights w of strategies holding positions pos.
func Exposure(w, pos []float64) float64 {
	var e float64
	for i, x := range w {
		e += x * pos[i]
	}
	return e
}

func (a *accumulator) points() []Point {
	pts := make([]Point, len(a.net))
	equity := 1.0
	for i, r := range a.net {
		equity *= 1 + r
		pts[i] = Point{Index: a.index[i], Weights: a.weights[i], NetReturn: r, Equity: equity, Churn: a.churn[i], Traded: a.traded[i]}
	}
	return pts
}

// combine is policy pi's equal-capital portfolio of every series'
// accumulated bars (the series share their rows).
func combine(acc [][]accumulator, pi int) *accumulator {
	first := &acc[0][pi]
	k := float64(len(acc))
	c := &accumulator{
		net: make([]float64, len(first.net)), churn: make([]float64, len(first.net)), traded: make([]float64, len(first.net)),
		weights: make([][]float64, len(first.net)), index: first.index,
	}
	for t := range c.net {
		c.weights[t] = make([]float64, len(first.weights[t]))
		for s := range acc {
			a := &acc[s][pi]
			c.net[t] += a.net[t] / k
			c.churn[t] += a.churn[t] / k
			c.traded[t] += a.traded[t] / k
			for i, w := range a.weights[t] {
				c.weights[t][i] += w / k
			}
		}
	}
	return c
}

// Prepared is a regime model fitted on a training window and the filtered
// regime state of every bar of a series.
type Prepared struct {
	Model    *RegimeModel
	Filtered *Filtered
	Mapping  []int
	// States[t] is bar t's state vector (StateVector); nil during the
	// warm-up.
	States [][]float64
}

// prepare is Prepare with the configured regime model, or PrepareWith
// with the fixed one.
func (cfg Config) prepare(ctx context.Context, closes []float64, trainEnd int) (*Prepared, error) {
	if cfg.Regime != nil {
		return PrepareWith(ctx, closes, cfg.Regime, cfg.Strategies, cfg.Smoothing)
	}
	return Prepare(ctx, closes, trainEnd, cfg.Strategies, cfg.Seed, cfg.Smoothing)
}

// Prepare fits the regime model on closes[:trainEnd] and filters every bar
// of closes.
func Prepare(ctx context.Context, closes []float64, trainEnd int, strats []strategy.Strategy, seed int64, sm Smoothing) (*Prepared, error) {
	m, err := FitRegimes(ctx, closes[:trainEnd], seed)
	if err != nil {
		// The mixture rejects a degenerate window (a constant feature, as
		// in a flat or constant-growth series): the caller's data.
		if errors.Is(err, ErrTooShort) || errors.Is(err, dpgmm.ErrInvalidInput) {
			return nil, invalid("%v", err)
		}
		return nil, err
	}
	return PrepareWith(ctx, closes, m, strats, sm)
}

// PrepareWith filters every bar of closes with a regime model fitted
// beforehand.
func PrepareWith(ctx context.Context, closes []float64, m *RegimeModel, strats []strategy.Strategy, sm Smoothing) (*Prepared, error) {
	f, err := m.Filter(ctx, closes, sm)
	if err != nil {
		return nil, err
	}
	p := &Prepared{Model: m, Filtered: f, Mapping: RegimeStrategies(m.Regimes, strats), States: make([][]float64, len(closes))}
	prop := make([]float64, len(strats))
	for t, probs := range f.Probs {
		if probs == nil {
			continue
		}
		ProportionalWeights(probs, p.Mapping, prop)
		p.States[t] = StateVector(prop, f.Entropy[t], len(probs))
	}
	return p, nil
}

// StateDim is the length of a state vector for n strategies.
func StateDim(n int) int { return n + 1 }

// StateVector is what the HRL policy sees of a bar: the regime-proportional
// weights of the strategies, then the regime entropy divided by its maximum
// ln(regimes) (0 with one regime). (Adding the regime features themselves
// was tried and made held-out results worse: the policy overfitted them.)
func StateVector(proportional []float64, entropy float64, regimes int) []float64 {
	out := make([]float64, 0, len(proportional)+1)
	out = append(out, proportional...)
	h := 0.0
	if regimes > 1 {
		h = entropy / math.Log(float64(regimes))
	}
	return append(out, h)
}

// TrainingData returns the state vectors of the training bars after the
// warm-up and, beside each, the strategies' returns over the next bar.
func (p *Prepared) TrainingData(rets [][]float64, trainEnd int) (states, next [][]float64) {
	for t := 0; t < trainEnd-1; t++ {
		if p.States[t] == nil {
			continue
		}
		states = append(states, p.States[t])
		next = append(next, rets[t+1])
	}
	return states, next
}

// Weights runs a policy over every bar and returns the weights decided at
// each; equal weights during the regime warm-up.
func (p *Prepared) Weights(pk PolicyKind, hrl Policy, n int) ([][]float64, error) {
	T := len(p.States)
	flat := make([]float64, T*n)
	W := make([][]float64, T)
	var run Runner
	if pk == HRL {
		run = hrl.NewRunner()
	}
	target := make([]float64, n)
	for t := range W {
		w := flat[t*n : (t+1)*n]
		W[t] = w
		probs := p.Filtered.Probs[t]
		if probs == nil {
			Equal(w)
			continue
		}
		switch pk {
		case HRL:
			if err := run.Step(p.States[t], w, target); err != nil {
				return nil, fmt.Errorf("bar %d: %w", t, err)
			}
		case NaiveRouter:
			Naive(p.Filtered.Dominant[t], p.Mapping, w)
		case RegimeProportional:
			ProportionalWeights(probs, p.Mapping, w)
		case EqualWeight:
			Equal(w)
		default:
			return nil, invalid("unknown policy %d", int(pk))
		}
	}
	return W, nil
}

// Evaluate returns a policy's metrics over the returns of rows [from, to)
// of the prepared series (from >= 2), with weights decided at the bar
// before each; rets and pos are strategy.ReturnMatrix and
// strategy.PositionMatrix of the same closes, and the cost is charged on
// the net exposure traded (Config.SwitchingCostBps). It is what Run
// computes for a single fold.
func (p *Prepared) Evaluate(pk PolicyKind, pol Policy, rets, pos [][]float64, from, to int, costBps float64, periodsPerYear int) (Metrics, error) {
	if from < 2 || to > len(p.States) || to <= from {
		return Metrics{}, invalid("rows %d-%d of %d: need 2 <= from < to <= rows", from, to, len(p.States))
	}
	if len(rets) != len(p.States) || len(pos) != len(p.States) {
		return Metrics{}, invalid("%d rows of returns and %d of positions for %d rows", len(rets), len(pos), len(p.States))
	}
	W, err := p.Weights(pk, pol, len(rets[0]))
	if err != nil {
		return Metrics{}, err
	}
	cost := costBps / 10000
	var a accumulator
	a.add(W, rets, pos, from, to, cost)
	return compute(&a, cost, periodsPerYear), nil
}

// PooledTrainingData returns the HRL training data of the first trainEnd
// rows of every series of cfg.Pool, series after series: each series gets
// its own regime model fitted on those rows (or cfg.Regime), as the
// evaluated series does.
func PooledTrainingData(ctx context.Context, cfg Config, trainEnd int) (states, next [][]float64, err error) {
	if cfg.Smoothing == (Smoothing{}) {
		cfg.Smoothing = DefaultSmoothing()
	}
	for i, closes := range cfg.Pool {
		if trainEnd > len(closes) {
			return nil, nil, invalid("pooled series %d has %d rows, training needs %d", i, len(closes), trainEnd)
		}
		train := closes[:trainEnd]
		prep, err := cfg.prepare(ctx, train, trainEnd)
		if err != nil {
			return nil, nil, fmt.Errorf("pooled series %d: %w", i, err)
		}
		s, n := prep.TrainingData(strategy.ReturnMatrix(cfg.Strategies, train), trainEnd)
		states, next = append(states, s...), append(next, n...)
	}
	return states, next, nil
}
