package policy

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/quantmesh/quantmesh/pkg/binfmt"
)

// Format names the weights encoding that MarshalBinary writes and Unmarshal reads.
//
// A "quantmesh.mlp.v1" blob is, with every integer and float64 little-endian:
//
//	u8       length of the format name (16), then the name "quantmesh.mlp.v1"
//	u8       length of the activation name, then the name ("tanh" or "relu")
//	u32      inputs
//	u32      outputs (always 3: BUY, HOLD, SELL)
//	u32      number of hidden layers H, then H × u32 widths, input side first
//	f64 × inputs   normalisation mean
//	f64 × inputs   normalisation std (each > 0); the network sees (x − mean) / std
//	per layer, hidden layers first then the output layer (in → out units):
//	  f64 × out·in  weights, row-major: row j holds the weights into unit j
//	  f64 × out     biases
//	u32      CRC-32C (Castagnoli) of every byte before it
//
// so a unit computes act(bias + Σ weight·input), the hidden activation is the
// named one and the output layer is followed by softmax. Every float is
// finite. The encoding of a network is unique: equal networks, equal bytes.
const Format = "quantmesh.mlp.v1"

const formatFamily = "quantmesh.mlp."

// MarshalBinary encodes the network in Format. It never fails; the error is
// there for encoding.BinaryMarshaler.
func (n *Network) MarshalBinary() ([]byte, error) {
	size := 1 + len(Format) + 1 + len(n.cfg.Activation) + 4*(3+len(n.cfg.Hidden)) +
		8*(2*n.cfg.Inputs+n.cfg.NumParams()) + 4
	b := binfmt.AppendString(make([]byte, 0, size), Format)
	b = binfmt.AppendString(b, n.cfg.Activation)
	b = binary.LittleEndian.AppendUint32(b, uint32(n.cfg.Inputs))
	b = binary.LittleEndian.AppendUint32(b, NumActions)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(n.cfg.Hidden)))
	for _, w := range n.cfg.Hidden {
		b = binary.LittleEndian.AppendUint32(b, uint32(w))
	}
	b = binfmt.AppendFloats(b, n.mean)
	b = binfmt.AppendFloats(b, n.std)
	for _, l := range n.layers {
		b = binfmt.AppendFloats(b, l.w)
		b = binfmt.AppendFloats(b, l.b)
	}
	return binfmt.Seal(b), nil
}

// Unmarshal decodes weights written by MarshalBinary. Bytes of another
// version of the format fail with ErrUnsupportedFormat; anything else that
// is not a valid, complete, uncorrupted blob fails with ErrCorruptWeights
// saying what is wrong. It never panics, and allocates in proportion to
// len(b) only.
func Unmarshal(b []byte) (*Network, error) {
	d := binfmt.NewDecoder(b)
	name, ok := d.Str()
	if !ok || !strings.HasPrefix(name, formatFamily) {
		return nil, fmt.Errorf("%w: not %s weights: no format header (%d bytes starting %q)", ErrCorruptWeights, Format, len(b), b[:min(len(b), 20)])
	}
	if name != Format {
		return nil, fmt.Errorf("%w: weights are %q, this build reads %q", ErrUnsupportedFormat, name, Format)
	}
	act, ok := d.Str()
	if !ok {
		return nil, truncated(len(b), "activation")
	}
	cfg := Config{Activation: act}
	inputs, outputs, hidden := d.U32(), d.U32(), d.U32()
	if d.Short() {
		return nil, truncated(len(b), "layer sizes")
	}
	if outputs != NumActions {
		return nil, fmt.Errorf("%w: %d outputs, policy networks have %d", ErrCorruptWeights, outputs, NumActions)
	}
	if hidden > MaxHiddenLayers {
		return nil, fmt.Errorf("%w: %d hidden layers, at most %d", ErrCorruptWeights, hidden, MaxHiddenLayers)
	}
	cfg.Inputs = int(min(inputs, math.MaxInt32))
	for range hidden {
		w := d.U32()
		if d.Short() {
			return nil, truncated(len(b), "layer sizes")
		}
		cfg.Hidden = append(cfg.Hidden, int(min(w, math.MaxInt32)))
	}
	if act == "" {
		return nil, fmt.Errorf("%w: empty activation name", ErrCorruptWeights)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorruptWeights, err)
	}
	// Sizes are now bounded (MaxParams), so this arithmetic cannot overflow.
	floats := 2*cfg.Inputs + cfg.NumParams()
	if want := d.Offset() + 8*floats + 4; len(b) != want {
		if len(b) < want {
			return nil, fmt.Errorf("%w: truncated: %d bytes, the header describes %d (%s)", ErrCorruptWeights, len(b), want, cfg)
		}
		return nil, fmt.Errorf("%w: %d trailing bytes after %d bytes of %s weights", ErrCorruptWeights, len(b)-want, want, cfg)
	}
	if err := binfmt.Verify(b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptWeights, err)
	}

	mean := d.Floats(cfg.Inputs)
	std := d.Floats(cfg.Inputs)
	layers := emptyLayers(cfg)
	for i := range layers {
		d.Into(layers[i].w)
		d.Into(layers[i].b)
	}
	for i, v := range mean {
		if v-v != 0 {
			return nil, fmt.Errorf("%w: normalisation mean of feature %d is %v", ErrCorruptWeights, i, v)
		}
	}
	for i, v := range std {
		if !(v > 0) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%w: normalisation std of feature %d is %v, want finite and > 0", ErrCorruptWeights, i, v)
		}
	}
	for li, l := range layers {
		for _, p := range [][]float64{l.w, l.b} {
			for _, v := range p {
				if v-v != 0 {
					return nil, fmt.Errorf("%w: layer %d has a non-finite parameter (%v)", ErrCorruptWeights, li, v)
				}
			}
		}
	}
	return newNetwork(cfg, mean, std, layers), nil
}

func truncated(n int, what string) error {
	return fmt.Errorf("%w: truncated: %d bytes end inside the %s", ErrCorruptWeights, n, what)
}
