package learner

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/quantmesh/quantmesh/internal/training"
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
	if j.Decision("d0", "X", t0, []float64{1}) || j.Unmatched != 1 {
		t.Error("a decision before any bar of its symbol was accepted")
	}
	j.Bar("X", t0, 100)
	if !j.Decision("d1", "X", t0, []float64{1}) {
		t.Fatal("decision refused")
	}
	if j.Decision("d1", "X", t0, []float64{1}) {
		t.Error("a redelivered decision was accepted")
	}
	if got := j.Bar("X", t0, 200); got != nil {
		t.Errorf("a redelivered bar resolved %v", got)
	}
	if got := j.Bar("X", t0.Add(time.Hour), 101); len(got) != 0 {
		t.Errorf("resolved after 1 of 2 bars: %v", got)
	}
	got := j.Bar("X", t0.Add(2*time.Hour), 110)
	// +9.5% over 2 bars against a band of 0.5·1%·√2: BUY.
	if len(got) != 1 || got[0].Label != policy.ActionBuy || got[0].Symbol != "X" {
		t.Fatalf("outcomes %v, want one BUY", got)
	}
	if got := j.Bar("Y", t0, -1); got != nil || j.symbols["Y"] != nil {
		t.Error("a bar with a negative close was taken")
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
	snap := r.Snapshot()
	if r.Len() != 3 || r.Added() != 5 || len(snap) != 3 || snap[0].Features[0] != 2 || snap[2].Features[0] != 4 {
		t.Errorf("len %d added %d snapshot %v; want the newest 3 of 5, oldest first", r.Len(), r.Added(), snap)
	}
	if err := r.Add(Outcome{Features: []float64{1, math.NaN()}}); err == nil {
		t.Error("a NaN feature was accepted")
	}
}
