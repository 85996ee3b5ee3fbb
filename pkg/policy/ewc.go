package policy

import (
	"fmt"
	"math"
	"slices"

	G "gorgonia.org/gorgonia"
)

// EWC is an Elastic Weight Consolidation penalty for Train (Kirkpatrick et
// al., 2017): the objective gains
//
//	(λ/2)·Σᵢ Fᵢ·(θᵢ − θ*ᵢ)²
//
// over every weight and bias θᵢ, where θ* are the Anchor's parameters and F
// a diagonal Fisher information estimate (ComputeFisher on the data the
// anchor learned). Parameters that mattered for the old data are held near
// their old values; the others are free to learn the new data.
//
// With Kronecker instead of Fisher the penalty is (λ/2)·ΔθᵀFΔθ with F the
// block-diagonal Kronecker-factored estimate (ComputeKroneckerFisher), which
// also weighs the correlated changes of a layer's weights.
type EWC struct {
	// Lambda (λ ≥ 0) weighs the penalty against the new data's loss.
	Lambda float64
	// Anchor holds θ*, the previous weights. It must have the shape and the
	// input normalisation of the network being trained (when TrainConfig.Start
	// is nil, training starts from the anchor).
	Anchor *Network
	// Fisher holds F, for a network of the anchor's shape.
	Fisher *Fisher
	// Kronecker, instead of Fisher, holds a Kronecker-factored estimate
	// for a network of the anchor's shape. Exactly one of the two is set.
	Kronecker *KroneckerFisher
}

func (e *EWC) check(start *Network) error {
	switch {
	case !(e.Lambda >= 0) || math.IsInf(e.Lambda, 0):
		return fmt.Errorf("%w: EWC lambda must be finite and ≥ 0, got %v", ErrInvalidConfig, e.Lambda)
	case e.Anchor == nil:
		return fmt.Errorf("%w: EWC needs an anchor network", ErrInvalidConfig)
	case e.Fisher == nil && e.Kronecker == nil:
		return fmt.Errorf("%w: EWC needs a Fisher estimate", ErrInvalidConfig)
	case e.Fisher != nil && e.Kronecker != nil:
		return fmt.Errorf("%w: EWC takes one Fisher estimate, diagonal or Kronecker-factored, not both", ErrInvalidConfig)
	case e.Kronecker != nil && !e.Kronecker.cfg.Equal(e.Anchor.cfg):
		return fmt.Errorf("%w: EWC Fisher is for %s, the anchor is %s", ErrInvalidConfig, e.Kronecker.cfg, e.Anchor.cfg)
	case e.Fisher != nil && !e.Fisher.cfg.Equal(e.Anchor.cfg):
		return fmt.Errorf("%w: EWC Fisher is for %s, the anchor is %s", ErrInvalidConfig, e.Fisher.cfg, e.Anchor.cfg)
	case start != nil && !start.cfg.Equal(e.Anchor.cfg):
		return fmt.Errorf("%w: EWC anchor is %s, the network trained is %s", ErrInvalidConfig, e.Anchor.cfg, start.cfg)
	case start != nil && (!slices.Equal(start.mean, e.Anchor.mean) || !slices.Equal(start.std, e.Anchor.std)):
		return fmt.Errorf("%w: EWC anchor and the network trained normalise their inputs differently, so their weights are not comparable", ErrInvalidConfig)
	}
	return nil
}

// penalty adds (λ/2)·Σ F ⊙ (θ − θ*)² over all parameters to g.
func (e *EWC) penalty(g *G.ExprGraph, theta graphParams) (*G.Node, error) {
	anchor := addParams(g, e.Anchor.layers, "anchor")
	if e.Kronecker != nil {
		return e.Kronecker.penalty(g, e.Lambda, theta, anchor)
	}

	fisher := addParams(g, e.Fisher.layers, "fisher")
	th, an, fi := theta.learnables(), anchor.learnables(), fisher.learnables()
	var total *G.Node
	for i := range th {
		d, err := G.Sub(th[i], an[i])
		if err != nil {
			return nil, err
		}
		sq, err := G.Square(d)
		if err != nil {
			return nil, err
		}
		wsq, err := G.HadamardProd(fi[i], sq)
		if err != nil {
			return nil, err
		}
		s, err := G.Sum(wsq)
		if err != nil {
			return nil, err
		}
		if total == nil {
			total = s
		} else if total, err = G.Add(total, s); err != nil {
			return nil, err
		}
	}
	return G.Mul(G.NewConstant(e.Lambda/2, G.WithName("ewc_half_lambda")), total)
}

