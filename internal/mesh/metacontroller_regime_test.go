package mesh_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
)

// wantFieldInvalid fails unless err is InvalidArgument with a violation on
// field whose description contains text.
func wantFieldInvalid(t *testing.T, what string, err error, field, text string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("%s: %v, want InvalidArgument on %s", what, err, field)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field && strings.Contains(v.GetDescription(), text) {
					return
				}
			}
		}
	}
	t.Fatalf("%s: %v, want a violation on %s saying %q", what, err, field, text)
}

func fitRegimeModel(ctx context.Context, t *testing.T, regime regimev1.RegimeServiceClient, start, end int64) string {
	t.Helper()
	resp, err := regime.FitModel(ctx, &regimev1.FitModelRequest{
		Source:  &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: "eustock", Columns: []string{"DAX"}, StartIndex: start, EndIndex: end}}},
		Mixture: &regimev1.MixtureConfig{Seed: proto.Int64(1)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetModel().GetModelId()
}

// RunBacktest and TrainPolicy with regime_model_id classify through a
// stored RegimeService model instead of fitting one per fold; a model
// fitted on evaluated rows, or an unknown one, is refused on the field.
func TestMetaControllerStoredRegimeModel(t *testing.T) {
	t.Parallel()
	_, conn := meshtest.Serve(t, meshtest.Config(t, mesh.Experiment, mesh.Regime, mesh.MetaController))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	regime := regimev1.NewRegimeServiceClient(conn)
	meta := metacontrollerv1.NewMetaControllerServiceClient(conn)
	// Rows 0-1302 are the default training window of eustock (70% of
	// 1860); a model fitted there, with the per-fold fit's seed and
	// RegimeService's defaults, is the one the backtest would fit itself.
	before := fitRegimeModel(ctx, t, regime, 0, 1302)
	overlapping := fitRegimeModel(ctx, t, regime, 1000, 1500)
	dax := &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}}}
	baselines := []metacontrollerv1.PolicyKind{metacontrollerv1.PolicyKind_POLICY_KIND_NAIVE_ROUTER, metacontrollerv1.PolicyKind_POLICY_KIND_REGIME_PROPORTIONAL}
	backtest := func(id string) (*metacontrollerv1.RunBacktestResponse, error) {
		return meta.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
			Dataset: dax, Policies: baselines, RegimeModelId: id, Hrl: &metacontrollerv1.HrlConfig{Seed: proto.Int64(1)},
		})
	}
	fitted, err := backtest("")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := backtest(before)
	if err != nil {
		t.Fatal(err)
	}
	if got := stored.GetFolds()[0]; got.GetRegimeModelId() != before || got.GetTest().GetStart() != 1302 {
		t.Fatalf("fold %v, want regime model %s and test rows from 1302", got, before)
	}
	for i, r := range stored.GetResults() {
		g, w := r.GetMetrics(), fitted.GetResults()[i].GetMetrics()
		if g.GetBarsEvaluated() != 558 || math.Abs(g.GetSharpe()-w.GetSharpe()) > 1e-6 || math.Abs(g.GetChurnRate()-w.GetChurnRate()) > 1e-9 {
			t.Errorf("%s with the stored model: %v; with the per-fold fit: %v", g.GetPolicy(), g, w)
		}
	}

	// Walk-forward: the model saw rows 1000-1500, evaluated from 1302.
	_, err = backtest(overlapping)
	wantFieldInvalid(t, "backtest with an overlapping model", err, "regime_model_id", "rows 1000-1500")
	// Evaluated only from row 1600 (range 500-1860, 70% trained), it is fine.
	late, err := meta.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
		Dataset:  &metacontrollerv1.Dataset{Source: dax.GetSource(), Range: &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 900}}},
		Policies: baselines, RegimeModelId: overlapping,
	})
	if err != nil {
		t.Fatal(err)
	}
	if f := late.GetFolds()[0]; f.GetTest().GetStart() < 1500 || f.GetRegimeModelId() != overlapping {
		t.Fatalf("late backtest fold %v", f)
	}
	// Unknown and malformed ids.
	_, err = backtest("01890000-0000-7000-8000-000000000000")
	wantFieldInvalid(t, "unknown model", err, "regime_model_id", "not found")
	_, err = backtest("nope")
	wantFieldInvalid(t, "malformed id", err, "regime_model_id", "")

	// TrainPolicy: the stored model is used and reported; one fitted on the
	// held-out rows is refused before a run is created.
	train := func(id string) (*metacontrollerv1.TrainPolicyResponse, error) {
		return meta.TrainPolicy(ctx, &metacontrollerv1.TrainPolicyRequest{
			Dataset: dax, RegimeModelId: id, ExperimentName: "stored-regime",
			Hrl: &metacontrollerv1.HrlConfig{Epochs: proto.Int32(2), HiddenUnits: proto.Int32(4), Seed: proto.Int64(1)},
		}, grpc.WaitForReady(true))
	}
	_, err = train(overlapping)
	wantFieldInvalid(t, "training with an overlapping model", err, "regime_model_id", "rows 1000-1500")
	tr, err := train(before)
	if err != nil {
		t.Fatal(err)
	}
	if s := tr.GetSummary(); s.GetRegimeModelId() != before || len(s.GetTestMetrics()) != 4 || s.GetTestMetrics()[1].GetSharpe() != stored.GetResults()[0].GetMetrics().GetSharpe() {
		t.Fatalf("summary %v: want regime model %s and the naive router's held-out Sharpe %v", s, before, stored.GetResults()[0].GetMetrics().GetSharpe())
	}
}
