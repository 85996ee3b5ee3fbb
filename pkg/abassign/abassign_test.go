package abassign_test

import (
	"fmt"
	"strconv"
	"testing"

	"gonum.org/v1/gonum/stat/distuv"
	"pgregory.net/rapid"

	"github.com/quantmesh/quantmesh/pkg/abassign"
)

// Pinned vectors: the function must never change, or running tests
// reshuffle their units after an upgrade.
func TestBucketIsPinned(t *testing.T) {
	t.Parallel()
	cases := []struct {
		salt, unit string
		want       int32
	}{
		{"", "", 4608},
		{"s1", "acct-1", 8567},
		{"s1", "acct-2", 2970},
		{"exp-42", "strategy/trend", 6032},
		{"salt", "unit-0", 5024},
	}
	for _, c := range cases {
		if got := abassign.Bucket(c.salt, c.unit); got != c.want {
			t.Errorf("Bucket(%q, %q) = %d, want %d (the hash changed)", c.salt, c.unit, got, c.want)
		}
	}
}

func TestAssignProperties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		salt := rapid.String().Draw(t, "salt")
		unit := rapid.String().Draw(t, "unit")
		bps := rapid.Int32Range(0, abassign.Buckets).Draw(t, "bps")
		wider := rapid.Int32Range(bps, abassign.Buckets).Draw(t, "wider")

		arm, b := abassign.Assign(salt, unit, bps)
		if b < 0 || b >= abassign.Buckets {
			t.Fatalf("bucket %d outside [0, %d)", b, abassign.Buckets)
		}
		// Same inputs, same arm and bucket.
		arm2, b2 := abassign.Salt(salt).Assign(unit, bps)
		if arm != arm2 || b != b2 {
			t.Fatalf("Assign not deterministic: (%v,%d) then (%v,%d)", arm, b, arm2, b2)
		}
		// The arm depends only on the bucket.
		if (arm == abassign.Treatment) != (b < bps) {
			t.Fatalf("arm %v for bucket %d at %d bps", arm, b, bps)
		}
		// Widening never moves a treated unit to control.
		if arm == abassign.Treatment {
			if w, _ := abassign.Assign(salt, unit, wider); w != abassign.Treatment {
				t.Fatalf("unit treated at %d bps is control at %d bps", bps, wider)
			}
		}
		if a, _ := abassign.Assign(salt, unit, 0); a != abassign.Control {
			t.Fatal("0 bps treats a unit")
		}
		if a, _ := abassign.Assign(salt, unit, abassign.Buckets); a != abassign.Treatment {
			t.Fatal("10000 bps leaves a unit in control")
		}
	})
}

// chiSquareP returns the p-value of a chi-square goodness-of-fit test of
// observed against expected counts.
func chiSquareP(observed, expected []float64) float64 {
	var chi float64
	for i := range observed {
		d := observed[i] - expected[i]
		chi += d * d / expected[i]
	}
	return distuv.ChiSquared{K: float64(len(observed) - 1)}.Survival(chi)
}

func TestAssignUniformity(t *testing.T) {
	t.Parallel()
	const n = 100000
	for _, bps := range []int32{5000, 1000, 100} {
		t.Run(fmt.Sprintf("%dbps", bps), func(t *testing.T) {
			t.Parallel()
			var treated float64
			for i := range n {
				if a, _ := abassign.Assign("uniformity", "unit-"+strconv.Itoa(i), bps); a == abassign.Treatment {
					treated++
				}
			}
			want := float64(n) * float64(bps) / abassign.Buckets
			p := chiSquareP([]float64{treated, n - treated}, []float64{want, n - want})
			// The inputs are fixed, so this is deterministic; a p-value
			// this small would mean the split is biased.
			if p < 0.001 {
				t.Errorf("%d treated of %d at %d bps (want %.0f): chi-square p = %g", int(treated), n, bps, want, p)
			}
		})
	}
}

func TestBucketUniformity(t *testing.T) {
	t.Parallel()
	// 100 groups of 100 buckets, 100,000 units: each group expects 1,000.
	const n, groups = 100000, 100
	obs := make([]float64, groups)
	for i := range n {
		obs[abassign.Bucket("buckets", "acct-"+strconv.Itoa(i))/(abassign.Buckets/groups)]++
	}
	exp := make([]float64, groups)
	for i := range exp {
		exp[i] = n / groups
	}
	if p := chiSquareP(obs, exp); p < 0.001 {
		t.Errorf("bucket groups not uniform: chi-square p = %g", p)
	}
}

func TestSaltSeparatesTests(t *testing.T) {
	t.Parallel()
	// The same unit lands in independent buckets under different salts:
	// treatment at 50% under salt a and b agree about half the time.
	const n = 100000
	var agree float64
	for i := range n {
		u := "u" + strconv.Itoa(i)
		a, _ := abassign.Assign("a", u, 5000)
		b, _ := abassign.Assign("b", u, 5000)
		if a == b {
			agree++
		}
	}
	if p := chiSquareP([]float64{agree, n - agree}, []float64{n / 2, n / 2}); p < 0.001 {
		t.Errorf("salts a and b agree on %d of %d units: p = %g", int(agree), n, p)
	}
	if abassign.Hash("ab", "c") == abassign.Hash("a", "bc") {
		t.Error("salt/unit boundary not separated")
	}
}

var sink int32

func BenchmarkAssign(b *testing.B) {
	units := make([]string, 1024)
	for i := range units {
		units[i] = "account-" + strconv.Itoa(100000+i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		_, bk := abassign.Assign("0197a3c4-5b2e-7f00-8a1d-4e2f9c3b1a77", units[i&1023], 2000)
		sink += bk
	}
}

func BenchmarkSaltedAssign(b *testing.B) {
	units := make([]string, 1024)
	for i := range units {
		units[i] = "account-" + strconv.Itoa(100000+i)
	}
	s := abassign.Salt("0197a3c4-5b2e-7f00-8a1d-4e2f9c3b1a77")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		_, bk := s.Assign(units[i&1023], 2000)
		sink += bk
	}
}
