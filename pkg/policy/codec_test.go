package policy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"strings"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/binfmt"
)

func TestCodecRoundTrip(t *testing.T) {
	t.Parallel()
	for i, cfg := range []Config{
		{Inputs: 1},
		DefaultConfig(16),
		{Inputs: 7, Hidden: []int{13, 1, 9}, Activation: "relu"},
	} {
		n := randomNetwork(t, cfg, uint64(i+1))
		b := mustMarshal(t, n)
		if want := 1 + len(Format) + 1 + 4 + 4*(3+len(cfg.Hidden)) + 8*(2*cfg.Inputs+cfg.NumParams()) + 4; len(b) != want {
			t.Errorf("%s: %d bytes, want %d", cfg, len(b), want)
		}
		if !bytes.HasPrefix(b, append([]byte{16}, Format...)) {
			t.Errorf("%s: blob does not start with the format name", cfg)
		}
		got, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", cfg, err)
		}
		if !bytes.Equal(mustMarshal(t, got), b) || !got.Config().Equal(cfg) {
			t.Errorf("%s: round trip changed the network", cfg)
		}
		x := randomInputs(newTestRand(uint64(i)), 1, cfg.Inputs, 3)[0]
		var o1, o2 Output
		if err := n.Predict(x, &o1); err != nil {
			t.Fatal(err)
		}
		if err := got.Predict(x, &o2); err != nil {
			t.Fatal(err)
		}
		if o1 != o2 {
			t.Errorf("%s: decoded network predicts %+v, original %+v", cfg, o2, o1)
		}
	}
}

// TestCodecLayout pins the documented byte layout on a tiny network.
func TestCodecLayout(t *testing.T) {
	t.Parallel()
	layers := emptyLayers(Config{Inputs: 1, Activation: "relu"})
	copy(layers[0].w, []float64{1, 2, 3})
	copy(layers[0].b, []float64{4, 5, 6})
	n := newNetwork(Config{Inputs: 1, Activation: "relu"}, []float64{0.5}, []float64{2}, layers)
	var want []byte
	want = append(want, 16)
	want = append(want, "quantmesh.mlp.v1"...)
	want = append(want, 4)
	want = append(want, "relu"...)
	want = binary.LittleEndian.AppendUint32(want, 1) // inputs
	want = binary.LittleEndian.AppendUint32(want, 3) // outputs
	want = binary.LittleEndian.AppendUint32(want, 0) // hidden layers
	for _, f := range []float64{0.5, 2, 1, 2, 3, 4, 5, 6} {
		want = binary.LittleEndian.AppendUint64(want, math.Float64bits(f))
	}
	want = binary.LittleEndian.AppendUint32(want, crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)))
	if got := mustMarshal(t, n); !bytes.Equal(got, want) {
		t.Errorf("MarshalBinary =\n%x\nwant\n%x", got, want)
	}
}

func TestUnmarshalEveryTruncation(t *testing.T) {
	t.Parallel()
	b := mustMarshal(t, randomNetwork(t, Config{Inputs: 3, Hidden: []int{4, 2}, Activation: "relu"}, 1))
	for i := range len(b) {
		n, err := Unmarshal(b[:i])
		if n != nil || !errors.Is(err, ErrCorruptWeights) {
			t.Fatalf("truncated to %d of %d bytes: %v, %v; want ErrCorruptWeights", i, len(b), n, err)
		}
	}
	if _, err := Unmarshal(append(b, 0)); !errors.Is(err, ErrCorruptWeights) || !strings.Contains(err.Error(), "1 trailing bytes") {
		t.Errorf("one extra byte: %v", err)
	}
}

