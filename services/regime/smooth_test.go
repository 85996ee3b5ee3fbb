package regime

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/regimefilter"
)

// noisy returns log-likelihoods of two regimes: regime 0 for the first
// half, regime 1 after, each bar misleading with probability 0.3.
func noisy(n int, seed uint64) [][]float64 {
	rng := rand.New(rand.NewPCG(seed, 9))
	out := make([][]float64, n)
	for t := range out {
		truth := 0
		if t >= n/2 {
			truth = 1
		}
		says := truth
		if rng.Float64() < 0.3 {
			says = 1 - truth
		}
		ll := []float64{-2, -2}
		ll[says] = 0
		out[t] = ll
	}
	return out
}

func run(t *testing.T, cfg Smoothing, lls [][]float64) []regimefilter.Step {
	t.Helper()
	f := regimefilter.New(cfg)
	var out []regimefilter.Step
	for _, ll := range lls {
		st, err := f.Next(ll, []float64{0.5, 0.5})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, st)
	}
	return out
}

func TestFilterNoLookAhead(t *testing.T) {
	t.Parallel()
	lls := noisy(400, 1)
	for _, cfg := range []Smoothing{{Stickiness: 0.9, Hysteresis: 0.1, MinDwell: 3, Tempering: 1}, {Stickiness: 0.9, Hysteresis: 0.1, MinDwell: 3, Tempering: 0.3}, DefaultSmoothing()} {
		all := run(t, cfg, lls)
		for _, k := range []int{1, 57, 200, 399} {
			prefix := run(t, cfg, lls[:k])
			for i := range prefix {
				if prefix[i].Dominant != all[i].Dominant || prefix[i].Dwell != all[i].Dwell {
					t.Fatalf("%+v: bar %d changed when %d more bars arrived", cfg, i, 400-k)
				}
				for j := range prefix[i].Smoothed {
					if prefix[i].Smoothed[j] != all[i].Smoothed[j] {
						t.Fatalf("%+v: bar %d smoothed probabilities changed when %d more bars arrived", cfg, i, 400-k)
					}
				}
			}
		}
	}
}

func TestFilterSmooths(t *testing.T) {
	t.Parallel()
	lls := noisy(2000, 2)
	steps := run(t, DefaultSmoothing(), lls)
	var raw, smooth []int
	correct := 0
	for i, st := range steps {
		raw, smooth = append(raw, st.RawDominant), append(smooth, st.Dominant)
		if (i >= 1000) == (st.Dominant == 1) {
			correct++
		}
		if s := st.Smoothed[0] + st.Smoothed[1]; math.Abs(s-1) > 1e-12 {
			t.Fatalf("smoothed probabilities sum to %v", s)
		}
	}
	rf, sf := regimefilter.FlipsPer100(raw), regimefilter.FlipsPer100(smooth)
	if sf > rf/2 {
		t.Errorf("smoothed flips %.2f per 100 bars, raw %.2f: want less than half", sf, rf)
	}
	if correct < 1600 {
		t.Errorf("smoothed dominant regime right on %d of 2000 bars (raw is right on about 1400)", correct)
	}
	// With a minimum dwell the flips fall further.
	var dwelt []int
	for _, st := range run(t, Smoothing{Stickiness: 0.95, MinDwell: 20, Tempering: 1}, lls) {
		dwelt = append(dwelt, st.Dominant)
	}
	if df := regimefilter.FlipsPer100(dwelt); df > rf/4 {
		t.Errorf("with a 20-bar dwell: %.2f flips per 100 bars, raw %.2f: want at most a quarter", df, rf)
	}
}

func TestFilterMemorylessEqualsRaw(t *testing.T) {
	t.Parallel()
	lls := [][]float64{{-1, -3, -2}, {-5, 0, -1}, {0, 0, -9}}
	f := regimefilter.New(Smoothing{Stickiness: 1.0 / 3, MinDwell: 1, Tempering: 1})
	for _, ll := range lls {
		st, err := f.Next(ll, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3})
		if err != nil {
			t.Fatal(err)
		}
		for j := range st.Raw {
			if math.Abs(st.Raw[j]-st.Smoothed[j]) > 1e-12 {
				t.Fatalf("stickiness 1/R: smoothed %v, raw %v", st.Smoothed, st.Raw)
			}
		}
	}
}

