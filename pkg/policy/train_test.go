package policy

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// synthetic returns a learnable problem: features on different scales and
// offsets, and a label that is the sign of a linear function of them with a
// dead zone for HOLD (roughly a third of the samples each).
func synthetic(n, inputs int, seed uint64) ([][]float64, []Action) {
	r := rand.New(rand.NewPCG(seed, 99))
	X := make([][]float64, n)
	y := make([]Action, n)
	for s := range X {
		x := make([]float64, inputs)
		score := 0.0
		for i := range x {
			u := r.NormFloat64()
			// Scales from 0.01 to 100 and offsets, so normalisation matters.
			x[i] = u*math.Pow(10, float64(i%5-2)) + float64(10*i)
			score += u * float64(1+i%3) * (1 - 2*float64(i%2))
		}
		score /= math.Sqrt(float64(inputs))
		switch {
		case score > 0.6:
			y[s] = ActionBuy
		case score < -0.6:
			y[s] = ActionSell
		default:
			y[s] = ActionHold
		}
		X[s] = x
	}
	return X, y
}

func TestTrainLearns(t *testing.T) {
	t.Parallel()
	X, y := synthetic(3000, 8, 1)
	var counts [NumActions]int
	for _, a := range y {
		counts[a]++
	}
	chance := float64(slices.Max(counts[:])) / float64(len(y))
	var seen []int
	net, stats, err := Train(context.Background(), TrainConfig{
		Config:             Config{Inputs: 8, Hidden: []int{16}},
		Epochs:             12,
		BatchSize:          32,
		LearningRate:       0.01,
		Seed:               7,
		ValidationFraction: 0.2,
		ClassWeights:       true,
	}, X, y, func(s EpochStats) { seen = append(seen, s.Epoch) })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}) || len(stats) != 12 {
		t.Fatalf("progress saw epochs %v, Train returned %d stats; want 1..12", seen, len(stats))
	}
	first, last := stats[0], stats[len(stats)-1]
	t.Logf("chance %.3f; epoch 1: %+v; epoch %d: %+v", chance, first, last.Epoch, last)
	if !(last.Loss < 0.7*first.Loss) || !(last.ValLoss < first.ValLoss) || !(last.Objective < first.Objective) {
		t.Errorf("loss did not decrease: first %+v, last %+v", first, last)
	}
	// Fresh samples of the same rule: the network generalises, far above
	// the majority-class rate (about 0.4).
	Xtest, ytest := synthetic(2000, 8, 2)
	loss, acc := Evaluate(net, Xtest, ytest)
	if acc < 0.85 || last.ValAccuracy < 0.85 {
		t.Errorf("held-out accuracy %.3f (validation split %.3f), want ≥ 0.85 (chance %.3f)", acc, last.ValAccuracy, chance)
	}
	if !(loss < 0.5) {
		t.Errorf("held-out loss %.3f, want < 0.5 (uniform guessing: %.3f)", loss, math.Log(3))
	}
	// The normalisation was fitted on the data: feature 4 has scale 100 and offset 40.
	mean, std := net.Normalization()
	if math.Abs(mean[4]-40) > 10 || math.Abs(std[4]-100) > 10 {
		t.Errorf("normalisation of feature 4: mean %.2f std %.2f, want about 40 and 100", mean[4], std[4])
	}
}

func TestTrainDeterministic(t *testing.T) {
	t.Parallel()
	X, y := synthetic(300, 5, 3)
	for _, opt := range []string{OptimizerAdam, OptimizerMomentum} {
		cfg := TrainConfig{
			Config:             Config{Inputs: 5, Hidden: []int{8, 4}, Activation: "relu"},
			Epochs:             3,
			BatchSize:          16, // 300 = 18·16 + 12: the last batch is padded
			Optimizer:          opt,
			L2:                 1e-4,
			Seed:               11,
			ValidationFraction: 0.1,
			ClassWeights:       true,
		}
		train := func(seed int64) ([]byte, []EpochStats) {
			c := cfg
			c.Seed = seed
			n, stats, err := Train(context.Background(), c, X, y, nil)
			if err != nil {
				t.Fatal(err)
			}
			return mustMarshal(t, n), stats
		}
		a, statsA := train(11)
		b, statsB := train(11)
		c, _ := train(12)
		if !bytes.Equal(a, b) || !slices.Equal(statsA, statsB) {
			t.Errorf("%s: two runs with the same seed differ", opt)
		}
		if bytes.Equal(a, c) {
			t.Errorf("%s: runs with different seeds gave the same weights", opt)
		}
	}
}

