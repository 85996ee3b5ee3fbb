package regime

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

func TestStoreContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := NewSQLStore(db)
		t0 := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
		var bars []Bar
		for i := range 5 {
			bars = append(bars, Bar{Symbol: "DAX", Time: t0.AddDate(0, 0, i), Open: 1, High: 2, Low: 0.5, Close: 1.5 + float64(i), Volume: 10, HasVolume: i%2 == 0})
		}
		states := []*regimev1.RegimeState{
			{Symbol: "DAX", Sequence: 1, ModelId: "m1", SmoothedProbabilities: []float64{0.9, 0.1}},
			{Symbol: "DAX", Sequence: 2, ModelId: "m1", SmoothedProbabilities: []float64{0.8, 0.2}},
			{Symbol: "SMI", Sequence: 3, ModelId: "m1"},
		}
		if err := st.Commit(ctx, Write{Bars: bars, States: states}); err != nil {
			t.Fatal(err)
		}
		last, err := st.LastBars(ctx, "DAX", 2)
		if err != nil || len(last) != 2 || !last[1].Time.Equal(bars[4].Time) || last[0].Close != bars[3].Close || last[0].HasVolume || !last[1].HasVolume {
			t.Fatalf("last bars: %+v %v", last, err)
		}
		if high, err := st.MaxClose(ctx, "DAX"); err != nil || high != bars[4].Close {
			t.Errorf("max close: %v %v, want %v", high, err, bars[4].Close)
		}
		if high, err := st.MaxClose(ctx, "SMI"); err != nil || high != 0 {
			t.Errorf("max close without bars: %v %v", high, err)
		}
		if b, err := st.BarAt(ctx, "DAX", bars[2].Time); err != nil || b == nil || b.Close != bars[2].Close {
			t.Fatalf("bar at: %+v %v", b, err)
		}
		if b, err := st.BarAt(ctx, "DAX", t0.AddDate(1, 0, 0)); err != nil || b != nil {
			t.Fatalf("bar at an empty time: %+v %v", b, err)
		}
		if r, err := st.Bars(ctx, "DAX", bars[1].Time, bars[3].Time); err != nil || len(r) != 2 {
			t.Fatalf("bars in range: %d %v", len(r), err)
		}
		// A bar stored twice violates the key.
		if err := st.Commit(ctx, Write{Bars: bars[:1]}); err == nil {
			t.Error("a stored bar was stored again")
		}
		if syms, err := st.Symbols(ctx); err != nil || len(syms) != 1 || syms[0] != "DAX" {
			t.Errorf("symbols: %v %v", syms, err)
		}
		if seq, err := st.LastSequence(ctx); err != nil || seq != 3 {
			t.Errorf("last sequence %d %v", seq, err)
		}
		latest, err := st.Latest(ctx)
		if err != nil || len(latest) != 2 || latest["DAX"].GetSequence() != 2 {
			t.Fatalf("latest: %v %v", latest, err)
		}
		got, err := st.States(ctx, 1, []string{"DAX"}, 10)
		if err != nil || len(got) != 1 || !proto.Equal(got[0], states[1]) {
			t.Fatalf("states after 1: %v %v", got, err)
		}
		if err := st.PruneStates(ctx, 2); err != nil {
			t.Fatal(err)
		}
		if first, _ := st.FirstSequence(ctx); first != 3 {
			t.Errorf("first sequence after pruning: %d", first)
		}
		if seq, _ := st.LastSequence(ctx); seq != 3 {
			t.Errorf("last sequence after pruning: %d", seq)
		}

		m := StoredModel{
			Model:   &regimev1.Model{ModelId: "0192f1f0-5b7e-7c3a-9d2e-000000000001", CreateTime: timestamppb.New(t0), Description: "d"},
			Mixture: []byte{1, 2, 3},
			Meta:    ModelMeta{Scaler: &Scaler{Mean: []float64{1}, Std: []float64{2}}, Components: []int{4, 1}},
		}
		if err := st.CreateModel(ctx, m, []string{"DAX", DefaultSymbol}, t0); err != nil {
			t.Fatal(err)
		}
		got2, err := st.GetModel(ctx, m.Model.GetModelId())
		if err != nil || !proto.Equal(got2.Model, m.Model) || string(got2.Mixture) != string(m.Mixture) || got2.Meta.Scaler.Std[0] != 2 || got2.Meta.Components[0] != 4 {
			t.Fatalf("get model: %+v %v", got2, err)
		}
		if _, err := st.GetModel(ctx, "nope"); !apierrIs(err, apierr.ErrNotFound) {
			t.Errorf("unknown model: %v", err)
		}
		m2 := m
		m2.Model = &regimev1.Model{ModelId: "0192f1f0-5b7e-7c3a-9d2e-000000000002", CreateTime: timestamppb.New(t0)}
		if err := st.CreateModel(ctx, m2, nil, t0); err != nil {
			t.Fatal(err)
		}
		list, err := st.ListModels(ctx, "", 10, false)
		if err != nil || len(list) != 2 || list[0].Model.GetModelId() != m2.Model.GetModelId() {
			t.Fatalf("list: %d %v", len(list), err)
		}
		if active, _ := st.ListModels(ctx, "", 10, true); len(active) != 1 {
			t.Errorf("active models: %d", len(active))
		}
		reclass := &regimev1.RegimeState{Symbol: "DAX", Sequence: 4, ModelId: m2.Model.GetModelId()}
		if err := st.Activate(ctx, m2.Model.GetModelId(), []string{"DAX"}, t0, []*regimev1.RegimeState{reclass}); err != nil {
			t.Fatal(err)
		}
		acts, err := st.Activations(ctx)
		if err != nil || acts["DAX"] != m2.Model.GetModelId() || acts[DefaultSymbol] != m.Model.GetModelId() {
			t.Errorf("activations: %v %v", acts, err)
		}
		if l, _ := st.Latest(ctx); l["DAX"].GetSequence() != 4 {
			t.Errorf("latest after activation: %v", l["DAX"])
		}
		if err := st.Activate(ctx, "nope", []string{"X"}, t0, nil); !apierrIs(err, apierr.ErrNotFound) {
			t.Errorf("activate unknown: %v", err)
		}
	})
}

