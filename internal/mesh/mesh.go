// Package mesh wires quantmesh services into one process: it opens the
// store and the bus, builds the services chosen to run here, dials the
// peers that run elsewhere, and hands everything to the server bootstrap.
//
// `quantmesh up` runs every service; `quantmesh serve` runs a subset. Both go
// through Start, so the two deployments run the same code paths: services
// reach each other only through gRPC clients, to this process's own address
// or to a peer's.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/resilience"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/inference"
	"github.com/quantmesh/quantmesh/services/regime"
	"github.com/quantmesh/quantmesh/services/risk"
)

// Service names, as given to --services and --peer-<name>.
const (
	Risk           = "risk"
	Regime         = "regime"
	MetaController = "metacontroller"
	Inference      = "inference"
	Experiment     = "experiment"
)

// AllServices lists every gRPC service in start order.
var AllServices = []string{Experiment, Risk, Regime, MetaController, Inference}

// Workers run in a mesh process without a gRPC service of their own.
const (
	// Forensics persists the decisions published on the bus.
	Forensics = "forensics"
)

// AllWorkers lists every worker.
var AllWorkers = []string{Forensics}

// Runnable lists what --services may name: every service, then every
// worker.
func Runnable() []string { return append(append([]string(nil), AllServices...), AllWorkers...) }

// Config is everything a mesh process needs.
type Config struct {
	Server server.Config
	Store  store.Config
	// KafkaBrokers selects the Kafka bus; empty means the in-process bus.
	KafkaBrokers []string
	// Services run in this process.
	Services []string
	// Peers maps a service that runs elsewhere to its gRPC address. Services
	// neither local nor listed here are unreachable from this process.
	Peers map[string]string
	// Keys authenticate callers; none means authentication is off.
	Keys auth.Keys
	// PeerAPIKey is sent on calls to peers when they require
	// authentication.
	PeerAPIKey string
	// Experiment configures ExperimentService.
	Experiment experiment.Config
	// Risk configures RiskService.
	Risk risk.Config
	// Inference configures InferenceService; no models means its defaults.
	Inference inference.Config
	// BootstrapModel trains and promotes an initial version of each served
	// model whose alias is unset, from the bundled data, when
	// InferenceService runs here.
	BootstrapModel bool
	// Learner, when set, runs the online learner in this process: it
	// consumes the bus and needs ExperimentService reachable.
	Learner *learner.Config
	// DataDir, when set, is the directory whose filesystem
	// quantmesh.store.disk.used_ratio reports (the SQLite database and the
	// default artifact root live there).
	DataDir string
}

// Validate reports the first problem, naming the setting.
func (c Config) Validate() error {
	if len(c.Services) == 0 {
		return errors.New("services: at least one service must run")
	}
	seen := map[string]bool{}
	for _, s := range c.Services {
		if !slices.Contains(Runnable(), s) {
			return fmt.Errorf("services: unknown service %q (known: %s)", s, strings.Join(Runnable(), ", "))
		}
		if seen[s] {
			return fmt.Errorf("services: %q listed twice", s)
		}
		seen[s] = true
	}
	for name, addr := range c.Peers {
		if !slices.Contains(AllServices, name) {
			return fmt.Errorf("peer-%s: unknown service", name)
		}
		if seen[name] {
			return fmt.Errorf("peer-%s: the service runs in this process; drop the peer address", name)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("peer-%s: %q is not host:port", name, addr)
		}
	}
	if len(c.KafkaBrokers) == 0 && len(c.Peers) > 0 && slices.Contains(c.Services, Inference) {
		// A split deployment on the in-process bus, which reaches only
		// this process: decisions and A/B observations published here
		// with no consumer here would fill it and then be dropped.
		for _, need := range []string{Forensics, Experiment} {
			if !slices.Contains(c.Services, need) {
				return fmt.Errorf("kafka-brokers: inference publishes decisions (stored by forensics) and A/B observations (stored by experiment) on the bus, and the in-process bus reaches only this process: run %s here too, or use Kafka", need)
			}
		}
	}
	if c.Keys.Enabled() {
		// Services in this process call each other (and their peers)
		// with the peer key: without it every internal call would be
		// refused while the process looked healthy.
		if c.PeerAPIKey == "" {
			return errors.New("peer-api-key: required when API keys are on: the services of this process call each other with it")
		}
		if _, ok := c.Keys.Lookup(c.PeerAPIKey); !ok {
			return errors.New("peer-api-key: not one of this process's API keys, so its own services would refuse it")
		}
	}
	if err := c.Store.Validate(); err != nil {
		return fmt.Errorf("database-url: %w", err)
	}
	if err := c.Experiment.Validate(); err != nil {
		return fmt.Errorf("artifact-root: %w", err)
	}
	if slices.Contains(c.Services, Risk) {
		if err := c.Risk.Validate(); err != nil {
			return fmt.Errorf("risk-*: %w", err)
		}
	}
	if c.Learner != nil {
		if err := c.Learner.Validate(); err != nil {
			return fmt.Errorf("learn-%w", err)
		}
	}
	if slices.Contains(c.Services, Inference) && len(c.Inference.Models) > 0 {
		if err := c.Inference.Validate(); err != nil {
			return fmt.Errorf("inference-models: %w", err)
		}
	}
	return nil
}