// Fisher is a diagonal Fisher information estimate: one non-negative value
// per weight and bias of a network of a given shape, in the network's layout.
// It is immutable.
type Fisher struct {
	cfg     Config
	layers  []layer
	samples int
}

// ComputeFisher estimates the diagonal of the Fisher information of n's
// parameters on the samples X:
//
//	Fᵢ = mean over x of Σ_a p(a|x) · (∂ log p(a|x) / ∂θᵢ)²
//
// the expectation over the network's own predictive distribution, taken
// exactly over the three actions (the "true" Fisher, not the empirical one
// built from labels, which mis-estimates curvature where the model is
// wrong). Gradients come from back-propagation in plain Go, one sample at a
// time.
func ComputeFisher(n *Network, X [][]float64) (*Fisher, error) {
	return diagonalFisher(n, X, nil)
}

// ComputeEmpiricalFisher is the empirical diagonal Fisher on the labelled
// samples (X, y): the mean over samples of (∂ log p(y|x) / ∂θᵢ)², the
// squared gradient at the given label only. It is the common cheaper
// variant of ComputeFisher, kept for comparison (the forgetting
// benchmark's --bench-fisher empirical).
func ComputeEmpiricalFisher(n *Network, X [][]float64, y []Action) (*Fisher, error) {
	if y == nil {
		return nil, fmt.Errorf("%w: no labels", ErrInvalidInput)
	}
	return diagonalFisher(n, X, y)
}

// diagonalFisher is ComputeFisher (y nil) or ComputeEmpiricalFisher.
func diagonalFisher(n *Network, X [][]float64, y []Action) (*Fisher, error) {
	if n == nil {
		return nil, fmt.Errorf("%w: nil network", ErrInvalidInput)
	}
	if err := CheckData(n.Inputs(), X, y); err != nil {
		return nil, err
	}
	f := &Fisher{cfg: n.Config(), layers: emptyLayers(n.cfg), samples: len(X)}
	bp := newBackprop(n)
	add := func(p float64) {
		for li := range f.layers {
			acc, g := &f.layers[li], &bp.grad[li]
			for i, v := range g.w {
				acc.w[i] += p * v * v
			}
			for i, v := range g.b {
				acc.b[i] += p * v * v
			}
		}
	}
	for r, x := range X {
		if err := bp.forward(x); err != nil {
			return nil, fmt.Errorf("sample %d: %w", r, err)
		}
		if y != nil {
			bp.gradLogProb(y[r])
			add(1)
			continue
		}
		for a := range NumActions {
			p := bp.out.Probs[a]
			if p == 0 {
				continue
			}
			bp.gradLogProb(Action(a))
			add(p)
		}
	}
	inv := 1 / float64(len(X))
	for li := range f.layers {
		for _, p := range [][]float64{f.layers[li].w, f.layers[li].b} {
			for i := range p {
				p[i] *= inv
			}
		}
	}
	return f, nil
}

// Config is the shape of the networks the estimate is for.
func (f *Fisher) Config() Config { return f.cfg.normalized() }

// Samples is the number of samples behind the estimate.
func (f *Fisher) Samples() int { return f.samples }

// Values returns a copy of the estimate flattened in the order of the
// weights format: per layer, the out×in weights row-major, then the biases.
func (f *Fisher) Values() []float64 {
	v := make([]float64, 0, f.cfg.NumParams())
	for _, l := range f.layers {
		v = append(v, l.w...)
		v = append(v, l.b...)
	}
	return v
}

// FisherFromValues rebuilds an estimate from Values (for example one a
// learner stored between runs) for a network of shape cfg. The values must
// be finite and ≥ 0, one per parameter.
func FisherFromValues(cfg Config, values []float64, samples int) (*Fisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(values) != cfg.NumParams() {
		return nil, fmt.Errorf("%w: %d Fisher values for %s, which has %d parameters", ErrInvalidInput, len(values), cfg, cfg.NumParams())
	}
	if samples < 0 {
		return nil, fmt.Errorf("%w: Fisher sample count %d", ErrInvalidInput, samples)
	}
	f := &Fisher{cfg: cfg.normalized(), layers: emptyLayers(cfg), samples: samples}
	k := 0
	for _, l := range f.layers {
		for _, p := range [][]float64{l.w, l.b} {
			for i := range p {
				if v := values[k]; !(v >= 0) || math.IsInf(v, 0) {
					return nil, fmt.Errorf("%w: Fisher value %d is %v, want finite and ≥ 0", ErrInvalidInput, k, v)
				}
				p[i] = values[k]
				k++
			}
		}
	}
	return f, nil
}

