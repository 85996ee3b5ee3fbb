package dpgmm

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
)

// threeGaussians draws n samples from each of three well-separated Gaussians
// in 4 dimensions, each with its own correlated covariance, shuffled.
func threeGaussians(n int, seed uint64) (X [][]float64, labels []int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	centers := [][]float64{{0, 0, 0, 0}, {8, 8, 0, 0}, {0, 8, 8, -8}}
	scales := []float64{1, 0.6, 1.4}
	for c, mu := range centers {
		var A [4][4]float64
		for i := range 4 {
			for j := range 4 {
				A[i][j] = 0.3 * rng.NormFloat64()
			}
			A[i][i] += 1
		}
		for range n {
			var z [4]float64
			for i := range z {
				z[i] = rng.NormFloat64()
			}
			x := make([]float64, 4)
			for i := range 4 {
				for j := range 4 {
					x[i] += A[i][j] * z[j]
				}
				x[i] = mu[i] + scales[c]*x[i]
			}
			X = append(X, x)
			labels = append(labels, c)
		}
	}
	rng.Shuffle(len(X), func(i, j int) {
		X[i], X[j] = X[j], X[i]
		labels[i], labels[j] = labels[j], labels[i]
	})
	return X, labels
}

// TestSynthetic: three well-separated Gaussians in 4 dimensions, 1,500
// samples, K = 10: the fit keeps exactly 3 components above 1% and its
// argmax recovers the truth (adjusted Rand index >= 0.95). Run on data drawn
// here and on golden.py's synthetic data, with several seeds.
func TestSynthetic(t *testing.T) {
	t.Parallel()
	Xg, yg := threeGaussians(500, 1)
	Xs, ys := readCSV(t, "synthetic.csv")
	for _, tc := range []struct {
		name string
		X    [][]float64
		y    []int
	}{{"go", Xg, yg}, {"golden.py", Xs, ys}} {
		for seed := range int64(3) {
			m, rep, err := Fit(context.Background(), tc.X, Config{Components: 10, Seed: seed})
			if err != nil {
				t.Fatal(err)
			}
			eff := m.Effective(0.01)
			out := make([]float64, m.Components())
			pred := make([]int, len(tc.X))
			for i, x := range tc.X {
				pred[i] = m.Predict(x, out)
			}
			ari := adjustedRandIndex(pred, tc.y)
			if len(eff) != 3 || ari < 0.95 {
				t.Errorf("%s data, seed %d: %d effective components (weights %.3f), ARI %.4f; want 3 and >= 0.95", tc.name, seed, len(eff), m.Weights(), ari)
			}
			t.Logf("%s data, seed %d: %d effective components, ARI %.4f, %d iterations, converged %v, lower bound %.6g", tc.name, seed, len(eff), ari, rep.Iterations, rep.Converged, rep.LowerBound)
		}
	}
}

func TestAdjustedRandIndex(t *testing.T) {
	t.Parallel()
	if got := adjustedRandIndex([]int{0, 0, 1, 1, 2, 2}, []int{5, 5, 3, 3, 9, 9}); got != 1 {
		t.Errorf("relabelled identical partition: ARI %v, want 1", got)
	}
	// sklearn.metrics.adjusted_rand_score([0,0,0,1,1,1], [0,0,1,1,2,2]) = 0.24242424...
	if got := adjustedRandIndex([]int{0, 0, 0, 1, 1, 1}, []int{0, 0, 1, 1, 2, 2}); math.Abs(got-0.24242424242424243) > 1e-12 {
		t.Errorf("ARI %v, want 0.242424...", got)
	}
}

