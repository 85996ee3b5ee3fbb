package learner

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// TestJoinerMatchesTraining: replaying a series through the joiner (a bar,
// then a decision on that bar's features) gives exactly the labelled
// vectors `quantmesh train` builds from it.
func TestJoinerMatchesTraining(t *testing.T) {
	t.Parallel()
	eu, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	series := []marketdata.Series{{Symbol: "DAX", Bars: eu[0].Bars[:400]}}
	outs, err := ReplaySeries(series, 5, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := training.Build(series, 5, 0.5, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != len(ds.TrainX) {
		t.Fatalf("%d outcomes, want %d labelled vectors", len(outs), len(ds.TrainX))
	}
	for i, o := range outs {
		if o.Label != ds.TrainY[i] || !slices.Equal(o.Features, ds.TrainX[i]) {
			t.Fatalf("outcome %d: label %v, want %v (or features differ)", i, o.Label, ds.TrainY[i])
		}
	}
}

func TestJoinerEdges(t *testing.T) {
	t.Parallel()
	j := NewJoiner(2, 0.5)
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	hour := func(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }
	// Before the symbol's first bar: held, and dropped when the first bar
	// comes after it.
	if _, ok := j.Decision("early", "X", t0.Add(-time.Minute), []float64{1}); !ok {
		t.Fatal("a decision before any bar was refused; its bar may still arrive")
	}
	// At the bar's time, before the bar itself has arrived.
	if _, ok := j.Decision("d1", "X", t0, []float64{1}); !ok {
		t.Fatal("decision refused")
	}
	j.Bar("X", t0, 100)
	if j.Unmatched != 1 {
		t.Errorf("unmatched %d, want 1: the decision before the first bar", j.Unmatched)
	}
	if _, ok := j.Decision("d1", "X", t0, []float64{2}); ok {
		t.Error("a redelivered decision was accepted")
	}
	_, nan := j.Decision("nan", "X", t0, []float64{math.NaN()})
	_, none := j.Decision("none", "X", t0, nil)
	if nan || none || j.Invalid != 2 {
		t.Errorf("decisions without finite features accepted (invalid %d)", j.Invalid)
	}
	if got := j.Bar("X", t0, 200); got != nil {
		t.Errorf("a redelivered bar resolved %v", got)
	}
	if got := j.Bar("X", hour(1), 101); len(got) != 0 {
		t.Errorf("resolved after 1 of 2 bars: %v", got)
	}
	// A late decision, taken at bar 0's time but delivered after bar 1.
	if got, ok := j.Decision("late", "X", t0.Add(time.Minute), []float64{3}); !ok || got != nil {
		t.Fatal("a late decision was refused")
	}
	got := j.Bar("X", hour(2), 110)
	// +9.5% over 2 bars from bar 0, against a band of 0.5·1%·√2: BUY, for
	// both decisions on bar 0.
	if len(got) != 2 || got[0].Label != policy.ActionBuy || got[1].Label != policy.ActionBuy || got[0].Symbol != "X" ||
		got[0].Features[0] != 1 || got[1].Features[0] != 3 {
		t.Fatalf("outcomes %v, want two BUYs", got)
	}
	if got := j.Bar("Y", t0, -1); got != nil || j.symbols["Y"] != nil {
		t.Error("a bar with a negative close was taken")
	}
}

// TestJoinerOrderFree: whatever the order in which the two topics' batches
// arrive (all decisions first, as after a restart, or interleaved at
// random), the outcomes are those of joining in time order.
func TestJoinerOrderFree(t *testing.T) {
	t.Parallel()
	eu, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	series := []marketdata.Series{{Symbol: "DAX", Bars: eu[0].Bars[:300]}}
	want, err := ReplaySeries(series, 5, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	X, err := features.Compute(series[0].Bars, features.Set{})
	if err != nil {
		t.Fatal(err)
	}
	type event struct {
		bar bool
		i   int
	}
	var bars, decisions []event
	for i := range series[0].Bars {
		bars = append(bars, event{true, i})
		if k := i - (features.Warmup - 1); k >= 0 && k < len(X) {
			decisions = append(decisions, event{false, i})
		}
	}
	play := func(events []event) []Outcome {
		j := NewJoiner(5, 0.5)
		var out []Outcome
		for _, e := range events {
			b := series[0].Bars[e.i]
			if e.bar {
				out = append(out, j.Bar("DAX", b.Time, b.Close)...)
			} else {
				// Decided a moment after the bar closed.
				o, _ := j.Decision(fmt.Sprint(e.i), "DAX", b.Time.Add(time.Second), X[e.i-(features.Warmup-1)])
				out = append(out, o...)
			}
		}
		return out
	}
	same := func(name string, got []Outcome) {
		t.Helper()
		key := func(o Outcome) string { return fmt.Sprint(o.Time.Unix(), o.Label) }
		g, w := make([]string, len(got)), make([]string, len(want))
		for i := range got {
			g[i] = key(got[i])
		}
		for i := range want {
			w[i] = fmt.Sprint(want[i].Time.Add(time.Second).Unix(), want[i].Label)
		}
		slices.Sort(g)
		slices.Sort(w)
		if !slices.Equal(g, w) {
			t.Errorf("%s: %d outcomes, want the %d of joining in time order", name, len(got), len(want))
		}
	}
	same("decisions first", play(append(slices.Clone(decisions), bars...)))
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 5 {
		// Merge the two topics in batches of random sizes, each topic in order.
		var events []event
		bi, di := 0, 0
		for bi < len(bars) || di < len(decisions) {
			n := 1 + rng.IntN(20)
			if di >= len(decisions) || (bi < len(bars) && rng.IntN(2) == 0) {
				end := min(bi+n, len(bars))
				events, bi = append(events, bars[bi:end]...), end
			} else {
				end := min(di+n, len(decisions))
				events, di = append(events, decisions[di:end]...), end
			}
		}
		same(fmt.Sprintf("interleaving %d", round), play(events))
	}
}

func TestReplayBounded(t *testing.T) {
	t.Parallel()
	r := NewReplay(3)
	for i := range 5 {
		if err := r.Add(Outcome{Features: []float64{float64(i)}, Label: policy.ActionHold}); err != nil {
			t.Fatal(err)
		}
	}
	snap, added := r.Snapshot()
	if r.Len() != 3 || r.Added() != 5 || added != 5 || len(snap) != 3 || snap[0].Features[0] != 2 || snap[2].Features[0] != 4 {
		t.Errorf("len %d added %d snapshot %v; want the newest 3 of 5, oldest first", r.Len(), r.Added(), snap)
	}
	if err := r.Add(Outcome{Features: []float64{1, math.NaN()}}); err == nil {
		t.Error("a NaN feature was accepted")
	}
}

// TestWithout: the previous evaluation set is left out of training.
func TestWithout(t *testing.T) {
	t.Parallel()
	X := [][]float64{{1, 2}, {3, 4}, {5, 6}, {1, 2}}
	y := []policy.Action{policy.ActionBuy, policy.ActionHold, policy.ActionSell, policy.ActionSell}
	gotX, gotY := without(X, y, [][]float64{{1, 2}, {9, 9}})
	if len(gotX) != 2 || gotX[0][0] != 3 || gotX[1][0] != 5 || gotY[0] != policy.ActionHold || gotY[1] != policy.ActionSell {
		t.Errorf("without: %v %v, want the samples (3,4) and (5,6)", gotX, gotY)
	}
	if gotX, _ := without(X, y, nil); len(gotX) != len(X) {
		t.Error("without an evaluation set, samples were dropped")
	}
}