func apierrIs(err, kind error) bool { return errors.Is(err, kind) }

// TestStoreCommitChunks commits messages larger than one INSERT's rows,
// twice, so SQLite's prepared full-chunk statements are used and reused,
// and reads every row back in order.
func TestStoreCommitChunks(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := NewSQLStore(db)
		t0 := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
		const perMessage = 2*rowsPerInsert + 7
		var seq uint64
		for m := range 2 {
			w := Write{}
			for i := range perMessage {
				n := m*perMessage + i
				seq++
				w.Bars = append(w.Bars, Bar{Symbol: "DAX", Time: t0.Add(time.Duration(n) * time.Minute), Open: 1, High: 2, Low: 0.5, Close: float64(n)})
				w.States = append(w.States, &regimev1.RegimeState{Symbol: "DAX", Sequence: seq, Close: float64(n)})
			}
			if err := st.Commit(ctx, w); err != nil {
				t.Fatalf("message %d: %v", m, err)
			}
		}
		bars, err := st.Bars(ctx, "DAX", time.Time{}, time.Time{})
		if err != nil || len(bars) != 2*perMessage {
			t.Fatalf("bars: %d %v", len(bars), err)
		}
		for i, b := range bars {
			if b.Close != float64(i) || !b.Time.Equal(t0.Add(time.Duration(i)*time.Minute)) {
				t.Fatalf("bar %d: %+v", i, b)
			}
		}
		states, err := st.States(ctx, 0, []string{"DAX"}, 3*perMessage)
		if err != nil || len(states) != 2*perMessage {
			t.Fatalf("states: %d %v", len(states), err)
		}
		for i, s := range states {
			if s.GetSequence() != uint64(i+1) || s.GetClose() != float64(i) {
				t.Fatalf("state %d: %v", i, s)
			}
		}
		if latest, err := st.Latest(ctx); err != nil || latest["DAX"].GetSequence() != seq {
			t.Fatalf("latest: %v %v", latest, err)
		}
	})
}
