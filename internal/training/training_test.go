package training

import (
	"testing"

	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

func TestBuildBundled(t *testing.T) {
	t.Parallel()
	series, err := Load(Bundled)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 5 {
		t.Fatalf("%d bundled series, want 4 indices and 1 stock", len(series))
	}
	ds, err := Build(series, 5, 0.5, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	// Each series gives len-Warmup+1-horizon labelled vectors, of which
	// the last 20% are test and the horizon before them purged (their
	// labels' forward returns reach into the test bars).
	want := 0
	for _, s := range series {
		want += len(s.Bars) - (features.Warmup - 1) - 5
	}
	if got := len(ds.TrainX) + len(ds.TestX); got != want-5*len(series) {
		t.Errorf("%d samples, want %d", got, want-5*len(series))
	}
	if r := float64(len(ds.TestX)) / float64(want); r < 0.19 || r > 0.21 {
		t.Errorf("test share %.3f, want 0.2", r)
	}
	for c, n := range ds.ClassCounts {
		if n < want/10 {
			t.Errorf("class %d has %d of %d samples: the labels are degenerate", c, n, want)
		}
	}
	// Without a hold-out nothing is purged.
	all, err := Build(series, 5, 0.5, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.TrainX) != want || len(all.TestX) != 0 {
		t.Errorf("hold-out 0: %d training and %d test samples, want %d and 0", len(all.TrainX), len(all.TestX), want)
	}
	if len(ds.Names) != len(ds.TrainX[0]) {
		t.Errorf("%d names for vectors of %d", len(ds.Names), len(ds.TrainX[0]))
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	for _, data := range []string{"", "/nonexistent.csv"} {
		if _, err := Load(data); err == nil {
			t.Errorf("Load(%q) succeeded", data)
		}
	}
	if _, err := Build([]marketdata.Series{{Symbol: "X", Bars: make([]marketdata.Bar, 10)}}, 5, 0.5, 0.2); err == nil {
		t.Error("too few bars accepted")
	}
}
