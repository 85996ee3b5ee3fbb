package learner_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/services/inference"
)

// TestLearnerInMesh closes the loop in one mesh process, as `quantmesh up
// --learn` runs it: a client predicts continuously (its decisions go to
// the bus) and sends the symbol's bars to RegimeService's IngestBars,
// which forwards them to the bus; the learner joins the two into
// outcomes, retrains and publishes, and InferenceService swaps the new
// version in. Every request succeeds, and the answers move from the
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
	cfg := meshtest.Config(t, mesh.Experiment, mesh.Inference, mesh.Regime)
	cfg.Inference = inference.DefaultConfig()
	cfg.Learner = &lc
	cfg.KafkaBrokers = kafka
	_, conn := meshtest.Serve(t, cfg)
	client := experimentv1.NewExperimentServiceClient(conn)
	inf := inferencev1.NewInferenceServiceClient(conn)
	v1 := registerInitial(t, client)

	waitServed(t, inf, v1)
	tctx, tcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer tcancel()
	bars, err := regimev1.NewRegimeServiceClient(conn).IngestBars(tctx)
	if err != nil {
		t.Fatal(err)
	}

	// The client: one Predict per bar, until it has seen a newer version
	// and made 20 more requests.
	var (
		mu       sync.Mutex
		versions = map[int64]int{}
		failures []error
	)
	r := rand.New(rand.NewPCG(7, 7))
	price := 100.0
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	after := -1 // requests left once a newer version answered
	for i := 0; after != 0; i++ {
		if tctx.Err() != nil {
			t.Fatalf("no version newer than %d served in time; versions answered: %v", v1, versions)
		}
		price *= 1 + 0.02*r.NormFloat64()
		at := timestamppb.New(t0.Add(time.Duration(i) * time.Hour))
		if err := bars.Send(&regimev1.IngestBarsRequest{Bars: []*regimev1.Bar{{Symbol: "SYN", Time: at, Open: price, High: price, Low: price, Close: price}}}); err != nil {
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
		switch {
		case newer && after < 0:
			after = 20
		case after > 0:
			after--
		}
		time.Sleep(2 * time.Millisecond)
	}
	if sum, err := bars.CloseAndRecv(); err != nil || sum.GetBarsAccepted() != sum.GetBarsReceived() {
		t.Errorf("IngestBars: %v, %v; want every bar accepted", sum, err)
	}
	if len(failures) > 0 {
		t.Errorf("%d requests failed, first: %v", len(failures), failures[0])
	}
	if versions[v1] == 0 {
		t.Errorf("version %d never answered: %v", v1, versions)
	}
	// The newest version answered is one the learner published, and the
	// alias is there or later (the learner may publish again meanwhile).
	newest := slices.Max(slices.Collect(maps.Keys(versions)))
	if served := aliasVersion(t, client); newest == v1 || served < newest {
		t.Errorf("production at version %d; versions answered %v", served, versions)
	}
	mv, err := client.GetModelVersion(tctx, &experimentv1.GetModelVersionRequest{ModelName: "policy", Version: newest})
	if err != nil {
		t.Fatal(err)
	}
	if tags := mv.GetModelVersion().GetTags(); tags["trainer"] != "quantmesh learn" || tags["parent_version"] == "" {
		t.Errorf("published version's tags: %v", tags)
	}
	t.Logf("versions answered: %v", versions)
}
