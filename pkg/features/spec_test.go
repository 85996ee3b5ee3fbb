package features

import (
	"errors"
	"math"
	"testing"
)

// TestComputerMatchesPipeline: the configurable computer gives the fixed
// pipeline's values for the features they share.
func TestComputerMatchesPipeline(t *testing.T) {
	t.Parallel()
	bars := walk(300, 3)
	// The pipeline's volume z-score is of log(1 + volume); the spec's is of
	// the volume itself (RegimeService's definition), checked below.
	c, err := NewComputer([]Spec{{LogReturn, 0}, {Volatility, 20}, {Momentum, 60}, {Drawdown, 0}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Warmup() != Warmup {
		t.Fatalf("warmup %d, want %d", c.Warmup(), Warmup)
	}
	X, err := Compute(bars, Set{Volume: true})
	if err != nil {
		t.Fatal(err)
	}
	want := func(x []float64) []float64 { return []float64{x[0], x[2], x[6], x[7]} }
	dst := make([]float64, c.Len())
	n := 0
	for _, b := range bars {
		ready, err := c.Update(Point{Close: b.Close, Volume: b.Volume, HasVolume: true}, dst)
		if err != nil {
			t.Fatal(err)
		}
		if !ready {
			continue
		}
		for j, w := range want(X[n]) {
			if math.Abs(dst[j]-w) > 1e-12 {
				t.Fatalf("bar %d feature %s: %v, pipeline %v", n, c.Specs()[j].Name(), dst[j], w)
			}
		}
		n++
	}
	if n != len(X) {
		t.Errorf("%d vectors, pipeline %d", n, len(X))
	}
}

func TestComputerWindowedDrawdownAndErrors(t *testing.T) {
	t.Parallel()
	c, err := NewComputer([]Spec{{Drawdown, 3}})
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]float64, 1)
	var got []float64
	for _, close := range []float64{10, 20, 15, 12, 11, 30} {
		if ready, err := c.Update(Point{Close: close}, dst); err != nil {
			t.Fatal(err)
		} else if ready {
			got = append(got, dst[0])
		}
	}
	// Windows of 3 from the 4th bar: max(20,15,12)=20, max(15,12,11)=15, max(12,11,30)=30.
	want := []float64{12.0/20 - 1, 11.0/15 - 1, 0}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-15 {
			t.Errorf("drawdown %d = %v, want %v", i, got[i], want[i])
		}
	}
	for _, specs := range [][]Spec{nil, {{LogReturn, 2}}, {{Volatility, 1}}, {{Momentum, 0}}, {{Kind(9), 1}}, {{Volatility, 10}, {Volatility, 10}}, {{Drawdown, 1001}}} {
		if _, err := NewComputer(specs); err == nil {
			t.Errorf("NewComputer(%v) accepted", specs)
		}
	}
	v, _ := NewComputer([]Spec{{VolumeZScore, 5}})
	if _, err := v.Update(Point{Close: 1}, dst); err == nil || v.Bars() != 0 {
		t.Error("a bar without volume was accepted by a volume feature")
	}
	vols := []float64{10, 12, 9, 11, 30, 10}
	for i, vol := range vols {
		ready, err := v.Update(Point{Close: 1, Volume: vol, HasVolume: true}, dst)
		if err != nil {
			t.Fatal(err)
		}
		if i == len(vols)-1 {
			// Last 5: 12 9 11 30 10, mean 14.4, sample std sqrt(309.2/4).
			if w := (10 - 14.4) / math.Sqrt(309.2/4); !ready || math.Abs(dst[0]-w) > 1e-12 {
				t.Errorf("volume z-score %v (ready %v), want %v", dst[0], ready, w)
			}
		}
	}
	if _, err := c.Update(Point{Close: math.NaN()}, dst); err == nil {
		t.Error("NaN close accepted")
	}
	if names := []string{Spec{LogReturn, 0}.Name(), Spec{Volatility, 10}.Name(), Spec{Drawdown, 0}.Name()}; names[0] != "log_return" || names[1] != "volatility_10" || names[2] != "drawdown_0" {
		t.Errorf("names %v", names)
	}
}

