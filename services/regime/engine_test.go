package regime

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// fakeMixture is a one-feature Gaussian mixture on the first feature.
type fakeMixture struct {
	W, Mu []float64
	Sigma float64
}

func (f *fakeMixture) Components() int { return len(f.W) }

func (f *fakeMixture) LogProb(x, out []float64) {
	for k := range f.W {
		d := (x[0] - f.Mu[k]) / f.Sigma
		out[k] = math.Log(f.W[k]) - 0.5*d*d
	}
}

// decodeFake decodes a fakeMixture.
func decodeFake(b []byte) (mixture, error) {
	var f fakeMixture
	return &f, json.Unmarshal(b, &f)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeModel stores a two-regime model on the default features: calm
// (log return near 0) and crash (near -0.05).
func fakeModel(t *testing.T, st Store, id string, activate ...string) {
	t.Helper()
	mix, _ := json.Marshal(&fakeMixture{W: []float64{0.8, 0.2}, Mu: []float64{0, -0.05}, Sigma: 0.01})
	var specs []*regimev1.FeatureSpec
	for _, s := range features.DefaultSpecs() {
		specs = append(specs, &regimev1.FeatureSpec{Kind: regimev1.FeatureKind(s.Kind), Window: int32(s.Window)})
	}
	m := &regimev1.Model{
		ModelId: id, CreateTime: timestamppb.Now(),
		Features:  &regimev1.FeatureConfig{Features: specs},
		Smoothing: &regimev1.SmoothingConfig{Stickiness: proto.Float64(0.9), Hysteresis: proto.Float64(0), MinDwellBars: proto.Int32(1)},
		Regimes:   []*regimev1.Regime{{Index: 0, Label: "r0", Weight: 0.8}, {Index: 1, Label: "r1", Weight: 0.2}},
	}
	if err := st.CreateModel(context.Background(), StoredModel{Model: m, Mixture: mix, Meta: ModelMeta{Components: []int{0, 1}}}, activate, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func series(symbol string, from time.Time, closes ...float64) []Bar {
	bars := make([]Bar, len(closes))
	for i, c := range closes {
		bars[i] = Bar{Symbol: symbol, Time: from.Add(time.Duration(i) * time.Hour), Open: c, High: c, Low: c, Close: c}
	}
	return bars
}

func walkCloses(n int) []float64 {
	out := make([]float64, n)
	c := 100.0
	for i := range out {
		c *= math.Exp(0.001 * math.Sin(float64(i)))
		out[i] = c
	}
	return out
}

func TestEngineIngest(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := NewSQLStore(db)
		fakeModel(t, st, "0192f1f0-5b7e-7c3a-9d2e-000000000001", DefaultSymbol)
		e, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.decode = decodeFake
		t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
		closes := walkCloses(40)
		closes[35] = closes[34] * math.Exp(-0.05) // a crash bar
		bars := series("DAX", t0, closes...)
		res, err := e.Ingest(ctx, bars[:20])
		if err != nil {
			t.Fatal(err)
		}
		if res.Accepted != 20 || len(res.States) != 0 {
			t.Fatalf("during the 31-bar warm-up: %d accepted, %d states", res.Accepted, len(res.States))
		}
		if err := e.Readiness(ctx, "DAX"); !errors.Is(err, apierr.ErrFailedPrecondition) {
			t.Errorf("readiness during warm-up: %v", err)
		}
		// Resending is safe; a bar going back in time is not.
		res, err = e.Ingest(ctx, append(bars[18:20:20], bars[20:40]...))
		if err != nil {
			t.Fatal(err)
		}
		if res.Duplicate != 2 || res.Accepted != 20 || len(res.States) != 10 {
			t.Fatalf("second message: %d accepted, %d duplicates, %d states", res.Accepted, res.Duplicate, len(res.States))
		}
		crash := res.States[35-30]
		if crash.GetRawDominantRegime() != 1 || crash.GetSequence() != 6 || len(crash.GetFeatures()) != 6 {
			t.Errorf("the crash bar: %v", crash)
		}
		if s := res.States[0]; s.GetDominantRegime() != 0 || math.Abs(s.GetSmoothedProbabilities()[0]+s.GetSmoothedProbabilities()[1]-1) > 1e-12 {
			t.Errorf("a calm bar: %v", s)
		}
		moved := bars[39]
		moved.Close++
		_, err = e.Ingest(ctx, []Bar{series("SMI", t0, 1)[0], moved})
		var inv *apierr.InvalidError
		if !errors.As(err, &inv) || inv.Violations[0].Field != "bars[1].time" {
			t.Fatalf("a changed copy of a stored bar: %v", err)
		}
		if got, _ := st.LastBars(ctx, "SMI", 1); len(got) != 0 {
			t.Error("the rejected message wrote its valid bar")
		}
		last := e.Latest("DAX")

		// A restart continues the sequence and the filter.
		e2, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
		if err != nil {
			t.Fatal(err)
		}
		e2.decode = decodeFake
		if !proto.Equal(e2.Latest("DAX"), last) {
			t.Errorf("latest state after a restart differs")
		}
		next := series("DAX", bars[39].Time.Add(time.Hour), closes[39]*1.0001)
		res2, err := e2.Ingest(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		res1, err := e.Ingest(ctx, next) // the same bar through the first engine's memory
		if err == nil && res1.Duplicate != 1 {
			t.Errorf("the first engine took the bar again: %+v", res1)
		}
		if s := res2.States[0]; s.GetSequence() != last.GetSequence()+1 || s.GetDwellBars() != last.GetDwellBars()+1 {
			t.Errorf("after restart: %v (before: sequence %d dwell %d)", s, last.GetSequence(), last.GetDwellBars())
		}

		// Activating another model reclassifies the latest bar at once.
		fakeModel(t, st, "0192f1f0-5b7e-7c3a-9d2e-000000000002")
		states, err := e2.Activate(ctx, "0192f1f0-5b7e-7c3a-9d2e-000000000002", []string{"DAX"})
		if err != nil {
			t.Fatal(err)
		}
		if len(states) != 1 || states[0].GetModelId() != "0192f1f0-5b7e-7c3a-9d2e-000000000002" || states[0].GetDwellBars() != 1 || !states[0].GetBarTime().AsTime().Equal(next[0].Time) {
			t.Errorf("activation: %v", states)
		}
		if again, err := e2.Activate(ctx, "0192f1f0-5b7e-7c3a-9d2e-000000000002", []string{"DAX"}); err != nil || len(again) != 0 {
			t.Errorf("activating the active model: %v %v", again, err)
		}
	})
}

// stalledStore holds each Commit until release is closed.
type stalledStore struct {
	Store
	committing chan struct{}
	release    chan struct{}
}

func (s *stalledStore) Commit(ctx context.Context, w Write) error {
	s.committing <- struct{}{}
	<-s.release
	return s.Store.Commit(ctx, w)
}

// Reads of the latest states do not wait for an ingest's commit: while one
// is in flight they answer what was committed before it, and its states
// only after it commits.
func TestEngineReadsDuringCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sql := NewSQLStore(storetest.SQLite(t, Migrations()))
	fakeModel(t, sql, "0192f1f0-5b7e-7c3a-9d2e-000000000001", DefaultSymbol)
	st := &stalledStore{Store: sql, committing: make(chan struct{}, 1), release: make(chan struct{})}
	e, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.decode = decodeFake
	bars := series("DAX", time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), walkCloses(40)...)
	close(st.release)
	if _, err := e.Ingest(ctx, bars[:35]); err != nil {
		t.Fatal(err)
	}
	<-st.committing
	before := e.Latest("DAX")
	if before == nil {
		t.Fatal("no state after 35 bars")
	}

	st.release = make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := e.Ingest(ctx, bars[35:])
		done <- err
	}()
	<-st.committing // the second message is committing, holding the engine
	reads := make(chan struct{})
	go func() {
		defer close(reads)
		if got := e.Latest("DAX"); got != before {
			t.Errorf("during the commit Latest is sequence %d, want the committed %d", got.GetSequence(), before.GetSequence())
		}
		states, seq := e.Snapshot(nil)
		if len(states) != 1 || states[0] != before || seq != before.GetSequence() {
			t.Errorf("during the commit Snapshot is %d states at sequence %d, want the committed state %d", len(states), seq, before.GetSequence())
		}
	}()
	select {
	case <-reads:
	case <-time.After(10 * time.Second):
		t.Fatal("Latest and Snapshot wait for the ingest's commit")
	}
	close(st.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	after := e.Latest("DAX")
	if states, seq := e.Snapshot(nil); after.GetSequence() != before.GetSequence()+5 || seq != after.GetSequence() || states[0] != after {
		t.Errorf("after the commit: latest sequence %d, snapshot at %d; want %d", after.GetSequence(), seq, before.GetSequence()+5)
	}
}

