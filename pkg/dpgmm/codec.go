package dpgmm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"strings"
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

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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
	b := make([]byte, 0, fixedSize+8*floatCount(k, d)+4)
	b = append(b, byte(len(Format)))
	b = append(b, Format...)
	b = binary.LittleEndian.AppendUint32(b, uint32(k))
	b = binary.LittleEndian.AppendUint32(b, uint32(d))
	b = appendFloats(b, []float64{c.WeightConcentration, c.MeanPrecision, c.DegreesOfFreedom, c.Tol, c.RegCovar})
	b = binary.LittleEndian.AppendUint32(b, uint32(c.MaxIter))
	b = binary.LittleEndian.AppendUint32(b, uint32(c.NInit))
	b = binary.LittleEndian.AppendUint32(b, uint32(c.Init))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.Seed))
	for _, p := range [][]float64{c.MeanPrior, c.CovariancePrior, m.wcA, m.wcB, m.meanPrec, m.means, m.dof, m.covs, m.precChol} {
		b = appendFloats(b, p)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

func appendFloats(b []byte, fs []float64) []byte {
	for _, f := range fs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	return b
}

// Unmarshal decodes a model written by MarshalBinary. Bytes of another
// version of the format fail with ErrUnsupportedFormat; anything else that
// is not a valid, complete, uncorrupted model fails with ErrCorruptModel
// saying what is wrong. It never panics and allocates in proportion to
// len(b) only.
func Unmarshal(b []byte) (*Model, error) {
	dec := decoder{b: b}
	name, ok := dec.str()
	if !ok || !strings.HasPrefix(name, formatFamily) {
		return nil, fmt.Errorf("%w: not a %s model: no format header (%d bytes starting %q)", ErrCorruptModel, Format, len(b), b[:min(len(b), 20)])
	}
	if name != Format {
		return nil, fmt.Errorf("%w: model is %q, this build reads %q", ErrUnsupportedFormat, name, Format)
	}
	if len(b) < fixedSize+4 {
		return nil, fmt.Errorf("%w: truncated: %d bytes end inside the header (%d bytes)", ErrCorruptModel, len(b), fixedSize)
	}
	k64, d64 := dec.u32(), dec.u32()
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
	body := len(b) - 4
	if got, want := crc32.Checksum(b[:body], castagnoli), binary.LittleEndian.Uint32(b[body:]); got != want {
		return nil, fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x): the bytes were altered", ErrCorruptModel, want, got)
	}

	var c Config
	c.Components = k
	c.WeightConcentration, c.MeanPrecision, c.DegreesOfFreedom, c.Tol, c.RegCovar = dec.f64(), dec.f64(), dec.f64(), dec.f64(), dec.f64()
	maxIter, nInit, init := dec.u32(), dec.u32(), dec.u32()
	if maxIter < 1 || maxIter > math.MaxInt32 || nInit < 1 || nInit > math.MaxInt32 || init >= uint32(len(initNames)) {
		return nil, fmt.Errorf("%w: config has max_iter %d, n_init %d, init %d", ErrCorruptModel, maxIter, nInit, init)
	}
	c.MaxIter, c.NInit, c.Init = int(maxIter), int(nInit), Init(init)
	c.Seed = int64(dec.u64())
	c.MeanPrior = dec.floats(d)
	c.CovariancePrior = dec.floats(d * d)
	if c.RegCovar == 0 {
		c.RegCovar = NoRegCovar // resolved(0) would mean the default
	}
	rc, err := c.resolved(d)
	if err != nil {
		return nil, fmt.Errorf("%w: config: %v", ErrCorruptModel, err) // not ErrInvalidInput: the bytes are bad
	}
	m := newModel(rc, k, d)
	for _, p := range [][]float64{m.wcA, m.wcB, m.meanPrec, m.means, m.dof, m.covs, m.precChol} {
		dec.into(p)
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

// decoder reads little-endian values from b. str reports false past the
// end; the others are called only after the length has been checked.
type decoder struct {
	b   []byte
	off int
}

func (d *decoder) str() (string, bool) {
	if d.off >= len(d.b) {
		return "", false
	}
	n := int(d.b[d.off])
	if len(d.b)-d.off-1 < n {
		return "", false
	}
	s := string(d.b[d.off+1 : d.off+1+n])
	d.off += 1 + n
	return s, true
}

func (d *decoder) u32() uint32 {
	v := binary.LittleEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v
}

func (d *decoder) u64() uint64 {
	v := binary.LittleEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v
}

func (d *decoder) f64() float64 { return math.Float64frombits(d.u64()) }

func (d *decoder) floats(n int) []float64 {
	fs := make([]float64, n)
	d.into(fs)
	return fs
}

func (d *decoder) into(fs []float64) {
	for i := range fs {
		fs[i] = d.f64()
	}
}
