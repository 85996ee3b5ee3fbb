// Package dpgmm is a variational Dirichlet-process Gaussian mixture with
// full covariances: the model of scikit-learn's
//
//	BayesianGaussianMixture(weight_concentration_prior_type="dirichlet_process",
//	                        covariance_type="full")
//
// written on gonum. Fit runs the same variational updates (truncated
// stick-breaking prior on the weights, Normal-Wishart prior on each
// component's mean and precision), with the same defaults, the same
// initialisations and the same lower bound (scikit-learn's lower_bound_, so
// the two compare directly); Model.PredictProba is predict_proba and
// Model.LogProb is _estimate_weighted_log_prob for one sample.
//
// With K components (the truncation level), N samples x_n of D features and
// responsibilities r_nk, an iteration is (Bishop, PRML §10.2, and Blei &
// Jordan 2006 for the stick-breaking weights; every quantity is the one
// scikit-learn computes):
//
//	N_k  = Σ_n r_nk + 10ε              x̄_k = Σ_n r_nk x_n / N_k
//	S_k  = Σ_n r_nk (x_n − x̄_k)(x_n − x̄_k)ᵀ / N_k + reg_covar·I
//	a_k  = 1 + N_k                     b_k = γ + Σ_{j>k} N_j
//	β_k  = β₀ + N_k                    m_k = (β₀ m₀ + N_k x̄_k) / β_k
//	ν_k  = ν₀ + N_k
//	Σ_k  = (W₀⁻¹ + N_k S_k + N_k β₀/β_k (x̄_k − m₀)(x̄_k − m₀)ᵀ) / ν_k
//	P_k  = chol(Σ_k)⁻ᵀ (upper triangular, P_k P_kᵀ = Σ_k⁻¹ = E[Λ_k])
//
// and the E step takes, per sample and component,
//
//	log ρ_nk = E[ln π_k] − ½‖(x_n − m_k) P_k‖² + ln|P_k| − ½D ln ν_k − ½D ln 2π
//	           + ½(D ln 2 + Σ_{j<D} ψ((ν_k − j)/2) − D/β_k)
//	E[ln π_k] = ψ(a_k) − ψ(a_k + b_k) + Σ_{j<k} (ψ(b_j) − ψ(a_j + b_j))
//	r_nk = ρ_nk / Σ_j ρ_nj
//
// where γ is the weight concentration prior, β₀ the mean precision prior,
// m₀ the mean prior, ν₀ the degrees-of-freedom prior and W₀⁻¹ the
// covariance prior. The lower bound, up to the constants scikit-learn drops,
// is
//
//	L = −Σ_nk r_nk ln r_nk − Σ_k ln B(W_k, ν_k) + Σ_k ln Beta(a_k, b_k) − ½D Σ_k ln β_k
//	ln B(W_k, ν_k) = −(ν_k ln|P_k|' + ½ν_k D ln 2 + Σ_{j<D} ln Γ((ν_k − j)/2)),
//	ln|P_k|' = ln|P_k| − ½D ln ν_k
//
// and iteration stops when it changes by less than Tol.
//
// A Model is immutable and safe for concurrent use. LogProb and
// PredictProba allocate nothing. Models travel as self-describing bytes in
// the Format "quantmesh.dpgmm.v1" (MarshalBinary, Unmarshal).
package dpgmm

import (
	"errors"
	"fmt"
	"math"
)

// Init is how a fit's first responsibilities are chosen (scikit-learn
// init_params).
type Init int

// The initialisations. The zero value is InitKMeans, scikit-learn's default.
const (
	// InitKMeans: hard assignments of a k-means clustering (k-means++
	// seeding, then Lloyd iterations), as scikit-learn's "kmeans", which runs
	// KMeans(n_clusters=K, n_init=1).
	InitKMeans Init = iota
	// InitKMeansPlusPlus: K samples chosen by k-means++ seeding, each the
	// only member of one component ("k-means++").
	InitKMeansPlusPlus
	// InitRandom: uniform random responsibilities, each row normalised
	// ("random").
	InitRandom
	// InitRandomFromData: K distinct random samples, each the only member of
	// one component ("random_from_data").
	InitRandomFromData
)

var initNames = [...]string{"kmeans", "k-means++", "random", "random_from_data"}

// String returns scikit-learn's name of the method, or Init(n).
func (i Init) String() string {
	if i.Valid() {
		return initNames[i]
	}
	return fmt.Sprintf("Init(%d)", int(i))
}

// Valid reports whether i is one of the four methods.
func (i Init) Valid() bool { return i >= 0 && int(i) < len(initNames) }

