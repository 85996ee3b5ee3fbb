// Package binfmt is the framing shared by quantmesh's binary model formats
// (pkg/policy's weights, pkg/dpgmm's mixtures): little-endian integers and
// float64s, short strings as a u8 length then bytes, and a CRC-32C
// (Castagnoli) trailer over every byte before it.
//
// A format writes its name first with AppendString, its fields with
// AppendFloats and encoding/binary's LittleEndian.Append*, and ends with
// Seal. A reader checks the name and the sizes, then Verify, then reads the
// fields with a Decoder; each format keeps its own error sentinels and
// messages.
package binfmt

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MaxString is the longest string AppendString writes.
const MaxString = math.MaxUint8

// AppendString appends s as a u8 length then its bytes. It panics if s is
// longer than MaxString: the strings of a format are its own names, bounded
// by its validation.
func AppendString(b []byte, s string) []byte {
	if len(s) > MaxString {
		panic(fmt.Sprintf("binfmt: string of %d bytes, at most %d", len(s), MaxString))
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// AppendFloats appends each float64's bits.
func AppendFloats(b []byte, fs []float64) []byte {
	for _, f := range fs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	return b
}

// Seal appends the CRC-32C of b.
func Seal(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// Verify checks b's trailing CRC-32C against the bytes before it. The
// error says both sums; it does not wrap a sentinel (the caller's format
// does).
func Verify(b []byte) error {
	if len(b) < 4 {
		return fmt.Errorf("%d bytes cannot hold a checksum", len(b))
	}
	body := len(b) - 4
	if got, want := crc32.Checksum(b[:body], castagnoli), binary.LittleEndian.Uint32(b[body:]); got != want {
		return fmt.Errorf("checksum mismatch (stored %08x, computed %08x): the bytes were altered", want, got)
	}
	return nil
}

// Decoder reads values from the front of a byte slice. A read past the end
// returns the zero value and marks the decoder Short; it never panics.
type Decoder struct {
	b     []byte
	off   int
	short bool
}

// NewDecoder returns a decoder at the start of b.
func NewDecoder(b []byte) *Decoder { return &Decoder{b: b} }

// Offset is the number of bytes read.
func (d *Decoder) Offset() int { return d.off }

// Short reports whether a read went past the end.
func (d *Decoder) Short() bool { return d.short }

// take returns the next n bytes, or nil and marks the decoder short.
func (d *Decoder) take(n int) []byte {
	if d.short || len(d.b)-d.off < n {
		d.short = true
		return nil
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p
}

// Str reads a string written by AppendString; false when it is cut short.
func (d *Decoder) Str() (string, bool) {
	n := d.take(1)
	if n == nil {
		return "", false
	}
	s := d.take(int(n[0]))
	if s == nil {
		return "", false
	}
	return string(s), true
}

// U32 reads a uint32.
func (d *Decoder) U32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

// U64 reads a uint64.
func (d *Decoder) U64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

// F64 reads a float64.
func (d *Decoder) F64() float64 { return math.Float64frombits(d.U64()) }

// Floats reads n float64s into a new slice. Check the length first: n
// comes from the bytes.
func (d *Decoder) Floats(n int) []float64 {
	fs := make([]float64, n)
	d.Into(fs)
	return fs
}

// Into reads len(fs) float64s into fs.
func (d *Decoder) Into(fs []float64) {
	for i := range fs {
		fs[i] = d.F64()
	}
}
