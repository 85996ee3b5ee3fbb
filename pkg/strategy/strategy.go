// Package strategy holds the strategies MetaControllerService allocates
// capital across, and computes their per-bar returns causally from closes.
//
// Every strategy decides a position (a fraction of capital, long positive,
// short negative) at the close of bar t from closes[0..t] only; its return
// over bar t+1 is position_t * (close_t+1 / close_t - 1). So appending bars
// never changes an earlier position or return: Returns(closes[:n]) is a
// prefix of Returns(closes).
package strategy

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Kind is a strategy family (the contract's StrategyKind, same numbering).
type Kind int

// Kinds.
const (
	TrendFollowing Kind = 1
	MeanReversion  Kind = 2
	Momentum       Kind = 3
	Defensive      Kind = 4
)

// Strategy is one strategy: a name, what it does, and its position rule.
type Strategy struct {
	// Name is the stable identifier used in requests and weight vectors.
	Name string
	// Description says what it does.
	Description string
	Kind        Kind
	// Parameters are its fixed parameters, for ListStrategies.
	Parameters map[string]string
	// Warmup is the number of closes needed before the first non-zero
	// position.
	Warmup int
	// position returns the position decided at the close of the last of
	// closes (len(closes) >= Warmup).
	position func(closes []float64) float64
}

// Fixed parameters.
const (
	trendFast      = 10
	trendSlow      = 50
	revertWindow   = 20
	revertScale    = 2.0
	momentumWindow = 60
	defensiveVol   = 20
	// defensiveTargetVol is the daily volatility the defensive position
	// aims for (about 4% annualised); the position is capped at
	// defensiveMaxPosition and the rest is cash.
	defensiveTargetVol   = 0.0025
	defensiveMaxPosition = 0.5
)

var all = []Strategy{
	{
		Name:        "trend",
		Description: "Trend following: long when the 10-bar moving average of the close is above the 50-bar one, short when below.",
		Kind:        TrendFollowing,
		Parameters:  map[string]string{"fast_bars": strconv.Itoa(trendFast), "slow_bars": strconv.Itoa(trendSlow)},
		Warmup:      trendSlow,
		position: func(c []float64) float64 {
			if mean(c[len(c)-trendFast:]) > mean(c[len(c)-trendSlow:]) {
				return 1
			}
			return -1
		},
	},
	{
		Name:        "mean_reversion",
		Description: "Mean reversion: against the close's z-score over 20 bars, position -z/2 clipped to [-1, 1].",
		Kind:        MeanReversion,
		Parameters:  map[string]string{"lookback_bars": strconv.Itoa(revertWindow), "z_scale": "2"},
		Warmup:      revertWindow,
		position: func(c []float64) float64 {
			w := c[len(c)-revertWindow:]
			m, sd := mean(w), stddev(w)
			if sd == 0 {
				return 0
			}
			z := (c[len(c)-1] - m) / sd
			return math.Max(-1, math.Min(1, -z/revertScale))
		},
	},
	{
		Name:        "momentum",
		Description: "Momentum: long when the 60-bar return is positive, short when negative.",
		Kind:        Momentum,
		Parameters:  map[string]string{"lookback_bars": strconv.Itoa(momentumWindow)},
		Warmup:      momentumWindow + 1,
		position: func(c []float64) float64 {
			r := c[len(c)-1] / c[len(c)-1-momentumWindow]
			switch {
			case r > 1:
				return 1
			case r < 1:
				return -1
			}
			return 0
		},
	},
	{
		Name: "defensive",
		Description: "Defensive: mostly cash, with a long position sized for about 4% annualised volatility " +
			"(0.25% a day over the last 20 bars), at most half of capital.",
		Kind:       Defensive,
		Parameters: map[string]string{"vol_bars": strconv.Itoa(defensiveVol), "target_daily_vol": "0.0025", "max_position": "0.5"},
		Warmup:     defensiveVol + 1,
		position: func(c []float64) float64 {
			rets := make([]float64, defensiveVol)
			base := len(c) - defensiveVol - 1
			for i := range rets {
				rets[i] = c[base+i+1]/c[base+i] - 1
			}
			sd := stddev(rets)
			if sd == 0 {
				return defensiveMaxPosition
			}
			return math.Min(defensiveMaxPosition, defensiveTargetVol/sd)
		},
	},
}

// All returns every strategy in weight-vector order (copies).
func All() []Strategy {
	out := make([]Strategy, len(all))
	copy(out, all)
	return out
}

// Names returns the strategies' names in weight-vector order.
func Names() []string {
	out := make([]string, len(all))
	for i, s := range all {
		out[i] = s.Name
	}
	return out
}

// ErrUnknown is returned for a strategy name that does not exist.
var ErrUnknown = errors.New("unknown strategy")

// ByName returns the named strategies, in the order given, or ErrUnknown
// (wrapped, naming the first unknown one) . An empty list means all.
func ByName(names []string) ([]Strategy, error) {
	if len(names) == 0 {
		return All(), nil
	}
	out := make([]Strategy, 0, len(names))
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			return nil, fmt.Errorf("strategy %q appears twice", n)
		}
		seen[n] = true
		s, ok := lookup(n)
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknown, n)
		}
		out = append(out, s)
	}
	return out, nil
}

