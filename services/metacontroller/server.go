// Package metacontroller implements MetaControllerService: capital
// allocation across strategies by a hierarchical policy over options
// (pkg/hrl), driven by RegimeService's regime stream, with walk-forward
// backtests (pkg/backtest) and training logged to ExperimentService.
//
// Serving: one goroutine (Run) follows RegimeService.WatchRegimes and the
// registry alias of the policy (ExperimentService.WatchModel); each regime
// update of a symbol, and each change of the policy in use, computes a new
// allocation, numbers it and publishes it to GetAllocation and
// WatchAllocations. When no policy is loaded, or it cannot serve, or the
// regime stream is down, allocations fall back to regime-proportional
// weights and say why.
package metacontroller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/strategy"
	"github.com/quantmesh/quantmesh/pkg/stream"
)

// Config configures the service.
type Config struct {
	// ModelName is the registered model serving follows and TrainPolicy
	// registers to by default.
	ModelName string
	// Alias is the alias serving follows.
	Alias string
	// History is how many allocations WatchAllocations can replay to a
	// resuming client.
	History int
	// MaxTrainings bounds concurrent trainings: TrainPolicy calls and
	// RunBacktest calls that train HRL.
	MaxTrainings int
	// ReconnectBackoff is the first delay before reopening the regime
	// stream; it doubles up to 5 s.
	ReconnectBackoff time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{ModelName: "metacontroller", Alias: "production", History: 4096, MaxTrainings: 1, ReconnectBackoff: 100 * time.Millisecond}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.ModelName == "":
		return errors.New("model name is required")
	case c.Alias == "":
		return errors.New("alias is required")
	case c.History < 1:
		return fmt.Errorf("history must be at least 1, got %d", c.History)
	case c.MaxTrainings < 1:
		return fmt.Errorf("max trainings must be at least 1, got %d", c.MaxTrainings)
	case c.ReconnectBackoff <= 0:
		return fmt.Errorf("reconnect backoff must be positive, got %s", c.ReconnectBackoff)
	}
	return nil
}

// Server implements metacontrollerv1.MetaControllerServiceServer.
type Server struct {
	metacontrollerv1.UnimplementedMetaControllerServiceServer

	cfg    Config
	log    *slog.Logger
	strats []strategy.Strategy
	names  []string

	// registry is set by Run; TrainPolicy and RunBacktest use it.
	clientsMu sync.RWMutex
	registry  experimentv1.ExperimentServiceClient
	regime    regimev1.RegimeServiceClient

	// work serialises allocation: regime updates and policy changes.
	work     sync.Mutex
	alloc    allocator
	mu       sync.RWMutex
	latest   map[string]*metacontrollerv1.Allocation
	seq      uint64
	broker   *stream.Broker[*metacontrollerv1.Allocation]
	training chan struct{}
	requests trainCalls
	ins      *instruments
}

// Option configures a Server.
type Option func(*options)

type options struct{ meter metric.Meter }

// WithMeter records the service's metrics (see instruments) with meter;
// without it they go nowhere.
func WithMeter(m metric.Meter) Option { return func(o *options) { o.meter = m } }

var _ metacontrollerv1.MetaControllerServiceServer = (*Server)(nil)

// New returns a server. The sequence of allocations starts from the
// current time in microseconds, so sequences keep growing across restarts
// without a store.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ins, err := newInstruments(o.meter)
	if err != nil {
		return nil, err
	}
	base := uint64(time.Now().UnixMicro())
	s := &Server{
		cfg: cfg, log: log, strats: strategy.All(), names: strategy.Names(),
		latest: map[string]*metacontrollerv1.Allocation{}, seq: base,
		broker:   stream.NewBroker[*metacontrollerv1.Allocation](base, cfg.History),
		training: make(chan struct{}, cfg.MaxTrainings),
		ins:      ins,
	}
	s.alloc = newAllocator(s.strats)
	return s, nil
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &metacontrollerv1.MetaControllerService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return metacontrollerv1.RegisterMetaControllerServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of MetaControllerService.
func Roles() auth.Policy {
	svc := metacontrollerv1.File_quantmesh_metacontroller_v1_metacontroller_proto.Services().ByName("MetaControllerService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleResearcher},
		nil)
}

func (s *Server) clients() (experimentv1.ExperimentServiceClient, regimev1.RegimeServiceClient) {
	s.clientsMu.RLock()
	defer s.clientsMu.RUnlock()
	return s.registry, s.regime
}

// publish numbers allocations and makes them visible. Called with work
// held.
func (s *Server) publish(allocs []*metacontrollerv1.Allocation) {
	if len(allocs) == 0 {
		return
	}
	s.mu.Lock()
	for _, a := range allocs {
		s.seq++
		a.Sequence = s.seq
		s.latest[a.GetSymbol()] = a
	}
	s.mu.Unlock()
	s.broker.Publish(allocs)
}
