package policy

import (
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
)

// The benchmarks compare, on the default serving size (16 inputs, hidden
// 64 and 32, tanh), one sample per call as serving runs:
//
//   - BenchmarkPredict: the serving forward pass (validation, normalisation,
//     layers, tanh, softmax, scratch from the pool); PredictReLU the same
//     with relu, PredictParallel from GOMAXPROCS goroutines on one
//     *Network (ns/op is wall time per call across them).
//   - BenchmarkGorgoniaForward: gorgonia on the same weights, with the graph
//     built and compiled once outside the loop (only Let, RunAll, Reset and
//     reading the output per call), so gorgonia pays no construction cost.
//   - BenchmarkMatVec: the bare multiply-adds of the three layers (W·x + b)
//     in a plain Go loop, and nothing else.
//   - BenchmarkMatVecGonum: the same multiply-adds through gonum's BLAS Dgemv
//     (SIMD assembly on amd64), which is how Predict does them: the floor of
//     Predict itself.
//
// Run side by side: go test -run xxx -bench . -benchmem -count 5 ./pkg/policy/

func benchNetwork(b *testing.B) (*Network, []float64) {
	n := randomNetwork(b, DefaultConfig(16), 42)
	x := randomInputs(rand.New(rand.NewPCG(1, 1)), 1, 16, 1)[0]
	return n, x
}

func BenchmarkPredict(b *testing.B) {
	n, x := benchNetwork(b)
	var out Output
	b.ReportAllocs()
	for b.Loop() {
		if err := n.Predict(x, &out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPredictReLU is Predict on the same shape with relu instead of
// tanh: the difference to BenchmarkPredict is the cost of 96 math.Tanh calls.
func BenchmarkPredictReLU(b *testing.B) {
	n := randomNetwork(b, Config{Inputs: 16, Hidden: []int{64, 32}, Activation: ActivationReLU}, 42)
	x := randomInputs(rand.New(rand.NewPCG(1, 1)), 1, 16, 1)[0]
	var out Output
	b.ReportAllocs()
	for b.Loop() {
		if err := n.Predict(x, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPredictParallel(b *testing.B) {
	n, x := benchNetwork(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var out Output
		for pb.Next() {
			if err := n.Predict(x, &out); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGorgoniaForward(b *testing.B) {
	n, x := benchNetwork(b)
	m, err := newGorgoniaModel(n)
	if err != nil {
		b.Fatal(err)
	}
	defer m.close()
	var probs [NumActions]float64
	b.ReportAllocs()
	for b.Loop() {
		if err := m.forward(x, &probs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMatVec(b *testing.B) {
	n, x := benchNetwork(b)
	bufA, bufB := make([]float64, n.width), make([]float64, n.width)
	b.ReportAllocs()
	for b.Loop() {
		in, out := x, bufA
		for li := range n.layers {
			l := &n.layers[li]
			out = out[:l.out]
			for j := range out {
				out[j] = l.b[j] + dot(l.w[j*l.in:(j+1)*l.in], in)
			}
			in, out = out, bufB
			bufA, bufB = bufB, bufA
		}
	}
}

// dot is Σ w[i]·x[i] for len(w) ≥ len(x): the fastest plain Go form found
// (four accumulators, so that the additions do not wait on one another, and
// bounds checks the compiler can drop; the same loop written inline in the
// benchmark runs 4× slower).
func dot(w, x []float64) float64 {
	var s0, s1, s2, s3 float64
	w = w[:len(x)]
	i := 0
	for ; i <= len(x)-4; i += 4 {
		s0 += w[i] * x[i]
		s1 += w[i+1] * x[i+1]
		s2 += w[i+2] * x[i+2]
		s3 += w[i+3] * x[i+3]
	}
	for ; i < len(x); i++ {
		s0 += w[i] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func BenchmarkMatVecGonum(b *testing.B) {
	n, x := benchNetwork(b)
	type mv struct {
		w    blas64.General
		b, y blas64.Vector
	}
	var layers []mv
	for _, l := range n.layers {
		layers = append(layers, mv{
			w: blas64.General{Rows: l.out, Cols: l.in, Stride: l.in, Data: l.w},
			b: blas64.Vector{N: l.out, Inc: 1, Data: l.b},
			y: blas64.Vector{N: l.out, Inc: 1, Data: make([]float64, l.out)},
		})
	}
	in := blas64.Vector{N: len(x), Inc: 1, Data: x}
	b.ReportAllocs()
	for b.Loop() {
		v := in
		for i := range layers {
			l := &layers[i]
			blas64.Copy(l.b, l.y)
			blas64.Gemv(blas.NoTrans, 1, l.w, v, 1, l.y)
			v = l.y
		}
	}
}