// Defaults, as scikit-learn's.
const (
	DefaultComponents = 10
	DefaultTol        = 1e-3
	DefaultRegCovar   = 1e-6
	DefaultMaxIter    = 100
	DefaultNInit      = 1
)

// NoRegCovar as Config.RegCovar asks for no regularisation at all (0 added
// to the covariance diagonals); the zero value of the field means
// DefaultRegCovar.
const NoRegCovar = -1.0

// Size limits, so that neither a config nor a model blob can ask for absurd
// amounts of memory.
const (
	MaxComponents = 10000
	MaxFeatures   = 1024
)

// Errors. Every error of this package wraps one of them; match with
// errors.Is. Errors about the data or the configuration are *InputError.
var (
	// ErrInvalidInput: data or configuration that cannot be fitted (see
	// InputError for which field and why).
	ErrInvalidInput = errors.New("dpgmm: invalid input")
	// ErrFitFailed: the iterations broke down numerically (a covariance that
	// is not positive definite). scikit-learn fails the same way; more
	// regularisation (RegCovar) or fewer components help.
	ErrFitFailed = errors.New("dpgmm: fit failed")
	// ErrCorruptModel: bytes that are not a valid, complete model.
	ErrCorruptModel = errors.New("dpgmm: corrupt model")
	// ErrUnsupportedFormat: a model written in another version of the format.
	ErrUnsupportedFormat = errors.New("dpgmm: unsupported model format")
)

// InputError says which input is wrong and why. It wraps ErrInvalidInput.
type InputError struct {
	// Field names the input: a Config field ("Components",
	// "CovariancePrior"), "X" for the data as a whole, "X[i]" for a sample
	// or "X[i][j]" for one value, "InitResp[i][k]" likewise.
	Field string
	// Reason says what is wrong, with the values involved.
	Reason string
}