func TestTrainFineTune(t *testing.T) {
	t.Parallel()
	X, y := synthetic(400, 4, 5)
	base, _, err := Train(context.Background(), TrainConfig{Config: Config{Hidden: []int{6}}, Epochs: 2, Seed: 1}, X, y, nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Inputs() != 4 {
		t.Fatalf("Inputs() = %d, want 4 taken from the data", base.Inputs())
	}
	// New data with another distribution: fine-tuning keeps the start's normalisation.
	X2, y2 := synthetic(200, 4, 6)
	for _, x := range X2 {
		x[0] += 1000
	}
	tuned, _, err := Train(context.Background(), TrainConfig{Start: base, Epochs: 2, Seed: 2}, X2, y2, nil)
	if err != nil {
		t.Fatal(err)
	}
	m0, s0 := base.Normalization()
	m1, s1 := tuned.Normalization()
	if !slices.Equal(m0, m1) || !slices.Equal(s0, s1) || !tuned.Config().Equal(base.Config()) {
		t.Error("fine-tuning changed the network's shape or normalisation")
	}
	if bytes.Equal(mustMarshal(t, base), mustMarshal(t, tuned)) {
		t.Error("fine-tuning did not change the weights")
	}
	// EWC with λ = 0 is plain fine-tuning.
	fisher, err := ComputeFisher(base, X)
	if err != nil {
		t.Fatal(err)
	}
	ewc0, _, err := Train(context.Background(), TrainConfig{EWC: &EWC{Lambda: 0, Anchor: base, Fisher: fisher}, Epochs: 2, Seed: 2}, X2, y2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustMarshal(t, tuned), mustMarshal(t, ewc0)) {
		t.Error("EWC with λ = 0 differs from plain fine-tuning")
	}
}

func TestTrainBadInput(t *testing.T) {
	t.Parallel()
	X, y := synthetic(20, 3, 1)
	ok := TrainConfig{Config: Config{Inputs: 3, Hidden: []int{4}}, Epochs: 1}
	other := mustNew(t, Config{Inputs: 3, Hidden: []int{5}}, 1)
	start := mustNew(t, Config{Inputs: 3, Hidden: []int{4}}, 1)
	fisherOther, err := ComputeFisher(other, X)
	if err != nil {
		t.Fatal(err)
	}
	kronOther, err := ComputeKroneckerFisher(other, X)
	if err != nil {
		t.Fatal(err)
	}
	fisherStart, err := ComputeFisher(start, X)
	if err != nil {
		t.Fatal(err)
	}
	kronStart, err := ComputeKroneckerFisher(start, X)
	if err != nil {
		t.Fatal(err)
	}
	nan := slices.Clone(X)
	nan[4] = []float64{1, math.NaN(), 2}
	tests := []struct {
		name  string
		cfg   func(*TrainConfig)
		X     [][]float64
		y     []Action
		kind  error
		wants string
	}{
		{"no samples", nil, nil, nil, ErrInvalidInput, "no samples"},
		{"no labels", nil, X, nil, ErrInvalidInput, "no labels"},
		{"short labels", nil, X, y[:5], ErrInvalidInput, "20 samples but 5 labels"},
		{"bad label", nil, X, append(slices.Clone(y[:19]), 3), ErrInvalidInput, "sample 19: label 3 is not an action"},
		{"NaN", nil, nan, y, ErrInvalidInput, "sample 4: feature 1 is NaN"},
		{"row length", func(c *TrainConfig) { c.Inputs = 4 }, X, y, ErrInvalidInput, "sample 0 has 3 features, the model takes 4"},
		{"epochs", func(c *TrainConfig) { c.Epochs = -1 }, X, y, ErrInvalidConfig, "epochs must be in [1, 1000000], got -1"},
		{"batch", func(c *TrainConfig) { c.BatchSize = -5 }, X, y, ErrInvalidConfig, "batch size must be ≥ 1, got -5"},
		{"learning rate", func(c *TrainConfig) { c.LearningRate = math.NaN() }, X, y, ErrInvalidConfig, "learning rate must be finite and > 0, got NaN"},
		{"optimizer", func(c *TrainConfig) { c.Optimizer = "sgd" }, X, y, ErrInvalidConfig, `optimizer must be "adam" or "momentum", got "sgd"`},
		{"momentum", func(c *TrainConfig) { c.Optimizer, c.Momentum = OptimizerMomentum, 1 }, X, y, ErrInvalidConfig, "momentum must be in [0, 1), got 1"},
		{"L2", func(c *TrainConfig) { c.L2 = -1 }, X, y, ErrInvalidConfig, "L2 must be finite and ≥ 0, got -1"},
		{"validation", func(c *TrainConfig) { c.ValidationFraction = 0.9 }, X, y, ErrInvalidConfig, "validation fraction must be in [0, 0.5], got 0.9"},
		{"validation of one", func(c *TrainConfig) { c.ValidationFraction = 0.5 }, X[:1], y[:1], ErrInvalidInput, "too few to hold out a validation split"},
		{"config", func(c *TrainConfig) { c.Activation = "gelu" }, X, y, ErrInvalidConfig, `got "gelu"`},
		{"start shape", func(c *TrainConfig) { c.Start = other }, X, y, ErrInvalidConfig, "config 3-4-3 tanh differs from the starting network's 3-5-3 tanh"},
		{"EWC lambda", func(c *TrainConfig) { c.EWC = &EWC{Lambda: -1, Anchor: start, Fisher: fisherOther} }, X, y, ErrInvalidConfig, "EWC lambda must be finite and ≥ 0, got -1"},
		{"EWC anchor", func(c *TrainConfig) { c.EWC = &EWC{Lambda: 1, Fisher: fisherOther} }, X, y, ErrInvalidConfig, "EWC needs an anchor network"},
		{"EWC fisher", func(c *TrainConfig) { c.EWC = &EWC{Lambda: 1, Anchor: start} }, X, y, ErrInvalidConfig, "EWC needs a Fisher estimate"},
		{"EWC shapes", func(c *TrainConfig) { c.EWC = &EWC{Lambda: 1, Anchor: start, Fisher: fisherOther} }, X, y, ErrInvalidConfig, "EWC Fisher is for 3-5-3 tanh, the anchor is 3-4-3 tanh"},
		{"EWC Kronecker shapes", func(c *TrainConfig) { c.EWC = &EWC{Lambda: 1, Anchor: start, Kronecker: kronOther} }, X, y, ErrInvalidConfig, "EWC Fisher is for 3-5-3 tanh, the anchor is 3-4-3 tanh"},
		{"EWC two estimates", func(c *TrainConfig) {
			c.EWC = &EWC{Lambda: 1, Anchor: start, Fisher: fisherStart, Kronecker: kronStart}
		}, X, y, ErrInvalidConfig, "EWC takes one Fisher estimate"},
		{"EWC anchor shape", func(c *TrainConfig) {
			c.Start = start
			c.EWC = &EWC{Lambda: 1, Anchor: other, Fisher: fisherOther}
		}, X, y, ErrInvalidConfig, "EWC anchor is 3-5-3 tanh, the network trained is 3-4-3 tanh"},
	}
	for _, tt := range tests {
		cfg := ok
		if tt.cfg != nil {
			tt.cfg(&cfg)
		}
		n, stats, err := Train(context.Background(), cfg, tt.X, tt.y, nil)
		if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.wants) || n != nil || stats != nil {
			t.Errorf("%s: Train = %v, %d stats, error %v; want %v containing %q", tt.name, n, len(stats), err, tt.kind, tt.wants)
		}
	}
}

