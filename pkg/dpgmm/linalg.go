package dpgmm

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
)

// precisionCholesky sets p (d×d, row-major) to chol(cov)⁻ᵀ, the upper
// triangular matrix with p pᵀ = cov⁻¹ that scikit-learn calls
// precisions_cholesky_, and reports whether cov is positive definite.
//
// With cov = Uᵀ U (U upper triangular, U = Lᵀ for scikit-learn's lower
// factor L), chol(cov)⁻ᵀ = (Uᵀ)⁻ᵀ = U⁻¹: one Potrf and one Trtri, in place.
func precisionCholesky(cov []float64, d int, p []float64) bool {
	copy(p, cov)
	t, ok := lapack64.Potrf(blas64.Symmetric{Uplo: blas.Upper, N: d, Stride: d, Data: p})
	if !ok {
		return false
	}
	if !lapack64.Trtri(t) {
		return false
	}
	for i := 1; i < d; i++ {
		clear(p[i*d : i*d+i])
	}
	for i := range d {
		if !(p[i*d+i] > 0) {
			return false
		}
	}
	return true
}

// positiveDefinite reports whether the symmetric a (d×d, row-major; its
// upper triangle is read) is positive definite.
func positiveDefinite(a []float64, d int) bool {
	l := make([]float64, d*d)
	copy(l, a)
	_, ok := lapack64.Potrf(blas64.Symmetric{Uplo: blas.Upper, N: d, Stride: d, Data: l})
	return ok
}
