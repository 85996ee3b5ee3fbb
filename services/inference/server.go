// Package inference implements InferenceService: the trading policy
// network served from the model registry, and the record of its decisions.
//
// Each served model follows a registry alias (production by default)
// through ExperimentService.WatchModel and swaps versions atomically: a
// request reads the current version once, so it is answered entirely by
// one version, and names it. The forward pass is pkg/policy's plain Go one.
// Every answer becomes a decision published on the bus topic decisions; the
// forensics consumer (forensics.go) stores them for GetDecision and
// ListDecisions.
//
// A/B tests (abtest.go): the server follows ExperimentService.WatchABTests
// and routes requests with a unit_id by pkg/abassign under the running test
// of their model. Split: the assigned arm's version answers. Shadow:
// control answers and the treatment runs on a bounded queue off the request
// path (abtest_shadow.go); observations go to the bus topic
// abtest.observations.
package inference

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Config is the inference service's configuration.
type Config struct {
	// Models are the served models, each following one registry alias.
	Models []ModelSpec
}

// DefaultConfig serves the model "policy" at its production alias.
func DefaultConfig() Config {
	return Config{Models: []ModelSpec{{Name: "policy", Alias: "production"}}}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if len(c.Models) == 0 {
		return errors.New("inference: at least one served model")
	}
	seen := map[string]bool{}
	for _, m := range c.Models {
		if m.Name == "" || m.Alias == "" {
			return fmt.Errorf("inference: model %q: name and alias are required", m.Name)
		}
		if seen[m.Name] {
			return fmt.Errorf("inference: model %q listed twice", m.Name)
		}
		seen[m.Name] = true
	}
	return nil
}

// Recorder takes decisions off the request path; it must not block. ctx
// is the request's, for its trace context.
type Recorder interface {
	Record(context.Context, *inferencev1.Decision) bool
}

// Deps are what the server talks to.
type Deps struct {
	// Decisions reads persisted decisions.
	Decisions DecisionStore
	// Recorder publishes decisions.
	Recorder Recorder
	// Observations publishes A/B observations; nil records none.
	Observations ObservationRecorder
	Log          *slog.Logger
	// Meter may be nil.
	Meter metric.Meter
}

// Server implements inferencev1.InferenceServiceServer.
type Server struct {
	inferencev1.UnimplementedInferenceServiceServer

	cfg       Config
	log       *slog.Logger
	decisions DecisionStore
	recorder  Recorder
	models    map[string]*served
	names     []string // served model names, sorted
	now       func() time.Time
	ins       *instruments
	observe   ObservationRecorder
	shadow    *shadowRunner
}

var _ inferencev1.InferenceServiceServer = (*Server)(nil)

// New returns a server; Run follows the registry.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Meter == nil {
		deps.Meter = noop.NewMeterProvider().Meter("")
	}
	ins, err := newInstruments(deps.Meter)
	if err != nil {
		return nil, err
	}
	shadow, err := newShadowRunner(deps.Meter)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: deps.Log, decisions: deps.Decisions, recorder: deps.Recorder,
		models: map[string]*served{}, now: time.Now, ins: ins, observe: deps.Observations, shadow: shadow}
	for _, spec := range cfg.Models {
		s.models[spec.Name] = newServed(spec, s.now())
		s.names = append(s.names, spec.Name)
	}
	slices.Sort(s.names)
	if err := s.registerGauges(deps.Meter); err != nil {
		return nil, err
	}
	return s, nil
}

// Run follows every served model's alias and the A/B tests in registry
// (ExperimentService), and runs shadow treatments, until ctx ends. A nil
// registry leaves every model unloaded.
func (s *Server) Run(ctx context.Context, registry experimentv1.ExperimentServiceClient) {
	if registry == nil {
		for _, m := range s.models {
			m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_NEVER_LOADED, "no model registry is configured (ExperimentService is not reachable from this process)", s.now())
		}
		<-ctx.Done()
		return
	}
	var wg sync.WaitGroup
	for _, m := range s.models {
		wg.Go(func() { m.follow(ctx, registry, s.now, s.log) })
	}
	wg.Go(func() { s.followABTests(ctx, registry) })
	wg.Go(func() { s.shadow.run(ctx, s.observe) })
	wg.Wait()
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &inferencev1.InferenceService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return inferencev1.RegisterInferenceServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of InferenceService.
func Roles() auth.Policy {
	svc := inferencev1.File_quantmesh_inference_v1_inference_proto.Services().ByName("InferenceService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		nil)
}
