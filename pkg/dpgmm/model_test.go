package dpgmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/binfmt"
)

// testModel is a small fit of the eustock features (K = 4, D = 6).
func testModel(t testing.TB) (*Model, [][]float64) {
	t.Helper()
	X, _ := readCSV(t, "eustock_dax_z.csv")
	m, _, err := Fit(context.Background(), X, Config{Components: 4, MaxIter: 10, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	return m, X
}

// TestPredictProba: probabilities sum to 1, are the softmax of LogProb, and
// the returned normaliser is logsumexp(LogProb); Predict is the argmax.
func TestPredictProba(t *testing.T) {
	t.Parallel()
	m, X := testModel(t)
	lp := make([]float64, m.Components())
	p := make([]float64, m.Components()+2) // longer than K is fine
	for _, x := range X[:200] {
		m.LogProb(x, lp)
		norm := m.PredictProba(x, p)
		sum, lse, best := 0.0, 0.0, 0
		for k := range lp {
			sum += p[k]
			lse += math.Exp(lp[k])
			if lp[k] > lp[best] {
				best = k
			}
		}
		lse = math.Log(lse)
		if math.Abs(sum-1) > 1e-12 || math.Abs(norm-lse) > 1e-9*math.Max(1, math.Abs(lse)) {
			t.Fatalf("probabilities sum to %v; normaliser %v, logsumexp %v", sum, norm, lse)
		}
		for k := range lp {
			if math.Abs(p[k]-math.Exp(lp[k]-norm)) > 1e-12 {
				t.Fatalf("p[%d] = %v, exp(LogProb − normaliser) = %v", k, p[k], math.Exp(lp[k]-norm))
			}
		}
		if got := m.Predict(x, lp); got != best {
			t.Fatalf("Predict %d, argmax %d", got, best)
		}
	}
	// Far from the data every component's probability is still defined.
	far := []float64{1e3, -1e3, 1e3, -1e3, 1e3, -1e3}
	m.PredictProba(far, p)
	for k := range m.Components() {
		if !(p[k] >= 0 && p[k] <= 1) {
			t.Errorf("far sample: p[%d] = %v", k, p[k])
		}
	}
}

// TestLogProbAllocs: classifying a sample with given buffers allocates
// nothing, for a small and a wide model.
func TestLogProbAllocs(t *testing.T) {
	m, X := testModel(t)
	out := make([]float64, m.Components())
	if n := testing.AllocsPerRun(100, func() {
		m.LogProb(X[3], out)
		m.PredictProba(X[4], out)
		m.Predict(X[5], out)
	}); n != 0 {
		t.Errorf("%v allocations per call", n)
	}
	wide := wideModel(t, maxUnrolled+3)
	x := make([]float64, wide.Dim())
	out = make([]float64, wide.Components())
	if n := testing.AllocsPerRun(20, func() { wide.PredictProba(x, out) }); n != 0 {
		t.Errorf("D = %d: %v allocations per call", wide.Dim(), n)
	}
}

// wideModel fits a 2-component model of d independent features.
func wideModel(t testing.TB, d int) *Model {
	t.Helper()
	X, _ := threeGaussians(100, 4)
	rows := make([][]float64, 3*d)
	for i := range rows {
		rows[i] = make([]float64, d)
		for j := range d {
			rows[i][j] = X[(i+j)%len(X)][j%4] + float64(j)
		}
	}
	m, _, err := Fit(context.Background(), rows, Config{Components: 2, MaxIter: 3})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestUnrolledKernels: the unrolled kernels compute what the generic
// loops do, bit for bit.
func TestUnrolledKernels(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for d := 1; d <= maxUnrolled; d++ {
		tri := d * (d + 1) / 2
		for range 50 {
			x, mu, pt := make([]float64, d), make([]float64, d), make([]float64, tri)
			for i := range d {
				x[i], mu[i] = rng.NormFloat64()*3, rng.NormFloat64()
			}
			for i := range pt {
				pt[i] = rng.NormFloat64()
			}
			if a, b := quadKernels[d](x, mu, pt), quadGeneric(x, mu, pt); a != b {
				t.Fatalf("D = %d: quad %v unrolled, %v generic", d, a, b)
			}
			s1, s2 := slices.Clone(pt), slices.Clone(pt)
			r := rng.Float64()
			scatterKernels[d](x, mu, r, s1)
			scatterGeneric(x, mu, r, s2)
			if !slices.Equal(s1, s2) {
				t.Fatalf("D = %d: scatter %v unrolled, %v generic", d, s1, s2)
			}
		}
	}
}

func TestLogProbPanicsOnWrongLength(t *testing.T) {
	t.Parallel()
	m, _ := testModel(t)
	for _, tc := range []struct {
		name   string
		x, out []float64
	}{
		{"short x", make([]float64, 5), make([]float64, 4)},
		{"long x", make([]float64, 7), make([]float64, 4)},
		{"short out", make([]float64, 6), make([]float64, 3)},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", tc.name)
				}
			}()
			m.LogProb(tc.x, tc.out)
		}()
	}
}

