package backtest

import (
	"math"
	"testing"

	"pgregory.net/rapid"

	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// Every baseline's weights are in [0, 1] and sum to 1 within 1e-9, for any
// regime probabilities and regime descriptions.
func TestBaselineWeightsProperty(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		k := rapid.IntRange(1, 12).Draw(t, "regimes")
		regimes := make([]Regime, k)
		for i := range regimes {
			regimes[i] = Regime{
				Weight:     rapid.Float64Range(0, 1).Draw(t, "weight"),
				Volatility: rapid.Float64Range(0, 0.1).Draw(t, "vol"),
				MeanReturn: rapid.Float64Range(-0.01, 0.01).Draw(t, "mu"),
			}
		}
		all := strategy.All()
		n := rapid.IntRange(2, len(all)).Draw(t, "strategies")
		strats := all[:n]
		mapping := RegimeStrategies(regimes, strats)
		probs := make([]float64, k)
		for i := range probs {
			probs[i] = rapid.Float64Range(0, 1e6).Draw(t, "p")
		}
		dominant := rapid.IntRange(0, k-1).Draw(t, "dominant")
		w := make([]float64, n)
		for _, fill := range []func(){
			func() { Equal(w) },
			func() { Naive(dominant, mapping, w) },
			func() { ProportionalWeights(probs, mapping, w) },
		} {
			fill()
			var s float64
			for _, x := range w {
				if !(x >= 0 && x <= 1) {
					t.Fatalf("weight %v: %v", x, w)
				}
				s += x
			}
			if math.Abs(s-1) > 1e-9 {
				t.Fatalf("weights %v sum to %v", w, s)
			}
		}
	})
}
