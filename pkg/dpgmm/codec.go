package dpgmm

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/quantmesh/quantmesh/pkg/binfmt"
)

// Format names the model encoding that MarshalBinary writes and Unmarshal
// reads.
//
// A "quantmesh.dpgmm.v1" blob is, with every integer and float64
// little-endian:
//
//	u8   length of the format name (18), then the name "quantmesh.dpgmm.v1"
//	u32  K, components (1 to MaxComponents)
//	u32  D, features (1 to MaxFeatures)
//	the configuration used (Model.Config):
//	  f64 WeightConcentration, MeanPrecision, DegreesOfFreedom, Tol, RegCovar
//	  u32 MaxIter, NInit, Init
//	  i64 Seed
//	  f64 × D    MeanPrior
//	  f64 × D·D  CovariancePrior, row-major
//	the parameters (scikit-learn's names):
//	  f64 × K      weight_concentration_[0] (a_k), then × K [1] (b_k)
//	  f64 × K      mean_precision_
//	  f64 × K·D    means_
//	  f64 × K      degrees_of_freedom_
//	  f64 × K·D·D  covariances_, row-major
//	  f64 × K·D·D  precisions_cholesky_, row-major (upper triangular)
//	u32  CRC-32C (Castagnoli) of every byte before it
//
// Every float is finite. Equal models encode to equal bytes, so a fit with
// a given seed always gives the same blob.
const Format = "quantmesh.dpgmm.v1"

const formatFamily = "quantmesh.dpgmm."

// header: name, K, D; config: 5 f64, 3 u32, 1 i64.
const fixedSize = 1 + len(Format) + 4 + 4 + 5*8 + 3*4 + 8

// floatCount is the number of float64s after the fixed part for k
// components of d features.
func floatCount(k, d int) int { return d + d*d + 2*k + k + k*d + k + 2*k*d*d }

// MarshalBinary encodes the model in Format. It never fails; the error is
// there for encoding.BinaryMarshaler.
func (m *Model) MarshalBinary() ([]byte, error) {
	k, d := m.k, m.d
	c := m.cfg
	b := binfmt.AppendString(make([]byte, 0, fixedSize+8*floatCount(k, d)+4), Format)
	b = binary.LittleEndian.AppendUint32(b, uint32(k))
	b = binary.LittleEndian.AppendUint32(b, uint32(d))
	b = binfmt.AppendFloats(b, []float64{c.WeightConcentration, c.MeanPrecision, c.DegreesOfFreedom, c.Tol, c.RegCovar})
	b = binary.LittleEndian.AppendUint32(b, uint32(c.MaxIter))
	b = binary.LittleEndian.AppendUint32(b, uint32(c.NInit))
	b = binary.LittleEndian.AppendUint32(b, uint32(c.Init))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.Seed))
	for _, p := range [][]float64{c.MeanPrior, c.CovariancePrior, m.wcA, m.wcB, m.meanPrec, m.means, m.dof, m.covs, m.precChol} {
		b = binfmt.AppendFloats(b, p)
	}
	return binfmt.Seal(b), nil
}

