package regime

import (
	"context"
	"testing"
	"time"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// BenchmarkCommit commits what one 1,000-bar IngestBars message writes on
// SQLite: the bars, a state per bar and the symbol's latest state.
func BenchmarkCommit(b *testing.B) {
	st := NewSQLStore(storetest.SQLite(b, Migrations()))
	ctx := context.Background()
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	var seq uint64
	w := Write{Bars: make([]Bar, 1000), States: make([]*regimev1.RegimeState, 1000)}
	b.ResetTimer()
	for n := range b.N {
		for i := range w.Bars {
			t := t0.Add(time.Duration(n*1000+i) * time.Minute)
			seq++
			w.Bars[i] = Bar{Symbol: "DAX", Time: t, Open: 100, High: 101, Low: 99, Close: 100.5}
			w.States[i] = &regimev1.RegimeState{Symbol: "DAX", Sequence: seq, ModelId: "m", Close: 100.5,
				Features: []float64{1, 2, 3, 4, 5, 6}, RawProbabilities: []float64{0.5, 0.3, 0.2}, SmoothedProbabilities: []float64{0.6, 0.3, 0.1}}
		}
		if err := st.Commit(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/bar")
}
