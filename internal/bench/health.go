package bench

import (
	"context"
	"fmt"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func init() {
	Register(Spec{
		Name:    "health",
		Summary: "grpc.health.v1.Health/Check against itself: the sanity check, ratio ≈ 1",
		New:     func() Scenario { return &healthScenario{} },
	})
}

// healthScenario's operation is the baseline's own call, Health/Check of the
// whole server, so its ratios should be close to 1: a ratio far from 1 says
// the measurement, not the mesh, is skewed.
type healthScenario struct {
	client healthpb.HealthClient
	reqs   []*healthpb.HealthCheckRequest
}

// Name implements Scenario.
func (s *healthScenario) Name() string { return "health" }

// Setup implements Scenario.
func (s *healthScenario) Setup(_ context.Context, env Env) error {
	s.client = healthpb.NewHealthClient(env.Conn)
	s.reqs = make([]*healthpb.HealthCheckRequest, env.Concurrency)
	for i := range s.reqs {
		s.reqs[i] = &healthpb.HealthCheckRequest{}
	}
	return nil
}

// Op implements Scenario.
func (s *healthScenario) Op(ctx context.Context, worker, _ int) error {
	resp, err := s.client.Check(ctx, s.reqs[worker])
	if err != nil {
		return err
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health status %s", st)
	}
	return nil
}

// Fields implements Scenario.
func (s *healthScenario) Fields() map[string]any { return nil }
