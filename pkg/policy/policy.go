// Package policy is the trading policy network: a small multilayer perceptron
// that maps a feature vector to BUY / HOLD / SELL.
//
// The network is defined and trained with gorgonia (Train, GorgoniaForward)
// and served by a plain Go forward pass (Network.Predict) that computes the
// same function on the same weights without gorgonia's per-call graph
// overhead; a test holds the two to 1e-9. Weights travel as self-describing
// bytes in the Format "quantmesh.mlp.v1" (MarshalBinary, Unmarshal).
//
// A Network is immutable and safe for concurrent use: serving shares one
// *Network between goroutines and swaps the pointer to hot-swap weights.
//
// Online learning (Elastic Weight Consolidation) builds on TrainConfig.Start,
// TrainConfig.EWC and ComputeFisher (the diagonal Fisher; ComputeEmpiricalFisher
// and the Kronecker-factored ComputeKroneckerFisher are kept for comparison).
package policy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
)

// Action is a trading action, in the order of the network's outputs.
type Action int

// The actions. Their values are the indices of the network's outputs.
const (
	ActionBuy Action = iota
	ActionHold
	ActionSell
)

// NumActions is the number of outputs of every policy network.
const NumActions = 3

var actionNames = [NumActions]string{"BUY", "HOLD", "SELL"}

