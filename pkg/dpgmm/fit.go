package dpgmm

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"gonum.org/v1/gonum/mathext"
)

// Report describes how a fit went.
type Report struct {
	// LowerBounds holds the lower bound after each iteration of the kept
	// initialisation (length Iterations).
	LowerBounds []float64
	// LowerBound is the final lower bound of the kept initialisation
	// (scikit-learn lower_bound_).
	LowerBound float64
	// Converged: the kept initialisation stopped because the lower bound
	// changed by less than Tol. (scikit-learn's converged_ is true when any
	// initialisation converged; with NInit 1 the two agree.)
	Converged bool
	// Iterations run by the kept initialisation (scikit-learn n_iter_).
	Iterations int
	// BestInit is the index, from 0, of the kept initialisation.
	BestInit int
	// InitLowerBounds holds the final lower bound of every initialisation,
	// in order (length NInit).
	InitLowerBounds []float64
}

// eps10 is scikit-learn's 10 * np.finfo(float64).eps, added to every N_k.
const eps10 = 10 * 0x1p-52

// The samples are processed in chunks of consecutive samples, each chunk's
// sums kept apart and added in chunk order, so that the result does not
// depend on how many goroutines share the chunks. The chunk size depends
// on N only: at least minChunk samples, at most maxChunks chunks.
const (
	minChunk  = 256
	maxChunks = 256
)

// fitter holds the data and the working arrays of one fit.
type fitter struct {
	n, d, k, tri int
	x            []float64 // samples, n×d row-major
	resp         []float64 // responsibilities r_nk, n×k

	chunk, chunks, workers int
	scratch                [][]float64 // per-worker scratch, k each
	pNk, pSx, pEnt, pS     []float64   // per-chunk sums: N_k, Σ r x, Σ r ln r, S_k (packed upper triangle)

	nk      []float64 // N_k
	dk      []float64 // x̄_k − m₀, d
	xk      []float64 // x̄_k, k×d
	sk      []float64 // S_k, k×d×d
	cur     *Model    // the parameters being fitted
	entropy float64   // Σ r ln r of the last E step
}

func newFitter(x []float64, n, d int, c Config) *fitter {
	k := c.Components
	tri := d * (d + 1) / 2
	chunk := max(minChunk, (n+maxChunks-1)/maxChunks)
	chunks := (n + chunk - 1) / chunk
	workers := c.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, chunks)
	f := &fitter{
		n: n, d: d, k: k, tri: tri, x: x,
		resp:  make([]float64, n*k),
		chunk: chunk, chunks: chunks, workers: workers,
		pNk: make([]float64, chunks*k), pSx: make([]float64, chunks*k*d),
		pEnt: make([]float64, chunks), pS: make([]float64, chunks*k*tri),
		nk: make([]float64, k), dk: make([]float64, d), xk: make([]float64, k*d), sk: make([]float64, k*d*d),
	}
	f.scratch = make([][]float64, workers)
	for w := range f.scratch {
		f.scratch[w] = make([]float64, k)
	}
	mc := c
	mc.Workers = 0 // not a property of the model
	f.cur = newModel(mc, k, d)
	return f
}

