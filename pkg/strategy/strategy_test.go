package strategy

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

func randomWalk(n int, seed uint64) []float64 {
	r := rand.New(rand.NewPCG(seed, 1))
	c := make([]float64, n)
	c[0] = 100
	for i := 1; i < n; i++ {
		c[i] = c[i-1] * math.Exp(0.01*r.NormFloat64())
	}
	return c
}

// Appending future bars never changes an earlier position or return.
func TestCausal(t *testing.T) {
	t.Parallel()
	closes := randomWalk(400, 7)
	for _, s := range All() {
		full := s.Returns(closes)
		for _, n := range []int{1, 2, s.Warmup - 1, s.Warmup, s.Warmup + 1, 150, 399} {
			prefix := s.Returns(closes[:n])
			for i := range prefix {
				if prefix[i] != full[i] {
					t.Fatalf("%s: return %d over %d bars = %v, over all bars = %v", s.Name, i, n, prefix[i], full[i])
				}
			}
		}
		// Changing a future close changes nothing before it.
		changed := append([]float64(nil), closes...)
		changed[300] *= 1.5
		alt := s.Returns(changed)
		for i := range 300 {
			if alt[i] != full[i] {
				t.Fatalf("%s: return %d changed after changing close 300", s.Name, i)
			}
		}
	}
}

func TestReturnsOnBundledData(t *testing.T) {
	t.Parallel()
	series, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	closes := series[0].Closes()
	m := ReturnMatrix(All(), closes)
	for i, s := range All() {
		var nonzero int
		for t2 := range m {
			r := m[t2][i]
			if math.IsNaN(r) || math.IsInf(r, 0) || math.Abs(r) > 0.2 {
				t.Fatalf("%s: return %d = %v", s.Name, t2, r)
			}
			if r != 0 {
				nonzero++
			}
		}
		if nonzero < len(closes)/2 {
			t.Errorf("%s: only %d of %d returns are non-zero", s.Name, nonzero, len(closes))
		}
	}
}

// PositionMatrix holds the positions that earn ReturnMatrix's returns,
// and Matrices returns both.
func TestPositionMatrix(t *testing.T) {
	t.Parallel()
	closes := randomWalk(300, 3)
	pos, rets := PositionMatrix(All(), closes), ReturnMatrix(All(), closes)
	if r2, p2 := Matrices(All(), closes); !reflect.DeepEqual(r2, rets) || !reflect.DeepEqual(p2, pos) {
		t.Fatal("Matrices differs from ReturnMatrix and PositionMatrix")
	}
	if len(pos) != len(closes) {
		t.Fatalf("%d rows of positions for %d closes", len(pos), len(closes))
	}
	for i, s := range All() {
		want := s.Positions(closes)
		for t2 := range closes {
			if pos[t2][i] != want[t2] {
				t.Fatalf("%s: position %d = %v, want %v", s.Name, t2, pos[t2][i], want[t2])
			}
			if t2 > 0 && rets[t2][i] != pos[t2-1][i]*(closes[t2]/closes[t2-1]-1) {
				t.Fatalf("%s: return %d = %v, not position %d's", s.Name, t2, rets[t2][i], t2-1)
			}
		}
	}
}

func TestByName(t *testing.T) {
	t.Parallel()
	got, err := ByName([]string{"momentum", "defensive"})
	if err != nil || len(got) != 2 || got[0].Name != "momentum" || got[1].Name != "defensive" {
		t.Fatalf("ByName = %v, %v", got, err)
	}
	if _, err := ByName([]string{"trend", "nope"}); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown name: err = %v, want ErrUnknown", err)
	}
	if _, err := ByName([]string{"trend", "trend"}); err == nil {
		t.Fatal("duplicate name: no error")
	}
	all, err := ByName(nil)
	if err != nil || len(all) != 4 {
		t.Fatalf("ByName(nil) = %d strategies, %v", len(all), err)
	}
	kinds := map[Kind]bool{}
	for _, s := range all {
		kinds[s.Kind] = true
		if s.Description == "" {
			t.Errorf("%s has no description", s.Name)
		}
	}
	if len(kinds) != 4 {
		t.Errorf("kinds = %v, want four", kinds)
	}
}
