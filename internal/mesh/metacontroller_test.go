package mesh_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

// MetaControllerService end to end in one process: it allocates in
// fallback from RegimeService's regimes, TrainPolicy registers and promotes
// a policy, serving loads it through WatchModel, and the next regime
// updates are allocated by HRL.
func TestMetaControllerServesTrainedPolicy(t *testing.T) {
	t.Parallel()
	_, conn := meshtest.Serve(t, meshtest.Config(t, mesh.Experiment, mesh.Regime, mesh.MetaController))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	regime := regimev1.NewRegimeServiceClient(conn)
	meta := metacontrollerv1.NewMetaControllerServiceClient(conn)
	const sym = "DAXT"
	if _, err := regime.FitModel(ctx, &regimev1.FitModelRequest{
		Source:          &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: "eustock", Columns: []string{"DAX"}, EndIndex: 1302}}},
		Mixture:         &regimev1.MixtureConfig{Seed: proto.Int64(1)},
		ActivateSymbols: []string{sym},
	}); err != nil {
		t.Fatal(err)
	}
	series, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	var dax marketdata.Series
	for _, s := range series {
		if s.Symbol == "DAX" {
			dax = s
		}
	}
	ingest := func(from, to int) {
		t.Helper()
		st, err := regime.IngestBars(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var bars []*regimev1.Bar
		for _, b := range dax.Bars[from:to] {
			bars = append(bars, &regimev1.Bar{Symbol: sym, Time: timestamppb.New(b.Time), Open: b.Close, High: b.Close, Low: b.Close, Close: b.Close})
		}
		if err := st.Send(&regimev1.IngestBarsRequest{Bars: bars}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CloseAndRecv(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, ok func(*metacontrollerv1.Allocation) bool) *metacontrollerv1.Allocation {
		t.Helper()
		for {
			got, err := meta.GetAllocation(ctx, &metacontrollerv1.GetAllocationRequest{Symbol: sym})
			if err == nil && ok(got.GetAllocation()) {
				return got.GetAllocation()
			}
			select {
			case <-ctx.Done():
				t.Fatalf("waiting for %s: last %v, %v", what, got.GetAllocation(), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	ingest(1302, 1400)
	fb := waitFor("a fallback allocation of bar 1399", func(a *metacontrollerv1.Allocation) bool {
		return a.GetRegime().GetBarTime().AsTime().Equal(dax.Bars[1399].Time)
	})
	if !fb.GetFallback() || fb.GetFallbackReason() != metacontrollerv1.FallbackReason_FALLBACK_REASON_POLICY_NOT_LOADED ||
		fb.GetPolicy() != metacontrollerv1.PolicyKind_POLICY_KIND_REGIME_PROPORTIONAL {
		t.Fatalf("before training: %v", fb)
	}

	tr, err := meta.TrainPolicy(ctx, &metacontrollerv1.TrainPolicyRequest{
		Dataset: &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}},
		Hrl:     &metacontrollerv1.HrlConfig{Epochs: proto.Int32(2), HiddenUnits: proto.Int32(4), Seed: proto.Int64(1)},
		Promote: true, RequestId: "mesh-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.GetPromoted() || tr.GetModel().GetVersion() != 1 || tr.GetRunId() == "" || len(tr.GetSummary().GetTestMetrics()) != 4 ||
		tr.GetSummary().GetEpochsCompleted() != 2 || tr.GetSummary().GetTrainRange().GetEnd() != 1302 {
		t.Fatalf("TrainPolicy: %v", tr)
	}
	// A retry with the same request id answers the first call's response.
	again, err := meta.TrainPolicy(ctx, &metacontrollerv1.TrainPolicyRequest{
		Dataset:   &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}},
		RequestId: "mesh-test",
	})
	if err != nil || again.GetModel().GetVersion() != 1 {
		t.Fatalf("retry: %v, %v", again, err)
	}
	// The promoted version reaches serving, which reallocates.
	waitFor("an HRL allocation", func(a *metacontrollerv1.Allocation) bool {
		return a.GetPolicy() == metacontrollerv1.PolicyKind_POLICY_KIND_HRL && a.GetModel().GetVersion() == 1
	})
	ingest(1400, 1420)
	a := waitFor("an HRL allocation of bar 1419", func(a *metacontrollerv1.Allocation) bool {
		return a.GetPolicy() == metacontrollerv1.PolicyKind_POLICY_KIND_HRL && a.GetRegime().GetBarTime().AsTime().Equal(dax.Bars[1419].Time)
	})
	if a.GetFallback() || a.GetOption() == nil || len(a.GetWeights()) != 4 || a.GetChurn() > 0.2+1e-12 {
		t.Fatalf("HRL allocation: %v", a)
	}

	// A backtest of the registered version on the rows it was trained on
	// is refused (walk-forward).
	_, err = meta.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
		Dataset:  &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}, Range: &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 0, End: 1000}}},
		HrlModel: &metacontrollerv1.PolicyModel{Version: 1},
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("backtest on training rows: %v, want InvalidArgument", err)
	}
	// TrainPolicy pooled the same rows of the other eustock columns, so
	// those rows of SMI are refused too.
	_, err = meta.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
		Dataset:  &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "SMI"}}, Range: &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 0, End: 1000}}},
		HrlModel: &metacontrollerv1.PolicyModel{Version: 1},
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("backtest on pooled training rows: %v, want InvalidArgument", err)
	}
	// On held-out rows it runs.
	bt, err := meta.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
		Dataset:     &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}, Range: &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 1302}}},
		HrlModel:    &metacontrollerv1.PolicyModel{Alias: "production"},
		WalkForward: &metacontrollerv1.WalkForward{TrainFraction: proto.Float64(0.5)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if bt.GetFolds()[0].GetHrlModel().GetVersion() != 1 || len(bt.GetResults()) != 4 {
		t.Fatalf("backtest of the registered version: %v", bt)
	}
}