// parallel runs fn for every chunk, on f.workers goroutines.
func (f *fitter) parallel(fn func(chunk int, scratch []float64)) {
	if f.workers <= 1 {
		for c := range f.chunks {
			fn(c, f.scratch[0])
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range f.workers {
		scratch := f.scratch[w]
		wg.Go(func() {
			for {
				c := int(next.Add(1) - 1)
				if c >= f.chunks {
					return
				}
				fn(c, scratch)
			}
		})
	}
	wg.Wait()
}

// Fit fits the mixture to X (N samples of D features; N >= 2, N >= D,
// N >= K) and returns the model of the initialisation with the highest
// final lower bound and a report on it.
//
// Bad data or configuration fail with an *InputError (wrapping
// ErrInvalidInput) that names the field; a numerical breakdown fails with
// ErrFitFailed. Fit checks ctx between iterations (and between k-means
// iterations) and returns ctx's error, wrapped, once it is done. For a given
// X, cfg and cfg.Seed the model is the same bit for bit.
func Fit(ctx context.Context, X [][]float64, cfg Config) (*Model, Report, error) {
	n := len(X)
	if n == 0 {
		return nil, Report{}, inputErr("X", "no samples")
	}
	d := len(X[0])
	if d == 0 {
		return nil, Report{}, inputErr("X[0]", "no features")
	}
	if d > MaxFeatures {
		return nil, Report{}, inputErr("X[0]", "%d features, at most %d", d, MaxFeatures)
	}
	x := make([]float64, n*d)
	for i, row := range X {
		if len(row) != d {
			return nil, Report{}, inputErr(fmt.Sprintf("X[%d]", i), "%d features, X[0] has %d", len(row), d)
		}
		for j, v := range row {
			if !finite(v) {
				return nil, Report{}, inputErr(fmt.Sprintf("X[%d][%d]", i, j), "%v, want finite", v)
			}
		}
		copy(x[i*d:], row)
	}
	if n < 2 {
		return nil, Report{}, inputErr("X", "1 sample, need at least 2")
	}
	if n < d {
		return nil, Report{}, inputErr("X", "%d samples of %d features: need at least as many samples as features", n, d)
	}
	c, err := cfg.resolved(d)
	if err != nil {
		return nil, Report{}, err
	}
	k := c.Components
	if n < k {
		return nil, Report{}, inputErr("Components", "%d components for %d samples: need at least as many samples as components", k, n)
	}
	if cfg.InitResp != nil {
		if err := checkInitResp(cfg.InitResp, n, k); err != nil {
			return nil, Report{}, err
		}
		if c.NInit != 1 {
			return nil, Report{}, inputErr("NInit", "%d with InitResp: every initialisation would be the same, want 1", c.NInit)
		}
	}
	if c.MeanPrior == nil {
		c.MeanPrior = columnMeans(x, n, d)
	}
	if c.CovariancePrior == nil {
		if n <= d {
			return nil, Report{}, inputErr("X", "%d samples of %d features: the data covariance (the default CovariancePrior) needs more samples than features; add samples or set CovariancePrior", n, d)
		}
		cov := covariance(x, n, d, c.MeanPrior)
		if err := checkDataCovariance(cov, d); err != nil {
			return nil, Report{}, err
		}
		c.CovariancePrior = cov
	}

	f := newFitter(x, n, d, c)
	r := newRNG(c.Seed)
	var best *Model
	var rep Report
	bestLB := math.Inf(-1)
	initLBs := make([]float64, 0, c.NInit)
	for init := range c.NInit {
		if err := ctx.Err(); err != nil {
			return nil, Report{}, fmt.Errorf("dpgmm: fit cancelled before initialisation %d: %w", init, err)
		}
		if err := f.initResp(ctx, cfg.InitResp, c.Init, r); err != nil {
			return nil, Report{}, fmt.Errorf("dpgmm: fit cancelled in initialisation %d: %w", init, err)
		}
		if err := f.mStep(false); err != nil {
			return nil, Report{}, err
		}
		lbs := make([]float64, 0, min(c.MaxIter, 1024))
		lb := math.Inf(-1)
		converged := false
		for it := 1; it <= c.MaxIter; it++ {
			if err := ctx.Err(); err != nil {
				return nil, Report{}, fmt.Errorf("dpgmm: fit cancelled after %d iterations of initialisation %d: %w", it-1, init, err)
			}
			prev := lb
			if err := f.mStep(true); err != nil {
				return nil, Report{}, fmt.Errorf("%w (initialisation %d, iteration %d)", err, init, it)
			}
			lb = f.lowerBound()
			lbs = append(lbs, lb)
			if math.Abs(lb-prev) < c.Tol {
				converged = true
				break
			}
		}
		initLBs = append(initLBs, lb)
		// scikit-learn: lower_bound > max_lower_bound or max_lower_bound == -inf.
		if lb > bestLB || math.IsInf(bestLB, -1) {
			bestLB = lb
			if best == nil {
				best = newModel(f.cur.cfg, k, d)
			}
			best.copyFrom(f.cur)
			rep = Report{LowerBounds: lbs, LowerBound: lb, Converged: converged, Iterations: len(lbs), BestInit: init}
		}
	}
	rep.InitLowerBounds = initLBs
	return best, rep, nil
}

func checkInitResp(resp [][]float64, n, k int) error {
	if len(resp) != n {
		return inputErr("InitResp", "%d rows for %d samples", len(resp), n)
	}
	for i, row := range resp {
		if len(row) != k {
			return inputErr(fmt.Sprintf("InitResp[%d]", i), "%d values for %d components", len(row), k)
		}
		for j, v := range row {
			if !finite(v) || v < 0 {
				return inputErr(fmt.Sprintf("InitResp[%d][%d]", i, j), "%v, want finite and >= 0", v)
			}
		}
	}
	return nil
}

func columnMeans(x []float64, n, d int) []float64 {
	mean := make([]float64, d)
	for i := range n {
		for j, v := range x[i*d : i*d+d] {
			mean[j] += v
		}
	}
	for j := range mean {
		mean[j] /= float64(n)
	}
	return mean
}

// covariance is np.cov(X.T): the sample covariance with divisor n − 1.
func covariance(x []float64, n, d int, mean []float64) []float64 {
	cov := make([]float64, d*d)
	diff := make([]float64, d)
	for i := range n {
		for j, v := range x[i*d : i*d+d] {
			diff[j] = v - mean[j]
		}
		for a := range d {
			row := cov[a*d : a*d+d]
			for b := a; b < d; b++ {
				row[b] += diff[a] * diff[b]
			}
		}
	}
	for a := range d {
		for b := a; b < d; b++ {
			cov[a*d+b] /= float64(n - 1)
			cov[b*d+a] = cov[a*d+b]
		}
	}
	return cov
}

// checkDataCovariance explains why the data covariance, the default
// covariance prior, cannot serve.
func checkDataCovariance(cov []float64, d int) error {
	for j := range d {
		if !(cov[j*d+j] > 0) {
			return inputErr("X", "feature %d is constant (variance 0), so the data covariance (the default CovariancePrior) is singular: drop the feature or set CovariancePrior", j)
		}
	}
	if !positiveDefinite(cov, d) {
		return inputErr("X", "the features are linearly dependent, so the data covariance (the default CovariancePrior) is not positive definite: drop a redundant feature or set CovariancePrior")
	}
	return nil
}

// initResp sets the first responsibilities.
func (f *fitter) initResp(ctx context.Context, given [][]float64, method Init, r *rng) error {
	n, d, k := f.n, f.d, f.k
	resp := f.resp
	if given != nil {
		for i, row := range given {
			copy(resp[i*k:i*k+k], row)
		}
		return nil
	}
	clear(resp)
	switch method {
	case InitKMeans:
		labels, err := kmeans(ctx, f.x, n, d, k, r)
		if err != nil {
			return err
		}
		for i, l := range labels {
			resp[i*k+l] = 1
		}
	case InitKMeansPlusPlus:
		for c, i := range kmeansPlusPlus(f.x, n, d, k, r) {
			resp[i*k+c] = 1
		}
	case InitRandom:
		for i := range n {
			row := resp[i*k : i*k+k]
			s := 0.0
			for c := range row {
				row[c] = r.float64()
				s += row[c]
			}
			for c := range row {
				row[c] /= s
			}
		}
	case InitRandomFromData:
		// k distinct samples: the first k of a partial Fisher–Yates shuffle.
		perm := make([]int, n)
		for i := range perm {
			perm[i] = i
		}
		for c := range k {
			j := c + r.intn(n-c)
			perm[c], perm[j] = perm[j], perm[c]
			resp[perm[c]*k+c] = 1
		}
	}
	return nil
}

// sums computes, for one chunk, N_k and Σ r x (and, with eStep, first sets
// the chunk's responsibilities from the current parameters and sums
// r ln r).
func (f *fitter) sums(c int, scratch []float64, eStep bool) {
	n, d, k := f.n, f.d, f.k
	nk := f.pNk[c*k : (c+1)*k]
	sx := f.pSx[c*k*d : (c+1)*k*d]
	clear(nk)
	clear(sx)
	ent := 0.0
	for i := c * f.chunk; i < min(n, (c+1)*f.chunk); i++ {
		x := f.x[i*d : i*d+d]
		row := f.resp[i*k : i*k+k]
		if eStep {
			// r = exp(w − logsumexp(w)), w = log ρ: computed as
			// e/Σe with e = exp(w − max w), one exp per component.
			f.cur.weightedLogProb(x, row)
			hi := row[0]
			for _, v := range row[1:] {
				hi = max(hi, v)
			}
			e := scratch[:k]
			s := 0.0
			for j, v := range row {
				e[j] = math.Exp(v - hi)
				s += e[j]
			}
			lse := hi + math.Log(s)
			inv := 1 / s
			for j, v := range row {
				r := e[j] * inv
				row[j] = r
				if r != 0 { // r ln r → 0 where exp underflows, as numpy's does
					ent += r * (v - lse)
				}
			}
		}
		for j, rk := range row {
			if rk == 0 {
				continue
			}
			nk[j] += rk
			acc := sx[j*d : j*d+d]
			for a, v := range x {
				acc[a] += rk * v
			}
		}
	}
	f.pEnt[c] = ent
}

// scatter computes, for one chunk, Σ r (x − x̄_k)(x − x̄_k)ᵀ, upper triangle
// packed by rows.
func (f *fitter) scatter(c int, _ []float64) {
	n, d, k, tri := f.n, f.d, f.k, f.tri
	ps := f.pS[c*k*tri : (c+1)*k*tri]
	clear(ps)
	_, scatter := kernels(d)
	for i := c * f.chunk; i < min(n, (c+1)*f.chunk); i++ {
		x := f.x[i*d : i*d+d]
		for j, rk := range f.resp[i*k : i*k+k] {
			if rk == 0 {
				continue
			}
			scatter(x, f.xk[j*d:j*d+d], rk, ps[j*tri:(j+1)*tri])
		}
	}
}

// eStep and mStep: one iteration is f.mStep(true), which runs the E step
// (responsibilities from the current parameters) fused with the first pass
// of the M step; the initialisation is f.mStep(false) on the given
// responsibilities.
//
// mStep updates the parameters from the responsibilities (scikit-learn
// _estimate_gaussian_parameters, then _estimate_weights, _estimate_means
// and _estimate_precisions).
func (f *fitter) mStep(eStep bool) error {
	d, k, tri := f.d, f.k, f.tri
	m := f.cur
	c := m.cfg
	nk, xk, sk := f.nk, f.xk, f.sk

	f.parallel(func(ch int, scratch []float64) { f.sums(ch, scratch, eStep) })
	clear(nk)
	clear(xk)
	ent := 0.0
	for ch := range f.chunks {
		for j, v := range f.pNk[ch*k : (ch+1)*k] {
			nk[j] += v
		}
		for j, v := range f.pSx[ch*k*d : (ch+1)*k*d] {
			xk[j] += v
		}
		ent += f.pEnt[ch]
	}
	if eStep {
		f.entropy = ent
	}
	for j := range nk {
		nk[j] += eps10
		row := xk[j*d : j*d+d]
		for a := range row {
			row[a] /= nk[j]
		}
	}

	f.parallel(f.scatter)
	clear(sk)
	for ch := range f.chunks {
		ps := f.pS[ch*k*tri : (ch+1)*k*tri]
		for j := range k {
			s := sk[j*d*d : (j+1)*d*d]
			p := ps[j*tri : (j+1)*tri]
			for a := range d {
				for b := a; b < d; b++ {
					s[a*d+b] += p[0]
					p = p[1:]
				}
			}
		}
	}
	for j := range k {
		s := sk[j*d*d : (j+1)*d*d]
		for a := range d {
			for b := a; b < d; b++ {
				s[a*d+b] /= nk[j]
				s[b*d+a] = s[a*d+b]
			}
			s[a*d+a] += c.RegCovar
		}
	}

	// Weights: Beta(1 + N_k, γ + Σ_{j>k} N_j), the tail summed from the last
	// component as numpy's cumsum of the reversed N.
	tail := 0.0
	for j := k - 1; j >= 0; j-- {
		m.wcA[j] = 1 + nk[j]
		m.wcB[j] = c.WeightConcentration + tail
		tail += nk[j]
	}
	// Means.
	for j := range k {
		m.meanPrec[j] = c.MeanPrecision + nk[j]
		mu := m.means[j*d : j*d+d]
		for a := range mu {
			mu[a] = (c.MeanPrecision*c.MeanPrior[a] + nk[j]*xk[j*d+a]) / m.meanPrec[j]
		}
	}
	// Wishart.
	diff := f.dk
	for j := range k {
		m.dof[j] = c.DegreesOfFreedom + nk[j]
		for a := range d {
			diff[a] = xk[j*d+a] - c.MeanPrior[a]
		}
		w := nk[j] * c.MeanPrecision / m.meanPrec[j]
		cov := m.covs[j*d*d : (j+1)*d*d]
		s := sk[j*d*d : (j+1)*d*d]
		for a := range d {
			for b := range d {
				cov[a*d+b] = (c.CovariancePrior[a*d+b] + nk[j]*s[a*d+b] + w*(diff[a]*diff[b])) / m.dof[j]
			}
		}
		if !precisionCholesky(cov, d, m.precChol[j*d*d:(j+1)*d*d]) {
			return fmt.Errorf("%w: the covariance of component %d is not positive definite; increase RegCovar or decrease Components", ErrFitFailed, j)
		}
	}
	m.derive()
	return nil
}

// lowerBound is scikit-learn's _compute_lower_bound for the current
// parameters and the last E step.
func (f *fitter) lowerBound() float64 {
	m := f.cur
	d := float64(f.d)
	logWishart, logNormWeight, logMeanPrec := 0.0, 0.0, 0.0
	for j := range f.k {
		nu := m.dof[j]
		logDet := m.logDetPrecChol(j) - 0.5*d*math.Log(nu)
		lg := 0.0
		for a := range f.d {
			v, _ := math.Lgamma(0.5 * (nu - float64(a)))
			lg += v
		}
		logWishart += -(nu*logDet + nu*d*0.5*math.Ln2 + lg)
		logNormWeight -= mathext.Lbeta(m.wcA[j], m.wcB[j])
		logMeanPrec += math.Log(m.meanPrec[j])
	}
	return -f.entropy - logWishart - logNormWeight - 0.5*d*logMeanPrec
}
