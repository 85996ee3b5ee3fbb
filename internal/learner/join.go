package learner

import (
	"math"
	"slices"
	"time"

	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// volWindow is the volatility window of the labels (features.Labels').
const volWindow = 20

// maxPending bounds the decisions waiting for their outcome, per symbol.
const maxPending = 10000

// Joiner joins decisions with the realised forward return of their
// symbol. A decision belongs to the latest bar of its symbol when it
// arrives; once Horizon more bars have arrived its outcome is labelled as
// features.Labels labels that bar: BUY when the forward log return exceeds
// LabelThreshold·vol·√Horizon (vol the 20-bar volatility at the bar), SELL
// below minus that, HOLD between. It is not safe for concurrent use.
type Joiner struct {
	horizon   int
	threshold float64
	symbols   map[string]*symbolBars
	// seen holds the ids of the newest decisions, to drop redeliveries.
	seen    map[string]struct{}
	seenLog []string
	// Unmatched counts decisions dropped because no bar of their symbol
	// had arrived (or too many were pending).
	Unmatched int64
}

// maxSeen bounds the decision ids remembered for deduplication.
const maxSeen = 100000

type symbolBars struct {
	closes  []float64 // the newest closes
	first   int64     // bar index of closes[0]
	count   int64     // bars seen
	last    time.Time
	pending []pending
}

type pending struct {
	bar      int64
	time     time.Time
	features []float64
}

// NewJoiner returns a joiner for the label rule (horizon ≥ 1, threshold ≥ 0).
func NewJoiner(horizon int, threshold float64) *Joiner {
	return &Joiner{horizon: horizon, threshold: threshold, symbols: map[string]*symbolBars{}, seen: map[string]struct{}{}}
}

// Bar adds a bar of symbol and returns the outcomes it resolves. A bar not
// after the symbol's latest (a redelivery) or with a non-positive close is
// ignored.
func (j *Joiner) Bar(symbol string, t time.Time, close float64) []Outcome {
	if !(close > 0) || math.IsInf(close, 0) {
		return nil
	}
	s := j.symbols[symbol]
	if s == nil {
		s = &symbolBars{}
		j.symbols[symbol] = s
	}
	if s.count > 0 && !t.After(s.last) {
		return nil
	}
	s.last = t
	s.closes = append(s.closes, close)
	s.count++
	// Keep what the oldest pending decision (at least count-1-horizon)
	// needs: its close, the volWindow returns before it and the horizon
	// after.
	if keep := volWindow + 1 + j.horizon; len(s.closes) > 2*keep {
		drop := len(s.closes) - keep
		s.closes = slices.Delete(s.closes, 0, drop)
		s.first += int64(drop)
	}
	latest := s.count - 1
	var out []Outcome
	n := 0
	for _, p := range s.pending {
		if latest-p.bar < int64(j.horizon) {
			s.pending[n] = p
			n++
			continue
		}
		if label, ok := j.label(s, p.bar); ok {
			out = append(out, Outcome{Symbol: symbol, Time: p.time, Features: p.features, Label: label})
		}
	}
	clear(s.pending[n:])
	s.pending = s.pending[:n]
	return out
}

// Decision adds a decision on symbol taken at time t on the features, and
// reports whether it was accepted (a bar of the symbol has arrived). A
// non-empty id seen before (a redelivery) is ignored.
func (j *Joiner) Decision(id, symbol string, t time.Time, x []float64) bool {
	if id != "" {
		if _, dup := j.seen[id]; dup {
			return false
		}
		j.seen[id] = struct{}{}
		j.seenLog = append(j.seenLog, id)
		if len(j.seenLog) > 2*maxSeen {
			for _, old := range j.seenLog[:len(j.seenLog)-maxSeen] {
				delete(j.seen, old)
			}
			j.seenLog = slices.Delete(j.seenLog, 0, len(j.seenLog)-maxSeen)
		}
	}
	s := j.symbols[symbol]
	if s == nil || s.count == 0 || len(s.pending) >= maxPending {
		j.Unmatched++
		return false
	}
	s.pending = append(s.pending, pending{bar: s.count - 1, time: t, features: slices.Clone(x)})
	return true
}

// label labels bar t of s (t+horizon has arrived), as features.Labels does.
func (j *Joiner) label(s *symbolBars, t int64) (policy.Action, bool) {
	at := func(k int64) float64 { return s.closes[k-s.first] }
	if t < s.first || t+int64(j.horizon)-s.first >= int64(len(s.closes)) {
		return 0, false
	}
	vol := 0.01
	if t > volWindow {
		if t-volWindow < s.first {
			return 0, false
		}
		var rets [volWindow]float64
		var mean float64
		for k := range volWindow {
			b := t - int64(k)
			rets[k] = math.Log(at(b) / at(b-1))
			mean += rets[k]
		}
		mean /= volWindow
		var ss float64
		for _, r := range rets {
			ss += (r - mean) * (r - mean)
		}
		vol = math.Sqrt(ss / (volWindow - 1))
	}
	fwd := math.Log(at(t+int64(j.horizon)) / at(t))
	band := j.threshold * vol * math.Sqrt(float64(j.horizon))
	switch {
	case fwd > band:
		return policy.ActionBuy, true
	case fwd < -band:
		return policy.ActionSell, true
	}
	return policy.ActionHold, true
}

// ReplaySeries plays series through a joiner as if the policy had decided
// at every bar once its features are ready: each bar, then a decision on
// the features at that bar. It returns the outcomes in time order (per
// series), the replay mode of `quantmesh learn`.
func ReplaySeries(series []marketdata.Series, horizon int, threshold float64) ([]Outcome, error) {
	j := NewJoiner(horizon, threshold)
	var out []Outcome
	for _, s := range series {
		X, err := features.Compute(s.Bars, features.Set{})
		if err != nil {
			return nil, err
		}
		for i, b := range s.Bars {
			out = append(out, j.Bar(s.Symbol, b.Time, b.Close)...)
			if k := i - (features.Warmup - 1); k >= 0 && k < len(X) {
				j.Decision("", s.Symbol, b.Time, X[k])
			}
		}
	}
	return out, nil
}
