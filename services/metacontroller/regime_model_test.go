package metacontroller

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
)

// The walk-forward check of a stored regime model: rows of the same bundled
// dataset (any column), or bar times when both sides have them.
func TestRegimeModelOverlaps(t *testing.T) {
	t.Parallel()
	day := func(i int) time.Time { return time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i) }
	rows := func(id string, start, end int64) *regimev1.Model {
		return &regimev1.Model{ModelId: "m", Source: &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: id, Columns: []string{"SMI"}, StartIndex: start, EndIndex: end}}}}
	}
	bars := func(first, last int) *regimev1.Model {
		return &regimev1.Model{ModelId: "m", Source: &regimev1.TrainingSource{Source: &regimev1.TrainingSource_StoredBars{StoredBars: &regimev1.StoredBars{Symbols: []string{"X"}}}},
			FirstBarTime: timestamppb.New(day(first)), LastBarTime: timestamppb.New(day(last))}
	}
	// eustock rows 100-1100 of DAX, evaluated from row 800.
	eu := &dataset{name: "eustock/DAX", datasetID: "eustock", closes: make([]float64, 1000), start: 100}
	// 100 timestamped inline bars, days 0-99, evaluated from day 70.
	inline := &dataset{name: "inline/X", closes: make([]float64, 100)}
	for i := range 100 {
		inline.times = append(inline.times, day(i))
	}
	for _, tc := range []struct {
		name      string
		m         *regimev1.Model
		ds        *dataset
		firstEval int
		refused   bool
	}{
		{"rows before the evaluated ones", rows("eustock", 0, 800), eu, 800, false},
		{"rows reaching into them, another column", rows("eustock", 0, 801), eu, 800, true},
		{"rows after the range's start, open end", rows("eustock", 1000, 0), eu, 800, true},
		{"rows after the range: it has seen their future", rows("eustock", 1100, 1500), eu, 800, true},
		{"another dataset", rows("ttrc", 0, 0), eu, 800, false},
		{"bars before the evaluated ones", bars(0, 69), inline, 70, false},
		{"bars overlapping them", bars(50, 70), inline, 70, true},
		{"bars after the series: it has seen their future", bars(100, 120), inline, 70, true},
		{"bars against a series without times", bars(0, 1000), eu, 800, false},
	} {
		err := overlaps("regime_model_id", tc.m, tc.ds, tc.firstEval)
		if tc.refused {
			t.Run(tc.name, func(t *testing.T) { wantInvalid(t, err, "regime_model_id") })
		} else if err != nil {
			t.Errorf("%s: %v, want accepted", tc.name, err)
		}
	}
}