// kafkaPartitions is the partition count of the topics the mesh creates.
const kafkaPartitions = 6

// Mesh is a started mesh process.
type Mesh struct {
	cfg Config
	log *slog.Logger
	tel *telemetry.Telemetry
	DB  *store.DB
	// Bus is the traced bus (bus.WithTracing); its Unwrap method returns
	// the in-process or Kafka bus underneath.
	Bus bus.Bus
	// Publisher is the bus as services should publish to it: under the bus
	// resilience policy.
	Publisher bus.Publisher
	Server    *server.Server
	// Migrations reports what the start-up migration did.
	Migrations store.MigrateResult
	peers      map[string]*grpc.ClientConn
	policies   []*resilience.Policy
	closers    []func() error
	// flushers hand what services still hold to the bus (its publishers'
	// queues); they run once the server has drained, before the consumers
	// stop.
	flushers []func()
	// inproc is the in-process bus, drained before the consumers stop
	// (nil on Kafka, which keeps what they have not read).
	inproc *bus.InProc
	// runners are background loops of the services, run by Serve until the
	// server has drained.
	runners []func(ctx context.Context)
}

// StartError says which start-up step failed, so the CLI can print one
// clear line.
type StartError struct {
	Step string
	Err  error
}

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// Start opens the store (and migrates it), the bus, the local services and
// the server's listeners. Call Serve to run it. On error everything opened
// so far is closed.
func Start(ctx context.Context, cfg Config, log *slog.Logger, tel *telemetry.Telemetry) (_ *Mesh, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, &StartError{Step: "config", Err: err}
	}
	if len(cfg.Inference.Models) == 0 {
		cfg.Inference = inference.DefaultConfig()
	}
	m := &Mesh{cfg: cfg, log: log, tel: tel, peers: map[string]*grpc.ClientConn{}}
	defer func() {
		if err != nil {
			m.close()
		}
	}()

	storeCfg := cfg.Store
	storeCfg.TracerProvider = tel.TracerProvider // a span per batched write
	m.DB, err = store.Open(ctx, storeCfg)
	if err != nil {
		return nil, &StartError{Step: "database", Err: err}
	}
	m.closers = append(m.closers, m.DB.Close)
	m.Migrations, err = m.DB.Migrate(ctx, m.migrations()...)
	if err != nil {
		return nil, &StartError{Step: "migrate", Err: err}
	}
	if err := m.storeMetrics(); err != nil {
		return nil, &StartError{Step: "telemetry", Err: err}
	}
	log.Info("store ready", "mode", m.DB.Mode(), "database", m.DB.String(),
		"migrations_applied", len(m.Migrations.Applied), "migrations_current", m.Migrations.Current)
	if pool := m.DB.Pool(); pool != nil {
		var autovacuum string
		if err := pool.QueryRow(ctx, `SHOW autovacuum`).Scan(&autovacuum); err == nil && autovacuum != "on" {
			log.Warn("PostgreSQL runs with autovacuum off: planner statistics go stale and searches slow down; run VACUUM (ANALYZE) after bulk loads, or turn autovacuum on",
				"database", m.DB.String())
		}
	}

	system := bus.SystemInProc
	if len(cfg.KafkaBrokers) > 0 {
		k, err := bus.NewKafka(bus.KafkaConfig{Brokers: cfg.KafkaBrokers, ClientID: "quantmesh", Logger: log})
		if err != nil {
			return nil, &StartError{Step: "kafka", Err: err}
		}
		m.Bus, system = k, bus.SystemKafka
		m.closers = append(m.closers, k.Close)
		// The mesh's topics exist before anything publishes or consumes
		// (existing ones are left as they are).
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = k.EnsureTopics(tctx, []string{bus.TopicMarketBars, bus.TopicDecisions, bus.TopicABObservations}, kafkaPartitions)
		cancel()
		if err != nil {
			return nil, &StartError{Step: "kafka", Err: fmt.Errorf("create topics: %w", err)}
		}
	} else {
		m.inproc = bus.NewInProc(bus.InProcConfig{Logger: log})
		m.Bus = m.inproc
		m.closers = append(m.closers, m.inproc.Close)
	}
	// Every publisher and consumer of the mesh goes through the traced bus:
	// trace context crosses it in message headers.
	m.Bus = bus.WithTracing(m.Bus, bus.Tracing{TracerProvider: tel.TracerProvider, Propagator: tel.Propagator, System: system})
	busPolicy, err := m.policy("bus", resilience.BusConfig())
	if err != nil {
		return nil, &StartError{Step: "bus", Err: err}
	}
	// Services publish through the policy; Bus stays the raw bus for
	// consumers and Close.
	m.Publisher = &resilientBus{Bus: m.Bus, policy: busPolicy}

	regs, err := m.services(ctx)
	if err != nil {
		return nil, &StartError{Step: "services", Err: err}
	}
	if cfg.Learner != nil {
		m.learner(*cfg.Learner)
	}
	m.Server, err = server.New(ctx, server.Options{
		Config:    cfg.Server,
		Services:  regs,
		Telemetry: tel,
		Logger:    log,
		Keys:      cfg.Keys,
		Ready:     m.ready,
	})
	if err != nil {
		return nil, &StartError{Step: "listen", Err: err}
	}
	m.closers = append(m.closers, func() error { m.Server.Close(); return nil })
	if err := m.dialPeers(); err != nil {
		return nil, &StartError{Step: "peers", Err: err}
	}
	return m, nil
}