func TestFilterHysteresisAndDwell(t *testing.T) {
	t.Parallel()
	// Memoryless, so smoothed = raw: p(regime 1) per bar.
	p1 := []float64{0.1, 0.55, 0.65, 0.9, 0.1, 0.9, 0.9}
	var lls [][]float64
	for _, p := range p1 {
		lls = append(lls, []float64{math.Log(1 - p), math.Log(p)})
	}
	dominants := func(cfg Smoothing) []int {
		var out []int
		for _, st := range run(t, cfg, lls) {
			out = append(out, st.Dominant)
		}
		return out
	}
	equal := func(a, b []int) bool {
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return len(a) == len(b)
	}
	if got, want := dominants(Smoothing{Stickiness: 0.5, MinDwell: 1, Tempering: 1}), []int{0, 1, 1, 1, 0, 1, 1}; !equal(got, want) {
		t.Errorf("no hysteresis: %v, want %v", got, want)
	}
	// A challenger needs 0.2 more: 0.55 vs 0.45 is not enough, 0.65 vs 0.35 is.
	if got, want := dominants(Smoothing{Stickiness: 0.5, Hysteresis: 0.2, MinDwell: 1, Tempering: 1}), []int{0, 0, 1, 1, 0, 1, 1}; !equal(got, want) {
		t.Errorf("hysteresis 0.2: %v, want %v", got, want)
	}
	// Held at least 3 bars after a change.
	if got, want := dominants(Smoothing{Stickiness: 0.5, MinDwell: 3, Tempering: 1}), []int{0, 0, 0, 1, 1, 1, 1}; !equal(got, want) {
		t.Errorf("min dwell 3: %v, want %v", got, want)
	}
}

// TestFilterTempering: a memoryless filter with tempering τ gives
// softmax(τ·logLik), while the raw probabilities stay untempered.
func TestFilterTempering(t *testing.T) {
	t.Parallel()
	const tau = 0.25
	ll := []float64{-1, -5, -2}
	f := regimefilter.New(Smoothing{Stickiness: 1.0 / 3, MinDwell: 1, Tempering: tau})
	st, err := f.Next(ll, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3})
	if err != nil {
		t.Fatal(err)
	}
	scaled := make([]float64, len(ll))
	for i, v := range ll {
		scaled[i] = tau * v
	}
	wantSmoothed, wantRaw := regimefilter.SoftmaxLog(scaled, nil), regimefilter.SoftmaxLog(ll, nil)
	for j := range ll {
		if math.Abs(st.Smoothed[j]-wantSmoothed[j]) > 1e-12 || math.Abs(st.Raw[j]-wantRaw[j]) > 1e-12 {
			t.Fatalf("tempering %v: smoothed %v raw %v, want %v and %v", tau, st.Smoothed, st.Raw, wantSmoothed, wantRaw)
		}
	}
	// On the noisy series tempering alone (no dwell) cuts the flips.
	lls := noisy(2000, 3)
	flips := func(tau float64) float64 {
		var dom []int
		for _, st := range run(t, Smoothing{Stickiness: 0.95, MinDwell: 1, Tempering: tau}, lls) {
			dom = append(dom, st.Dominant)
		}
		return regimefilter.FlipsPer100(dom)
	}
	if hot, cold := flips(1), flips(0.3); !(cold < hot) {
		t.Errorf("tempering 0.3: %.2f flips per 100 bars, untempered %.2f", cold, hot)
	}
}

// TestSmoothingFromModel: a model stored before emission tempering
// existed filters untempered; a recorded value is kept.
func TestSmoothingFromModel(t *testing.T) {
	t.Parallel()
	old := &regimev1.SmoothingConfig{Stickiness: proto.Float64(0.95), Hysteresis: proto.Float64(0), MinDwellBars: proto.Int32(1)}
	if got, want := smoothingFromModel(old), (Smoothing{Stickiness: 0.95, MinDwell: 1, Tempering: 1}); got != want {
		t.Errorf("old model: %+v, want %+v", got, want)
	}
	if got := smoothingFromModel(smoothingToProto(Smoothing{Stickiness: 0.9, Hysteresis: 0.1, MinDwell: 5, Tempering: 0.2})); got != (Smoothing{Stickiness: 0.9, Hysteresis: 0.1, MinDwell: 5, Tempering: 0.2}) {
		t.Errorf("round trip: %+v", got)
	}
	if err := DefaultSmoothing().Validate(); err != nil {
		t.Errorf("default smoothing: %v", err)
	}
	if err := (Smoothing{Stickiness: 0.9, MinDwell: 1, Tempering: 0}).Validate(); err == nil || !strings.Contains(err.Error(), "emission_tempering") {
		t.Errorf("tempering 0: %v", err)
	}
}