// A symbol rebuilt from its last bars (after a restart, a cache eviction or
// an activation) gets the features a computer fed every bar gives:
// drawdown_0 measures from the high of the whole history, here 5 bars
// long before the 31 replayed.
func TestEngineRebuildKeepsRunningHigh(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := NewSQLStore(db)
		const modelB = "0192f1f0-5b7e-7c3a-9d2e-000000000002"
		fakeModel(t, st, "0192f1f0-5b7e-7c3a-9d2e-000000000001", DefaultSymbol)
		fakeModel(t, st, modelB)
		closes := append([]float64{150, 200, 200, 180, 150}, walkCloses(70)...)
		bars := series("DAX", time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), closes...)
		var want [][]float64
		if err := features.EachClose(features.DefaultSpecs(), closes, func(_ int, vec []float64) error {
			want = append(want, append([]float64(nil), vec...))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		engine := func() *Engine {
			e, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
			if err != nil {
				t.Fatal(err)
			}
			e.decode = decodeFake
			return e
		}
		if _, err := engine().Ingest(ctx, bars[:len(bars)-1]); err != nil {
			t.Fatal(err)
		}
		// After a restart.
		e := engine()
		res, err := e.Ingest(ctx, bars[len(bars)-1:])
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want[len(want)-1], res.States[0].GetFeatures()); diff != "" {
			t.Errorf("features of the first bar after a restart (-every bar +rebuilt):\n%s", diff)
		}
		// At an activation, which rebuilds the symbol.
		states, err := e.Activate(ctx, modelB, []string{"DAX"})
		if err != nil || len(states) != 1 {
			t.Fatalf("activation: %v %v", states, err)
		}
		if diff := cmp.Diff(want[len(want)-1], states[0].GetFeatures()); diff != "" {
			t.Errorf("features reclassified at the activation (-every bar +rebuilt):\n%s", diff)
		}
	})
}

