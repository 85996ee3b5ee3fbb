package hrl

import (
	"fmt"
	"math"
)

// OptionState is the policy's option state after a step.
type OptionState struct {
	// Option is the most probable active option (argmax of q).
	Option int
	// Termination is that option's termination probability at this bar.
	Termination float64
	// OptionProbs is the high-level policy's distribution at this bar.
	OptionProbs []float64
	// Active is q, the probability that each option is active.
	Active []float64
	// Bars counts the bars, this one included, since Option became the
	// most probable; Switched is true when it became so at this bar.
	Bars     int64
	Switched bool
}

// Runner runs the policy over one series, bar by bar. It is not safe for
// concurrent use; Clone copies one.
type Runner struct {
	p       *Policy
	targets [][]float64
	q, w    []float64
	started bool
	state   OptionState
	// scratch
	z, h, logits, beta, pi []float64
}

// NewRunner returns a runner at the start of a series.
func (p *Policy) NewRunner() *Runner {
	m, n := p.Config.NumOptions, len(p.Strategies)
	return &Runner{
		p: p, targets: p.OptionTargets(), q: make([]float64, m), w: make([]float64, n),
		z: make([]float64, p.StateDim), h: make([]float64, p.Config.HiddenUnits), logits: make([]float64, m), beta: make([]float64, m), pi: make([]float64, m),
	}
}

// Clone returns an independent copy of r.
func (r *Runner) Clone() *Runner {
	c := *r
	c.q = append([]float64(nil), r.q...)
	c.w = append([]float64(nil), r.w...)
	c.state.OptionProbs = append([]float64(nil), r.state.OptionProbs...)
	c.state.Active = append([]float64(nil), r.state.Active...)
	c.z, c.h, c.logits = make([]float64, len(r.z)), make([]float64, len(r.h)), make([]float64, len(r.logits))
	c.beta, c.pi = make([]float64, len(r.beta)), make([]float64, len(r.pi))
	return &c
}

// Weights returns the current served weights (nil before the first step).
func (r *Runner) Weights() []float64 {
	if !r.started {
		return nil
	}
	return append([]float64(nil), r.w...)
}

// Option returns the option state of the last step.
func (r *Runner) Option() OptionState { return r.state }

// Step takes bar t's state vector and writes the served weights and the
// target into weights and target (N values each). Every weight is in
// [0, 1] and they sum to 1 within 1e-9.
func (r *Runner) Step(state, weights, target []float64) error {
	p := r.p
	d, hdim, m, n := p.StateDim, p.Config.HiddenUnits, p.Config.NumOptions, len(p.Strategies)
	if len(state) != d {
		return fmt.Errorf("%w: state has %d values, the policy takes %d", ErrInvalidInput, len(state), d)
	}
	if len(weights) != n || len(target) != n {
		return fmt.Errorf("%w: room for %d and %d weights, the policy has %d strategies", ErrInvalidInput, len(weights), len(target), n)
	}
	for i, x := range state {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("%w: state[%d] = %v", ErrInvalidInput, i, x)
		}
		r.z[i] = (x - p.InMean[i]) / p.InStd[i]
	}
	state = r.z
	// High-level policy.
	for j := range hdim {
		s := p.B1[j]
		for i := range d {
			s += state[i] * p.W1[i*hdim+j]
		}
		r.h[j] = math.Tanh(s)
	}
	for o := range m {
		s := p.B2[o]
		for j := range hdim {
			s += r.h[j] * p.W2[j*m+o]
		}
		for i := range d {
			s += state[i] * p.V[i*m+o]
		}
		r.logits[o] = s
	}
	softmax(r.logits, r.pi)
	// Terminations.
	for o := range m {
		s := p.UB[o]
		for i := range d {
			s += state[i] * p.U[i*m+o]
		}
		r.beta[o] = 1 / (1 + math.Exp(-s))
	}
	// Option occupancy.
	if !r.started {
		copy(r.q, r.pi)
	} else {
		var mass float64
		for o := range m {
			mass += r.q[o] * r.beta[o]
		}
		for o := range m {
			r.q[o] = r.q[o]*(1-r.beta[o]) + mass*r.pi[o]
		}
	}
	normalise(r.q)
	clear(target)
	for o := range m {
		for i := range n {
			target[i] += r.q[o] * r.targets[o][i]
		}
	}
	normalise(target)
	if !r.started {
		copy(r.w, target)
	} else {
		b := p.Config.BlendRate
		for i := range n {
			r.w[i] = (1-b)*r.w[i] + b*target[i]
		}
	}
	normalise(r.w)
	copy(weights, r.w)
	best := argmax(r.q)
	st := OptionState{Option: best, Termination: r.beta[best], OptionProbs: append([]float64(nil), r.pi...), Active: append([]float64(nil), r.q...)}
	if r.started && best == r.state.Option {
		st.Bars = r.state.Bars + 1
	} else {
		st.Bars, st.Switched = 1, r.started
	}
	r.state = st
	r.started = true
	return nil
}

// normalise clamps into [0, 1] and rescales to sum to 1 (equal weights if
// nothing positive is left).
func normalise(w []float64) {
	var s float64
	for i, v := range w {
		if !(v > 0) {
			w[i] = 0
			continue
		}
		s += v
	}
	if !(s > 0) || math.IsInf(s, 0) {
		for i := range w {
			w[i] = 1 / float64(len(w))
		}
		return
	}
	for i := range w {
		w[i] = math.Min(1, w[i]/s)
	}
}

func softmax(logits, dst []float64) {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, v)
	}
	var s float64
	for i, v := range logits {
		dst[i] = math.Exp(v - mx)
		s += dst[i]
	}
	for i := range dst {
		dst[i] /= s
	}
}

func argmax(p []float64) int {
	best := 0
	for i, v := range p {
		if v > p[best] {
			best = i
		}
	}
	return best
}
