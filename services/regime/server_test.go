package regime

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr/apierrtest"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

const (
	modelA = "0192f1f0-5b7e-7c3a-9d2e-00000000000a"
	modelB = "0192f1f0-5b7e-7c3a-9d2e-00000000000b"
)

// serveRegime serves RegimeService on db over loopback gRPC, with two
// stand-in models (fakeMixture), A active by default.
func serveRegime(t *testing.T, db *store.DB) (regimev1.RegimeServiceClient, Store) {
	t.Helper()
	st := NewSQLStore(db)
	fakeModel(t, st, modelA, DefaultSymbol)
	fakeModel(t, st, modelB)
	return serveWith(t, db, decodeFake)
}

// serveRegimeDPGMM serves RegimeService without models, decoding real
// (pkg/dpgmm) ones.
func serveRegimeDPGMM(t *testing.T, db *store.DB) (regimev1.RegimeServiceClient, Store) {
	t.Helper()
	return serveWith(t, db, decodeMixture)
}

func serveWith(t *testing.T, db *store.DB, decode func([]byte) (mixture, error)) (regimev1.RegimeServiceClient, Store) {
	t.Helper()
	_, c, st := serveServer(t, db, decode)
	return c, st
}

// serveServer is serveWith with server options, and the server.
func serveServer(t *testing.T, db *store.DB, decode func([]byte) (mixture, error), opts ...Option) (*Server, regimev1.RegimeServiceClient, Store) {
	t.Helper()
	st := NewSQLStore(db)
	ctx, cancel := context.WithCancel(context.Background())
	eng, err := NewEngine(ctx, EngineConfig{Retained: 16}, st, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng.decode = decode
	rs := New(eng, quiet, opts...)
	srv, err := server.New(ctx, server.Options{
		Config:   server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 2 * time.Second},
		Services: []server.Registration{rs.Registration()},
		Logger:   quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(srv.GRPCTarget(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rs, regimev1.NewRegimeServiceClient(conn), st
}

func pbBars(symbol string, from time.Time, closes []float64) []*regimev1.Bar {
	out := make([]*regimev1.Bar, len(closes))
	for i, c := range closes {
		out[i] = &regimev1.Bar{Symbol: symbol, Time: timestamppb.New(from.Add(time.Duration(i) * time.Minute)), Open: c, High: c, Low: c, Close: c, Volume: proto.Float64(100)}
	}
	return out
}

func ingest(t *testing.T, c regimev1.RegimeServiceClient, msgs ...[]*regimev1.Bar) (*regimev1.IngestBarsResponse, error) {
	t.Helper()
	s, err := c.IngestBars(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := s.Send(&regimev1.IngestBarsRequest{Bars: m}); err != nil {
			break
		}
	}
	return s.CloseAndRecv()
}

// TestIngestBarsForwarded: bars stored through IngestBars are put on
// market.bars, marked as forwarded, for the feed's other consumers; the
// server's own ConsumeBars skips marked bars and stores the others.
func TestIngestBarsForwarded(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		b := bus.NewInProc(bus.InProcConfig{})
		t.Cleanup(func() { _ = b.Close() })
		srv, c, st := serveServer(t, db, decodeMixture, WithBarForwarding(b))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		t0 := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
		sent := pbBars("DAX", t0, walkCloses(5))
		if _, err := ingest(t, c, sent[:2], sent[2:]); err != nil {
			t.Fatal(err)
		}
		var got []*regimev1.Bar
		cctx, ccancel := context.WithCancel(ctx)
		err := b.Consume(cctx, bus.ConsumerConfig{Group: "test", Topics: []string{bus.TopicMarketBars}}, func(_ context.Context, msgs []bus.Message) error {
			for _, m := range msgs {
				pb := &regimev1.Bar{}
				if err := proto.Unmarshal(m.Value, pb); err != nil || m.Headers[HeaderForwarded] != forwardedBy || string(m.Key) != "DAX" {
					t.Errorf("forwarded message %+v (%v): want a DAX bar marked %s", m, err, HeaderForwarded)
				}
				got = append(got, pb)
			}
			if len(got) >= len(sent) {
				ccancel()
			}
			return nil
		})
		if ctx.Err() != nil {
			t.Fatalf("consume: %v; %d of %d bars forwarded", err, len(got), len(sent))
		}
		if len(got) != len(sent) {
			t.Fatalf("%d bars forwarded, want %d", len(got), len(sent))
		}
		for i := range sent {
			if !proto.Equal(got[i], sent[i]) {
				t.Errorf("bar %d forwarded as %v, sent %v", i, got[i], sent[i])
			}
		}

		// ConsumeBars: a marked bar is taken as stored already, an
		// unmarked one is stored.
		go func() { _ = srv.ConsumeBars(ctx, b) }()
		marked, _ := proto.Marshal(pbBars("DAX", t0.Add(time.Hour), []float64{101})[0])
		plain, _ := proto.Marshal(pbBars("SMI", t0, []float64{50})[0])
		if err := b.Publish(ctx, bus.Message{Topic: bus.TopicMarketBars, Key: []byte("DAX"), Value: marked, Headers: map[string]string{HeaderForwarded: forwardedBy}},
			bus.Message{Topic: bus.TopicMarketBars, Key: []byte("SMI"), Value: plain}); err != nil {
			t.Fatal(err)
		}
		for {
			bars, err := st.LastBars(ctx, "SMI", 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(bars) == 1 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if bar, err := st.BarAt(ctx, "DAX", t0.Add(time.Hour)); err != nil || bar != nil {
			t.Errorf("the marked bar was stored by ConsumeBars: %v, %v", bar, err)
		}
	})
}

func TestIngestAndRegimes(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		c, _ := serveRegime(t, db)
		ctx := context.Background()
		t0 := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
		closes := walkCloses(60)
		dax, smi := pbBars("DAX", t0, closes), pbBars("SMI", t0, closes[:10])

		apierrtest.Code(t, "unknown symbol", codes.NotFound, func() error {
			_, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "DAX"})
			return err
		})
		// A watcher from the start sees the (empty) snapshot, then every new state.
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		watch, err := c.WatchRegimes(wctx, &regimev1.WatchRegimesRequest{Symbols: []string{"DAX"}})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := watch.Recv(); err != nil || m.GetKind() != regimev1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END {
			t.Fatalf("first message: %v %v", m, err)
		}

		resp, err := ingest(t, c, dax[:20], append(smi, dax[20:]...))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetMessagesReceived() != 2 || resp.GetBarsAccepted() != 70 || resp.GetRegimesUpdated() != 30 || len(resp.GetSymbols()) != 2 ||
			resp.GetSymbols()[0].GetSymbol() != "DAX" || resp.GetSymbols()[0].GetLastSequence() != 30 || resp.GetSymbols()[1].GetLastSequence() != 0 {
			t.Fatalf("ingest summary: %v", resp)
		}
		for i := range 30 {
			m, err := watch.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if m.GetKind() != regimev1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || m.GetSequence() != uint64(i+1) || m.GetState().GetSymbol() != "DAX" {
				t.Fatalf("update %d: %v", i, m)
			}
		}
		st, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "DAX"})
		if err != nil || st.GetState().GetSequence() != 30 || st.GetState().GetModelId() != modelA {
			t.Fatalf("GetRegime: %v %v", st, err)
		}
		_, err = c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "SMI"})
		if apierrtest.Code(t, "windows not filled", codes.FailedPrecondition, func() error { return err }); !strings.Contains(err.Error(), "21 more bars") {
			t.Errorf("not-ready message: %v", err)
		}

		// Resending is counted as duplicates.
		resp, err = ingest(t, c, dax[50:])
		if err != nil || resp.GetBarsDuplicate() != 10 || resp.GetBarsAccepted() != 0 {
			t.Fatalf("resend: %v %v", resp, err)
		}
		// A resuming client gets exactly what followed its last sequence,
		// from the store when the memory no longer holds it.
		rs, err := c.WatchRegimes(wctx, &regimev1.WatchRegimesRequest{AfterSequence: 3})
		if err != nil {
			t.Fatal(err)
		}
		for want := uint64(4); want <= 30; want++ {
			m, err := rs.Recv()
			if err != nil || m.GetKind() != regimev1.WatchEventKind_WATCH_EVENT_KIND_UPDATE || m.GetSequence() != want {
				t.Fatalf("resumed stream at %d: %v %v", want, m, err)
			}
		}
		future, err := c.WatchRegimes(wctx, &regimev1.WatchRegimesRequest{AfterSequence: 99})
		if err == nil {
			_, err = future.Recv()
		}
		apierrtest.Code(t, "resume beyond the newest", codes.OutOfRange, func() error { return err })

		// Activating model B for DAX reclassifies its latest bar.
		act, err := c.ActivateModel(ctx, &regimev1.ActivateModelRequest{ModelId: modelB, Symbols: []string{"DAX"}})
		if err != nil || len(act.GetModel().GetActiveSymbols()) != 1 {
			t.Fatalf("activate: %v %v", act, err)
		}
		if m, err := watch.Recv(); err != nil || m.GetState().GetModelId() != modelB || m.GetSequence() != 31 {
			t.Fatalf("reclassification on the stream: %v %v", m, err)
		}
		got, err := c.GetModel(ctx, &regimev1.GetModelRequest{ModelId: modelA})
		if err != nil || strings.Join(got.GetModel().GetActiveSymbols(), ",") != DefaultSymbol {
			t.Errorf("model A's symbols: %v %v", got, err)
		}
		list, err := c.ListModels(ctx, &regimev1.ListModelsRequest{PageSize: 1})
		if err != nil || len(list.GetModels()) != 1 || list.GetNextPageToken() == "" {
			t.Errorf("list: %v %v", list, err)
		}

		cl, err := c.ClassifyFeatures(ctx, &regimev1.ClassifyFeaturesRequest{ModelId: modelA, Sequential: true, Vectors: []*regimev1.FeatureVector{
			{Values: []float64{0, 0, 0, 0, 0, 0}}, {Values: []float64{-0.05, 0, 0, 0, 0, 0}}, {Values: []float64{0, 0, 0, 0, 0, 0}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if cs := cl.GetClassifications(); cs[1].GetRawDominantRegime() != 1 || cs[0].GetRawDominantRegime() != 0 || len(cs[1].GetSmoothedProbabilities()) != 2 ||
			cl.GetRawFlipsPer_100Bars() != 100 || math.IsNaN(cs[0].GetLogLikelihood()) {
			t.Errorf("classify: %v", cl)
		}
	})
}

func TestRegimeBadInput(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		c, st := serveRegime(t, db)
		ctx := context.Background()
		t0 := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
		good := pbBars("DAX", t0, []float64{10, 11, 12})
		if _, err := ingest(t, c, good); err != nil {
			t.Fatal(err)
		}
		bar := func(mutate func(b *regimev1.Bar)) []*regimev1.Bar {
			b := proto.Clone(good[2]).(*regimev1.Bar)
			b.Time = timestamppb.New(t0.Add(time.Hour))
			mutate(b)
			return []*regimev1.Bar{pbBars("SMI", t0, []float64{5})[0], b}
		}
		for _, tt := range []struct {
			name, field string
			msg         []*regimev1.Bar
		}{
			{"NaN close", "bars[1].close", bar(func(b *regimev1.Bar) { b.Close = math.NaN() })},
			{"negative open", "bars[1].open", bar(func(b *regimev1.Bar) { b.Open = -1 })},
			{"low above close", "bars[1].low", bar(func(b *regimev1.Bar) { b.Low = 13 })},
			{"high below open", "bars[1].high", bar(func(b *regimev1.Bar) { b.High = 11 })},
			{"negative volume", "bars[1].volume", bar(func(b *regimev1.Bar) { b.Volume = proto.Float64(-1) })},
			{"no time", "bars[1].time", bar(func(b *regimev1.Bar) { b.Time = nil })},
			{"time going back", "bars[1].time", bar(func(b *regimev1.Bar) { b.Time = timestamppb.New(t0.Add(-time.Hour)) })},
			{"time far ahead", "bars[1].time", bar(func(b *regimev1.Bar) { b.Time = timestamppb.New(time.Now().Add(48 * time.Hour)) })},
			{"bad symbol", "bars[1].symbol", bar(func(b *regimev1.Bar) { b.Symbol = "A/B" })},
			{"empty message", "bars", nil},
		} {
			apierrtest.Field(t, tt.name, tt.field, func() error {
				_, err := ingest(t, c, tt.msg)
				return err
			})
		}
		if bars, _ := st.LastBars(ctx, "SMI", 10); len(bars) != 0 {
			t.Errorf("rejected messages wrote %d bars", len(bars))
		}
		for _, tt := range []struct {
			name, field string
			call        func() error
		}{
			{"bad symbol", "symbol", func() error { _, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: ""}); return err }},
			{"bad model id", "model_id", func() error { _, err := c.GetModel(ctx, &regimev1.GetModelRequest{ModelId: "m"}); return err }},
			{"no symbols", "symbols", func() error {
				_, err := c.ActivateModel(ctx, &regimev1.ActivateModelRequest{ModelId: modelA})
				return err
			}},
			{"wrong vector length", "vectors[0].values", func() error {
				_, err := c.ClassifyFeatures(ctx, &regimev1.ClassifyFeaturesRequest{ModelId: modelA, Vectors: []*regimev1.FeatureVector{{Values: []float64{1}}}})
				return err
			}},
			{"infinite feature", "vectors[0].values[3]", func() error {
				_, err := c.ClassifyFeatures(ctx, &regimev1.ClassifyFeaturesRequest{ModelId: modelA, Vectors: []*regimev1.FeatureVector{{Values: []float64{0, 0, 0, math.Inf(-1), 0, 0}}}})
				return err
			}},
			{"negative page size", "page_size", func() error { _, err := c.ListModels(ctx, &regimev1.ListModelsRequest{PageSize: -1}); return err }},
		} {
			apierrtest.Field(t, tt.name, tt.field, tt.call)
		}
		apierrtest.Code(t, "activate an unknown model", codes.NotFound, func() error {
			_, err := c.ActivateModel(ctx, &regimev1.ActivateModelRequest{ModelId: "0192f1f0-5b7e-7c3a-9d2e-0000000000ff", Symbols: []string{"X"}})
			return err
		})
	})
}

