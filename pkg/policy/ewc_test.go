package policy

import (
	"errors"
	"math"
	"testing"
)

// TestEWCPenaltyGradient isolates the EWC penalty: the difference between
// the objective with and without it is (λ/2)·Σ F(θ − θ*)², its gradient
// (gorgonia's, with minus without) is λ·F⊙(θ − θ*), and both match central
// finite differences of the penalty for every parameter.
func TestEWCPenaltyGradient(t *testing.T) {
	t.Parallel()
	const lambda = 2.5
	cfg := Config{Inputs: 3, Hidden: []int{4}}
	X, y := synthetic(6, 3, 8)
	anchor := randomNetwork(t, cfg, 3)
	start := displaced(anchor, 0.5, 9)
	fisher, err := ComputeFisher(anchor, X)
	if err != nil {
		t.Fatal(err)
	}
	with, without := penaltyTrainer(t, start, X, y, &EWC{Lambda: lambda, Anchor: anchor, Fisher: fisher}), penaltyTrainer(t, start, X, y, nil)
	// Gradients first: see trainerGradients.
	gw, gwo := trainerGradients(t, with), trainerGradients(t, without)
	// The penalty in plain Go, over the weights format's layout.
	theta, star, f := flat(start), flat(anchor), fisher.Values()
	var want float64
	for i := range theta {
		want += lambda / 2 * f[i] * (theta[i] - star[i]) * (theta[i] - star[i])
	}
	if got := trainerObjective(t, with) - trainerObjective(t, without); math.Abs(got-want) > 1e-9*max(1, want) {
		t.Fatalf("penalty %.12g, want (λ/2)·Σ F(θ−θ*)² = %.12g", got, want)
	}
	if want == 0 {
		t.Fatal("the penalty is zero: the test checks nothing")
	}
	thetaW, thetaWo := with.theta.learnables(), without.theta.learnables()
	// Parameters in gorgonia's layout: W is in×out (the transpose of the
	// network's out×in), b is 1×out. Map each to the weights format's index.
	offset := 0
	const eps = 1e-6
	for li, l := range start.layers {
		for k, node := range []int{2 * li, 2*li + 1} {
			vals, valsWo := thetaW[node].Value().Data().([]float64), thetaWo[node].Value().Data().([]float64)
			for i := range vals {
				idx := offset + i // bias: same order
				if k == 0 {
					row, col := i/l.out, i%l.out // gorgonia W[row=in][col=out]
					idx = offset + col*l.in + row
				}
				analytic := lambda * f[idx] * (theta[idx] - star[idx])
				if got := gw[node][i] - gwo[node][i]; math.Abs(got-analytic) > 1e-9*max(1, math.Abs(analytic)) {
					t.Errorf("layer %d param %d: gradient of the penalty %.9g, want λ·F·(θ−θ*) = %.9g", li, idx, got, analytic)
				}
				orig, origWo := vals[i], valsWo[i]
				penalty := func(d float64) float64 {
					vals[i], valsWo[i] = orig+d, origWo+d
					return trainerObjective(t, with) - trainerObjective(t, without)
				}
				fd := (penalty(eps) - penalty(-eps)) / (2 * eps)
				vals[i], valsWo[i] = orig, origWo
				if math.Abs(fd-analytic) > 1e-6*max(1, math.Abs(analytic)) {
					t.Errorf("layer %d param %d: finite difference of the penalty %.9g, want %.9g", li, idx, fd, analytic)
				}
			}
			if k == 0 {
				offset += l.in * l.out
			} else {
				offset += l.out
			}
		}
	}
}

// TestFisherSoftmaxRegression checks ComputeFisher against the closed form
// for a network without hidden layers (logits z = W·x̃ + b on the normalised
// input x̃). There ∂log p(a|x)/∂z_j = 1[a=j] − p_j, and the expectation over
// a ~ p of its square is p_j(1 − p_j), so
//
//	F(W_jk) = mean over x of p_j(1 − p_j)·x̃_k²,  F(b_j) = mean of p_j(1 − p_j).
//
// The samples differ, so the test fails for the squared mean gradient
// instead of the mean squared gradient, for a sum instead of a mean, for
// the empirical Fisher (gradients at given labels), and for a layout that
// mixes up W's rows and columns.
func TestFisherSoftmaxRegression(t *testing.T) {
	t.Parallel()
	n := randomNetwork(t, Config{Inputs: 2}, 4)
	X := [][]float64{{0.5, -1}, {2, 3}, {-1.5, 0.25}}
	y := []Action{ActionSell, ActionBuy, ActionSell}
	f, err := ComputeFisher(n, X)
	if err != nil {
		t.Fatal(err)
	}
	emp, err := ComputeEmpiricalFisher(n, X, y)
	if err != nil {
		t.Fatal(err)
	}
	mean, std := n.Normalization()
	l := n.layers[0]
	want := make([]float64, l.out*l.in+l.out) // the weights format: W row-major (out×in), then b
	// The empirical Fisher: (1[y=j] − p_j)² in place of p_j(1 − p_j).
	wantEmp := make([]float64, len(want))
	for r, x := range X {
		xt := make([]float64, len(x))
		for k := range x {
			xt[k] = (x[k] - mean[k]) / std[k]
		}
		var z [NumActions]float64
		maxZ := math.Inf(-1)
		for j := range NumActions {
			z[j] = l.b[j]
			for k := range xt {
				z[j] += l.w[j*l.in+k] * xt[k]
			}
			maxZ = max(maxZ, z[j])
		}
		var sum float64
		for j := range z {
			sum += math.Exp(z[j] - maxZ)
		}
		for j := range NumActions {
			p := math.Exp(z[j]-maxZ) / sum
			e := -p
			if Action(j) == y[r] {
				e++
			}
			for k := range xt {
				want[j*l.in+k] += p * (1 - p) * xt[k] * xt[k] / float64(len(X))
				wantEmp[j*l.in+k] += e * e * xt[k] * xt[k] / float64(len(X))
			}
			want[l.out*l.in+j] += p * (1 - p) / float64(len(X))
			wantEmp[l.out*l.in+j] += e * e / float64(len(X))
		}
	}
	got := f.Values()
	if len(got) != len(want) {
		t.Fatalf("%d Fisher values, want %d", len(got), len(want))
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-12*max(1, want[i]) {
			t.Errorf("Fisher value %d: %.15g, want the closed form %.15g", i, got[i], want[i])
		}
	}
	for i, v := range emp.Values() {
		if math.Abs(v-wantEmp[i]) > 1e-12*max(1, wantEmp[i]) {
			t.Errorf("empirical Fisher value %d: %.15g, want the closed form %.15g", i, v, wantEmp[i])
		}
	}
	if _, err := ComputeEmpiricalFisher(n, X, nil); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("ComputeEmpiricalFisher without labels: error %v, want ErrInvalidInput", err)
	}
}
