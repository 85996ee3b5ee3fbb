package backtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/quantmesh/quantmesh/pkg/dpgmm"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/regimefilter"
)

// Regime is one regime of a fitted model, described as RegimeService
// describes its regimes: regimes are ordered by the volatility of the
// training bars' one-bar log returns each is responsible for (0 is the
// calmest).
type Regime struct {
	// Weight is the mixture weight of the regime's component.
	Weight float64
	// Volatility and MeanReturn are the responsibility-weighted standard
	// deviation and mean of the one-bar log returns of the training bars.
	Volatility, MeanReturn float64
}

// RegimeModel is a Dirichlet-process Gaussian mixture fitted on a training
// window of closes with RegimeService's defaults (its default feature
// vector, standardised; truncation 10; effective-weight threshold 0.01),
// ready to classify and forward-filter a series causally.
type RegimeModel struct {
	Regimes []Regime
	specs   []features.Spec
	mean    []float64
	std     []float64
	mix     *dpgmm.Model
	comps   []int // regime index -> mixture component
	prior   []float64
	// classify, when set, replaces the local mixture: a model fitted
	// elsewhere (NewRegimeModel).
	classify Classifier
}

// Classifier returns, for every bar of closes, each regime's log-likelihood
// up to a per-bar constant (for example the log of the regime's posterior
// probability), computed causally from closes[0..t]; nil for the bars of
// the feature warm-up.
type Classifier func(ctx context.Context, closes []float64) ([][]float64, error)

// NewRegimeModel returns a regime model fitted elsewhere, such as a stored
// RegimeService model: its regimes in index order (their weights start the
// forward filter) and a classifier. It is used as it is on every fold, so
// the caller checks that it was not fitted on evaluated rows.
func NewRegimeModel(regimes []Regime, classify Classifier) (*RegimeModel, error) {
	if len(regimes) == 0 {
		return nil, invalid("regime model has no regimes")
	}
	m := &RegimeModel{Regimes: append([]Regime(nil), regimes...), classify: classify}
	var total float64
	for _, r := range regimes {
		if !(r.Weight > 0) || math.IsInf(r.Weight, 0) {
			return nil, invalid("regime weight %v: must be positive and finite", r.Weight)
		}
		total += r.Weight
	}
	for _, r := range regimes {
		m.prior = append(m.prior, r.Weight/total)
	}
	return m, nil
}

// Smoothing is the forward filter's configuration (RegimeService's filter,
// pkg/regimefilter).
type Smoothing = regimefilter.Smoothing

// DefaultSmoothing is the backtests' filter: the plain sticky forward
// filter (stickiness 0.95, no tempering, hysteresis or dwell), with which
// the policies' results in README and the HRL's training were measured.
// RegimeService's own default (regimefilter.Default) holds a regime longer
// (a 30-bar dwell), which would delay every policy's response to a regime
// change; whether allocation should follow it is open (issue 7's note).
func DefaultSmoothing() Smoothing { return Smoothing{Stickiness: 0.95, MinDwell: 1, Tempering: 1} }

const effectiveThreshold = 0.01

// ErrTooShort is returned when a training window has too few bars for the
// feature windows and the fit.
var ErrTooShort = errors.New("training window too short")

// minFitSamples is the fewest feature vectors a regime fit accepts.
const minFitSamples = 50