// Unmarshal decodes a model written by MarshalBinary. Bytes of another
// version of the format fail with ErrUnsupportedFormat; anything else that
// is not a valid, complete, uncorrupted model fails with ErrCorruptModel
// saying what is wrong. It never panics and allocates in proportion to
// len(b) only.
func Unmarshal(b []byte) (*Model, error) {
	dec := binfmt.NewDecoder(b)
	name, ok := dec.Str()
	if !ok || !strings.HasPrefix(name, formatFamily) {
		return nil, fmt.Errorf("%w: not a %s model: no format header (%d bytes starting %q)", ErrCorruptModel, Format, len(b), b[:min(len(b), 20)])
	}
	if name != Format {
		return nil, fmt.Errorf("%w: model is %q, this build reads %q", ErrUnsupportedFormat, name, Format)
	}
	if len(b) < fixedSize+4 {
		return nil, fmt.Errorf("%w: truncated: %d bytes end inside the header (%d bytes)", ErrCorruptModel, len(b), fixedSize)
	}
	k64, d64 := dec.U32(), dec.U32()
	if k64 < 1 || k64 > MaxComponents {
		return nil, fmt.Errorf("%w: %d components, want 1 to %d", ErrCorruptModel, k64, MaxComponents)
	}
	if d64 < 1 || d64 > MaxFeatures {
		return nil, fmt.Errorf("%w: %d features, want 1 to %d", ErrCorruptModel, d64, MaxFeatures)
	}
	k, d := int(k64), int(d64)
	// k and d are bounded, so this cannot overflow.
	if want := fixedSize + 8*floatCount(k, d) + 4; len(b) != want {
		if len(b) < want {
			return nil, fmt.Errorf("%w: truncated: %d bytes, a model of %d components and %d features has %d", ErrCorruptModel, len(b), k, d, want)
		}
		return nil, fmt.Errorf("%w: %d trailing bytes after the %d bytes of a model of %d components and %d features", ErrCorruptModel, len(b)-want, want, k, d)
	}
	if err := binfmt.Verify(b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptModel, err)
	}

	var c Config
	c.Components = k
	c.WeightConcentration, c.MeanPrecision, c.DegreesOfFreedom, c.Tol, c.RegCovar = dec.F64(), dec.F64(), dec.F64(), dec.F64(), dec.F64()
	maxIter, nInit, init := dec.U32(), dec.U32(), dec.U32()
	if maxIter < 1 || maxIter > math.MaxInt32 || nInit < 1 || nInit > math.MaxInt32 || init >= uint32(len(initNames)) {
		return nil, fmt.Errorf("%w: config has max_iter %d, n_init %d, init %d", ErrCorruptModel, maxIter, nInit, init)
	}
	c.MaxIter, c.NInit, c.Init = int(maxIter), int(nInit), Init(init)
	c.Seed = int64(dec.U64())
	c.MeanPrior = dec.Floats(d)
	c.CovariancePrior = dec.Floats(d * d)
	if c.RegCovar == 0 {
		c.RegCovar = NoRegCovar // resolved(0) would mean the default
	}
	rc, err := c.resolved(d)
	if err != nil {
		return nil, fmt.Errorf("%w: config: %v", ErrCorruptModel, err) // not ErrInvalidInput: the bytes are bad
	}
	m := newModel(rc, k, d)
	for _, p := range [][]float64{m.wcA, m.wcB, m.meanPrec, m.means, m.dof, m.covs, m.precChol} {
		dec.Into(p)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptModel, err)
	}
	m.derive()
	for j, v := range m.logConst {
		if !finite(v) || !finite(m.weights[j]) {
			return nil, fmt.Errorf("%w: component %d has a non-finite log weight or weight", ErrCorruptModel, j)
		}
	}
	return m, nil
}

// validate checks the ranges of decoded parameters.
func (m *Model) validate() error {
	k, d := m.k, m.d
	for _, p := range []struct {
		name string
		v    []float64
	}{{"weight concentration a", m.wcA}, {"weight concentration b", m.wcB}, {"mean precision", m.meanPrec}} {
		for j, v := range p.v {
			if !positive(v) {
				return fmt.Errorf("component %d: %s is %v, want finite and > 0", j, p.name, v)
			}
		}
	}
	for j, v := range m.dof {
		if !finite(v) || !(v > float64(d)-1) {
			return fmt.Errorf("component %d: degrees of freedom %v, want finite and > %d", j, v, d-1)
		}
	}
	for i, v := range m.means {
		if !finite(v) {
			return fmt.Errorf("component %d: mean[%d] is %v", i/d, i%d, v)
		}
	}
	for i, v := range m.covs {
		if !finite(v) {
			return fmt.Errorf("component %d: covariance[%d] is %v", i/(d*d), i%(d*d), v)
		}
	}
	want := make([]float64, d*d)
	for j := range k {
		cov := m.covs[j*d*d : (j+1)*d*d]
		if err := checkSPD("covariance", cov, d); err != nil {
			return fmt.Errorf("component %d: %w", j, err)
		}
		p := m.precChol[j*d*d : (j+1)*d*d]
		for r := range d {
			for col := range d {
				v := p[r*d+col]
				switch {
				case !finite(v):
					return fmt.Errorf("component %d: precision Cholesky [%d][%d] is %v", j, r, col, v)
				case col < r && v != 0:
					return fmt.Errorf("component %d: precision Cholesky is not upper triangular ([%d][%d] = %v)", j, r, col, v)
				case col == r && !(v > 0):
					return fmt.Errorf("component %d: precision Cholesky diagonal [%d] is %v, want > 0", j, r, v)
				}
			}
		}
		// The stored factor is the one the covariance gives (recomputed
		// here; equal up to rounding on another platform).
		precisionCholesky(cov, d, want)
		scale := 0.0
		for _, v := range want {
			scale = math.Max(scale, math.Abs(v))
		}
		for i, v := range p {
			if math.Abs(v-want[i]) > 1e-9*scale {
				return fmt.Errorf("component %d: precision Cholesky [%d][%d] is %v, but the covariance gives %v", j, i/d, i%d, v, want[i])
			}
		}
	}
	return nil
}
