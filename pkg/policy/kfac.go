package policy

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// KroneckerFisher is a Kronecker-factored (K-FAC) estimate of the Fisher
// information: per layer, the block of the layer's weights and biases is
// approximated by A ⊗ Γ, with A = E[ã ãᵀ] the second moment of the
// layer's input extended by a constant 1 (for the bias) and
// Γ = E_x Σ_a p(a|x)·δ_a δ_aᵀ that of the gradient of log p(a|x) with
// respect to the layer's pre-activations. Unlike the diagonal Fisher it
// keeps the correlations between the weights of one layer. It is immutable.
type KroneckerFisher struct {
	cfg     Config
	a, g    [][]float64 // per layer: (in+1)×(in+1) and out×out, row-major
	samples int
}

// ComputeKroneckerFisher estimates the factors on the samples X, as
// ComputeFisher does the diagonal: under the network's own predictive
// distribution, a mean over samples.
func ComputeKroneckerFisher(n *Network, X [][]float64) (*KroneckerFisher, error) {
	if n == nil {
		return nil, fmt.Errorf("%w: nil network", ErrInvalidInput)
	}
	if err := CheckData(n.Inputs(), X, nil); err != nil {
		return nil, err
	}
	k := &KroneckerFisher{cfg: n.Config(), samples: len(X)}
	for _, l := range n.layers {
		k.a = append(k.a, make([]float64, (l.in+1)*(l.in+1)))
		k.g = append(k.g, make([]float64, l.out*l.out))
	}
	bp := newBackprop(n)
	for r, x := range X {
		if err := bp.forward(x); err != nil {
			return nil, fmt.Errorf("sample %d: %w", r, err)
		}
		for li, l := range n.layers {
			in, a := bp.acts[li], k.a[li]
			m := l.in + 1
			for i := range m {
				vi := 1.0
				if i < l.in {
					vi = in[i]
				}
				for j := range m {
					vj := 1.0
					if j < l.in {
						vj = in[j]
					}
					a[i*m+j] += vi * vj
				}
			}
		}
		for act := range NumActions {
			p := bp.out.Probs[act]
			if p == 0 {
				continue
			}
			bp.gradLogProb(Action(act))
			for li, l := range n.layers {
				d, g := bp.delta[li], k.g[li]
				for i := range l.out {
					for j := range l.out {
						g[i*l.out+j] += p * d[i] * d[j]
					}
				}
			}
		}
	}
	inv := 1 / float64(len(X))
	for li := range k.a {
		for i := range k.a[li] {
			k.a[li][i] *= inv
		}
		for i := range k.g[li] {
			k.g[li][i] *= inv
		}
	}
	return k, nil
}

// penalty is Σ over layers of (λ/2)·vec(Δ)ᵀ(A ⊗ Γ)vec(Δ) = (λ/2)·Σ (A·D·Γ) ⊙ D
// with D = [ΔW; Δb] the layer's (in+1)×out change in gorgonia's layout.
func (k *KroneckerFisher) penalty(g *G.ExprGraph, lambda float64, theta, anchor graphParams) (*G.Node, error) {
	var total *G.Node
	add := func(n *G.Node) (err error) {
		if total == nil {
			total = n
		} else {
			total, err = G.Add(total, n)
		}
		return err
	}
	mat := func(name string, rows, cols int, v []float64) *G.Node {
		t := tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(append([]float64(nil), v...)))
		return G.NewMatrix(g, tensor.Float64, G.WithShape(rows, cols), G.WithValue(t), G.WithName(name))
	}
	for li := range theta.w {
		in, out := k.cfg.layerShape(li)
		m := in + 1
		A := k.a[li]
		aww := make([]float64, in*in)
		awb := make([]float64, in)
		for i := range in {
			copy(aww[i*in:(i+1)*in], A[i*m:i*m+in])
			awb[i] = A[i*m+in]
		}
		Aww := mat(fmt.Sprintf("kfac_Aww%d", li), in, in, aww)
		Awb := mat(fmt.Sprintf("kfac_Awb%d", li), in, 1, awb)
		AwbT := mat(fmt.Sprintf("kfac_AwbT%d", li), 1, in, awb)
		Gm := mat(fmt.Sprintf("kfac_G%d", li), out, out, k.g[li])
		dW, err := G.Sub(theta.w[li], anchor.w[li])
		if err != nil {
			return nil, err
		}
		db, err := G.Sub(theta.b[li], anchor.b[li])
		if err != nil {
			return nil, err
		}
		// Top rows: (Aww·ΔW + Awb·Δb)·Γ ⊙ ΔW.
		t1, err := G.Mul(Aww, dW)
		if err != nil {
			return nil, err
		}
		t2, err := G.Mul(Awb, db)
		if err != nil {
			return nil, err
		}
		top, err := G.Add(t1, t2)
		if err != nil {
			return nil, err
		}
		if top, err = G.Mul(top, Gm); err != nil {
			return nil, err
		}
		if top, err = G.HadamardProd(top, dW); err != nil {
			return nil, err
		}
		if top, err = G.Sum(top); err != nil {
			return nil, err
		}
		// Bottom row: (Awbᵀ·ΔW + 1·Δb)·Γ ⊙ Δb (A's last entry is 1).
		b1, err := G.Mul(AwbT, dW)
		if err != nil {
			return nil, err
		}
		bot, err := G.Add(b1, db)
		if err != nil {
			return nil, err
		}
		if bot, err = G.Mul(bot, Gm); err != nil {
			return nil, err
		}
		if bot, err = G.HadamardProd(bot, db); err != nil {
			return nil, err
		}
		if bot, err = G.Sum(bot); err != nil {
			return nil, err
		}
		if err := add(top); err != nil {
			return nil, err
		}
		if err := add(bot); err != nil {
			return nil, err
		}
	}
	return G.Mul(G.NewConstant(lambda/2, G.WithName("kfac_half_lambda")), total)
}

// layerShape is layer li's input and output widths.
func (c Config) layerShape(li int) (in, out int) {
	in = c.Inputs
	for i, w := range c.Hidden {
		if i == li {
			return in, w
		}
		in = w
	}
	return in, NumActions
}
