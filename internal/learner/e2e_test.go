package learner_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/services/inference"
)

// TestLearnerInMesh closes the loop in one mesh process, as `quantmesh up
// --learn` runs it: a client predicts continuously (its decisions go to
// the bus), bars of the symbol arrive on the bus, the learner joins them
// into outcomes, retrains and publishes, and InferenceService swaps the
// new version in. Every request succeeds, and the answers move from the
// initial version to the published one.
func TestLearnerInMesh(t *testing.T) {
	t.Parallel()
	t.Run("inproc", func(t *testing.T) { t.Parallel(); testLearnerInMesh(t, nil) })
	t.Run("kafka", func(t *testing.T) {
		t.Parallel()
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close)
		testLearnerInMesh(t, cluster.ListenAddrs())
	})
}

func testLearnerInMesh(t *testing.T, kafka []string) {
	lc := learner.DefaultConfig()
	lc.Cadence, lc.MinNewOutcomes, lc.ReplaySize, lc.Epochs, lc.Horizon = 50*time.Millisecond, 40, 200, 2, 2
	// The test is about the swap: any candidate may be published.
	lc.DegradationThreshold = 1
	cfg := meshtest.Config(t, mesh.Experiment, mesh.Inference)
	cfg.Inference = inference.DefaultConfig()
	cfg.Learner = &lc
	cfg.KafkaBrokers = kafka
	m, conn := meshtest.Serve(t, cfg)
	client := experimentv1.NewExperimentServiceClient(conn)
	inf := inferencev1.NewInferenceServiceClient(conn)
	v1 := registerInitial(t, client)

	waitServed(t, inf, v1)
	tctx, tcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer tcancel()

	// The client: one Predict per bar, until it has seen a newer version.
	var (
		mu       sync.Mutex
		versions = map[int64]int{}
		failures []error
	)
	r := rand.New(rand.NewPCG(7, 7))
	price := 100.0
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; ; i++ {
		if tctx.Err() != nil {
			t.Fatalf("no version newer than %d served in time; versions answered: %v", v1, versions)
		}
		price *= 1 + 0.02*r.NormFloat64()
		at := timestamppb.New(t0.Add(time.Duration(i) * time.Hour))
		bar, _ := proto.Marshal(&regimev1.Bar{Symbol: "SYN", Time: at, Open: price, High: price, Low: price, Close: price})
		if err := m.Publisher.Publish(tctx, bus.Message{Topic: bus.TopicMarketBars, Key: []byte("SYN"), Value: bar}); err != nil {
			t.Fatal(err)
		}
		x := make([]float64, inputs)
		for j := range x {
			x[j] = r.NormFloat64()
		}
		// client_time is the bar the features describe: the learner joins
		// the decision to it.
		resp, err := inf.Predict(tctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "SYN", Features: x, RequestId: fmt.Sprint(i), ClientTime: at})
		mu.Lock()
		if err != nil {
			failures = append(failures, err)
		} else {
			versions[resp.GetModelVersion()]++
		}
		newer := len(versions) > 1 || versions[v1] == 0
		mu.Unlock()
		if newer {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if len(failures) > 0 {
		t.Errorf("%d requests failed, first: %v", len(failures), failures[0])
	}
	if versions[v1] == 0 {
		t.Errorf("version %d never answered: %v", v1, versions)
	}
	served := aliasVersion(t, client)
	if served == v1 || versions[served] == 0 {
		t.Errorf("production at version %d; versions answered %v", served, versions)
	}
	mv, err := client.GetModelVersion(tctx, &experimentv1.GetModelVersionRequest{ModelName: "policy", Version: served})
	if err != nil {
		t.Fatal(err)
	}
	if tags := mv.GetModelVersion().GetTags(); tags["trainer"] != "quantmesh learn" || tags["parent_version"] == "" {
		t.Errorf("published version's tags: %v", tags)
	}
	t.Logf("versions answered: %v", versions)
}
