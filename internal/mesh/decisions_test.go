package mesh_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// TestDecisionsOverKafka runs the decisions path of a mesh on Kafka
// (kfake): every prediction answered is stored by the forensics worker
// exactly once and reads back with GetDecision.
func TestDecisionsOverKafka(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg := meshtest.Config(t, mesh.Experiment, mesh.Inference, mesh.Forensics)
	cfg.KafkaBrokers = cluster.ListenAddrs()
	m, conn := meshtest.Serve(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	exp := experimentv1.NewExperimentServiceClient(conn)
	promoteFourInputPolicy(ctx, t, exp)
	inf := inferencev1.NewInferenceServiceClient(conn)
	const n = 300
	ids := map[string]bool{}
	for i := 0; len(ids) < n; i++ {
		resp, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "KAFKA", Features: []float64{float64(i), 1, 2, 3}})
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // the model is still loading
			continue
		}
		ids[resp.GetDecisionId()] = true
	}
	var stored, dup int
	for {
		if err := m.DB.Reader().QueryRowContext(ctx, `SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT decision_id) FROM decisions WHERE symbol = 'KAFKA'`).Scan(&stored, &dup); err != nil {
			t.Fatal(err)
		}
		if stored >= n || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stored != n || dup != 0 {
		t.Fatalf("%d decisions stored (%d duplicated), want %d once each", stored, dup, n)
	}
	for id := range ids {
		d, err := inf.GetDecision(ctx, &inferencev1.GetDecisionRequest{DecisionId: id})
		if err != nil || d.GetDecision().GetSymbol() != "KAFKA" {
			t.Fatalf("GetDecision(%s): %v %v", id, d, err)
		}
		break
	}
}

// promoteFourInputPolicy registers version 1 of model "policy", an untrained
// network of four inputs, and points its production alias at it.
func promoteFourInputPolicy(ctx context.Context, t *testing.T, exp experimentv1.ExperimentServiceClient) {
	t.Helper()
	net, err := policy.New(policy.DefaultConfig(4), 1)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := net.MarshalBinary()
	if _, err := exp.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "policy"}); err != nil {
		t.Fatal(err)
	}
	if _, err := exp.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: "policy", Format: policy.Format, Weights: w}); err != nil {
		t.Fatal(err)
	}
	if _, err := exp.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "policy", Alias: "production", Version: 1}); err != nil {
		t.Fatal(err)
	}
}
