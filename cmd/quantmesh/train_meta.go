package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/services/metacontroller"
)

// runTrainMetaController trains the HRL allocation policy through
// MetaControllerService.TrainPolicy on a running mesh, printing the
// objective of each epoch as the run logs it.
func runTrainMetaController(ctx context.Context, f *trainFlags, stdout, stderr io.Writer) error {
	series, column, err := loadColumn(f.data, f.column)
	if err != nil {
		return usagef("%v", err)
	}
	req := &metacontrollerv1.TrainPolicyRequest{
		Hrl:       &metacontrollerv1.HrlConfig{Seed: proto.Int64(f.seed)},
		Promote:   f.promote,
		RequestId: fmt.Sprintf("quantmesh-train-%d", time.Now().UnixNano()),
	}
	if f.set["name"] {
		req.ModelName = f.name
	}
	if f.set["epochs"] {
		req.Hrl.Epochs = proto.Int32(int32(f.epochs))
	}
	if f.set["learning-rate"] {
		req.Hrl.LearningRate = proto.Float64(f.lr)
	}
	if f.set["hold-out"] {
		if !(f.holdOut > 0 && f.holdOut < 1) {
			return usagef("invalid --hold-out %v: want a fraction in (0, 1)", f.holdOut)
		}
		req.TrainFraction = proto.Float64(1 - f.holdOut)
	}
	switch f.data {
	case marketdata.EuStock, marketdata.TTRC:
		req.Dataset = &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: f.data, Column: column}}}
	default:
		ib := &metacontrollerv1.InlineBars{Symbol: column}
		for _, b := range series.Bars {
			ib.Bars = append(ib.Bars, &metacontrollerv1.Bar{Open: b.Open, High: b.High, Low: b.Low, Close: b.Close})
		}
		req.Dataset = &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_InlineBars{InlineBars: ib}}
	}
	conn, err := dialMesh(f.target, f.apiKey)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	fmt.Fprintf(stderr, "train metacontroller on %s column %s (%d bars) through %s\n", f.data, column, len(series.Bars), f.target)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		followProgress(ctx, experimentv1.NewExperimentServiceClient(conn), req.GetRequestId(), stop, stderr)
	}()
	resp, err := metacontrollerv1.NewMetaControllerServiceClient(conn).TrainPolicy(ctx, req)
	close(stop)
	<-done
	if err != nil {
		return err
	}
	sum := resp.GetSummary()
	fmt.Fprintf(stdout, "model %s version %d (run %s), trained on rows %d-%d, held out %d-%d",
		resp.GetModel().GetModelName(), resp.GetModel().GetVersion(), resp.GetRunId(),
		sum.GetTrainRange().GetStart(), sum.GetTrainRange().GetEnd(), sum.GetTestRange().GetStart(), sum.GetTestRange().GetEnd())
	if resp.GetPromoted() {
		fmt.Fprintf(stdout, "; %s now points to it", resp.GetModel().GetAlias())
	}
	fmt.Fprintln(stdout)
	for _, m := range sum.GetTestMetrics() {
		fmt.Fprintf(stdout, "  held out %-28s churn %.2f%%  max disruption %.3f  Sharpe %.3f  total return %.2f%%  max drawdown %.2f%%\n",
			m.GetPolicy(), 100*m.GetChurnRate(), m.GetMaxDisruption(), m.GetSharpe(), 100*m.GetTotalReturn(), 100*m.GetMaxDrawdown())
	}
	return nil
}

// followProgress prints the objective of each epoch logged to the run
// tagged with requestID, until stop is closed (then once more) or ctx ends.
// Failures only cost the progress lines.
func followProgress(ctx context.Context, client experimentv1.ExperimentServiceClient, requestID string, stop <-chan struct{}, w io.Writer) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var runID string
	printed := int64(0)
	for last := false; !last; {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			last = true
		case <-tick.C:
		}
		if runID == "" {
			exp, err := client.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: "metacontroller"})
			if err != nil {
				continue
			}
			runs, err := client.SearchRuns(ctx, &experimentv1.SearchRunsRequest{
				ExperimentIds: []string{exp.GetExperiment().GetExperimentId()},
				Filter:        "tags.`" + metacontroller.RequestIDTag + "` = '" + requestID + "'",
			})
			if err != nil || len(runs.GetRuns()) == 0 {
				continue
			}
			runID = runs.GetRuns()[0].GetRunId()
		}
		hist, err := client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: runID, MetricKey: "objective", PageSize: 1000})
		if err != nil {
			continue
		}
		for _, m := range hist.GetMetrics() {
			if m.GetStep() > printed {
				printed = m.GetStep()
				fmt.Fprintf(w, "epoch %4d  objective %.6f (net return per bar)\n", m.GetStep(), m.GetValue())
			}
		}
	}
}