func lookup(name string) (Strategy, bool) {
	for _, s := range all {
		if s.Name == name {
			return s, true
		}
	}
	return Strategy{}, false
}

// Positions returns the position decided at the close of every bar: 0
// during the warm-up.
func (s Strategy) Positions(closes []float64) []float64 {
	out := make([]float64, len(closes))
	for t := range closes {
		if t+1 >= s.Warmup {
			out[t] = s.position(closes[:t+1])
		}
	}
	return out
}

// Returns returns the strategy's return over every bar: out[0] = 0 and
// out[t] = position_t-1 * (closes[t]/closes[t-1] - 1). Closes must be
// positive and finite.
func (s Strategy) Returns(closes []float64) []float64 {
	return earned(s.Positions(closes), closes)
}

// earned returns what positions earn over closes: out[0] = 0 and
// out[t] = pos[t-1] * (closes[t]/closes[t-1] - 1).
func earned(pos, closes []float64) []float64 {
	out := make([]float64, len(closes))
	for t := 1; t < len(closes); t++ {
		out[t] = pos[t-1] * (closes[t]/closes[t-1] - 1)
	}
	return out
}

// ReturnMatrix returns out[t][i], strategy i's return over bar t.
func ReturnMatrix(strats []Strategy, closes []float64) [][]float64 {
	out := grid(len(closes), len(strats))
	for i, s := range strats {
		fill(out, i, s.Returns(closes))
	}
	return out
}

// PositionMatrix returns out[t][i], strategy i's position decided at the
// close of bar t: the one that earns ReturnMatrix's out[t+1][i].
func PositionMatrix(strats []Strategy, closes []float64) [][]float64 {
	out := grid(len(closes), len(strats))
	for i, s := range strats {
		fill(out, i, s.Positions(closes))
	}
	return out
}

// Matrices returns ReturnMatrix and PositionMatrix of the same closes,
// computing each strategy's positions once.
func Matrices(strats []Strategy, closes []float64) (rets, pos [][]float64) {
	rets, pos = grid(len(closes), len(strats)), grid(len(closes), len(strats))
	for i, s := range strats {
		p := s.Positions(closes)
		fill(pos, i, p)
		fill(rets, i, earned(p, closes))
	}
	return rets, pos
}

// grid returns a rows × cols matrix backed by one slice.
func grid(rows, cols int) [][]float64 {
	out := make([][]float64, rows)
	flat := make([]float64, rows*cols)
	for t := range out {
		out[t] = flat[t*cols : (t+1)*cols]
	}
	return out
}

// fill sets column i of m to col.
func fill(m [][]float64, i int, col []float64) {
	for t, v := range col {
		m[t][i] = v
	}
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// stddev is the population standard deviation.
func stddev(xs []float64) float64 {
	m := mean(xs)
	var s float64
	for _, x := range xs {
		s += (x - m) * (x - m)
	}
	return math.Sqrt(s / float64(len(xs)))
}