func (e *InputError) Error() string {
	return fmt.Sprintf("dpgmm: invalid %s: %s", e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidInput) hold.
func (e *InputError) Unwrap() error { return ErrInvalidInput }

func inputErr(field, format string, args ...any) error {
	return &InputError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Config holds the hyperparameters of a fit. The zero value of every field
// means scikit-learn's default; Model.Config reports the values used.
type Config struct {
	// Components is the truncation level K (scikit-learn n_components): the
	// most components the mixture can use. 0 means 10; otherwise 1 to
	// MaxComponents and at most the number of samples.
	Components int
	// WeightConcentration is the Dirichlet-process concentration γ
	// (weight_concentration_prior), > 0; 0 means 1/K.
	WeightConcentration float64
	// MeanPrecision is the precision prior β₀ on the means
	// (mean_precision_prior), > 0; 0 means 1.
	MeanPrecision float64
	// MeanPrior is the prior mean m₀ (mean_prior), one finite value per
	// feature; nil means the mean of the data.
	MeanPrior []float64
	// DegreesOfFreedom is the Wishart prior's ν₀
	// (degrees_of_freedom_prior), > D − 1 for D features; 0 means D.
	DegreesOfFreedom float64
	// CovariancePrior is the Wishart prior's W₀⁻¹ (covariance_prior), D×D
	// row-major, symmetric positive definite; nil means the covariance of
	// the data (numpy's np.cov(X.T), divisor N − 1).
	CovariancePrior []float64
	// Tol stops the iterations once the lower bound changes by less than it
	// (tol), > 0; 0 means 1e-3.
	Tol float64
	// RegCovar is added to the diagonal of each component's sample
	// covariance S_k (reg_covar), > 0; 0 means 1e-6 and NoRegCovar means
	// none.
	RegCovar float64
	// MaxIter bounds the iterations of one initialisation (max_iter), >= 1;
	// 0 means 100.
	MaxIter int
	// NInit is the number of initialisations; the one with the highest
	// final lower bound is kept (n_init). >= 1; 0 means 1.
	NInit int
	// Init chooses the first responsibilities (init_params).
	Init Init
	// Seed makes the fit deterministic: the same data, config and seed give
	// the same model, bit for bit (random_state; the random numbers are not
	// numpy's, so a seed does not pick scikit-learn's initialisation).
	Seed int64
	// Workers is the number of goroutines a fit uses; 0 means GOMAXPROCS.
	// The result does not depend on it. Not recorded in the model.
	Workers int
	// InitResp, when set, replaces Init: N rows of K non-negative
	// responsibilities to start from (what scikit-learn passes to
	// _initialize). Rows need not sum to 1 (k-means++ and random_from_data
	// start with rows of zeros). Only with NInit 1. It lets a test start
	// exactly where scikit-learn started. Not recorded in the model.
	InitResp [][]float64
}

// resolved returns cfg with defaults that need no data filled in, or an
// *InputError.
func (cfg Config) resolved(d int) (Config, error) {
	c := cfg
	c.InitResp = nil
	if c.Components == 0 {
		c.Components = DefaultComponents
	}
	if c.Components < 1 || c.Components > MaxComponents {
		return c, inputErr("Components", "%d, want 1 to %d (0 means %d)", cfg.Components, MaxComponents, DefaultComponents)
	}
	k := float64(c.Components)
	if c.WeightConcentration == 0 {
		c.WeightConcentration = 1 / k
	}
	if !positive(c.WeightConcentration) {
		return c, inputErr("WeightConcentration", "%v, want finite and > 0 (0 means 1/K)", cfg.WeightConcentration)
	}
	if c.MeanPrecision == 0 {
		c.MeanPrecision = 1
	}
	if !positive(c.MeanPrecision) {
		return c, inputErr("MeanPrecision", "%v, want finite and > 0 (0 means 1)", cfg.MeanPrecision)
	}
	if c.MeanPrior != nil {
		if len(c.MeanPrior) != d {
			return c, inputErr("MeanPrior", "%d values for %d features", len(c.MeanPrior), d)
		}
		for j, v := range c.MeanPrior {
			if !finite(v) {
				return c, inputErr(fmt.Sprintf("MeanPrior[%d]", j), "%v, want finite", v)
			}
		}
		c.MeanPrior = append([]float64(nil), c.MeanPrior...)
	}
	if c.DegreesOfFreedom == 0 {
		c.DegreesOfFreedom = float64(d)
	}
	if !finite(c.DegreesOfFreedom) || !(c.DegreesOfFreedom > float64(d)-1) {
		return c, inputErr("DegreesOfFreedom", "%v, want finite and > %d (number of features - 1; 0 means %d)", cfg.DegreesOfFreedom, d-1, d)
	}
	if c.CovariancePrior != nil {
		if len(c.CovariancePrior) != d*d {
			return c, inputErr("CovariancePrior", "%d values, want %d×%d = %d (row-major)", len(c.CovariancePrior), d, d, d*d)
		}
		if err := checkSPD("CovariancePrior", c.CovariancePrior, d); err != nil {
			return c, err
		}
		c.CovariancePrior = append([]float64(nil), c.CovariancePrior...)
	}
	if c.Tol == 0 {
		c.Tol = DefaultTol
	}
	if !positive(c.Tol) {
		return c, inputErr("Tol", "%v, want finite and > 0 (0 means %g)", cfg.Tol, DefaultTol)
	}
	switch {
	case c.RegCovar == 0:
		c.RegCovar = DefaultRegCovar
	case c.RegCovar == NoRegCovar:
		c.RegCovar = 0
	case !positive(c.RegCovar):
		return c, inputErr("RegCovar", "%v, want finite and > 0 (0 means %g, NoRegCovar means none)", cfg.RegCovar, DefaultRegCovar)
	}
	if c.MaxIter == 0 {
		c.MaxIter = DefaultMaxIter
	}
	if c.MaxIter < 1 {
		return c, inputErr("MaxIter", "%d, want >= 1 (0 means %d)", cfg.MaxIter, DefaultMaxIter)
	}
	if c.NInit == 0 {
		c.NInit = DefaultNInit
	}
	if c.NInit < 1 {
		return c, inputErr("NInit", "%d, want >= 1 (0 means %d)", cfg.NInit, DefaultNInit)
	}
	if c.Workers < 0 {
		return c, inputErr("Workers", "%d, want >= 0 (0 means GOMAXPROCS)", cfg.Workers)
	}
	if !c.Init.Valid() {
		return c, inputErr("Init", "%d is not a method (want 0 to %d)", int(cfg.Init), len(initNames)-1)
	}
	return c, nil
}

// checkSPD reports an *InputError unless a (d×d, row-major) is finite,
// symmetric and positive definite.
func checkSPD(field string, a []float64, d int) error {
	scale := 0.0
	for i, v := range a {
		if !finite(v) {
			return inputErr(fmt.Sprintf("%s[%d][%d]", field, i/d, i%d), "%v, want finite", v)
		}
		scale = max(scale, math.Abs(v))
	}
	for i := range d {
		for j := range i {
			if x, y := a[i*d+j], a[j*d+i]; math.Abs(x-y) > 1e-10*scale {
				return inputErr(field, "not symmetric: [%d][%d] = %v but [%d][%d] = %v", i, j, x, j, i, y)
			}
		}
	}
	if !positiveDefinite(a, d) {
		return inputErr(field, "not positive definite (its Cholesky factorisation fails)")
	}
	return nil
}

func finite(v float64) bool { return v-v == 0 }

func positive(v float64) bool { return v > 0 && !math.IsInf(v, 1) }
