// Package regimefilter is the causal smoothing of regime probabilities
// that RegimeService serves and backtests replay: a forward filter over a
// mixture's per-bar regime likelihoods with a sticky transition matrix and
// emission tempering, then hysteresis and a minimum dwell on the dominant
// regime. A bar's state depends only on the previous bar's state and the
// bar, so appending bars never changes earlier states.
package regimefilter

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// Smoothing configures the forward filter and the dominant-regime rules.
type Smoothing struct {
	// Stickiness is the probability of staying in a regime from one bar
	// to the next (the transition matrix diagonal), in [0, 1); the rest is
	// spread evenly over the other regimes.
	Stickiness float64
	// Hysteresis is the margin by which a challenger's smoothed
	// probability must exceed the dominant regime's to take over, [0, 1).
	Hysteresis float64
	// MinDwell is the fewest bars a dominant regime is held, >= 1.
	MinDwell int
	// Tempering is the power, in (0, 1], to which each bar's regime
	// likelihoods are raised before the filter's update (the log-likelihoods
	// are multiplied by it); 1 is the plain forward filter. The mixture's
	// full-covariance likelihoods are so peaked that one bar's evidence
	// outweighs any transition prior, so without tempering stickiness barely
	// smooths; below 1 a change of regime needs the evidence of several bars.
	// The raw probabilities are never tempered.
	Tempering float64
}

// Default is RegimeService's default: stickiness 0.99, hysteresis 0.3, a
// 30-bar minimum dwell and emission tempering 0.5. It is the choice of
// services/regime's TestSmoothingSweep (flips_sweep_test.go): of the
// settings whose smoothed flip rate on eustock is at most a quarter of the
// raw one on every fit seed, and which stay right on TestFilterSmooths'
// noisy series, the one with the least median detection lag on synthetic
// switching series.
func Default() Smoothing {
	return Smoothing{Stickiness: 0.99, Hysteresis: 0.3, MinDwell: 30, Tempering: 0.5}
}

// Validate reports the first invalid field.
func (s Smoothing) Validate() error {
	var err error
	s.Check(func(field, format string, args ...any) {
		if err == nil {
			err = fmt.Errorf("%s: "+format, append([]any{field}, args...)...)
		}
	})
	return err
}

// Check calls bad for every invalid field, named as in the contract's
// SmoothingConfig.
func (s Smoothing) Check(bad func(field, format string, args ...any)) {
	if !(s.Stickiness >= 0 && s.Stickiness < 1) {
		bad("stickiness", "must be in [0, 1), got %v", s.Stickiness)
	}
	if !(s.Hysteresis >= 0 && s.Hysteresis < 1) {
		bad("hysteresis", "must be in [0, 1), got %v", s.Hysteresis)
	}
	if s.MinDwell < 1 || s.MinDwell > 1000 {
		bad("min_dwell_bars", "must be 1 to 1000 bars, got %d", s.MinDwell)
	}
	if !(s.Tempering > 0 && s.Tempering <= 1) {
		bad("emission_tempering", "must be in (0, 1], got %v", s.Tempering)
	}
}

// Filter is one series' causal smoothing state: the forward-filtered
// regime probabilities of the last bar and the dominant regime. The next
// bar's state depends only on this and the bar, so appending bars never
// changes earlier states. The zero Filter is not usable: start one with New
// or Resume.
type Filter struct {
	cfg      Smoothing
	probs    []float64 // smoothed probabilities of the last bar; nil before the first
	dominant int
	dwell    int64
}

// New returns a filter before its first bar.
func New(cfg Smoothing) Filter { return Filter{cfg: cfg} }

// Resume returns a filter that continues from a bar's state: its smoothed
// probabilities (copied), dominant regime and the bars it has been held.
// Probabilities that are no distribution (NaN, as states stored before
// Next guarded against it could hold) restart the filter at its next bar
// instead of carrying NaN forward.
func Resume(cfg Smoothing, smoothed []float64, dominant int, dwell int64) Filter {
	var sum float64
	for _, p := range smoothed {
		if !(p >= 0 && p <= 1) {
			return New(cfg)
		}
		sum += p
	}
	if sum == 0 {
		return New(cfg)
	}
	return Filter{cfg: cfg, probs: append([]float64(nil), smoothed...), dominant: dominant, dwell: dwell}
}

