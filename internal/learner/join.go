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
// symbol. A decision belongs to the symbol's latest bar at its decision
// time: the newest bar whose time is not after it. Bars and decisions come
// from two topics whose batches interleave in any order, so a decision is
// held until a bar after its time arrives (only then is its bar known);
// one that arrives late is matched to its bar among the recent ones. Once
// Horizon bars have followed its bar, its outcome is labelled as
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
	// Unmatched counts decisions dropped because their bar is not known:
	// older than the bars kept, before the symbol's first bar, or beyond
	// maxPending waiting. Invalid counts decisions without finite
	// features.
	Unmatched, Invalid int64
}

// maxSeen bounds the decision ids remembered for deduplication.
const maxSeen = 100000

// keptBars is how many of a symbol's newest bars are kept for decisions
// that arrive late (the decisions topic lagging the bars topic).
const keptBars = 1024

type symbolBars struct {
	closes []float64   // the newest closes
	times  []time.Time // their bar times
	first  int64       // bar index of closes[0]
	count  int64       // bars seen
	// open decisions are at or after the latest bar's time: their bar is
	// that one unless a newer bar not after them arrives. pending ones
	// know their bar and wait for the horizon.
	open    []pending
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

func (j *Joiner) symbol(name string) *symbolBars {
	s := j.symbols[name]
	if s == nil {
		s = &symbolBars{}
		j.symbols[name] = s
	}
	return s
}

// Bar adds a bar of symbol and returns the outcomes it resolves. A bar not
// after the symbol's latest (a redelivery) or with a non-positive close is
// ignored.
func (j *Joiner) Bar(symbol string, t time.Time, close float64) []Outcome {
	if !(close > 0) || math.IsInf(close, 0) {
		return nil
	}
	s := j.symbol(symbol)
	if s.count > 0 && !t.After(s.times[len(s.times)-1]) {
		return nil
	}
	// Open decisions before this bar belong to the latest one.
	n := 0
	for _, d := range s.open {
		switch {
		case !d.time.Before(t):
			s.open[n] = d
			n++
		case s.count == 0:
			j.Unmatched++ // before the symbol's first bar
		default:
			d.bar = s.count - 1
			s.pending = append(s.pending, d)
		}
	}
	clear(s.open[n:])
	s.open = s.open[:n]

	s.closes = append(s.closes, close)
	s.times = append(s.times, t)
	s.count++
	// Keep what a decision up to keptBars late needs: its close, the
	// volWindow returns before it and the horizon after.
	if keep := keptBars + volWindow + 1 + j.horizon; len(s.closes) > keep+keep/4 {
		drop := len(s.closes) - keep
		s.closes = slices.Delete(s.closes, 0, drop)
		s.times = slices.Delete(s.times, 0, drop)
		s.first += int64(drop)
	}
	return j.resolve(symbol, s)
}

// resolve returns the outcomes of the pending decisions of s whose
// horizon has passed.
func (j *Joiner) resolve(symbol string, s *symbolBars) []Outcome {
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
		} else {
			j.Unmatched++ // its bar's history is no longer kept
		}
	}
	clear(s.pending[n:])
	s.pending = s.pending[:n]
	return out
}

// Decision adds a decision on symbol taken at time t on the features. It
// reports whether it was accepted: it is not a redelivery (a non-empty id
// seen before), its features are finite, and its bar is known or may still
// arrive. A late decision whose horizon has passed is resolved at once.
func (j *Joiner) Decision(id, symbol string, t time.Time, x []float64) ([]Outcome, bool) {
	if id != "" {
		if _, dup := j.seen[id]; dup {
			return nil, false
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
	if len(x) == 0 || slices.ContainsFunc(x, func(v float64) bool { return v-v != 0 }) {
		j.Invalid++
		return nil, false
	}
	s := j.symbol(symbol)
	if len(s.open)+len(s.pending) >= maxPending {
		j.Unmatched++
		return nil, false
	}
	d := pending{time: t, features: slices.Clone(x)}
	if s.count == 0 || !t.Before(s.times[len(s.times)-1]) {
		s.open = append(s.open, d)
		return nil, true
	}
	// A late decision: its bar is the newest kept bar not after t.
	k, found := slices.BinarySearchFunc(s.times, t, func(bt, t time.Time) int { return bt.Compare(t) })
	if !found {
		k--
	}
	if k < 0 {
		j.Unmatched++
		return nil, false
	}
	d.bar = s.first + int64(k)
	s.pending = append(s.pending, d)
	return j.resolve(symbol, s), true
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
				o, _ := j.Decision("", s.Symbol, b.Time, X[k])
				out = append(out, o...)
			}
		}
	}
	return out, nil
}