// MigrationSets lists the schema of every service that keeps state.
func MigrationSets() []store.MigrationSet {
	return []store.MigrationSet{experiment.Migrations(), risk.Migrations(), inference.Migrations(), regime.Migrations()}
}

func (m *Mesh) migrations() []store.MigrationSet {
	// Every service's schema is applied whatever runs here, so processes of
	// one mesh sharing a database agree on it.
	return MigrationSets()
}

func (m *Mesh) local(name string) bool { return slices.Contains(m.cfg.Services, name) }

func (m *Mesh) policy(name string, cfg resilience.Config) (*resilience.Policy, error) {
	p, err := resilience.New(name, cfg, m.tel.Meter("quantmesh/resilience"), resilience.WithLogger(m.log))
	if err != nil {
		return nil, err
	}
	m.policies = append(m.policies, p)
	return p, nil
}

func (m *Mesh) services(ctx context.Context) ([]server.Registration, error) {
	var regs []server.Registration
	storeRead, err := m.policy("store", resilience.StoreConfig())
	if err != nil {
		return nil, err
	}
	writeCfg := resilience.StoreConfig()
	writeCfg.MaxAttempts = 1
	storeWrite, err := m.policy("store.write", writeCfg)
	if err != nil {
		return nil, err
	}
	for _, name := range AllServices {
		if !m.local(name) {
			continue
		}
		log := m.log.With("service", name)
		switch name {
		case Experiment:
			sql := experiment.NewSQLStore(m.DB, experiment.WithLogger(log), experiment.WithMeter(m.tel.Meter("quantmesh/experiment")))
			// Closers run in reverse: streamed metrics are written before
			// the database closes.
			m.closers = append(m.closers, sql.Close)
			st := experiment.WithResilience(sql, storeRead, storeWrite)
			srv := experiment.New(m.cfg.Experiment, st, log, experiment.WithServerMeter(m.tel.Meter("quantmesh/experiment")))
			// A/B observations from inference, aggregated where the tests live.
			m.runners = append(m.runners, func(ctx context.Context) {
				if err := srv.ConsumeObservations(ctx, m.Bus); err != nil && ctx.Err() == nil {
					log.Error("abtest.observations consumer stopped", "err", err)
				}
			})
			regs = append(regs, srv.Registration())
		case Risk:
			reg, err := m.risk(ctx, log)
			if err != nil {
				return nil, err
			}
			regs = append(regs, reg)
		case Regime:
			eng, err := regime.NewEngine(ctx, regime.EngineConfig{}, regime.NewSQLStore(m.DB), log, m.tel.Meter("quantmesh/regime"))
			if err != nil {
				return nil, err
			}
			// Bars sent to IngestBars join the market.bars feed, so the
			// online learner (here or beside the mesh) sees them too.
			srv := regime.New(eng, log, regime.WithBarForwarding(m.Publisher))
			m.runners = append(m.runners, func(ctx context.Context) {
				if err := srv.ConsumeBars(ctx, m.Bus); err != nil && ctx.Err() == nil {
					log.Error("market.bars consumer stopped", "err", err)
				}
			})
			regs = append(regs, srv.Registration())
		case MetaController:
			reg, err := m.metaController(log)
			if err != nil {
				return nil, err
			}
			regs = append(regs, reg)
		case Inference:
			reg, err := m.inference(log)
			if err != nil {
				return nil, err
			}
			regs = append(regs, reg)
		}
	}
	if m.local(Forensics) {
		f, err := inference.NewForensics(m.Bus, inference.NewSQLDecisions(m.DB), m.log.With("worker", Forensics), m.tel.Meter("quantmesh/forensics"))
		if err != nil {
			return nil, err
		}
		m.runners = append(m.runners, func(ctx context.Context) {
			if err := f.Run(ctx, inference.ForensicsConfig{}); err != nil {
				m.log.Error("forensics consumer stopped", "err", err)
			}
		})
	}
	return regs, nil
}

