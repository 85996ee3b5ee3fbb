package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

func init() {
	Register(Spec{
		Name:    "experiments",
		Summary: "CreateExperiment with a unique name, then GetExperiment by the returned id",
		New:     func() Scenario { return &experimentsScenario{} },
	})
}

// experimentsScenario exercises the experiment store's write and read path.
//
// One operation is a pair: CreateExperiment with a name unique to the run,
// worker and iteration, then GetExperiment by the id the create returned,
// checking that the same experiment comes back. ops, throughput and
// latency_us are per pair (so the ratios compare two calls, one of them a
// durable write, with one Health/Check); each call is also timed on its own
// as create_latency_us and get_latency_us, and counted as creates and gets
// (a pair whose get fails counts one create and an error).
//
// Experiments are not deleted afterwards: an in-process mesh's SQLite file
// is removed with its temporary directory, but a PostgreSQL database or a
// running mesh keeps them, under the name_prefix the report gives.
type experimentsScenario struct {
	client experimentv1.ExperimentServiceClient
	prefix string
}

// Name implements Scenario.
func (s *experimentsScenario) Name() string { return "experiments" }

// Setup implements Scenario.
func (s *experimentsScenario) Setup(_ context.Context, env Env) error {
	s.client = experimentv1.NewExperimentServiceClient(env.Conn)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("run id: %w", err)
	}
	// Names are unique across runs, so runs against one database never
	// collide.
	s.prefix = "bench-" + time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:]) + "-"
	return nil
}

// Op implements Scenario.
func (s *experimentsScenario) Op(ctx context.Context, worker, i int) error {
	name := s.prefix + strconv.Itoa(worker) + "-" + strconv.Itoa(i)
	start := time.Now()
	created, err := s.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{
		Name:        name,
		Description: "quantmesh bench experiments",
	})
	if err != nil {
		return fmt.Errorf("CreateExperiment: %w", err)
	}
	Record(ctx, "create", time.Since(start))
	Count(ctx, "creates", 1)

	id := created.GetExperiment().GetExperimentId()
	start = time.Now()
	got, err := s.client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{ExperimentId: id})
	if err != nil {
		return fmt.Errorf("GetExperiment: %w", err)
	}
	Record(ctx, "get", time.Since(start))
	Count(ctx, "gets", 1)
	if e := got.GetExperiment(); e.GetExperimentId() != id || e.GetName() != name {
		return fmt.Errorf("GetExperiment(%s) returned %s %q, want %q", id, e.GetExperimentId(), e.GetName(), name)
	}
	return nil
}

// Fields implements Scenario.
func (s *experimentsScenario) Fields() map[string]any {
	return map[string]any{
		"op":          "CreateExperiment+GetExperiment",
		"name_prefix": s.prefix,
	}
}
