package binfmt

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	b := AppendString(nil, "quantmesh.test.v1")
	b = binary.LittleEndian.AppendUint32(b, 7)
	b = binary.LittleEndian.AppendUint64(b, math.MaxUint64)
	b = AppendFloats(b, []float64{1.5, math.Inf(-1), math.Copysign(0, -1)})
	b = Seal(b)
	if err := Verify(b); err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(b)
	if s, ok := d.Str(); !ok || s != "quantmesh.test.v1" {
		t.Fatalf("name %q %v", s, ok)
	}
	if v := d.U32(); v != 7 {
		t.Fatalf("u32 %d", v)
	}
	if v := d.U64(); v != math.MaxUint64 {
		t.Fatalf("u64 %d", v)
	}
	fs := d.Floats(3)
	if fs[0] != 1.5 || !math.IsInf(fs[1], -1) || !math.Signbit(fs[2]) {
		t.Fatalf("floats %v", fs)
	}
	if d.Short() || d.Offset() != len(b)-4 {
		t.Fatalf("short %v, offset %d of %d", d.Short(), d.Offset(), len(b))
	}
}

func TestVerifyDetectsChanges(t *testing.T) {
	t.Parallel()
	b := Seal(AppendFloats(AppendString(nil, "x"), []float64{1, 2, 3}))
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x10
		if err := Verify(c); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	for _, short := range [][]byte{nil, {1, 2, 3}} {
		if err := Verify(short); err == nil {
			t.Errorf("%d bytes verified", len(short))
		}
	}
}

func TestDecoderPastTheEnd(t *testing.T) {
	t.Parallel()
	d := NewDecoder([]byte{5, 'a', 'b'})
	if s, ok := d.Str(); ok {
		t.Fatalf("a cut string read as %q", s)
	}
	if !d.Short() {
		t.Fatal("not short after a cut string")
	}
	if v := d.U32(); v != 0 {
		t.Fatalf("u32 past the end: %d", v)
	}
	d = NewDecoder([]byte{1, 2, 3, 4, 5, 6, 7})
	if v := d.U32(); v != 0x04030201 || d.Short() {
		t.Fatalf("u32 %x short %v", v, d.Short())
	}
	if v := d.F64(); v != 0 || !d.Short() {
		t.Fatalf("f64 past the end: %v short %v", v, d.Short())
	}
}

func TestAppendStringTooLong(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("a 256-byte string was appended")
		}
	}()
	AppendString(nil, strings.Repeat("x", MaxString+1))
}

func FuzzDecoder(f *testing.F) {
	f.Add([]byte{3, 'a', 'b', 'c', 1, 0, 0, 0}, 2)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		d := NewDecoder(b)
		d.Str()
		d.U32()
		d.Floats(min(max(n, 0), 64))
		if d.Offset() > len(b) {
			t.Fatalf("offset %d past %d bytes", d.Offset(), len(b))
		}
		_ = Verify(b)
	})
}