// risk builds RiskService: its store's writer, the engine loaded from the
// store, and the engine's background sweeper.
func (m *Mesh) risk(ctx context.Context, log *slog.Logger) (server.Registration, error) {
	st, err := risk.NewSQLStore(ctx, m.DB, log)
	if err != nil {
		return server.Registration{}, err
	}
	// Closers run in reverse: the writer drains before the database closes.
	m.closers = append(m.closers, st.Close)
	eng, err := risk.NewEngine(ctx, m.cfg.Risk, st, log)
	if err != nil {
		return server.Registration{}, err
	}
	m.runners = append(m.runners, eng.Run)
	srv, err := risk.New(eng, log, m.tel.Meter("quantmesh/risk"))
	if err != nil {
		return server.Registration{}, err
	}
	return srv.Registration(), nil
}

// inference builds InferenceService: its decision publisher (closed
// before the bus), the service following the registry through the
// experiment peer, and, when asked, the first-start model bootstrap.
func (m *Mesh) inference(log *slog.Logger) (server.Registration, error) {
	pub, err := inference.NewDecisionPublisher(m.Publisher, log, m.tel.Meter("quantmesh/inference"))
	if err != nil {
		return server.Registration{}, err
	}
	m.flushers = append(m.flushers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pub.Close(ctx)
	})
	obs, err := inference.NewObservationPublisher(m.Publisher, log, m.tel.Meter("quantmesh/inference"))
	if err != nil {
		return server.Registration{}, err
	}
	m.flushers = append(m.flushers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		obs.Close(ctx)
	})
	srv, err := inference.New(m.cfg.Inference, inference.Deps{
		Decisions: inference.NewSQLDecisions(m.DB), Recorder: pub, Observations: obs, Log: log, Meter: m.tel.Meter("quantmesh/inference"),
	})
	if err != nil {
		return server.Registration{}, err
	}
	// Peers are dialled after the services are built: resolve the
	// registry when the runner starts.
	m.runners = append(m.runners, func(ctx context.Context) {
		var registry experimentv1.ExperimentServiceClient
		if conn := m.Peer(Experiment); conn != nil {
			registry = experimentv1.NewExperimentServiceClient(conn)
		}
		srv.Run(ctx, registry)
	})
	if m.cfg.BootstrapModel {
		m.runners = append(m.runners, func(ctx context.Context) {
			conn := m.Peer(Experiment)
			if conn == nil {
				log.Warn("no initial model: ExperimentService is not reachable from this process")
				return
			}
			client := experimentv1.NewExperimentServiceClient(conn)
			for _, spec := range m.cfg.Inference.Models {
				if err := training.EnsureInitial(ctx, client, spec.Name, spec.Alias, log); err != nil && ctx.Err() == nil {
					log.Error("initial model not registered", "model", spec.Name, "alias", spec.Alias, "err", err)
				}
			}
		})
	}
	return srv.Registration(), nil
}

