package dpgmm

//go:generate go run gen_kernels.go

// The per-sample kernels. For D <= maxUnrolled they run unrolled
// (kernels_generated.go); the generic loops here compute the same values
// in the same order, bit for bit.

// quadFunc returns ‖(x − mu) P‖² for an upper triangular P given as t = Pᵀ
// packed by rows (row j holds P[0][j], …, P[j][j]; see Model.precT):
// scikit-learn's squared Mahalanobis term Σ_j (Σ_{i<=j} (x_i − mu_i) P_ij)².
type quadFunc func(x, mu, t []float64) float64

// scatterFunc adds r (x − mu)(x − mu)ᵀ to s, the upper triangle packed by
// rows (s[0] = [0][0], s[1] = [0][1], …, s[D] = [1][1], …).
type scatterFunc func(x, mu []float64, r float64, s []float64)

// kernels returns the kernels for D features.
func kernels(d int) (quadFunc, scatterFunc) {
	if d <= maxUnrolled {
		return quadKernels[d], scatterKernels[d]
	}
	return quadGeneric, scatterGeneric
}

func quadGeneric(x, mu, t []float64) float64 {
	d := len(x)
	mu = mu[:d]
	q := 0.0
	for j := range d {
		row := t[:j+1]
		t = t[j+1:]
		s := 0.0
		for i, v := range row {
			s += (x[i] - mu[i]) * v
		}
		q += s * s
	}
	return q
}

func scatterGeneric(x, mu []float64, r float64, s []float64) {
	d := len(x)
	mu = mu[:d]
	for a := range d {
		ra := r * (x[a] - mu[a])
		seg := s[:d-a]
		s = s[d-a:]
		for b := range seg {
			seg[b] += ra * (x[a+b] - mu[a+b])
		}
	}
}
