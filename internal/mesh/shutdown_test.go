package mesh_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

// Every decision answered before a shutdown is stored: the publisher
// flushes into the in-process bus and the forensics worker takes what is
// left before the workers stop (the bus keeps nothing across restarts).
func TestShutdownStoresEveryAnsweredDecision(t *testing.T) {
	t.Parallel()
	cfg := meshtest.Config(t, mesh.Experiment, mesh.Inference, mesh.Forensics)
	dbURL := cfg.Store.URL
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mctx, stop := context.WithCancel(context.Background())
	m, err := mesh.Start(mctx, cfg, log, telemetry.Noop())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve(mctx) }()
	conn, err := grpc.NewClient(m.Server.GRPCTarget(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	promoteFourInputPolicy(ctx, t, experimentv1.NewExperimentServiceClient(conn))
	inf := inferencev1.NewInferenceServiceClient(conn)
	answered := 0
	for answered < 3000 {
		_, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "X", Features: []float64{1, 1, 2, 3}})
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		answered++
	}
	stop() // SIGTERM right after the last answer
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
	db, err := store.Open(context.Background(), store.Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.Reader().QueryRowContext(context.Background(), `SELECT COUNT(*) FROM decisions`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != answered {
		t.Errorf("lost %d decisions at shutdown", answered-n)
	}
}