// TestConcurrentUse: one *Model serves many goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	m, X := testModel(t)
	want := make([][]float64, len(X))
	for i, x := range X {
		want[i] = make([]float64, m.Components())
		m.PredictProba(x, want[i])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			out := make([]float64, m.Components())
			for i := g; i < len(X); i += 3 {
				m.PredictProba(X[i], out)
				for k := range out {
					if out[k] != want[i][k] {
						errs <- errors.New("concurrent PredictProba differs from the serial one")
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestAccessorsCopy: the slices a Model hands out are copies.
func TestAccessorsCopy(t *testing.T) {
	t.Parallel()
	m, X := testModel(t)
	before, _ := m.MarshalBinary()
	m.Weights()[0] = 7
	m.Means()[0][0] = 7
	m.Covariances()[0][0] = 7
	m.PrecisionsCholesky()[0][0] = 7
	a, b := m.WeightConcentration()
	a[0], b[0] = 7, 7
	m.MeanPrecision()[0] = 7
	m.DegreesOfFreedom()[0] = 7
	c := m.Config()
	c.MeanPrior[0], c.CovariancePrior[0] = 7, 7
	after, _ := m.MarshalBinary()
	if !bytes.Equal(before, after) || m.Weights()[0] == 7 {
		t.Error("changing a returned slice changed the model")
	}
	if m.Dim() != len(X[0]) || m.Components() != 4 || len(m.Means()[0]) != 6 || len(m.Covariances()[0]) != 36 {
		t.Errorf("shape: K %d, D %d", m.Components(), m.Dim())
	}
}

// TestCodecRoundTrip: Unmarshal(MarshalBinary(m)) is m: same bytes, same
// answers, same config.
func TestCodecRoundTrip(t *testing.T) {
	t.Parallel()
	m, X := testModel(t)
	for _, model := range []*Model{m, wideModel(t, 9), fitNoReg(t)} {
		b, err := model.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		got, err := Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, _ := got.MarshalBinary()
		if !bytes.Equal(b, b2) {
			t.Fatal("re-encoding a decoded model gives other bytes")
		}
		if got.Config().RegCovar != model.Config().RegCovar {
			t.Errorf("reg covar %v, want %v", got.Config().RegCovar, model.Config().RegCovar)
		}
		if model.Dim() == 6 {
			x, y := make([]float64, 4), make([]float64, 4)
			for _, row := range X[:100] {
				model.PredictProba(row, x)
				got.PredictProba(row, y)
				for k := range x {
					if x[k] != y[k] {
						t.Fatalf("decoded model answers %v, original %v", y, x)
					}
				}
			}
		}
	}
}

func fitNoReg(t testing.TB) *Model {
	t.Helper()
	X, _ := threeGaussians(50, 6)
	m, _, err := Fit(context.Background(), X, Config{Components: 3, RegCovar: NoRegCovar, MaxIter: 5})
	if err != nil {
		t.Fatal(err)
	}
	if m.Config().RegCovar != 0 {
		t.Fatalf("NoRegCovar recorded as %v", m.Config().RegCovar)
	}
	return m
}

// resum rewrites the checksum of a blob after it was edited.
func resum(b []byte) []byte {
	return binfmt.Seal(bytes.Clone(b[:len(b)-4]))
}

// TestCodecCorrupt: truncations, trailing bytes, flipped bits, another
// format, and edits with a valid checksum all fail cleanly.
func TestCodecCorrupt(t *testing.T) {
	t.Parallel()
	m, _ := testModel(t)
	b, _ := m.MarshalBinary()
	for n := range len(b) {
		if _, err := Unmarshal(b[:n]); !errors.Is(err, ErrCorruptModel) {
			t.Fatalf("%d of %d bytes: %v, want ErrCorruptModel", n, len(b), err)
		}
	}
	if _, err := Unmarshal(append(bytes.Clone(b), 0)); !errors.Is(err, ErrCorruptModel) {
		t.Errorf("trailing byte: %v", err)
	}
	for i := 0; i < len(b); i += 7 {
		c := bytes.Clone(b)
		c[i] ^= 0x10
		if _, err := Unmarshal(c); err == nil {
			t.Fatalf("bit flip at byte %d accepted", i)
		}
	}
	v2 := bytes.Clone(b)
	copy(v2[1:], "quantmesh.dpgmm.v2")
	if _, err := Unmarshal(v2); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("v2: %v, want ErrUnsupportedFormat", err)
	}
	if _, err := Unmarshal([]byte("\x10quantmesh.mlp.v1")); !errors.Is(err, ErrCorruptModel) {
		t.Errorf("policy weights: %v, want ErrCorruptModel", err)
	}

	// Edits that keep a valid checksum: each is caught by the validation.
	k, d := m.Components(), m.Dim()
	cfgFloats := fixedSize - 8 - 12 - 40 // offset of WeightConcentration
	params := fixedSize + 8*(d+d*d)      // offset of a_0
	f64 := func(off int, v float64) []byte {
		c := bytes.Clone(b)
		binary.LittleEndian.PutUint64(c[off:], math.Float64bits(v))
		return resum(c)
	}
	u32 := func(off int, v uint32) []byte {
		c := bytes.Clone(b)
		binary.LittleEndian.PutUint32(c[off:], v)
		return resum(c)
	}
	precChol := params + 8*(3*k+k*d+k+k*d*d)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"K = 0", u32(1+len(Format), 0)},
		{"K huge", u32(1+len(Format), 1<<31)},
		{"D = 0", u32(5+len(Format), 0)},
		{"D huge", u32(5+len(Format), 1<<20)},
		{"D + 1", u32(5+len(Format), uint32(d+1))},
		{"weight concentration NaN", f64(cfgFloats, math.NaN())},
		{"tol < 0", f64(cfgFloats+24, -1)},
		{"max iter 0", u32(cfgFloats+40, 0)},
		{"init 9", u32(cfgFloats+48, 9)},
		{"covariance prior not PD", f64(fixedSize+8*d, -5)},
		{"a_0 = 0", f64(params, 0)},
		{"b_1 = -1", f64(params+8*(k+1), -1)},
		{"mean precision Inf", f64(params+8*2*k, math.Inf(1))},
		{"mean NaN", f64(params+8*3*k, math.NaN())},
		{"dof = D - 1", f64(params+8*(3*k+k*d), float64(d-1))},
		{"covariance Inf", f64(params+8*(4*k+k*d), math.Inf(-1))},
		{"precision Cholesky diagonal 0", f64(precChol, 0)},
		{"precision Cholesky lower part", f64(precChol+8*d, 0.5)},
		{"precision Cholesky huge", f64(precChol+8, 1e300)},
	} {
		if _, err := Unmarshal(tc.b); !errors.Is(err, ErrCorruptModel) || errors.Is(err, ErrInvalidInput) {
			t.Errorf("%s: %v, want ErrCorruptModel (and not ErrInvalidInput)", tc.name, err)
		}
	}
}

// FuzzUnmarshal: no input makes Unmarshal panic, and whatever it accepts is
// a usable model that re-encodes to a blob it accepts again. With fix set,
// the checksum is rewritten first so that the fuzzer reaches the
// validation behind it.
func FuzzUnmarshal(f *testing.F) {
	m, _ := testModel(f)
	b, _ := m.MarshalBinary()
	f.Add(b, false)
	f.Add(b, true)
	f.Add(b[:fixedSize+4], true)
	f.Add([]byte{}, false)
	f.Add([]byte("\x12quantmesh.dpgmm.v1\x01\x00\x00\x00\x01\x00\x00\x00"), true)
	small, _ := fitNoReg(f).MarshalBinary()
	f.Add(small, true)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= 4 {
			b = resum(b)
		}
		m, err := Unmarshal(b)
		if err != nil {
			if m != nil || !(errors.Is(err, ErrCorruptModel) || errors.Is(err, ErrUnsupportedFormat)) {
				t.Fatalf("error %v with model %v", err, m)
			}
			return
		}
		x := make([]float64, m.Dim())
		out := make([]float64, m.Components())
		m.PredictProba(x, out)
		again, _ := m.MarshalBinary()
		if _, err := Unmarshal(again); err != nil {
			t.Fatalf("re-encoded model rejected: %v", err)
		}
	})
}