// A symbol a client asks about before its feed starts, or one named in a
// rejected message, is served by a default model activated after that.
func TestEngineDefaultReachesSymbolsWithoutBars(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := NewSQLStore(storetest.SQLite(t, Migrations()))
	const model = "0192f1f0-5b7e-7c3a-9d2e-000000000001"
	fakeModel(t, st, model)
	e, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.decode = decodeFake
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	for _, sym := range []string{"EARLY", "NOPE1", "NOPE2"} {
		if err := e.Readiness(ctx, sym); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("readiness of %s without bars: %v", sym, err)
		}
	}
	if n := e.symbols.Len(); n != 0 {
		t.Errorf("asking about symbols without bars cached %d of them", n)
	}
	back := series("LATE", t0.Add(-time.Hour), 1)[0]
	if _, err := e.Ingest(ctx, []Bar{series("LATE", t0, 1)[0], back}); !errors.Is(err, apierr.ErrInvalidArgument) {
		t.Fatalf("a bar going back in time: %v", err)
	}
	if _, err := e.Activate(ctx, model, []string{DefaultSymbol}); err != nil {
		t.Fatal(err)
	}
	for _, sym := range []string{"EARLY", "LATE"} {
		res, err := e.Ingest(ctx, series(sym, t0, walkCloses(40)...))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.States) != 10 || res.States[0].GetModelId() != model {
			t.Errorf("%s: %d states after 40 bars under the default model, want 10", sym, len(res.States))
		}
	}
}