func TestUnmarshalRejects(t *testing.T) {
	t.Parallel()
	good := mustMarshal(t, randomNetwork(t, Config{Inputs: 2, Hidden: []int{3}}, 1))
	// resum recomputes the checksum after an edit, so that the edit itself is what fails.
	resum := func(b []byte) []byte {
		return binfmt.Seal(b[:len(b)-4])
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	header := 1 + len(Format) + 1 + len("tanh")
	floatAt := func(k int) int { return header + 4*4 + 8*k } // k-th float: mean, std, weights...
	tests := []struct {
		name string
		b    []byte
		kind error
		want string
	}{
		{"empty", nil, ErrCorruptWeights, `not quantmesh.mlp.v1 weights: no format header (0 bytes starting "")`},
		{"json", []byte(`{"format":"quantmesh.mlp.v1"}`), ErrCorruptWeights, `not quantmesh.mlp.v1 weights: no format header (29 bytes starting "{\"format\":\"quantmesh")`},
		{"header only", append([]byte{16}, Format...), ErrCorruptWeights, "truncated: 17 bytes end inside the activation"},
		{"v2", edit(func(b []byte) []byte { b[16] = '2'; return b }), ErrUnsupportedFormat, `weights are "quantmesh.mlp.v2", this build reads "quantmesh.mlp.v1"`},
		{"v10", append(append([]byte{17}, "quantmesh.mlp.v10"...), good[17:]...), ErrUnsupportedFormat, `"quantmesh.mlp.v10"`},
		{"flipped bit", edit(func(b []byte) []byte { b[len(b)-10] ^= 1; return b }), ErrCorruptWeights, "checksum mismatch"},
		{"activation", edit(func(b []byte) []byte { copy(b[18:], "relx"); return resum(b) }), ErrCorruptWeights, `activation must be "tanh" or "relu", got "relx"`},
		{"outputs", edit(func(b []byte) []byte { b[header+4] = 4; return resum(b) }), ErrCorruptWeights, "4 outputs, policy networks have 3"},
		{"inputs 0", edit(func(b []byte) []byte { b[header] = 0; return resum(b) }), ErrCorruptWeights, "inputs must be in [1, 4096], got 0"},
		{"huge inputs", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[header:], math.MaxUint32); return resum(b) }), ErrCorruptWeights, "inputs must be in"},
		{"hidden layers", edit(func(b []byte) []byte { b[header+8] = 200; return resum(b) }), ErrCorruptWeights, "200 hidden layers, at most 8"},
		{"width", edit(func(b []byte) []byte { b[header+12] = 4; return resum(b) }), ErrCorruptWeights, "truncated"},
		{"NaN weight", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[floatAt(6):], math.Float64bits(math.NaN()))
			return resum(b)
		}), ErrCorruptWeights, "layer 0 has a non-finite parameter (NaN)"},
		{"zero std", edit(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[floatAt(3):], 0); return resum(b) }), ErrCorruptWeights, "std of feature 1 is 0"},
		{"Inf mean", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[floatAt(0):], math.Float64bits(math.Inf(-1)))
			return resum(b)
		}), ErrCorruptWeights, "mean of feature 0 is -Inf"},
	}
	for _, tt := range tests {
		n, err := Unmarshal(tt.b)
		if n != nil || !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, %v; want %v containing %q", tt.name, n, err, tt.kind, tt.want)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add(mustMarshal(f, randomNetwork(f, Config{Inputs: 2, Hidden: []int{3}}, 1)))
	f.Add(mustMarshal(f, randomNetwork(f, Config{Inputs: 1, Activation: "relu"}, 2)))
	f.Add(mustMarshal(f, randomNetwork(f, Config{Inputs: 3, Hidden: []int{2, 2}, Activation: "relu"}, 3)))
	f.Add([]byte{})
	f.Add([]byte("\x10quantmesh.mlp.v1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := Unmarshal(b)
		if err != nil {
			if n != nil || !(errors.Is(err, ErrCorruptWeights) || errors.Is(err, ErrUnsupportedFormat)) {
				t.Fatalf("Unmarshal = %v, %v", n, err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes and can serve.
		if again := mustMarshal(t, n); !bytes.Equal(again, b) {
			t.Fatalf("decoded blob re-encodes differently")
		}
		x := make([]float64, n.Inputs())
		var out Output
		if err := n.Predict(x, &out); err != nil && !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("Predict: %v", err)
		}
	})
}