// TestDeterministic: the same data, config and seed give the same bytes,
// whatever the number of goroutines; another seed gives another model.
func TestDeterministic(t *testing.T) {
	t.Parallel()
	X, _ := readCSV(t, "eustock_dax_z.csv")
	for _, init := range []Init{InitKMeans, InitKMeansPlusPlus, InitRandom, InitRandomFromData} {
		var first []byte
		for _, workers := range []int{1, 2, 3, 1} {
			m, _, err := Fit(context.Background(), X, Config{Components: 6, MaxIter: 15, NInit: 2, Init: init, Seed: 42, Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := m.MarshalBinary()
			if first == nil {
				first = b
			} else if !bytes.Equal(b, first) {
				t.Fatalf("init %v, %d workers: different bytes from the same seed", init, workers)
			}
		}
		m, _, err := Fit(context.Background(), X, Config{Components: 6, MaxIter: 15, NInit: 2, Init: init, Seed: 43})
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := m.MarshalBinary(); bytes.Equal(b, first) {
			t.Errorf("init %v: seeds 42 and 43 give the same model", init)
		}
	}
}

// TestReport: the report describes the kept initialisation, and the kept
// one has the highest final lower bound.
func TestReport(t *testing.T) {
	t.Parallel()
	X, _ := readCSV(t, "eustock_dax_z.csv")
	m, rep, err := Fit(context.Background(), X, Config{Components: 5, NInit: 4, MaxIter: 30, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.InitLowerBounds) != 4 || rep.InitLowerBounds[rep.BestInit] != rep.LowerBound {
		t.Fatalf("init lower bounds %v, best %d, lower bound %v", rep.InitLowerBounds, rep.BestInit, rep.LowerBound)
	}
	for i, lb := range rep.InitLowerBounds {
		if lb > rep.LowerBound {
			t.Errorf("initialisation %d reached %v, above the kept %v", i, lb, rep.LowerBound)
		}
	}
	if len(rep.LowerBounds) != rep.Iterations || rep.LowerBounds[rep.Iterations-1] != rep.LowerBound {
		t.Errorf("%d lower bounds for %d iterations, last %v, final %v", len(rep.LowerBounds), rep.Iterations, rep.LowerBounds[len(rep.LowerBounds)-1], rep.LowerBound)
	}
	if rep.Converged != (rep.Iterations < 30) {
		t.Errorf("converged %v after %d of 30 iterations", rep.Converged, rep.Iterations)
	}
	c := m.Config()
	if c.Components != 5 || c.WeightConcentration != 0.2 || c.MeanPrecision != 1 || c.DegreesOfFreedom != 6 ||
		c.Tol != 1e-3 || c.RegCovar != 1e-6 || c.MaxIter != 30 || c.NInit != 4 || c.Seed != 3 ||
		len(c.MeanPrior) != 6 || len(c.CovariancePrior) != 36 {
		t.Errorf("model config %+v, want the defaults filled in", c)
	}
	// The data are z-scored: mean 0, covariance with unit diagonal (N−1 divisor).
	n := float64(len(X))
	for j := range 6 {
		if math.Abs(c.MeanPrior[j]) > 1e-12 || math.Abs(c.CovariancePrior[j*6+j]-n/(n-1)) > 1e-12 {
			t.Errorf("feature %d: prior mean %v, prior variance %v; want the data's (0, N/(N−1))", j, c.MeanPrior[j], c.CovariancePrior[j*6+j])
		}
	}
	sum := 0.0
	for _, w := range m.Weights() {
		sum += w
	}
	if math.Abs(sum-1) > 1e-12 {
		t.Errorf("weights sum to %v", sum)
	}
}

// TestBadInput: every invalid input fails with an *InputError naming it
// (and wrapping ErrInvalidInput), never a panic.
func TestBadInput(t *testing.T) {
	t.Parallel()
	good, _ := threeGaussians(20, 2) // 60 × 4
	with := func(i, j int, v float64) [][]float64 {
		X := make([][]float64, len(good))
		for r := range good {
			X[r] = append([]float64(nil), good[r]...)
		}
		X[i][j] = v
		return X
	}
	eye := func(d int) []float64 {
		a := make([]float64, d*d)
		for i := range d {
			a[i*d+i] = 1
		}
		return a
	}
	asym := eye(4)
	asym[1] = 0.5
	notPD := eye(4)
	notPD[0], notPD[1], notPD[4], notPD[5] = 1, 2, 2, 1
	nanCov := eye(4)
	nanCov[5] = math.NaN()
	constant := with(0, 0, 0)
	for i := range constant {
		constant[i][2] = 3
	}
	collinear := with(0, 0, good[0][0])
	for i := range collinear {
		collinear[i][3] = 2*collinear[i][0] - collinear[i][1]
	}
	resp := func(n, k int, v float64) [][]float64 {
		r := make([][]float64, n)
		for i := range r {
			r[i] = make([]float64, k)
			r[i][0] = v
		}
		return r
	}
	for _, tc := range []struct {
		name  string
		X     [][]float64
		cfg   Config
		field string
		says  string
	}{
		{"no samples", nil, Config{}, "X", "no samples"},
		{"no features", [][]float64{{}, {}}, Config{}, "X[0]", "no features"},
		{"ragged", append(good[:5:5], []float64{1, 2}), Config{Components: 2}, "X[5]", "2 features, X[0] has 4"},
		{"NaN", with(7, 2, math.NaN()), Config{}, "X[7][2]", "NaN"},
		{"+Inf", with(3, 0, math.Inf(1)), Config{}, "X[3][0]", "+Inf"},
		{"-Inf", with(59, 3, math.Inf(-1)), Config{}, "X[59][3]", "-Inf"},
		{"one sample", good[:1], Config{Components: 1}, "X", "1 sample, need at least 2"},
		{"fewer samples than features", good[:3], Config{Components: 1}, "X", "3 samples of 4 features"},
		{"as many samples as features", good[:4], Config{Components: 1}, "X", "4 samples of 4 features: the data covariance"},
		{"fewer samples than components", good[:8], Config{Components: 9}, "Components", "9 components for 8 samples"},
		{"K < 1", good, Config{Components: -1}, "Components", "-1, want 1 to"},
		{"K too large", good, Config{Components: MaxComponents + 1}, "Components", "want 1 to 10000"},
		{"weight concentration < 0", good, Config{WeightConcentration: -1}, "WeightConcentration", "> 0"},
		{"weight concentration NaN", good, Config{WeightConcentration: math.NaN()}, "WeightConcentration", "NaN"},
		{"mean precision < 0", good, Config{MeanPrecision: -0.5}, "MeanPrecision", "> 0"},
		{"mean precision +Inf", good, Config{MeanPrecision: math.Inf(1)}, "MeanPrecision", "+Inf"},
		{"mean prior length", good, Config{MeanPrior: []float64{0, 0, 0}}, "MeanPrior", "3 values for 4 features"},
		{"mean prior NaN", good, Config{MeanPrior: []float64{0, math.NaN(), 0, 0}}, "MeanPrior[1]", "NaN"},
		{"dof = D - 1", good, Config{DegreesOfFreedom: 3}, "DegreesOfFreedom", "> 3"},
		{"dof < 0", good, Config{DegreesOfFreedom: -4}, "DegreesOfFreedom", "> 3"},
		{"dof NaN", good, Config{DegreesOfFreedom: math.NaN()}, "DegreesOfFreedom", "NaN"},
		{"covariance prior length", good, Config{CovariancePrior: eye(3)}, "CovariancePrior", "9 values, want 4×4 = 16"},
		{"covariance prior asymmetric", good, Config{CovariancePrior: asym}, "CovariancePrior", "not symmetric"},
		{"covariance prior not PD", good, Config{CovariancePrior: notPD}, "CovariancePrior", "not positive definite"},
		{"covariance prior NaN", good, Config{CovariancePrior: nanCov}, "CovariancePrior[1][1]", "NaN"},
		{"tol < 0", good, Config{Tol: -1e-3}, "Tol", "> 0"},
		{"reg covar < 0", good, Config{RegCovar: -2}, "RegCovar", "> 0"},
		{"reg covar NaN", good, Config{RegCovar: math.NaN()}, "RegCovar", "NaN"},
		{"max iter < 0", good, Config{MaxIter: -1}, "MaxIter", ">= 1"},
		{"n init < 0", good, Config{NInit: -2}, "NInit", ">= 1"},
		{"unknown init", good, Config{Init: 9}, "Init", "9 is not a method"},
		{"workers < 0", good, Config{Workers: -1}, "Workers", ">= 0"},
		{"constant feature", constant, Config{}, "X", "feature 2 is constant"},
		{"collinear features", collinear, Config{}, "X", "linearly dependent"},
		{"init resp rows", good, Config{Components: 3, InitResp: resp(59, 3, 1)}, "InitResp", "59 rows for 60 samples"},
		{"init resp columns", good, Config{Components: 3, InitResp: resp(60, 2, 1)}, "InitResp[0]", "2 values for 3 components"},
		{"init resp negative", good, Config{Components: 3, InitResp: resp(60, 3, -1)}, "InitResp[0][0]", ">= 0"},
		{"init resp NaN", good, Config{Components: 3, InitResp: resp(60, 3, math.NaN())}, "InitResp[0][0]", "NaN"},
		{"init resp with n init", good, Config{Components: 3, NInit: 2, InitResp: resp(60, 3, 1)}, "NInit", "want 1"},
	} {
		m, _, err := Fit(context.Background(), tc.X, tc.cfg)
		var ie *InputError
		switch {
		case !errors.Is(err, ErrInvalidInput) || !errors.As(err, &ie):
			t.Errorf("%s: got %v, want an *InputError", tc.name, err)
		case ie.Field != tc.field || !strings.Contains(err.Error(), tc.says):
			t.Errorf("%s: got field %q, %q; want field %q and a message with %q", tc.name, ie.Field, err, tc.field, tc.says)
		case m != nil:
			t.Errorf("%s: a model with the error", tc.name)
		}
	}
	// The boundary cases that are valid.
	for _, cfg := range []Config{
		{Components: 1},
		{Components: 60},
		{DegreesOfFreedom: 3.0001},
		{RegCovar: NoRegCovar},
		{CovariancePrior: eye(4), MeanPrior: []float64{1, 2, 3, 4}},
	} {
		if _, _, err := Fit(context.Background(), good, cfg); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	if _, _, err := Fit(context.Background(), good[:4], Config{Components: 1, CovariancePrior: eye(4)}); err != nil {
		t.Errorf("N = D with a covariance prior: %v", err)
	}
}

// cancelAfter is a context whose Err reports Canceled from its n-th call on.
type cancelAfter struct {
	context.Context
	n, calls atomic.Int64
}

func (c *cancelAfter) Err() error {
	if c.calls.Add(1) >= c.n.Load() {
		return context.Canceled
	}
	return nil
}

// TestCancel: a cancelled context stops the fit between iterations, with the
// context's error and no model.
func TestCancel(t *testing.T) {
	t.Parallel()
	X, _ := readCSV(t, "eustock_dax_z.csv")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if m, _, err := Fit(ctx, X, Config{}); !errors.Is(err, context.Canceled) || m != nil {
		t.Fatalf("cancelled before: %v", err)
	}
	for _, tc := range []struct {
		init  Init
		calls int64
		says  string
	}{
		{InitRandom, 5, "after 3 iterations of initialisation 0"},
		{InitKMeans, 3, "in initialisation 0"}, // inside the k-means iterations
		{InitRandomFromData, 2, "after 0 iterations"},
	} {
		ctx := &cancelAfter{Context: context.Background()}
		ctx.n.Store(tc.calls)
		m, _, err := Fit(ctx, X, Config{Init: tc.init})
		if !errors.Is(err, context.Canceled) || m != nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("init %v, cancelled at ctx.Err call %d: %v; want context.Canceled saying %q", tc.init, tc.calls, err, tc.says)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 0)
	defer cancel()
	if _, _, err := Fit(ctx, X, Config{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired deadline: %v", err)
	}
}

// TestInitMethods: every initialisation gives a sensible fit of the
// synthetic data, and InitResp one-hot rows of the truth converge to it.
func TestInitMethods(t *testing.T) {
	t.Parallel()
	X, y := threeGaussians(200, 3)
	for _, init := range []Init{InitKMeans, InitKMeansPlusPlus, InitRandom, InitRandomFromData} {
		m, rep, err := Fit(context.Background(), X, Config{Components: 8, Init: init, NInit: 2, MaxIter: 500, Seed: 5})
		if err != nil {
			t.Fatal(err)
		}
		out := make([]float64, m.Components())
		pred := make([]int, len(X))
		for i, x := range X {
			pred[i] = m.Predict(x, out)
		}
		if ari := adjustedRandIndex(pred, y); ari < 0.95 {
			t.Errorf("init %v: ARI %.3f after %d iterations (weights %.3f)", init, ari, rep.Iterations, m.Weights())
		}
		if got := init.String(); got != initNames[init] {
			t.Errorf("Init(%d).String() = %q", int(init), got)
		}
	}
	resp := make([][]float64, len(X))
	for i := range resp {
		resp[i] = make([]float64, 3)
		resp[i][y[i]] = 1
	}
	m, _, err := Fit(context.Background(), X, Config{Components: 3, InitResp: resp})
	if err != nil {
		t.Fatal(err)
	}
	if w := m.Weights(); math.Abs(w[0]-1.0/3) > 0.01 || math.Abs(w[1]-1.0/3) > 0.01 {
		t.Errorf("from the true labels: weights %.4f, want about 1/3 each", w)
	}
	if got := Init(7).String(); got != "Init(7)" {
		t.Errorf("Init(7).String() = %q", got)
	}
}

func TestKMeansEmptyClusters(t *testing.T) {
	t.Parallel()
	// 12 samples at 3 distinct points, 5 clusters: k-means++ picks
	// duplicates, Lloyd must reseed empty clusters without failing.
	var x []float64
	for i := range 12 {
		x = append(x, float64(i%3), float64(i%3)*2)
	}
	labels, err := kmeans(context.Background(), x, 12, 2, 5, newRNG(1))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range labels {
		if l < 0 || l >= 5 {
			t.Fatalf("label %d of sample %d", l, i)
		}
		if labels[i%3] != l {
			t.Errorf("samples %d and %d are equal but labelled %d and %d", i%3, i, labels[i%3], l)
		}
	}
}
