// Package hrl is MetaControllerService's allocation policy: a hierarchical
// policy with options, trained with gorgonia and served by a plain-Go
// forward pass.
//
// The policy sees a state vector s_t per bar (pkg/backtest.StateVector: the
// regime-proportional weights of the strategies, the normalised regime
// entropy and the regime features), standardised with the training states'
// mean and standard deviation, and has M options:
//
//   - a high-level policy over options, pi(o | s) = softmax(W2 tanh(W1 s +
//     b1) + V s + b2);
//   - per option o an intra-option allocation, a softmax over the N
//     strategies of the option's logits theta_o;
//   - per option a learned termination beta_o(s) = sigmoid(U_o . s + u_o).
//
// Option execution is followed in expectation rather than sampled: q_t, the
// probability that each option is active at bar t, evolves as
//
//	q_t(o) = q_t-1(o) (1 - beta_o(s_t)) + [sum_o' q_t-1(o') beta_o'(s_t)] pi(o | s_t)
//
// (the active option continues unless it terminates; when it terminates the
// high-level policy picks again), with q_0 = pi(. | s_0). The target weights
// are the expected intra-option allocation, target_t = sum_o q_t(o)
// softmax(theta_o), and the served weights blend continuously toward it,
// w_t = (1 - blend) w_t-1 + blend target_t, so that no bar moves more than
// blend of capital. Because every step is differentiable, training
// maximises the expected discounted reward directly by gradient ascent
// through the recursion (truncated to windows of bars), with no sampling
// variance. The per-bar net return is the portfolio's return minus the
// switching cost switching_cost_bps/10000 times the turnover the bar causes
// (1/2 sum_i |w_t,i - w_t-1,i|), exactly the cost the backtest charges; the
// reward is its mean-variance utility x - lambda/2 x^2 (x the net return
// scaled by the training returns' root mean square, lambda = 0.15), since
// with the net return alone the policy piles into the riskiest strategy.
// Training starts from a prior (see initPolicy) under which the untrained
// policy is close to a blended naive router.
// An entropy bonus keeps the high-level policy from collapsing early, and a
// termination regulariser (a penalty on the mean termination probability)
// makes options last.
package hrl

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// Format names the serialised policy.
const Format = "quantmesh.hrl.v1"

// Config holds the hyperparameters (the contract's HrlConfig).
type Config struct {
	NumOptions                int     `json:"num_options"`
	LearningRate              float64 `json:"learning_rate"`
	Epochs                    int     `json:"epochs"`
	SwitchingCostBps          float64 `json:"switching_cost_bps"`
	BlendRate                 float64 `json:"blend_rate"`
	Discount                  float64 `json:"discount"`
	TerminationRegularization float64 `json:"termination_regularization"`
	EntropyCoefficient        float64 `json:"entropy_coefficient"`
	HiddenUnits               int     `json:"hidden_units"`
	Seed                      int64   `json:"seed"`
}

// DefaultConfig is the contract's defaults (seed 1).
func DefaultConfig() Config {
	return Config{
		NumOptions: 4, LearningRate: 1e-3, Epochs: 200, SwitchingCostBps: 10, BlendRate: 0.2,
		Discount: 0.99, TerminationRegularization: 0.01, EntropyCoefficient: 0.01, HiddenUnits: 32, Seed: 1,
	}
}

// ErrInvalidInput wraps every error about the caller's input.
var ErrInvalidInput = errors.New("hrl: invalid input")

// FieldError is an invalid hyperparameter.
type FieldError struct{ Field, Reason string }

func (e *FieldError) Error() string { return fmt.Sprintf("hrl: %s: %s", e.Field, e.Reason) }

// Unwrap makes it an ErrInvalidInput.
func (e *FieldError) Unwrap() error { return ErrInvalidInput }