// Step is one bar's outcome.
type Step struct {
	Raw, Smoothed         []float64 // the mixture's probabilities and the filter's
	RawDominant, Dominant int       // argmax of Raw; the held dominant regime
	RawEntropy, Entropy   float64   // in nats
	Dwell                 int64     // bars Dominant has been held, this one included
	Flipped               bool      // Dominant changed at this bar
}

// ErrNoRegimes is returned for an empty likelihood vector.
var ErrNoRegimes = errors.New("regime: no regimes")

// Next filters one bar. logLik[j] is the log of the bar's likelihood under
// regime j (any additive constant; NaN counts as -Inf); prior is the regime
// distribution the filter starts from at its first bar (the model's regime
// weights). The probabilities are never NaN.
func (f *Filter) Next(logLik, prior []float64) (Step, error) {
	r := len(logLik)
	if r == 0 {
		return Step{}, ErrNoRegimes
	}
	raw := SoftmaxLog(logLik, nil)
	// Predict: p(j) = Σ_i probs(i)·A(i, j), with A = s on the diagonal and
	// (1-s)/(r-1) elsewhere, so p(j) = s·probs(j) + (1-s)/(r-1)·(1 - probs(j)).
	pred := make([]float64, r)
	switch {
	case f.probs == nil:
		copy(pred, prior)
	case r == 1:
		pred[0] = 1
	default:
		s := f.cfg.Stickiness
		off := (1 - s) / float64(r-1)
		for j := range pred {
			pred[j] = s*f.probs[j] + off*(1-f.probs[j])
		}
	}
	// Update with the bar's likelihood, in log space. A bar no regime
	// explains (every likelihood 0 or NaN) is no evidence: the prediction
	// stands rather than a uniform guess.
	evidence := slices.ContainsFunc(logLik, func(x float64) bool { return x > math.Inf(-1) })
	post := make([]float64, r)
	for j := range post {
		post[j] = math.Log(max(pred[j], 1e-300))
		if evidence {
			post[j] += f.cfg.Tempering * logLik[j]
		}
	}
	smoothed := SoftmaxLog(post, post)
	st := Step{Raw: raw, Smoothed: smoothed, RawDominant: Argmax(raw), RawEntropy: Entropy(raw), Entropy: Entropy(smoothed)}
	candidate := Argmax(smoothed)
	switch {
	case f.probs == nil:
		f.dominant, f.dwell = candidate, 1
	case candidate != f.dominant && f.dwell >= int64(f.cfg.MinDwell) &&
		smoothed[candidate] > smoothed[f.dominant]+f.cfg.Hysteresis:
		f.dominant, f.dwell = candidate, 1
		st.Flipped = true
	default:
		f.dwell++
	}
	f.probs = smoothed
	st.Dominant, st.Dwell = f.dominant, f.dwell
	return st, nil
}

// SoftmaxLog turns log weights into probabilities, into dst (allocated when
// nil; it may be logw). It never gives NaN: a NaN weight counts as -Inf,
// +Inf weights share all the probability, and when every weight is -Inf
// the probabilities are uniform.
func SoftmaxLog(logw, dst []float64) []float64 {
	if dst == nil {
		dst = make([]float64, len(logw))
	}
	m := math.Inf(-1)
	for _, v := range logw {
		if v > m {
			m = v
		}
	}
	if math.IsInf(m, -1) {
		for i := range logw {
			dst[i] = 1 / float64(len(logw))
		}
		return dst
	}
	var sum float64
	for i, v := range logw {
		switch {
		case math.IsNaN(v):
			dst[i] = 0
		case math.IsInf(m, 1):
			dst[i] = 0
			if v == m {
				dst[i] = 1
			}
		default:
			dst[i] = math.Exp(v - m)
		}
		sum += dst[i]
	}
	for i := range dst {
		dst[i] /= sum
	}
	return dst
}

// Argmax is the index of p's largest value, the first of equals.
func Argmax(p []float64) int {
	best := 0
	for i, v := range p {
		if v > p[best] {
			best = i
		}
	}
	return best
}

// Entropy of p in nats.
func Entropy(p []float64) float64 {
	var h float64
	for _, v := range p {
		if v > 0 {
			h -= v * math.Log(v)
		}
	}
	return h
}

// FlipsPer100 counts changes between consecutive values per 100 values.
func FlipsPer100(seq []int) float64 {
	if len(seq) < 2 {
		return 0
	}
	flips := 0
	for i := 1; i < len(seq); i++ {
		if seq[i] != seq[i-1] {
			flips++
		}
	}
	return 100 * float64(flips) / float64(len(seq)-1)
}
