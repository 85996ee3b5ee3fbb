// Command registry is the model registry example of the README: it
// registers a model, stores two versions of its weights, points the
// production alias at the first, then follows the alias with
// registryclient.FollowAlias (as InferenceService does) while it promotes
// the second version, guarded by the revision it read. With -follow it keeps
// following until interrupted, so moves made with grpcurl or curl show up.
//
//	go run ./examples/registry -addr 127.0.0.1:50051 -model my-policy
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/registryclient"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "quantmesh gRPC address")
	model := flag.String("model", fmt.Sprintf("example-policy-%d", time.Now().Unix()), "registered model name")
	follow := flag.Bool("follow", false, "keep following the production alias until interrupted")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addr, *model, *follow); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addr, model string, follow bool) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := experimentv1.NewExperimentServiceClient(conn)
	// With authentication on, send an API key with every call.
	if key := os.Getenv("QUANTMESH_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	_, err = client.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{
		Name: model, Description: "created by examples/registry",
	})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("register: %w", err)
	}
	var versions []int64
	for _, w := range [][]byte{[]byte("weights, first try"), []byte("weights, better")} {
		sum := sha256.Sum256(w)
		resp, err := client.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
			ModelName:      model,
			Format:         "example.bytes.v1",
			Weights:        w,
			ChecksumSha256: hex.EncodeToString(sum[:]), // optional; the server checks it
			Metrics:        map[string]float64{"sharpe": 1 + float64(len(versions))/2},
		})
		if err != nil {
			return fmt.Errorf("create version: %w", err)
		}
		versions = append(versions, resp.GetModelVersion().GetVersion())
		fmt.Printf("stored %s version %d (%d bytes, sha256 %s…)\n", model, resp.GetModelVersion().GetVersion(),
			resp.GetModelVersion().GetSizeBytes(), resp.GetModelVersion().GetChecksumSha256()[:12])
	}
	first, err := client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{
		ModelName: model, Alias: "production", Version: versions[0],
	})
	if err != nil {
		return fmt.Errorf("set alias: %w", err)
	}
	fmt.Printf("production -> version %d at revision %d\n", versions[0], first.GetRevision())

	// Follow the alias as a serving process would: every state once, in
	// revision order, across reconnects.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	promoted := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- registryclient.FollowAlias(fctx, client, model, "production", func(msg *experimentv1.WatchModelResponse) error {
			if msg.GetDeleted() {
				fmt.Printf("  follower: production deleted at revision %d\n", msg.GetRevision())
				return nil
			}
			mv := msg.GetModelVersion()
			fmt.Printf("  follower: load version %d (%q) at revision %d\n", mv.GetVersion(), mv.GetWeights(), msg.GetRevision())
			if mv.GetVersion() == versions[1] && !follow {
				once.Do(func() { close(promoted) })
			}
			return nil
		})
	}()

	// Promote the second version only if nobody moved the alias since.
	expected := first.GetRevision()
	second, err := client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{
		ModelName: model, Alias: "production", Version: versions[1], ExpectedRevision: &expected,
	})
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	fmt.Printf("production -> version %d at revision %d\n", versions[1], second.GetRevision())

	if follow {
		fmt.Println("following production; interrupt to stop")
		return <-done
	}
	select {
	case <-promoted:
		cancel()
		<-done
		return nil
	case err := <-done:
		return err
	}
}