// Validate checks every field against the contract's bounds.
func (c Config) Validate() error {
	bad := func(f, format string, a ...any) error { return &FieldError{f, fmt.Sprintf(format, a...)} }
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case c.NumOptions < 1 || c.NumOptions > 16:
		return bad("num_options", "must be 1 to 16, got %d", c.NumOptions)
	case !(c.LearningRate > 0 && c.LearningRate <= 1):
		return bad("learning_rate", "must be in (0, 1], got %v", c.LearningRate)
	case c.Epochs < 1 || c.Epochs > 100000:
		return bad("epochs", "must be 1 to 100000, got %d", c.Epochs)
	case !(c.SwitchingCostBps >= 0 && c.SwitchingCostBps <= 10000):
		return bad("switching_cost_bps", "must be 0 to 10000, got %v", c.SwitchingCostBps)
	case !(c.BlendRate > 0 && c.BlendRate <= 1):
		return bad("blend_rate", "must be in (0, 1], got %v", c.BlendRate)
	case !(c.Discount >= 0 && c.Discount < 1):
		return bad("discount", "must be in [0, 1), got %v", c.Discount)
	case !(c.TerminationRegularization >= 0) || !finite(c.TerminationRegularization):
		return bad("termination_regularization", "must be finite and >= 0, got %v", c.TerminationRegularization)
	case !(c.EntropyCoefficient >= 0) || !finite(c.EntropyCoefficient):
		return bad("entropy_coefficient", "must be finite and >= 0, got %v", c.EntropyCoefficient)
	case c.HiddenUnits < 1 || c.HiddenUnits > 1024:
		return bad("hidden_units", "must be 1 to 1024, got %d", c.HiddenUnits)
	}
	return nil
}

// Policy is a trained policy. Its matrices are row-major.
type Policy struct {
	Format     string   `json:"format"`
	Config     Config   `json:"config"`
	Strategies []string `json:"strategies"`
	// StateDim is the length of the state vectors it takes.
	StateDim int `json:"state_dim"`
	// InMean and InStd standardise the state: the networks see (s -
	// InMean) / InStd, with both fitted on the training states.
	InMean []float64 `json:"in_mean"`
	InStd  []float64 `json:"in_std"`
	// W1 is StateDim x Hidden, B1 Hidden, W2 Hidden x M, B2 M: the
	// high-level policy.
	W1 []float64 `json:"w1"`
	B1 []float64 `json:"b1"`
	W2 []float64 `json:"w2"`
	B2 []float64 `json:"b2"`
	// V is StateDim x M: a direct (linear) path from the state to the
	// high-level policy's logits.
	V []float64 `json:"v"`
	// U is StateDim x M, UB M: the terminations.
	U  []float64 `json:"u"`
	UB []float64 `json:"ub"`
	// Theta is M x N: the options' allocation logits.
	Theta []float64 `json:"theta"`
	// TrainRows names the rows the policy was trained on, for the
	// walk-forward check: the dataset and the half-open row range. The
	// dataset is "<dataset>/<column>" when trained on one column, or the
	// dataset id alone when trained on those rows of every column.
	TrainDataset string `json:"train_dataset,omitempty"`
	TrainStart   int    `json:"train_start"`
	TrainEnd     int    `json:"train_end"`
}

// MarshalBinary encodes the policy as JSON in Format.
func (p *Policy) MarshalBinary() ([]byte, error) { return json.Marshal(p) }

// Unmarshal decodes and validates a policy.
func Unmarshal(b []byte) (*Policy, error) {
	var p Policy
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: decode: %v", ErrInvalidInput, err)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func (p *Policy) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: policy: %s", ErrInvalidInput, fmt.Sprintf(format, a...))
	}
	if p.Format != Format {
		return bad("format %q, want %q", p.Format, Format)
	}
	if err := p.Config.Validate(); err != nil {
		return err
	}
	d, h, m, n := p.StateDim, p.Config.HiddenUnits, p.Config.NumOptions, len(p.Strategies)
	if d < 1 || n < 2 {
		return bad("state dim %d, %d strategies", d, n)
	}
	for _, c := range []struct {
		name string
		v    []float64
		want int
	}{{"in_mean", p.InMean, d}, {"in_std", p.InStd, d}, {"w1", p.W1, d * h}, {"b1", p.B1, h}, {"w2", p.W2, h * m}, {"b2", p.B2, m}, {"v", p.V, d * m}, {"u", p.U, d * m}, {"ub", p.UB, m}, {"theta", p.Theta, m * n}} {
		if len(c.v) != c.want {
			return bad("%s has %d values, want %d", c.name, len(c.v), c.want)
		}
		for _, x := range c.v {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return bad("%s holds %v", c.name, x)
			}
		}
	}
	for _, x := range p.InStd {
		if !(x > 0) {
			return bad("in_std holds %v", x)
		}
	}
	return nil
}

// NumStrategies is the length of the weight vectors.
func (p *Policy) NumStrategies() int { return len(p.Strategies) }

// OptionTargets returns each option's allocation, softmax(theta_o).
func (p *Policy) OptionTargets() [][]float64 {
	m, n := p.Config.NumOptions, len(p.Strategies)
	out := make([][]float64, m)
	for o := range out {
		out[o] = make([]float64, n)
		softmax(p.Theta[o*n:(o+1)*n], out[o])
	}
	return out
}
