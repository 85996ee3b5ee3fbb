package dpgmm

import (
	"math"

	"gonum.org/v1/gonum/mathext"
)

// Model is a fitted mixture: the variational posterior of scikit-learn's
// BayesianGaussianMixture after fit. It is immutable and safe for
// concurrent use.
type Model struct {
	k, d int
	cfg  Config // resolved: every default filled in, priors included

	// The parameters scikit-learn keeps (_get_parameters).
	wcA, wcB []float64 // weight_concentration_: Beta(a_k, b_k) of each stick, K each
	meanPrec []float64 // mean_precision_ β_k, K
	means    []float64 // means_ m_k, K×D
	dof      []float64 // degrees_of_freedom_ ν_k, K
	covs     []float64 // covariances_ Σ_k, K×D×D row-major
	precChol []float64 // precisions_cholesky_ P_k, K×D×D row-major, upper triangular

	// Derived from the parameters (derive), never stored.
	weights  []float64 // weights_
	logConst []float64 // log ρ_k(x) + ½‖(x − m_k) P_k‖², K
	precT    []float64 // P_kᵀ packed by rows: row j holds P_k[0..j][j], K×D(D+1)/2
	quad     quadFunc  // the kernel for D
}

// newModel allocates the parameters of a k-component, d-feature model.
func newModel(cfg Config, k, d int) *Model {
	tri := d * (d + 1) / 2
	quad, _ := kernels(d)
	return &Model{
		k: k, d: d, cfg: cfg, quad: quad,
		wcA: make([]float64, k), wcB: make([]float64, k),
		meanPrec: make([]float64, k), means: make([]float64, k*d),
		dof: make([]float64, k), covs: make([]float64, k*d*d), precChol: make([]float64, k*d*d),
		weights: make([]float64, k), logConst: make([]float64, k), precT: make([]float64, k*tri),
	}
}

// copyFrom copies o's parameters and derived values into m (same shape).
func (m *Model) copyFrom(o *Model) {
	for _, p := range [][2][]float64{
		{m.wcA, o.wcA}, {m.wcB, o.wcB}, {m.meanPrec, o.meanPrec}, {m.means, o.means},
		{m.dof, o.dof}, {m.covs, o.covs}, {m.precChol, o.precChol},
		{m.weights, o.weights}, {m.logConst, o.logConst}, {m.precT, o.precT},
	} {
		copy(p[0], p[1])
	}
}

// derive computes weights, logConst and precT from the parameters.
func (m *Model) derive() {
	k, d := m.k, m.d
	fd := float64(d)

	// weights_ (scikit-learn _set_parameters): the expected stick-breaking
	// weights E[v_k] Π_{j<k} E[1 − v_j], renormalised.
	rest := 1.0
	sum := 0.0
	for i := range k {
		s := m.wcA[i] + m.wcB[i]
		m.weights[i] = m.wcA[i] / s * rest
		rest *= m.wcB[i] / s
		sum += m.weights[i]
	}
	for i := range m.weights {
		m.weights[i] /= sum
	}

	// E[ln π_k] (_estimate_log_weights) plus the parts of
	// _estimate_log_prob that do not depend on x.
	tail := 0.0 // Σ_{j<k} ψ(b_j) − ψ(a_j + b_j)
	for i := range k {
		dsum := mathext.Digamma(m.wcA[i] + m.wcB[i])
		logWeight := mathext.Digamma(m.wcA[i]) - dsum + tail
		tail += mathext.Digamma(m.wcB[i]) - dsum

		logLambda := fd * math.Ln2
		for j := range d {
			logLambda += mathext.Digamma(0.5 * (m.dof[i] - float64(j)))
		}
		c := -0.5*fd*math.Log(2*math.Pi) + m.logDetPrecChol(i) - 0.5*fd*math.Log(m.dof[i]) +
			0.5*(logLambda-fd/m.meanPrec[i])
		m.logConst[i] = c + logWeight
	}

	tri := d * (d + 1) / 2
	for i := range k {
		p := m.precChol[i*d*d : (i+1)*d*d]
		t := m.precT[i*tri : (i+1)*tri]
		off := 0
		for j := range d {
			for r := 0; r <= j; r++ {
				t[off+r] = p[r*d+j]
			}
			off += j + 1
		}
	}
}

// logDetPrecChol is ln|P_k|, the sum of the logs of P_k's diagonal.
func (m *Model) logDetPrecChol(k int) float64 {
	d := m.d
	p := m.precChol[k*d*d:]
	s := 0.0
	for j := range d {
		s += math.Log(p[j*d+j])
	}
	return s
}

// weightedLogProb sets out[k] = log ρ_k(x) for every component.
func (m *Model) weightedLogProb(x, out []float64) {
	d := m.d
	tri := d * (d + 1) / 2
	x = x[:d]
	out = out[:m.k]
	for k := range out {
		q := m.quad(x, m.means[k*d:k*d+d], m.precT[k*tri:k*tri+tri])
		out[k] = m.logConst[k] - 0.5*q
	}
}