// FitRegimes fits a regime model on closes (the training window only).
func FitRegimes(ctx context.Context, closes []float64, seed int64) (*RegimeModel, error) {
	specs := features.DefaultSpecs()
	X, rets, err := featureRows(closes, specs)
	if err != nil {
		return nil, err
	}
	if len(X) < minFitSamples {
		comp, _ := features.NewComputer(specs)
		return nil, fmt.Errorf("%w: %d feature vectors after the %d-bar warm-up, need %d", ErrTooShort, len(X), comp.Warmup()-1, minFitSamples)
	}
	d := len(specs)
	m := &RegimeModel{specs: specs}
	m.mean, m.std = features.Standardiser(X)
	Z := make([][]float64, len(X))
	for i, x := range X {
		Z[i] = m.scale(x, make([]float64, d))
	}
	mix, _, err := dpgmm.Fit(ctx, Z, dpgmm.Config{Seed: seed, Workers: 1})
	if err != nil {
		return nil, fmt.Errorf("regime fit: %w", err)
	}
	m.mix = mix
	k := mix.Components()
	sumW, sumR, sumR2 := make([]float64, k), make([]float64, k), make([]float64, k)
	resp := make([]float64, k)
	for i, z := range Z {
		mix.PredictProba(z, resp)
		for c, p := range resp {
			sumW[c] += p
			sumR[c] += p * rets[i]
			sumR2[c] += p * rets[i] * rets[i]
		}
	}
	type reg struct {
		comp    int
		vol, mu float64
	}
	var regs []reg
	for _, c := range mix.Effective(effectiveThreshold) {
		mu, vol := 0.0, 0.0
		if sumW[c] > 0 {
			mu = sumR[c] / sumW[c]
			vol = math.Sqrt(max(0, sumR2[c]/sumW[c]-mu*mu))
		}
		regs = append(regs, reg{c, vol, mu})
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
	weights := mix.Weights()
	var total float64
	for _, r := range regs {
		total += weights[r.comp]
	}
	for _, r := range regs {
		m.comps = append(m.comps, r.comp)
		m.Regimes = append(m.Regimes, Regime{Weight: weights[r.comp], Volatility: r.vol, MeanReturn: r.mu})
		m.prior = append(m.prior, weights[r.comp]/total)
	}
	return m, nil
}

func (m *RegimeModel) scale(x, dst []float64) []float64 {
	for j, v := range x {
		dst[j] = (v - m.mean[j]) / m.std[j]
	}
	return dst
}

// featureRows computes the feature vectors of closes and, beside each, the
// one-bar log return of its bar.
func featureRows(closes []float64, specs []features.Spec) (X [][]float64, rets []float64, err error) {
	err = features.EachClose(specs, closes, func(t int, vec []float64) error {
		X = append(X, slices.Clone(vec))
		rets = append(rets, math.Log(closes[t]/closes[t-1]))
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return X, rets, nil
}

// Filtered is the regime state of every bar of a series.
type Filtered struct {
	// Probs[t] are the smoothed regime probabilities after bar t; nil
	// during the feature warm-up.
	Probs [][]float64
	// Dominant[t] is the dominant regime after bar t (the argmax of Probs[t] unless hysteresis or a minimum dwell holds the previous one); -1 during the warm-up.
	Dominant []int
	// Entropy[t] is the entropy of Probs[t] in nats.
	Entropy []float64
}

// Filter classifies every bar of closes and runs the forward filter over
// them, causally: the state of bar t depends only on closes[0..t].
func (m *RegimeModel) Filter(ctx context.Context, closes []float64, sm Smoothing) (*Filtered, error) {
	if err := sm.Validate(); err != nil {
		return nil, fmt.Errorf("smoothing: %w", err)
	}
	classify := m.classify
	if classify == nil {
		classify = m.logLikelihoods
	}
	ll, err := classify(ctx, closes)
	if err != nil {
		return nil, err
	}
	if len(ll) != len(closes) {
		return nil, fmt.Errorf("regime classifier: %d rows for %d bars", len(ll), len(closes))
	}
	out := &Filtered{Probs: make([][]float64, len(closes)), Dominant: make([]int, len(closes)), Entropy: make([]float64, len(closes))}
	f := regimefilter.New(sm)
	for t, logLik := range ll {
		out.Dominant[t] = -1
		if logLik == nil {
			continue
		}
		if len(logLik) != len(m.Regimes) {
			return nil, fmt.Errorf("regime classifier: bar %d has %d values for %d regimes", t, len(logLik), len(m.Regimes))
		}
		st, err := f.Next(logLik, m.prior)
		if err != nil {
			return nil, fmt.Errorf("bar %d: %w", t, err)
		}
		out.Probs[t], out.Dominant[t], out.Entropy[t] = st.Smoothed, st.Dominant, st.Entropy
	}
	return out, nil
}

// logLikelihoods is the local mixture's Classifier.
func (m *RegimeModel) logLikelihoods(_ context.Context, closes []float64) ([][]float64, error) {
	out := make([][]float64, len(closes))
	z := make([]float64, len(m.specs))
	ll := make([]float64, m.mix.Components())
	err := features.EachClose(m.specs, closes, func(t int, vec []float64) error {
		m.mix.LogProb(m.scale(vec, z), ll)
		out[t] = make([]float64, len(m.comps))
		for j, cj := range m.comps {
			out[t][j] = ll[cj]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