// Combine returns γ·f + next, the online-EWC update F ← γF + F_new (Schwarz
// et al., 2018) that keeps one running estimate instead of one per task.
// γ must be in [0, 1]; f and next must be for the same shape.
func (f *Fisher) Combine(gamma float64, next *Fisher) (*Fisher, error) {
	if !(gamma >= 0 && gamma <= 1) {
		return nil, fmt.Errorf("%w: Fisher decay γ must be in [0, 1], got %v", ErrInvalidConfig, gamma)
	}
	if next == nil || !next.cfg.Equal(f.cfg) {
		return nil, fmt.Errorf("%w: cannot combine Fisher estimates of different shapes", ErrInvalidConfig)
	}
	c := &Fisher{cfg: f.cfg, layers: cloneLayers(f.cfg, f.layers), samples: f.samples + next.samples}
	for li := range c.layers {
		for i := range c.layers[li].w {
			c.layers[li].w[i] = gamma*c.layers[li].w[i] + next.layers[li].w[i]
		}
		for i := range c.layers[li].b {
			c.layers[li].b[i] = gamma*c.layers[li].b[i] + next.layers[li].b[i]
		}
	}
	return c, nil
}

// backprop computes per-sample gradients of log p(a|x) in plain Go.
type backprop struct {
	n    *Network
	acts [][]float64 // acts[0] = normalised input, acts[l+1] = output of hidden layer l
	out  Output
	grad []layer // ∂ log p(a|x) / ∂θ, per layer
	// delta buffers, one per layer output
	delta [][]float64
}

func newBackprop(n *Network) *backprop {
	bp := &backprop{n: n, grad: emptyLayers(n.cfg)}
	bp.acts = append(bp.acts, make([]float64, n.cfg.Inputs))
	for _, w := range n.cfg.Hidden {
		bp.acts = append(bp.acts, make([]float64, w))
	}
	for _, l := range n.layers {
		bp.delta = append(bp.delta, make([]float64, l.out))
	}
	return bp
}

// forward runs x through the network, keeping every layer's activations.
func (bp *backprop) forward(x []float64) error {
	n := bp.n
	for i, v := range x {
		bp.acts[0][i] = (v - n.mean[i]) / n.std[i]
	}
	last := len(n.layers) - 1
	for li := range n.layers[:last] {
		h := bp.acts[li+1]
		n.layers[li].apply(bp.acts[li], h)
		for j, v := range h {
			if n.relu {
				h[j] = max(v, 0)
			} else {
				h[j] = math.Tanh(v)
			}
		}
	}
	n.layers[last].apply(bp.acts[last], bp.out.Logits[:])
	return bp.out.softmax()
}

// gradLogProb fills grad with ∂ log p(a|x) / ∂θ for the last forward pass.
func (bp *backprop) gradLogProb(a Action) {
	n := bp.n
	last := len(n.layers) - 1
	d := bp.delta[last]
	for j := range d {
		d[j] = -bp.out.Probs[j]
	}
	d[a]++
	for li := last; li >= 0; li-- {
		l, g, in := &n.layers[li], &bp.grad[li], bp.acts[li]
		d := bp.delta[li]
		for j, dj := range d {
			row := g.w[j*l.in : (j+1)*l.in]
			for i, v := range in {
				row[i] = dj * v
			}
			g.b[j] = dj
		}
		if li == 0 {
			break
		}
		// δ of the layer below: (Wᵀ δ) ⊙ act'(pre-activation).
		below := bp.delta[li-1]
		clear(below)
		for j, dj := range d {
			row := l.w[j*l.in : (j+1)*l.in]
			for i, w := range row {
				below[i] += w * dj
			}
		}
		for i, h := range in {
			if n.relu {
				if h <= 0 {
					below[i] = 0
				}
			} else {
				below[i] *= 1 - h*h
			}
		}
	}
}