// Activating by name the model a symbol has through the default changes
// nothing of its state: no new state, and the filter's dwell goes on.
func TestEngineActivateEffectiveModelIsNoop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := NewSQLStore(storetest.SQLite(t, Migrations()))
	const model = "0192f1f0-5b7e-7c3a-9d2e-000000000001"
	fakeModel(t, st, model, DefaultSymbol)
	e, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.decode = decodeFake
	bars := series("DAX", time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), walkCloses(41)...)
	if _, err := e.Ingest(ctx, bars[:40]); err != nil {
		t.Fatal(err)
	}
	last := e.Latest("DAX")
	states, err := e.Activate(ctx, model, []string{"DAX"})
	if err != nil || len(states) != 0 {
		t.Fatalf("activating the model DAX already has: %v %v", states, err)
	}
	if got := e.Latest("DAX"); got != last {
		t.Errorf("latest state changed from sequence %d to %d", last.GetSequence(), got.GetSequence())
	}
	// The activation is DAX's own now: a later default does not move it.
	if acts, err := st.Activations(ctx); err != nil || acts["DAX"] != model {
		t.Errorf("stored activations: %v %v", acts, err)
	}
	if got := e.ActiveSymbols(model); len(got) != 2 || got[0] != DefaultSymbol || got[1] != "DAX" {
		t.Errorf("active symbols: %v", got)
	}
	res, err := e.Ingest(ctx, bars[40:])
	if err != nil {
		t.Fatal(err)
	}
	if s := res.States[0]; s.GetSequence() != last.GetSequence()+1 || s.GetDwellBars() != last.GetDwellBars()+1 {
		t.Errorf("next bar: sequence %d dwell %d, want %d and %d", s.GetSequence(), s.GetDwellBars(), last.GetSequence()+1, last.GetDwellBars()+1)
	}
}

// A stored model without regimes (fitted before FitModel refused them) is
// refused at activation with a clear error, and ingestion goes on.
func TestEngineRefusesModelWithoutRegimes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := NewSQLStore(storetest.SQLite(t, Migrations()))
	const empty = "0192f1f0-5b7e-7c3a-9d2e-000000000001"
	mix, _ := json.Marshal(&fakeMixture{W: []float64{0.5, 0.5}, Mu: []float64{0, 0}, Sigma: 1})
	m := &regimev1.Model{
		ModelId: empty, CreateTime: timestamppb.Now(),
		Features:  &regimev1.FeatureConfig{Features: []*regimev1.FeatureSpec{{Kind: regimev1.FeatureKind_FEATURE_KIND_LOG_RETURN, Window: 1}}},
		Mixture:   &regimev1.MixtureConfig{EffectiveWeightThreshold: proto.Float64(0.95)},
		Smoothing: smoothingToProto(DefaultSmoothing()),
	}
	if err := st.CreateModel(ctx, StoredModel{Model: m, Mixture: mix}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(ctx, EngineConfig{}, st, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.decode = decodeFake
	bars := series("DAX", time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), walkCloses(40)...)
	if _, err := e.Ingest(ctx, bars[:35]); err != nil {
		t.Fatal(err)
	}
	_, err = e.Activate(ctx, empty, []string{DefaultSymbol})
	if !errors.Is(err, apierr.ErrFailedPrecondition) || !strings.Contains(err.Error(), "no regimes") {
		t.Fatalf("activating a model without regimes: %v", err)
	}
	if _, err := e.Ingest(ctx, bars[35:]); err != nil {
		t.Errorf("ingest after the refused activation: %v", err)
	}
}
