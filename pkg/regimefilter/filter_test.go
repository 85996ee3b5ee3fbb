package regimefilter

import (
	"math"
	"testing"
)

func TestSoftmaxLogNeverNaN(t *testing.T) {
	t.Parallel()
	inf, nan := math.Inf(1), math.NaN()
	for _, tt := range []struct {
		name       string
		logw, want []float64
	}{
		{"finite", []float64{0, math.Log(3)}, []float64{0.25, 0.75}},
		{"all -Inf", []float64{-inf, -inf, -inf, -inf}, []float64{0.25, 0.25, 0.25, 0.25}},
		{"all NaN", []float64{nan, nan}, []float64{0.5, 0.5}},
		{"NaN beside a weight", []float64{nan, -1000}, []float64{0, 1}},
		{"+Inf", []float64{inf, 0, inf}, []float64{0.5, 0, 0.5}},
	} {
		got := SoftmaxLog(tt.logw, nil)
		for i := range got {
			if math.Abs(got[i]-tt.want[i]) > 1e-12 || math.IsNaN(got[i]) {
				t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
				break
			}
		}
	}
}

// A bar no regime explains leaves the prediction standing, and a stored
// NaN state restarts the filter: neither carries NaN forward.
func TestFilterNeverNaN(t *testing.T) {
	t.Parallel()
	cfg := Smoothing{Stickiness: 0.9, Hysteresis: 0, MinDwell: 1, Tempering: 1}
	prior := []float64{0.5, 0.5}
	check := func(what string, st Step) {
		t.Helper()
		for _, p := range append(append([]float64(nil), st.Raw...), st.Smoothed...) {
			if math.IsNaN(p) {
				t.Fatalf("%s: %+v", what, st)
			}
		}
	}
	f := New(cfg)
	st, err := f.Next([]float64{0, -10}, prior)
	if err != nil {
		t.Fatal(err)
	}
	check("first bar", st)
	for _, ll := range [][]float64{{math.Inf(-1), math.Inf(-1)}, {math.NaN(), math.NaN()}} {
		pred0 := 0.9*f.probs[0] + 0.1*(1-f.probs[0])
		st, err := f.Next(ll, prior)
		if err != nil {
			t.Fatal(err)
		}
		check("no evidence", st)
		if math.Abs(st.Smoothed[0]-pred0) > 1e-12 || st.Dominant != 0 {
			t.Errorf("likelihoods %v: smoothed %v, want the prediction %v", ll, st.Smoothed, pred0)
		}
	}
	r := Resume(cfg, []float64{math.NaN(), math.NaN()}, 1, 7)
	st, err = r.Next([]float64{-10, 0}, prior)
	if err != nil {
		t.Fatal(err)
	}
	check("resumed from NaN", st)
	if st.Dominant != 1 || st.Dwell != 1 {
		t.Errorf("resumed from NaN: dominant %d dwell %d, want a restart at 1 and 1", st.Dominant, st.Dwell)
	}
}
