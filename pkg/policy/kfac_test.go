package policy

import (
	"math"
	"testing"
)

// TestKroneckerPenalty checks the graph's K-FAC penalty against
// (λ/2)·Σ_layers Σ Δ(j,k)·Γ(j,j')·A(k,k')·Δ(j',k') in plain Go, over the
// weights format (Δ(j, in) is the bias), and its gradient against central
// finite differences.
func TestKroneckerPenalty(t *testing.T) {
	t.Parallel()
	const lambda = 1.5
	cfg := Config{Inputs: 3, Hidden: []int{4}}
	X, y := synthetic(6, 3, 8)
	anchor := randomNetwork(t, cfg, 3)
	start := displaced(anchor, 0.5, 9)
	k, err := ComputeKroneckerFisher(anchor, X)
	if err != nil {
		t.Fatal(err)
	}
	var want float64
	for li, l := range start.layers {
		a, g, m := k.a[li], k.g[li], l.in+1
		d := func(j, c int) float64 {
			if c == l.in {
				return l.b[j] - anchor.layers[li].b[j]
			}
			return l.w[j*l.in+c] - anchor.layers[li].w[j*l.in+c]
		}
		for j := range l.out {
			for c := range m {
				for j2 := range l.out {
					for c2 := range m {
						want += lambda / 2 * d(j, c) * g[j*l.out+j2] * a[c*m+c2] * d(j2, c2)
					}
				}
			}
		}
	}
	with, without := penaltyTrainer(t, start, X, y, &EWC{Lambda: lambda, Anchor: anchor, Kronecker: k}), penaltyTrainer(t, start, X, y, nil)
	if want <= 0 {
		t.Fatalf("penalty %v: want > 0", want)
	}
	// The gradient: gorgonia's with the penalty minus without it, against
	// central finite differences of the penalty, for every parameter
	// (gradients first: see trainerGradients).
	gw, gwo := trainerGradients(t, with), trainerGradients(t, without)
	if got := trainerObjective(t, with) - trainerObjective(t, without); math.Abs(got-want) > 1e-9*max(1, want) {
		t.Fatalf("K-FAC penalty %.12g, want %.12g", got, want)
	}
	thetaW, thetaWo := with.theta.learnables(), without.theta.learnables()
	const eps = 1e-6
	for node := range thetaW {
		vals, valsWo := thetaW[node].Value().Data().([]float64), thetaWo[node].Value().Data().([]float64)
		for i := range vals {
			orig, origWo := vals[i], valsWo[i]
			penalty := func(d float64) float64 {
				vals[i], valsWo[i] = orig+d, origWo+d
				return trainerObjective(t, with) - trainerObjective(t, without)
			}
			fd := (penalty(eps) - penalty(-eps)) / (2 * eps)
			vals[i], valsWo[i] = orig, origWo
			if got := gw[node][i] - gwo[node][i]; math.Abs(got-fd) > 1e-6*max(1, math.Abs(fd)) {
				t.Errorf("parameter node %d index %d: gradient of the penalty %.9g, finite difference %.9g", node, i, got, fd)
			}
		}
	}
}
