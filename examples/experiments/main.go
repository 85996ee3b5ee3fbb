// Command experiments is the Go client example of the README: it creates an
// experiment on a running mesh, reads it back, lists the newest ones, then
// tracks a run: params and a first metric in one LogBatch, a stream of
// training metrics with StreamMetrics, the run with its latest metrics, and
// the loss history downsampled for a plot.
//
//	go run ./examples/experiments -addr 127.0.0.1:50051 -name my-first
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "quantmesh gRPC address")
	name := flag.String("name", fmt.Sprintf("example-%d", time.Now().Unix()), "experiment name")
	flag.Parse()
	if err := run(*addr, *name); err != nil {
		fmt.Fprintln(os.Stderr, "experiments:", err)
		os.Exit(1)
	}
}

func run(addr, name string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := experimentv1.NewExperimentServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// With authentication on, send an API key with every call.
	if key := os.Getenv("QUANTMESH_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	created, err := client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{
		Name:        name,
		Description: "created by examples/experiments",
		Tags:        map[string]string{"source": "go-client"},
	})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	id := created.GetExperiment().GetExperimentId()
	fmt.Printf("created %s (%s)\n", name, id)

	got, err := client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{ExperimentId: id})
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	fmt.Printf("read back: %s, created %s\n", got.GetExperiment().GetName(), got.GetExperiment().GetCreateTime().AsTime().Format(time.RFC3339))

	list, err := client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{PageSize: 5})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	fmt.Println("newest experiments:")
	for _, e := range list.GetExperiments() {
		fmt.Printf("  %s  %s\n", e.GetExperimentId(), e.GetName())
	}
	return track(ctx, client, id)
}

// track runs a toy training job against experiment id.
func track(ctx context.Context, client experimentv1.ExperimentServiceClient, id string) error {
	run, err := client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: id, Tags: map[string]string{"model": "policy"}})
	if err != nil {
		return fmt.Errorf("create run: %w", err)
	}
	runID := run.GetRun().GetRunId()
	// Params are immutable; a retried batch with the same idempotency key is
	// acknowledged without being written twice.
	if _, err := client.LogBatch(ctx, &experimentv1.LogBatchRequest{
		RunId:          runID,
		Params:         []*experimentv1.Param{{Key: "lr", Value: "0.001"}, {Key: "layers", Value: "3"}},
		Metrics:        []*experimentv1.Metric{{Key: "val/loss", Value: 1.0, Step: 0}},
		IdempotencyKey: "setup",
	}); err != nil {
		return fmt.Errorf("log batch: %w", err)
	}
	// Stream 10 epochs of 100 steps. The stream id and sequence let the job
	// resend its buffer after a broken stream without storing a point twice.
	stream, err := client.StreamMetrics(ctx)
	if err != nil {
		return fmt.Errorf("stream metrics: %w", err)
	}
	for epoch := range 10 {
		msg := &experimentv1.StreamMetricsRequest{RunId: runID, StreamId: runID + "/train", Sequence: uint64(epoch + 1)}
		for i := range 100 {
			step := int64(epoch*100 + i)
			msg.Metrics = append(msg.Metrics, &experimentv1.Metric{Key: "train/loss", Value: 1 / float64(step+1), Step: step})
		}
		if err := stream.Send(msg); err != nil {
			break // CloseAndRecv reports why
		}
	}
	summary, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("stream metrics: %w", err)
	}
	fmt.Printf("run %s: %d points durable through sequence %d\n", runID, summary.GetPointsPersisted(), summary.GetPersistedThroughSequence())

	got, err := client.GetRun(ctx, &experimentv1.GetRunRequest{RunId: runID})
	if err != nil {
		return fmt.Errorf("get run: %w", err)
	}
	for _, m := range got.GetRun().GetLatestMetrics() {
		fmt.Printf("  latest %s = %.4f at step %d\n", m.GetKey(), m.GetValue(), m.GetStep())
	}
	hist, err := client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: runID, MetricKey: "train/loss", MaxPoints: 20})
	if err != nil {
		return fmt.Errorf("metric history: %w", err)
	}
	fmt.Printf("  train/loss: %d of %d points for a plot\n", len(hist.GetMetrics()), hist.GetTotalPoints())
	return nil
}
