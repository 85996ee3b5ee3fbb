// Command experiments is the Go client example of the README: it creates an
// experiment on a running mesh, reads it back and lists the newest ones.
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
	return nil
}
