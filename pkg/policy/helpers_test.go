package policy

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// randomInputs returns n rows of inputs features, with a share of large magnitudes.
func randomInputs(r *rand.Rand, n, inputs int, scale float64) [][]float64 {
	X := make([][]float64, n)
	for s := range X {
		X[s] = make([]float64, inputs)
		for i := range X[s] {
			X[s][i] = r.NormFloat64() * scale
		}
	}
	return X
}

// randomNetwork returns a network with random weights and a random,
// non-trivial input normalisation.
func randomNetwork(t testing.TB, cfg Config, seed uint64) *Network {
	t.Helper()
	n, err := New(cfg, int64(seed))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 7))
	mean := make([]float64, cfg.Inputs)
	std := make([]float64, cfg.Inputs)
	for i := range mean {
		mean[i] = r.NormFloat64() * 3
		std[i] = 0.1 + 5*r.Float64()
	}
	layers := cloneLayers(n.cfg, n.layers)
	for _, l := range layers {
		for i := range l.b {
			l.b[i] = r.NormFloat64() * 0.5
		}
	}
	return newNetwork(n.cfg, mean, std, layers)
}

func mustMarshal(t testing.TB, n *Network) []byte {
	t.Helper()
	b, err := n.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newTestRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 3)) }

// displaced returns a copy of n with every weight and bias moved by
// scale times a standard normal draw (seeded), so penalties anchored at n
// have something to measure.
func displaced(n *Network, scale float64, seed uint64) *Network {
	out := n.withParams(cloneLayers(n.cfg, n.layers))
	r := rand.New(rand.NewPCG(seed, seed))
	for _, l := range out.layers {
		for i := range l.w {
			l.w[i] += scale * r.NormFloat64()
		}
		for i := range l.b {
			l.b[i] += scale * r.NormFloat64()
		}
	}
	return out
}

// penaltyTrainer builds a trainer from start over every sample of X and y
// (weight 1 each) with ewc's penalty, or none when ewc is nil: the
// difference of two such trainers' objectives is the penalty.
func penaltyTrainer(t testing.TB, start *Network, X [][]float64, y []Action, ewc *EWC) *trainer {
	t.Helper()
	rc, err := TrainConfig{Start: start, EWC: ewc}.resolve(X)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := newTrainer(rc, start, len(X))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.close)
	z := make([]float64, 0, len(X)*len(start.mean))
	for _, x := range X {
		for i, v := range x {
			z = append(z, (v-start.mean[i])/start.std[i])
		}
	}
	w, rows := make([]float64, len(X)), make([]int, len(X))
	for i := range X {
		w[i], rows[i] = 1, i
	}
	tr.fill(z, y, w, rows)
	return tr
}

// trainerObjective runs tr's graph and returns its objective.
func trainerObjective(t testing.TB, tr *trainer) float64 {
	t.Helper()
	v, err := tr.run()
	if err != nil {
		t.Fatal(err)
	}
	tr.vm.Reset()
	return v
}

// trainerGradients runs tr's graph and copies the gradient of each
// learnable. Take gradients before any other run: gorgonia accumulates them
// over runs until an optimizer step clears them.
func trainerGradients(t testing.TB, tr *trainer) [][]float64 {
	t.Helper()
	if _, err := tr.run(); err != nil {
		t.Fatal(err)
	}
	defer tr.vm.Reset()
	var gs [][]float64
	for _, n := range tr.theta.learnables() {
		g, err := n.Grad()
		if err != nil {
			t.Fatal(err)
		}
		gs = append(gs, slices.Clone(g.Data().([]float64)))
	}
	return gs
}
