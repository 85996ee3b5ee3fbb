package dpgmm

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkFitEustock is the fit golden.py --bench times with scikit-learn:
// the eustock DAX features (1830 × 6, z-scored), K = 10, every other setting
// the default (k-means initialisation, 100 iterations at most).
// The sub-benchmarks pin the goroutines a fit uses (workers=0 is
// GOMAXPROCS, the default).
func BenchmarkFitEustock(b *testing.B) {
	X, _ := readCSV(b, "eustock_dax_z.csv")
	for _, w := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", w), func(b *testing.B) {
			b.ReportAllocs()
			var rep Report
			for b.Loop() {
				var err error
				if _, rep, err = Fit(context.Background(), X, Config{Components: 10, Workers: w}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rep.Iterations), "iterations")
		})
	}
}

// benchModel is a K = 10 model of the eustock features.
func benchModel(b *testing.B) (*Model, [][]float64) {
	b.Helper()
	X, _ := readCSV(b, "eustock_dax_z.csv")
	m, _, err := Fit(context.Background(), X, Config{Components: 10, MaxIter: 20})
	if err != nil {
		b.Fatal(err)
	}
	return m, X
}

// BenchmarkLogProb classifies one sample (K = 10, D = 6).
func BenchmarkLogProb(b *testing.B) {
	m, X := benchModel(b)
	out := make([]float64, m.Components())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.LogProb(X[i], out)
		i++
		if i == len(X) {
			i = 0
		}
	}
}

// BenchmarkPredictProba is LogProb plus the normalisation.
func BenchmarkPredictProba(b *testing.B) {
	m, X := benchModel(b)
	out := make([]float64, m.Components())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.PredictProba(X[i], out)
		i++
		if i == len(X) {
			i = 0
		}
	}
}