// dialPeers opens a client connection for every service: to this process
// for local services, to the configured address for remote ones. Each
// connection has the peer resilience policy, telemetry and credentials.
// Connections are lazy: nothing is dialled until the first call.
func (m *Mesh) dialPeers() error {
	for _, name := range AllServices {
		target := m.cfg.Peers[name]
		if m.local(name) {
			target = m.Server.GRPCTarget()
		}
		if target == "" {
			continue
		}
		p, err := m.policy("peer:"+name, resilience.PeerConfig())
		if err != nil {
			return err
		}
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithStatsHandler(otelgrpc.NewClientHandler(
				otelgrpc.WithTracerProvider(m.tel.TracerProvider),
				otelgrpc.WithMeterProvider(m.tel.MeterProvider),
				otelgrpc.WithPropagators(m.tel.Propagator),
			)),
			// Peers' answers carry model weights (WatchModel): accept
			// messages as large as this process accepts requests.
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(max(peerMaxRecv, m.cfg.Server.MaxRecvBytes))),
			grpc.WithChainUnaryInterceptor(resilience.UnaryClientInterceptor(p)),
			grpc.WithChainStreamInterceptor(resilience.StreamClientInterceptor(p)),
		}
		if m.cfg.PeerAPIKey != "" {
			opts = append(opts, auth.PerRPCKey(m.cfg.PeerAPIKey))
		}
		conn, err := grpc.NewClient(target, opts...)
		if err != nil {
			return fmt.Errorf("peer %s at %s: %w", name, target, err)
		}
		m.peers[name] = conn
		m.closers = append(m.closers, conn.Close)
	}
	return nil
}

// peerMaxRecv is the smallest receive limit of peer connections (gRPC's
// default is 4 MiB, less than a large model's weights).
const peerMaxRecv = 64 << 20

// Peer returns the client connection to a service, local or remote, or nil
// when this process cannot reach it.
func (m *Mesh) Peer(name string) *grpc.ClientConn { return m.peers[name] }

func (m *Mesh) ready(ctx context.Context) error {
	if err := m.DB.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// storeMetrics exports the store's mode and whether it answers.
func (m *Mesh) storeMetrics() error {
	meter := m.tel.Meter("quantmesh/store")
	up, err := meter.Int64ObservableGauge("quantmesh.store.up",
		metric.WithDescription("1 when the database answers a ping, 0 when it does not."))
	if err != nil {
		return err
	}
	mode := attribute.String("mode", m.DB.Mode())
	reg, err := meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		v := int64(1)
		if m.DB.Ping(ctx) != nil {
			v = 0
		}
		o.ObserveInt64(up, v, metric.WithAttributes(mode))
		return nil
	}, up)
	if err != nil {
		return err
	}
	m.closers = append(m.closers, reg.Unregister)
	if m.cfg.DataDir == "" {
		return nil
	}
	disk, err := meter.Float64ObservableGauge("quantmesh.store.disk.used_ratio",
		metric.WithDescription("Used fraction (0-1) of the filesystem holding the data directory, as df counts it; absent when it cannot be read."))
	if err != nil {
		return err
	}
	dir := m.cfg.DataDir
	reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if r, err := DiskUsedRatio(dir); err == nil {
			o.ObserveFloat64(disk, r)
		}
		return nil
	}, disk)
	if err != nil {
		return err
	}
	m.closers = append(m.closers, reg.Unregister)
	return nil
}

// drainTimeout bounds how long shutdown waits for the in-process bus's
// consumers to take what is left on it.
const drainTimeout = 10 * time.Second

// Serve runs the mesh until ctx is done, then shuts down: the server
// drains, the publishers flush into the bus, the consumers take what is
// left on the in-process bus (it keeps nothing across restarts), then the
// workers stop, the bus closes and the store closes.
func (m *Mesh) Serve(ctx context.Context) error {
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	for _, run := range m.runners {
		wg.Go(func() { run(bg) })
	}
	serveErr := m.Server.Serve(ctx)
	m.flush()
	if m.inproc != nil {
		dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		if err := m.inproc.Drain(dctx); err != nil {
			m.log.Warn("in-process bus not drained at shutdown: its consumers left messages unread", "timeout", drainTimeout)
		}
		cancel()
	}
	stop()
	wg.Wait()
	return errors.Join(serveErr, m.close())
}

// flush runs the flushers once.
func (m *Mesh) flush() {
	for _, f := range m.flushers {
		f()
	}
	m.flushers = nil
}

// Close releases a mesh that was started but will not be served. Serve
// closes everything itself.
func (m *Mesh) Close() error { return m.close() }

func (m *Mesh) close() error {
	m.flush()
	var errs []error
	for i := len(m.closers) - 1; i >= 0; i-- {
		if err := m.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	m.closers = nil
	for _, p := range m.policies {
		_ = p.Close()
	}
	m.policies = nil
	return errors.Join(errs...)
}

// resilientBus publishes under the bus policy (timeout, retry on
// transient failures, breaker); consuming is the bus's own business, since
// consumers already retry a batch until it commits.
type resilientBus struct {
	bus.Bus
	policy *resilience.Policy
}

func (b *resilientBus) Publish(ctx context.Context, msgs ...bus.Message) error {
	return b.policy.Run(ctx, func(ctx context.Context) error { return b.Bus.Publish(ctx, msgs...) })
}