// LogProb sets out[k], for each of the K components, to scikit-learn's
// _estimate_weighted_log_prob of the sample x: the expected log weight
// E[ln π_k] plus the expected log-likelihood of x under component k. These
// are the per-component log-likelihoods an HMM forward filter takes.
//
// len(x) must be D (Dim) and len(out) at least K (Components); it panics
// otherwise, like an index out of range. A non-finite x gives non-finite
// values. LogProb allocates nothing and is safe for concurrent use.
func (m *Model) LogProb(x, out []float64) {
	m.checkArgs(x, out)
	m.weightedLogProb(x, out)
}

// PredictProba sets out[k] to the posterior probability (responsibility)
// of component k for the sample x, as scikit-learn's predict_proba, and
// returns the log of the normaliser logsumexp_k LogProb_k(x), which is
// scikit-learn's score_samples for x (the log-likelihood under the
// variational predictive used for classification). The same length rules as
// LogProb apply; it allocates nothing and is safe for concurrent use.
func (m *Model) PredictProba(x, out []float64) float64 {
	m.LogProb(x, out)
	return normalise(out[:m.k])
}

// Predict returns the index of the most probable component for x (the
// argmax of LogProb, as scikit-learn's predict); ties go to the lowest
// index. The same length rules as LogProb apply; out is scratch of at least
// K values.
func (m *Model) Predict(x, out []float64) int {
	m.LogProb(x, out)
	best := 0
	for k, v := range out[:m.k] {
		if v > out[best] {
			best = k
		}
	}
	return best
}

func (m *Model) checkArgs(x, out []float64) {
	if len(x) != m.d {
		panic("dpgmm: LogProb: x has the wrong number of features")
	}
	if len(out) < m.k {
		panic("dpgmm: LogProb: out is shorter than the number of components")
	}
}

// normalise turns log-weights w into probabilities in place and returns
// logsumexp(w) (computed as scipy's logsumexp: shifted by the maximum).
func normalise(w []float64) float64 {
	hi := math.Inf(-1)
	for _, v := range w {
		hi = max(hi, v)
	}
	if math.IsInf(hi, 0) || math.IsNaN(hi) {
		// Every value -Inf (cannot happen for finite x), or +Inf/NaN input.
		for i := range w {
			w[i] = math.NaN()
		}
		return hi
	}
	s := 0.0
	for i, v := range w {
		e := math.Exp(v - hi)
		w[i] = e
		s += e
	}
	inv := 1 / s
	for i := range w {
		w[i] *= inv
	}
	return hi + math.Log(s)
}

// Components is K, the truncation level (every component, effective or
// not).
func (m *Model) Components() int { return m.k }

// Dim is D, the number of features of a sample.
func (m *Model) Dim() int { return m.d }

// Config returns the configuration the model was fitted with, every default
// filled in: the priors actually used (MeanPrior and CovariancePrior are
// the data's when the fit left them nil) and the seed. RegCovar is the
// value added (0 when NoRegCovar was asked for).
func (m *Model) Config() Config {
	c := m.cfg
	c.MeanPrior = clone(c.MeanPrior)
	c.CovariancePrior = clone(c.CovariancePrior)
	return c
}

// Weights returns the K expected stick-breaking weights (scikit-learn
// weights_); they sum to 1.
func (m *Model) Weights() []float64 { return clone(m.weights) }

// Effective returns the indices of the components whose weight exceeds
// threshold, in index order (scikit-learn users count weights_ > 0.01).
func (m *Model) Effective(threshold float64) []int {
	var out []int
	for k, w := range m.weights {
		if w > threshold {
			out = append(out, k)
		}
	}
	return out
}

// Means returns the K posterior means m_k (scikit-learn means_), D values
// each.
func (m *Model) Means() [][]float64 { return rows(m.means, m.k, m.d) }

// Covariances returns the K covariances Σ_k (scikit-learn covariances_),
// D×D row-major each.
func (m *Model) Covariances() [][]float64 { return rows(m.covs, m.k, m.d*m.d) }

// PrecisionsCholesky returns the K upper triangular P_k with P_k P_kᵀ =
// Σ_k⁻¹ (scikit-learn precisions_cholesky_), D×D row-major each.
func (m *Model) PrecisionsCholesky() [][]float64 { return rows(m.precChol, m.k, m.d*m.d) }

// WeightConcentration returns the Beta parameters (a_k, b_k) of the K
// sticks (scikit-learn weight_concentration_).
func (m *Model) WeightConcentration() (a, b []float64) { return clone(m.wcA), clone(m.wcB) }

// MeanPrecision returns the K β_k (scikit-learn mean_precision_).
func (m *Model) MeanPrecision() []float64 { return clone(m.meanPrec) }

// DegreesOfFreedom returns the K ν_k (scikit-learn degrees_of_freedom_).
func (m *Model) DegreesOfFreedom() []float64 { return clone(m.dof) }

func clone(s []float64) []float64 {
	if s == nil {
		return nil
	}
	return append([]float64(nil), s...)
}

func rows(flat []float64, n, w int) [][]float64 {
	out := make([][]float64, n)
	for i := range out {
		out[i] = clone(flat[i*w : (i+1)*w])
	}
	return out
}