func TestTrainCancel(t *testing.T) {
	t.Parallel()
	X, y := synthetic(200, 3, 1)
	ctx, cancel := context.WithCancel(context.Background())
	epochs := 0
	_, _, err := Train(ctx, TrainConfig{Config: Config{Inputs: 3}, Epochs: 100, BatchSize: 8}, X, y, func(EpochStats) {
		if epochs++; epochs == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || epochs != 2 {
		t.Errorf("after cancel in epoch 2: %d epochs, error %v; want 2 and context.Canceled", epochs, err)
	}
}

func TestTrainDiverges(t *testing.T) {
	t.Parallel()
	X, y := synthetic(200, 3, 1)
	_, _, err := Train(context.Background(), TrainConfig{
		Config: Config{Inputs: 3, Hidden: []int{8}, Activation: "relu"}, Epochs: 50, BatchSize: 4,
		Optimizer: OptimizerMomentum, LearningRate: 1e6,
	}, X, y, nil)
	if err == nil || !strings.Contains(err.Error(), "diverged") {
		t.Errorf("learning rate 1e6: error %v, want a divergence error", err)
	}
}

// TestObjectiveGradient checks gorgonia's gradient of the whole training
// objective (weighted cross-entropy of a padded batch, L2 and EWC penalties)
// against central finite differences, for every parameter.
func TestObjectiveGradient(t *testing.T) {
	t.Parallel()
	for _, act := range []string{ActivationTanh, ActivationReLU} {
		cfg := Config{Inputs: 3, Hidden: []int{4, 3}, Activation: act}
		X, y := synthetic(7, 3, 4)
		anchor := randomNetwork(t, cfg, 1)
		start := anchor.withParams(cloneLayers(anchor.cfg, anchor.layers))
		r := rand.New(rand.NewPCG(5, 5))
		for _, l := range start.layers {
			for i := range l.w {
				l.w[i] += 0.3 * r.NormFloat64()
			}
		}
		fisher, err := ComputeFisher(anchor, X)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := TrainConfig{Start: start, L2: 0.1, EWC: &EWC{Lambda: 3, Anchor: anchor, Fisher: fisher}}.resolve(X)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := newTrainer(rc, start, 10) // 7 samples in a batch of 10: 3 padding rows
		if err != nil {
			t.Fatal(err)
		}
		z := make([]float64, 0, len(X)*3)
		for _, x := range X {
			for i, v := range x {
				z = append(z, (v-start.mean[i])/start.std[i])
			}
		}
		rows := []int{0, 1, 2, 3, 4, 5, 6}
		tr.fill(z, y, []float64{1, 2, 1, 0.5, 1, 3, 1}, rows)
		objective := func() float64 {
			v, err := tr.run()
			if err != nil {
				t.Fatal(err)
			}
			tr.vm.Reset()
			return v
		}
		// Analytic gradients.
		if _, err := tr.run(); err != nil {
			t.Fatal(err)
		}
		var grads [][]float64
		for _, n := range tr.theta.learnables() {
			g, err := n.Grad()
			if err != nil {
				t.Fatal(err)
			}
			grads = append(grads, slices.Clone(g.Data().([]float64)))
		}
		tr.vm.Reset()
		const eps = 1e-6
		for pi, n := range tr.theta.learnables() {
			vals := n.Value().Data().([]float64)
			for i := range vals {
				orig := vals[i]
				vals[i] = orig + eps
				up := objective()
				vals[i] = orig - eps
				down := objective()
				vals[i] = orig
				fd := (up - down) / (2 * eps)
				if math.Abs(fd-grads[pi][i]) > 1e-6*max(1, math.Abs(fd)) {
					t.Errorf("%s: %s[%d]: gorgonia gradient %.9g, finite difference %.9g", act, n.Name(), i, grads[pi][i], fd)
				}
			}
		}
		tr.close()
	}
}

// TestGradLogProb checks the plain Go back-propagation behind ComputeFisher
// against finite differences of log p(a|x) through Predict.
func TestGradLogProb(t *testing.T) {
	t.Parallel()
	for _, act := range []string{ActivationTanh, ActivationReLU} {
		n := randomNetwork(t, Config{Inputs: 4, Hidden: []int{5, 3}, Activation: act}, 3)
		x := []float64{0.3, -1.2, 2, 0.7}
		logp := func(net *Network, a Action) float64 {
			var out Output
			if err := net.Predict(x, &out); err != nil {
				t.Fatal(err)
			}
			return -out.nll(a)
		}
		bp := newBackprop(n)
		if err := bp.forward(x); err != nil {
			t.Fatal(err)
		}
		for a := range Action(NumActions) {
			bp.gradLogProb(a)
			layers := cloneLayers(n.cfg, n.layers)
			probe := n.withParams(layers)
			for li := range layers {
				for _, p := range []struct {
					vals, grad []float64
				}{{layers[li].w, bp.grad[li].w}, {layers[li].b, bp.grad[li].b}} {
					for i := range p.vals {
						const eps = 1e-6
						orig := p.vals[i]
						p.vals[i] = orig + eps
						up := logp(probe, a)
						p.vals[i] = orig - eps
						down := logp(probe, a)
						p.vals[i] = orig
						if fd := (up - down) / (2 * eps); math.Abs(fd-p.grad[i]) > 1e-6 {
							t.Errorf("%s: ∂log p(%v)/∂ layer %d param %d: backprop %.9g, finite difference %.9g", act, a, li, i, p.grad[i], fd)
						}
					}
				}
			}
		}
	}
}

func TestFisher(t *testing.T) {
	t.Parallel()
	n := randomNetwork(t, Config{Inputs: 3, Hidden: []int{4}}, 2)
	X, _ := synthetic(50, 3, 8)
	f, err := ComputeFisher(n, X)
	if err != nil {
		t.Fatal(err)
	}
	v := f.Values()
	if len(v) != n.NumParams() || f.Samples() != 50 || !f.Config().Equal(n.Config()) {
		t.Fatalf("Fisher has %d values for %d samples, %s; want %d, 50, %s", len(v), f.Samples(), f.Config(), n.NumParams(), n.Config())
	}
	positive := 0
	for _, x := range v {
		if x < 0 || math.IsNaN(x) {
			t.Fatalf("Fisher value %v", x)
		}
		if x > 0 {
			positive++
		}
	}
	if positive < len(v)/2 {
		t.Errorf("only %d of %d Fisher values are positive", positive, len(v))
	}
	back, err := FisherFromValues(f.Config(), v, f.Samples())
	if err != nil || !slices.Equal(back.Values(), v) || back.Samples() != 50 {
		t.Errorf("FisherFromValues(Values()) = %v, %v; want the same estimate", back, err)
	}
	neg := slices.Clone(v)
	neg[3] = -1
	if _, err := FisherFromValues(f.Config(), neg, 1); !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "Fisher value 3 is -1") {
		t.Errorf("FisherFromValues with a negative value: %v", err)
	}
	if _, err := FisherFromValues(f.Config(), v[:3], 1); !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "3 Fisher values for 3-4-3 tanh, which has 31 parameters") {
		t.Errorf("FisherFromValues with 3 values: %v", err)
	}
	g, err := f.Combine(0.5, f)
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range g.Values() {
		if math.Abs(x-1.5*v[i]) > 1e-15*x {
			t.Fatalf("Combine(0.5, f)[%d] = %v, want 1.5·%v", i, x, v[i])
		}
	}
	if _, err := f.Combine(2, f); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Combine(γ = 2): error %v, want ErrInvalidConfig", err)
	}
	other, _ := ComputeFisher(randomNetwork(t, Config{Inputs: 3}, 2), X)
	if _, err := f.Combine(0.5, other); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Combine of different shapes: error %v, want ErrInvalidConfig", err)
	}
	if _, err := ComputeFisher(n, [][]float64{{1, 2}}); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("ComputeFisher on 2 features: error %v, want ErrInvalidInput", err)
	}
}

