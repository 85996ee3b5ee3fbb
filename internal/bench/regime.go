package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
)

func init() {
	Register(Spec{
		Name:    "regime-ingest",
		Summary: "IngestBars: 1,000-bar messages per worker's symbol, regimes computed and streamed to a watcher",
		New:     func() Scenario { return &regimeIngestScenario{} },
	})
}

// regimeBarsPerMessage is the size of one IngestBars message.
const regimeBarsPerMessage = 1000

// regimeIngestScenario measures RegimeService's ingest path: Setup fits a
// model on the bundled eustock data (DAX) and makes it the default, and
// opens one WatchRegimes stream that reads every state. Each worker owns a
// symbol and, per operation, streams one message of 1,000 new bars of a
// random walk (one IngestBars call), so every bar past the warm-up gets a
// regime state that is committed and published. bars_per_s is bars stored
// per second; states_streamed counts what the watcher received.
type regimeIngestScenario struct {
	client   regimev1.RegimeServiceClient
	prefix   string
	next     []time.Time
	closes   []float64
	rngs     []*rand.Rand
	streamed atomic.Int64
	cancel   context.CancelFunc
	modelID  string
}

// Name implements Scenario.
func (s *regimeIngestScenario) Name() string { return "regime-ingest" }

// Setup implements Scenario.
func (s *regimeIngestScenario) Setup(ctx context.Context, env Env) error {
	s.client = regimev1.NewRegimeServiceClient(env.Conn)
	s.prefix = "B" + randomHex(4) + "-"
	fit, err := s.client.FitModel(ctx, &regimev1.FitModelRequest{
		Source:          &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: "eustock", Columns: []string{"DAX"}}}},
		Mixture:         &regimev1.MixtureConfig{Seed: proto.Int64(1)},
		ActivateSymbols: []string{"*"},
		Description:     "quantmesh bench regime-ingest",
	})
	if err != nil {
		return fmt.Errorf("fit model: %w", err)
	}
	s.modelID = fit.GetModel().GetModelId()
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	watch, err := s.client.WatchRegimes(wctx, &regimev1.WatchRegimesRequest{})
	if err != nil {
		cancel()
		return fmt.Errorf("watch regimes: %w", err)
	}
	go func() {
		for {
			m, err := watch.Recv()
			if err != nil {
				return
			}
			if m.GetKind() == regimev1.WatchEventKind_WATCH_EVENT_KIND_UPDATE {
				s.streamed.Add(1)
			}
		}
	}()
	s.next = make([]time.Time, env.Concurrency)
	s.closes = make([]float64, env.Concurrency)
	s.rngs = make([]*rand.Rand, env.Concurrency)
	for i := range s.next {
		s.next[i] = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
		s.closes[i] = 100
		s.rngs[i] = rand.New(rand.NewPCG(uint64(i), 5))
	}
	return nil
}

// Op implements Scenario.
func (s *regimeIngestScenario) Op(ctx context.Context, worker, _ int) error {
	rng := s.rngs[worker]
	symbol := s.prefix + strconv.Itoa(worker)
	bars := make([]*regimev1.Bar, regimeBarsPerMessage)
	for i := range bars {
		c := s.closes[worker] * math.Exp(rng.NormFloat64()*0.01)
		s.closes[worker] = c
		s.next[worker] = s.next[worker].Add(time.Minute)
		bars[i] = &regimev1.Bar{Symbol: symbol, Time: timestamppb.New(s.next[worker]), Open: c, High: c * 1.001, Low: c * 0.999, Close: c}
	}
	stream, err := s.client.IngestBars(ctx)
	if err != nil {
		return fmt.Errorf("ingest bars: %w", err)
	}
	if err := stream.Send(&regimev1.IngestBarsRequest{Bars: bars}); err != nil {
		return fmt.Errorf("ingest bars: %w", err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("ingest bars: %w", err)
	}
	Count(ctx, "bars", resp.GetBarsAccepted())
	Count(ctx, "states", resp.GetRegimesUpdated())
	return nil
}

// Finish implements Finisher.
func (s *regimeIngestScenario) Finish(context.Context) error {
	time.Sleep(200 * time.Millisecond) // let the watcher drain what was published
	s.cancel()
	return nil
}

// Fields implements Scenario.
func (s *regimeIngestScenario) Fields() map[string]any {
	return map[string]any{"model_id": s.modelID, "bars_per_message": regimeBarsPerMessage, "states_streamed": s.streamed.Load()}
}