// A computer fed the last bars of a history and seeded with its high gives
// the drawdown of one fed every bar.
func TestComputerSeedHigh(t *testing.T) {
	t.Parallel()
	closes := []float64{10, 40, 20, 25, 30, 28}
	specs := []Spec{{Drawdown, 0}, {Momentum, 2}}
	var want []float64
	if err := EachClose(specs, closes, func(_ int, vec []float64) error { want = vec; return nil }); err != nil {
		t.Fatal(err)
	}
	c, err := NewComputer(specs)
	if err != nil {
		t.Fatal(err)
	}
	if !c.TracksHigh() {
		t.Error("a computer with drawdown over every bar does not track the high")
	}
	if w, _ := NewComputer([]Spec{{Drawdown, 10}, {Momentum, 2}}); w.TracksHigh() {
		t.Error("a computer with only a windowed drawdown tracks the high")
	}
	c.SeedHigh(40)
	c.SeedHigh(35) // never lowers it
	got := make([]float64, c.Len())
	for _, x := range closes[len(closes)-c.Warmup():] {
		if _, err := c.Update(Point{Close: x}, got); err != nil {
			t.Fatal(err)
		}
	}
	if got[0] != want[0] || got[1] != want[1] {
		t.Errorf("seeded %v, every bar %v", got, want)
	}
}

func TestStandardiser(t *testing.T) {
	t.Parallel()
	mean, std := Standardiser([][]float64{{1, 5}, {3, 5}, {5, 5}})
	if mean[0] != 3 || mean[1] != 5 {
		t.Errorf("mean %v, want [3 5]", mean)
	}
	// Population deviation of 1, 3, 5 is sqrt(8/3); a constant column gets 1.
	if math.Abs(std[0]-math.Sqrt(8.0/3)) > 1e-15 || std[1] != 1 {
		t.Errorf("std %v, want [%v 1]", std, math.Sqrt(8.0/3))
	}
	if m, s := Standardiser(nil); m != nil || s != nil {
		t.Errorf("no rows: %v %v", m, s)
	}
}

// EachClose visits exactly the bars a computer fed bar by bar reports
// ready, with their vectors, and stops at the first error.
func TestEachClose(t *testing.T) {
	specs := DefaultSpecs()
	closes := make([]float64, 100)
	for i := range closes {
		closes[i] = 100 * math.Exp(0.01*math.Sin(float64(i)))
	}
	c, err := NewComputer(specs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int][]float64{}
	vec := make([]float64, c.Len())
	for i, x := range closes {
		if ready, err := c.Update(Point{Close: x}, vec); err != nil {
			t.Fatal(err)
		} else if ready {
			want[i] = append([]float64(nil), vec...)
		}
	}
	seen := 0
	err = EachClose(specs, closes, func(i int, v []float64) error {
		seen++
		w, ok := want[i]
		if !ok || len(v) != len(w) {
			t.Fatalf("bar %d visited with %d values; ready %v", i, len(v), ok)
		}
		for j := range w {
			if v[j] != w[j] {
				t.Fatalf("bar %d feature %d: %v, want %v", i, j, v[j], w[j])
			}
		}
		return nil
	})
	if err != nil || seen != len(want) || seen == 0 {
		t.Fatalf("visited %d bars (%v), want %d", seen, err, len(want))
	}
	stop := errors.New("stop")
	calls := 0
	if err := EachClose(specs, closes, func(int, []float64) error { calls++; return stop }); err != stop || calls != 1 {
		t.Errorf("stopping: %v after %d calls, want the callback's error after 1", err, calls)
	}
	if err := EachClose(specs, []float64{1, -1}, func(int, []float64) error { return nil }); err == nil {
		t.Error("a negative close: no error")
	}
}