// String returns BUY, HOLD or SELL, or Action(n) for a value out of range.
func (a Action) String() string {
	if a.Valid() {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Valid reports whether a is one of the three actions.
func (a Action) Valid() bool { return a >= 0 && a < NumActions }

// ParseAction parses BUY, HOLD or SELL (as String writes them).
func ParseAction(s string) (Action, error) {
	for i, name := range actionNames {
		if s == name {
			return Action(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown action %q (want BUY, HOLD or SELL)", ErrInvalidInput, s)
}

// Activations of the hidden layers.
const (
	ActivationTanh = "tanh"
	ActivationReLU = "relu"
)

// Size limits, so that a config or a weights blob cannot ask for absurd
// amounts of memory.
const (
	MaxInputs       = 4096    // features per sample
	MaxWidth        = 4096    // units in one hidden layer
	MaxHiddenLayers = 8       // hidden layers
	MaxParams       = 1 << 24 // weights and biases in all layers (128 MiB of float64)
)

// Errors. Every error of this package wraps one of them; match with errors.Is.
var (
	// ErrInvalidInput: features, labels or a data set that the network cannot
	// take (wrong length, NaN or infinite values, label out of range, ...).
	ErrInvalidInput = errors.New("policy: invalid input")
	// ErrInvalidConfig: a Config or TrainConfig that cannot be used.
	ErrInvalidConfig = errors.New("policy: invalid config")
	// ErrCorruptWeights: bytes that are not valid weights of a supported format.
	ErrCorruptWeights = errors.New("policy: corrupt weights")
	// ErrUnsupportedFormat: weights of another version of the format (or another format).
	ErrUnsupportedFormat = errors.New("policy: unsupported weights format")
)

// Config is the shape of a network.
type Config struct {
	// Inputs is the number of features per sample.
	Inputs int
	// Hidden lists the widths of the hidden layers, input side first. Empty
	// means no hidden layer: a linear (multinomial logistic) model.
	Hidden []int
	// Activation of the hidden layers: "tanh" (the default when empty) or "relu".
	Activation string
}

// DefaultConfig is the serving default: two hidden layers of 64 and 32 tanh units.
func DefaultConfig(inputs int) Config {
	return Config{Inputs: inputs, Hidden: []int{64, 32}, Activation: ActivationTanh}
}

// Validate reports the first problem with c, or nil.
func (c Config) Validate() error {
	if c.Inputs < 1 || c.Inputs > MaxInputs {
		return fmt.Errorf("%w: inputs must be in [1, %d], got %d", ErrInvalidConfig, MaxInputs, c.Inputs)
	}
	if len(c.Hidden) > MaxHiddenLayers {
		return fmt.Errorf("%w: at most %d hidden layers, got %d", ErrInvalidConfig, MaxHiddenLayers, len(c.Hidden))
	}
	for i, w := range c.Hidden {
		if w < 1 || w > MaxWidth {
			return fmt.Errorf("%w: hidden layer %d: width must be in [1, %d], got %d", ErrInvalidConfig, i, MaxWidth, w)
		}
	}
	switch c.Activation {
	case "", ActivationTanh, ActivationReLU:
	default:
		return fmt.Errorf("%w: activation must be %q or %q, got %q", ErrInvalidConfig, ActivationTanh, ActivationReLU, c.Activation)
	}
	if p := c.NumParams(); p > MaxParams {
		return fmt.Errorf("%w: %d parameters, at most %d", ErrInvalidConfig, p, MaxParams)
	}
	return nil
}

// NumParams is the number of weights and biases of a network of shape c
// (for a valid c; it does not overflow for any c that passes the width limits).
func (c Config) NumParams() int {
	p, in := 0, c.Inputs
	for _, w := range c.Hidden {
		p += (in + 1) * w
		in = w
	}
	return p + (in+1)*NumActions
}

// Equal reports whether c and o describe the same network shape (an empty
// Activation equals "tanh").
func (c Config) Equal(o Config) bool {
	c, o = c.normalized(), o.normalized()
	return c.Inputs == o.Inputs && c.Activation == o.Activation && slices.Equal(c.Hidden, o.Hidden)
}

// String describes c, for example "16-64-32-3 tanh".
func (c Config) String() string {
	c = c.normalized()
	s := fmt.Sprint(c.Inputs)
	for _, w := range c.Hidden {
		s += fmt.Sprintf("-%d", w)
	}
	return fmt.Sprintf("%s-%d %s", s, NumActions, c.Activation)
}

// normalized returns a copy with the default activation filled in and its own
// Hidden slice (nil when empty).
func (c Config) normalized() Config {
	if c.Activation == "" {
		c.Activation = ActivationTanh
	}
	if len(c.Hidden) == 0 {
		c.Hidden = nil
	} else {
		c.Hidden = slices.Clone(c.Hidden)
	}
	return c
}

// layer is one dense layer: out = w·in + b.
type layer struct {
	in, out int
	w       []float64 // out×in, row-major: row j holds the weights into unit j
	b       []float64 // out
}

// Network is an immutable set of weights plus the input normalisation the
// model was trained with. It is safe for concurrent use.
type Network struct {
	cfg    Config // normalized
	relu   bool
	mean   []float64 // per input
	std    []float64 // per input, > 0
	layers []layer   // hidden layers, then the output layer
	width  int       // max(inputs, hidden widths): the scratch size of a forward pass

	scratch sync.Pool // *scratch
}

// newNetwork assembles a network from a valid config and parameters with the
// right shapes. It takes ownership of the slices.
func newNetwork(cfg Config, mean, std []float64, layers []layer) *Network {
	cfg = cfg.normalized()
	n := &Network{
		cfg:    cfg,
		relu:   cfg.Activation == ActivationReLU,
		mean:   mean,
		std:    std,
		layers: layers,
		width:  cfg.Inputs,
	}
	for _, w := range cfg.Hidden {
		n.width = max(n.width, w)
	}
	n.scratch.New = func() any {
		return &scratch{a: make([]float64, n.width), b: make([]float64, n.width)}
	}
	return n
}

// emptyLayers allocates zeroed layers for cfg, in one backing array.
func emptyLayers(cfg Config) []layer {
	backing := make([]float64, cfg.NumParams())
	layers := make([]layer, 0, len(cfg.Hidden)+1)
	in := cfg.Inputs
	for _, out := range append(slices.Clone(cfg.Hidden), NumActions) {
		l := layer{in: in, out: out}
		l.w, backing = backing[:in*out:in*out], backing[in*out:]
		l.b, backing = backing[:out:out], backing[out:]
		layers = append(layers, l)
		in = out
	}
	return layers
}

// New returns a network of shape cfg with deterministic random weights for
// seed: Glorot-uniform weights for tanh, He-uniform for relu, zero biases,
// and the identity input normalisation (mean 0, std 1).
func New(cfg Config, seed int64) (*Network, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.normalized()
	layers := emptyLayers(cfg)
	r := newRNG(seed, streamInit)
	for li := range layers {
		l := &layers[li]
		var limit float64
		if cfg.Activation == ActivationReLU && li < len(layers)-1 {
			limit = math.Sqrt(6 / float64(l.in)) // He uniform
		} else {
			limit = math.Sqrt(6 / float64(l.in+l.out)) // Glorot uniform
		}
		for i := range l.w {
			l.w[i] = (2*r.float64() - 1) * limit
		}
	}
	mean := make([]float64, cfg.Inputs)
	std := make([]float64, cfg.Inputs)
	for i := range std {
		std[i] = 1
	}
	return newNetwork(cfg, mean, std, layers), nil
}

// Inputs is the number of features the network takes.
func (n *Network) Inputs() int { return n.cfg.Inputs }

// Config returns the network's shape (a copy).
func (n *Network) Config() Config { return n.cfg.normalized() }

// NumParams is the number of weights and biases.
func (n *Network) NumParams() int { return n.cfg.NumParams() }

// Normalization returns copies of the per-feature mean and standard deviation
// that Predict applies to its input: z = (x − mean) / std.
func (n *Network) Normalization() (mean, std []float64) {
	return slices.Clone(n.mean), slices.Clone(n.std)
}

// withParams returns a network with n's config and normalisation and the
// given layers.
func (n *Network) withParams(layers []layer) *Network {
	return newNetwork(n.cfg, n.mean, n.std, layers)
}

// cloneLayers deep-copies layers into one backing array.
func cloneLayers(cfg Config, src []layer) []layer {
	dst := emptyLayers(cfg)
	for i := range src {
		copy(dst[i].w, src[i].w)
		copy(dst[i].b, src[i].b)
	}
	return dst
}
