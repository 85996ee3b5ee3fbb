package features

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

func walk(n int, seed uint64) []marketdata.Bar {
	rng := rand.New(rand.NewPCG(seed, 1))
	bars := make([]marketdata.Bar, n)
	c := 100.0
	for i := range bars {
		c *= math.Exp(rng.NormFloat64() * 0.02)
		bars[i] = marketdata.Bar{Close: c, High: c * 1.01, Low: c * 0.99, Open: c, Volume: float64(1000 + rng.IntN(1000))}
	}
	return bars
}

// TestCausal: a vector never changes when later bars arrive.
func TestCausal(t *testing.T) {
	t.Parallel()
	bars := walk(300, 1)
	set := Set{Range: true, Volume: true}
	all, err := Compute(bars, set)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 300-Warmup+1 {
		t.Fatalf("%d vectors", len(all))
	}
	for _, k := range []int{Warmup, 100, 250} {
		prefix, err := Compute(bars[:k], set)
		if err != nil {
			t.Fatal(err)
		}
		for i := range prefix {
			for j := range prefix[i] {
				if prefix[i][j] != all[i][j] {
					t.Fatalf("vector %d feature %s differs once %d more bars arrive", i, set.Names()[j], 300-k)
				}
			}
		}
	}
}

// TestAgainstDirect recomputes features at several bars from their
// definitions.
func TestAgainstDirect(t *testing.T) {
	t.Parallel()
	bars := walk(400, 2)
	set := Set{Range: true, Volume: true}
	X, err := Compute(bars, set)
	if err != nil {
		t.Fatal(err)
	}
	std := func(xs []float64) float64 {
		var m float64
		for _, x := range xs {
			m += x
		}
		m /= float64(len(xs))
		var ss float64
		for _, x := range xs {
			ss += (x - m) * (x - m)
		}
		return math.Sqrt(ss / float64(len(xs)-1))
	}
	for _, t0 := range []int{Warmup - 1, 123, 399} {
		v := X[t0-(Warmup-1)]
		rets := make([]float64, 0, 60)
		for i := t0 - 59; i <= t0; i++ {
			rets = append(rets, math.Log(bars[i].Close/bars[i-1].Close))
		}
		high := 0.0
		for _, b := range bars[:t0+1] {
			high = math.Max(high, b.Close)
		}
		vols := make([]float64, 0, 20)
		for _, b := range bars[t0-19 : t0+1] {
			vols = append(vols, math.Log1p(b.Volume))
		}
		var vm float64
		for _, x := range vols {
			vm += x / 20
		}
		want := []float64{
			rets[59], std(rets[55:]), std(rets[40:]), std(rets),
			math.Log(bars[t0].Close / bars[t0-5].Close), math.Log(bars[t0].Close / bars[t0-20].Close), math.Log(bars[t0].Close / bars[t0-60].Close),
			bars[t0].Close/high - 1, std(rets[55:]) / std(rets),
			(bars[t0].High - bars[t0].Low) / bars[t0].Close, (vols[19] - vm) / std(vols),
		}
		for j, name := range set.Names() {
			if math.Abs(v[j]-want[j]) > 1e-12*math.Max(1, math.Abs(want[j])) {
				t.Errorf("bar %d %s = %v, want %v", t0, name, v[j], want[j])
			}
		}
	}
}

func TestBadBar(t *testing.T) {
	t.Parallel()
	p := NewPipeline(Set{})
	dst := make([]float64, Set{}.Len())
	for _, b := range []marketdata.Bar{{Close: 0, High: 1, Low: 1}, {Close: math.NaN(), High: 1, Low: 1}, {Close: 1, High: 1, Low: 1, Volume: -1}, {Close: math.Inf(1), High: 1, Low: 1}} {
		if _, err := p.Update(b, dst); err == nil {
			t.Errorf("bar %+v accepted", b)
		}
	}
	if p.Bars() != 0 {
		t.Errorf("bad bars changed the pipeline")
	}
}

func TestLabels(t *testing.T) {
	t.Parallel()
	closes := make([]float64, 100)
	for i := range closes {
		closes[i] = 100 * math.Exp(0.001*math.Sin(float64(i))) // small noise
	}
	closes[60] = 200 // a jump
	labels, err := Labels(closes, 5, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if len(labels) != 95 {
		t.Fatalf("%d labels", len(labels))
	}
	if labels[55] != LabelBuy || labels[60] != LabelSell || labels[40] != LabelHold {
		t.Errorf("labels around the jump: 55=%v 60=%v 40=%v", labels[55], labels[60], labels[40])
	}
	if _, err := Labels(closes[:20], 5, 0.5); err == nil {
		t.Error("too few closes accepted")
	}
}
