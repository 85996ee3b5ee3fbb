package backtest

import (
	"slices"

	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// RegimeStrategies maps every regime to the strategy it favours, by the
// regime's mean return and volatility relative to the median volatility of
// the regimes:
//
//	mean return > 0, volatility <= median: trend following (a calm rise)
//	mean return > 0, volatility >  median: momentum (a fast rise)
//	mean return <= 0, volatility <= median: mean reversion (calm, no drift)
//	mean return <= 0, volatility >  median: defensive (a volatile fall)
//
// When the favoured kind is not among strats, the next in a fixed order of
// preference for that case is used. The result holds an index into strats
// per regime.
func RegimeStrategies(regimes []Regime, strats []strategy.Strategy) []int {
	vols := make([]float64, len(regimes))
	for i, r := range regimes {
		vols[i] = r.Volatility
	}
	slices.Sort(vols)
	var median float64
	if n := len(vols); n > 0 {
		median = vols[(n-1)/2]
	}
	out := make([]int, len(regimes))
	for i, r := range regimes {
		out[i] = pick(strats, preference(r.MeanReturn, r.Volatility, median))
	}
	return out
}

// RegimeStrategy maps one regime given the median volatility of its model's
// regimes; see RegimeStrategies.
func RegimeStrategy(meanReturn, volatility, medianVol float64, strats []strategy.Strategy) int {
	return pick(strats, preference(meanReturn, volatility, medianVol))
}

func preference(mu, vol, median float64) []strategy.Kind {
	calm := vol <= median
	switch {
	case mu > 0 && calm:
		return []strategy.Kind{strategy.TrendFollowing, strategy.Momentum, strategy.MeanReversion, strategy.Defensive}
	case mu > 0:
		return []strategy.Kind{strategy.Momentum, strategy.TrendFollowing, strategy.Defensive, strategy.MeanReversion}
	case calm:
		return []strategy.Kind{strategy.MeanReversion, strategy.Defensive, strategy.TrendFollowing, strategy.Momentum}
	}
	return []strategy.Kind{strategy.Defensive, strategy.MeanReversion, strategy.TrendFollowing, strategy.Momentum}
}

func pick(strats []strategy.Strategy, pref []strategy.Kind) int {
	for _, k := range pref {
		for i, s := range strats {
			if s.Kind == k {
				return i
			}
		}
	}
	return 0
}

// Equal writes 1/N to each of the N weights.
func Equal(dst []float64) {
	for i := range dst {
		dst[i] = 1 / float64(len(dst))
	}
}

// Naive writes the naive router's weights: all on the strategy the dominant
// regime maps to.
func Naive(dominant int, mapping []int, dst []float64) {
	clear(dst)
	dst[mapping[dominant]] = 1
}

// ProportionalWeights writes the regime-proportional weights: each regime's
// probability goes to the strategy it maps to.
func ProportionalWeights(probs []float64, mapping []int, dst []float64) {
	clear(dst)
	for j, p := range probs {
		dst[mapping[j]] += p
	}
	Normalise(dst)
}

// Normalise clamps every weight into [0, 1] (NaN to 0) and rescales them to
// sum to 1, or writes equal weights when nothing positive remains.
func Normalise(w []float64) {
	var s float64
	for i, v := range w {
		if !(v > 0) {
			w[i] = 0
			continue
		}
		s += v
	}
	if !(s > 0) || s > 1e300 {
		Equal(w)
		return
	}
	for i := range w {
		w[i] /= s
	}
}