// TestEWCHoldsImportantWeights: fine-tuning on other data under a strong
// EWC penalty moves the parameters that mattered for the old data (by the
// Fisher-weighted distance) much less than plain fine-tuning does.
func TestEWCHoldsImportantWeights(t *testing.T) {
	t.Parallel()
	XA, yA := synthetic(600, 4, 21)
	anchor, _, err := Train(context.Background(), TrainConfig{Config: Config{Inputs: 4, Hidden: []int{8}}, Epochs: 5, LearningRate: 0.01, Seed: 1}, XA, yA, nil)
	if err != nil {
		t.Fatal(err)
	}
	fisher, err := ComputeFisher(anchor, XA)
	if err != nil {
		t.Fatal(err)
	}
	// Task B: the opposite rule.
	XB, yB := synthetic(600, 4, 22)
	for i := range yB {
		yB[i] = NumActions - 1 - yB[i]
	}
	tune := func(ewc *EWC) *Network {
		n, _, err := Train(context.Background(), TrainConfig{Start: anchor, EWC: ewc, Epochs: 5, LearningRate: 0.01, Seed: 2}, XB, yB, nil)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	dist := func(n *Network) float64 {
		var d float64
		f, a, p := fisher.Values(), flat(anchor), flat(n)
		for i := range f {
			d += f[i] * (p[i] - a[i]) * (p[i] - a[i])
		}
		return d
	}
	plain, held := dist(tune(nil)), dist(tune(&EWC{Lambda: 100, Anchor: anchor, Fisher: fisher}))
	_, accPlain := Evaluate(tune(nil), XA, yA)
	_, accHeld := Evaluate(tune(&EWC{Lambda: 100, Anchor: anchor, Fisher: fisher}), XA, yA)
	t.Logf("Fisher-weighted drift: plain %.4g, EWC %.4g; accuracy on A: plain %.3f, EWC %.3f", plain, held, accPlain, accHeld)
	if !(held < plain/4) {
		t.Errorf("EWC drift %.4g is not well below plain fine-tuning's %.4g", held, plain)
	}
}

func flat(n *Network) []float64 {
	var v []float64
	for _, l := range n.layers {
		v = append(v, l.w...)
		v = append(v, l.b...)
	}
	return v
}