// Prices each finite and positive whose ratio overflows (1e-200 then
// 1e200) are refused, with nothing of the message written, after and
// during the feature windows' warm-up; no state is ever NaN.
func TestIngestOverflowingPrices(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		c, st := serveRegime(t, db)
		ctx := context.Background()
		t0 := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
		closes := walkCloses(40)
		if _, err := ingest(t, c, pbBars("DAX", t0, closes), pbBars("NEW", t0, closes[:3])); err != nil {
			t.Fatal(err)
		}
		before, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "DAX"})
		if err != nil {
			t.Fatal(err)
		}
		extreme := func(symbol string, from int, closes ...float64) []*regimev1.Bar {
			return pbBars(symbol, t0.Add(time.Duration(from)*time.Minute), closes)
		}
		apierrtest.Field(t, "after the warm-up", "bars[2].close", func() error {
			_, err := ingest(t, c, append(pbBars("SMI", t0, []float64{5}), extreme("DAX", 40, 1e-200, 1e200)...))
			return err
		})
		apierrtest.Field(t, "during the warm-up", "bars[1].close", func() error {
			_, err := ingest(t, c, extreme("NEW", 3, 1e-200, 1e200))
			return err
		})
		for sym, n := range map[string]int{"DAX": 40, "NEW": 3, "SMI": 0} {
			if bars, err := st.LastBars(ctx, sym, 100); err != nil || len(bars) != n {
				t.Errorf("%s has %d bars after the rejected messages, want %d (%v)", sym, len(bars), n, err)
			}
		}
		if got, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "DAX"}); err != nil || !proto.Equal(got.GetState(), before.GetState()) {
			t.Errorf("DAX's state changed: %v %v", got, err)
		}
		// The tiny close alone is acceptable; the huge one after it is not,
		// whatever message it comes in.
		resp, err := ingest(t, c, extreme("DAX", 40, 1e-200))
		if err != nil || resp.GetRegimesUpdated() != 1 {
			t.Fatalf("a tiny close: %v %v", resp, err)
		}
		apierrtest.Field(t, "alone", "bars[0].close", func() error {
			_, err := ingest(t, c, extreme("DAX", 41, 1e200))
			return err
		})
		// Every one-bar return finite, but the 10-bar momentum from 1e-200
		// to 1e200 is not.
		steps := make([]float64, 10)
		for j := range steps {
			steps[j] = math.Pow(10, float64(-160+40*j))
		}
		apierrtest.Field(t, "momentum", "bars[9].close", func() error {
			_, err := ingest(t, c, extreme("DAX", 41, steps...))
			return err
		})
		got, err := c.GetRegime(ctx, &regimev1.GetRegimeRequest{Symbol: "DAX"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range append(got.GetState().GetSmoothedProbabilities(), got.GetState().GetRawProbabilities()...) {
			if math.IsNaN(p) {
				t.Fatalf("NaN state: %v", got.GetState())
			}
		}
	})
}
