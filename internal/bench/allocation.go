package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

func init() {
	Register(Spec{
		Name:    "allocation",
		Summary: "GetAllocation of a symbol whose regimes MetaControllerService follows (trains and promotes a policy when the alias is unset)",
		New:     func() Scenario { return &allocationScenario{} },
	})
}

// allocationBars is how many bars of the bundled DAX series are ingested
// for the bench symbol: enough for the feature warm-up and some regime
// updates.
const allocationBars = 300

// allocationScenario measures MetaControllerService's hot path: one
// operation is one GetAllocation of a symbol. Setup fits a RegimeService
// model on the bundled eustock DAX closes and activates it for every
// symbol, trains and promotes a small HRL policy through TrainPolicy when
// the metacontroller model's production alias is unset, ingests bars for a
// fresh symbol and waits until MetaControllerService has allocated for it
// (with the HRL policy when one is served).
type allocationScenario struct {
	client  metacontrollerv1.MetaControllerServiceClient
	symbol  string
	trained bool
	served  *metacontrollerv1.Allocation
}

// Name implements Scenario.
func (s *allocationScenario) Name() string { return "allocation" }

// Setup implements Scenario.
func (s *allocationScenario) Setup(ctx context.Context, env Env) error {
	s.client = metacontrollerv1.NewMetaControllerServiceClient(env.Conn)
	regime := regimev1.NewRegimeServiceClient(env.Conn)
	registry := experimentv1.NewExperimentServiceClient(env.Conn)
	s.symbol = "B" + randomHex(4) + "-alloc"
	if _, err := regime.FitModel(ctx, &regimev1.FitModelRequest{
		Source:          &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: "eustock", Columns: []string{"DAX"}}}},
		Mixture:         &regimev1.MixtureConfig{Seed: proto.Int64(1)},
		ActivateSymbols: []string{s.symbol},
		Description:     "quantmesh bench allocation",
	}); err != nil {
		return fmt.Errorf("fit regime model: %w", err)
	}
	_, err := registry.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: "metacontroller", Alias: "production"})
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound:
		if _, err := s.client.TrainPolicy(ctx, &metacontrollerv1.TrainPolicyRequest{
			Dataset: &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}},
			Hrl:     &metacontrollerv1.HrlConfig{Epochs: proto.Int32(5), Seed: proto.Int64(1)},
			Promote: true,
		}); err != nil {
			return fmt.Errorf("train policy: %w", err)
		}
		s.trained = true
	default:
		return fmt.Errorf("policy alias: %w", err)
	}
	series, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		return err
	}
	var dax marketdata.Series
	for _, sr := range series {
		if sr.Symbol == "DAX" {
			dax = sr
		}
	}
	bars := make([]*regimev1.Bar, 0, allocationBars)
	for _, b := range dax.Bars[:allocationBars] {
		bars = append(bars, &regimev1.Bar{Symbol: s.symbol, Time: timestamppb.New(b.Time), Open: b.Close, High: b.Close, Low: b.Close, Close: b.Close})
	}
	ingest, err := regime.IngestBars(ctx)
	if err != nil {
		return fmt.Errorf("ingest bars: %w", err)
	}
	if err := ingest.Send(&regimev1.IngestBarsRequest{Bars: bars}); err != nil {
		return fmt.Errorf("ingest bars: %w", err)
	}
	if _, err := ingest.CloseAndRecv(); err != nil {
		return fmt.Errorf("ingest bars: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := s.client.GetAllocation(ctx, &metacontrollerv1.GetAllocationRequest{Symbol: s.symbol})
		if err == nil && got.GetAllocation().GetPolicy() == metacontrollerv1.PolicyKind_POLICY_KIND_HRL &&
			got.GetAllocation().GetRegime().GetBarTime().AsTime().Equal(dax.Bars[allocationBars-1].Time) {
			s.served = got.GetAllocation()
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				return fmt.Errorf("no HRL allocation of the last bar after 30 s; the latest is %v (%s)", got.GetAllocation().GetPolicy(), got.GetAllocation().GetFallbackDetail())
			}
			return fmt.Errorf("no allocation for %s after 30 s: %w", s.symbol, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Op implements Scenario.
func (s *allocationScenario) Op(ctx context.Context, _, _ int) error {
	got, err := s.client.GetAllocation(ctx, &metacontrollerv1.GetAllocationRequest{Symbol: s.symbol})
	if err != nil {
		return fmt.Errorf("get allocation: %w", err)
	}
	if len(got.GetAllocation().GetWeights()) == 0 {
		return errors.New("get allocation: no weights")
	}
	return nil
}

// Fields implements Scenario.
func (s *allocationScenario) Fields() map[string]any {
	out := map[string]any{"symbol": s.symbol, "policy_trained_in_setup": s.trained}
	if a := s.served; a != nil {
		out["policy"] = a.GetPolicy().String()
		out["model_version"] = a.GetModel().GetVersion()
		out["response_bytes"] = proto.Size(&metacontrollerv1.GetAllocationResponse{Allocation: a})
	}
	return out
}
