// Package server is the bootstrap every quantmesh service runs on: one gRPC
// server with telemetry, panic recovery, request logging, authentication,
// per-method roles, message size limits and error mapping; the gRPC health
// and reflection services; and one HTTP server with the REST gateway,
// /metrics, /healthz and /readyz.
//
// The gateway reaches the services through a gRPC client connection to the
// same server, so REST calls pass the same interceptors as gRPC calls.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/test/bufconn"

	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

// Config is the network configuration of a server.
type Config struct {
	// GRPCAddr is where gRPC listens; port 0 picks a free port.
	GRPCAddr string
	// HTTPAddr is where REST, /metrics, /healthz and /readyz listen; port 0
	// picks a free port.
	HTTPAddr string
	// MaxRecvBytes bounds a received message; 0 means 16 MiB.
	MaxRecvBytes int
	// MaxSendBytes bounds a sent message; 0 means 64 MiB (model weights).
	MaxSendBytes int
	// ShutdownTimeout bounds the drain of in-flight calls on shutdown; 0
	// means 10s.
	ShutdownTimeout time.Duration
}

// DefaultConfig returns the embedded defaults.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:        "127.0.0.1:50051",
		HTTPAddr:        "127.0.0.1:8080",
		MaxRecvBytes:    16 << 20,
		MaxSendBytes:    64 << 20,
		ShutdownTimeout: 10 * time.Second,
	}
}

func (c *Config) applyDefaults() {
	d := DefaultConfig()
	if c.MaxRecvBytes == 0 {
		c.MaxRecvBytes = d.MaxRecvBytes
	}
	if c.MaxSendBytes == 0 {
		c.MaxSendBytes = d.MaxSendBytes
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
}

// Registration is what a service contributes to a server.
type Registration struct {
	// Desc is the generated service descriptor; Desc.ServiceName is the
	// name the health service reports.
	Desc *grpc.ServiceDesc
	// Impl implements Desc.
	Impl any
	// Gateway registers the service's REST handlers on mux, calling the
	// service through conn.
	Gateway func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error
	// Roles lists which roles may call each method of the service.
	Roles auth.Policy
}

// Options assemble a server.
type Options struct {
	Config    Config
	Services  []Registration
	Telemetry *telemetry.Telemetry
	Logger    *slog.Logger
	// Keys authenticate callers; with none, authentication is off.
	Keys auth.Keys
	// Ready reports whether the process can serve (database reachable, ...);
	// nil means always ready. /readyz calls it.
	Ready func(ctx context.Context) error
}

// Server is a running gRPC and HTTP server pair.
type Server struct {
	cfg     Config
	log     *slog.Logger
	grpc    *grpc.Server
	health  *health.Server
	http    *http.Server
	grpcLis net.Listener
	// gwLis is the in-memory listener the gateway's calls reach gRPC
	// through: REST never depends on the TCP listener, which shutdown
	// closes first.
	gwLis    *bufconn.Listener
	httpLis  net.Listener
	gwConn   *grpc.ClientConn
	ready    func(ctx context.Context) error
	names    []string
	draining chan struct{}
	drainMu  sync.Once
}

// ListenError reports that an address could not be bound.
type ListenError struct {
	What string
	Addr string
	Err  error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("cannot listen for %s on %s: %v", e.What, e.Addr, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// New binds both listeners (so a port in use fails here, before anything
// starts) and assembles the servers. Serve starts them.
func New(ctx context.Context, opts Options) (*Server, error) {
	cfg := opts.Config
	cfg.applyDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	tel := opts.Telemetry
	if tel == nil {
		tel = telemetry.Noop()
	}

	grpcLis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, &ListenError{What: "gRPC", Addr: cfg.GRPCAddr, Err: err}
	}
	httpLis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		grpcLis.Close()
		return nil, &ListenError{What: "HTTP", Addr: cfg.HTTPAddr, Err: err}
	}

	s := &Server{
		cfg:      cfg,
		log:      log,
		grpcLis:  grpcLis,
		httpLis:  httpLis,
		ready:    opts.Ready,
		draining: make(chan struct{}),
	}

	policy := auth.Policy{}
	for _, r := range opts.Services {
		policy.Merge(r.Roles)
	}
	authz := auth.NewAuthorizer(opts.Keys, policy)

	s.grpc = grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(tel.TracerProvider),
			otelgrpc.WithMeterProvider(tel.MeterProvider),
			otelgrpc.WithPropagators(tel.Propagator),
		)),
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		grpc.MaxSendMsgSize(cfg.MaxSendBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.ChainUnaryInterceptor(
			logUnary(log),
			authz.UnaryServerInterceptor(),
			notePrincipalUnary(),
			errorUnary(log),
			recoverUnary(log),
		),
		grpc.ChainStreamInterceptor(
			logStream(log),
			authz.StreamServerInterceptor(),
			notePrincipalStream(),
			errorStream(log),
			drainStream(s.draining),
			recoverStream(log),
		),
	)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	for _, r := range opts.Services {
		s.grpc.RegisterService(r.Desc, r.Impl)
		s.names = append(s.names, r.Desc.ServiceName)
	}
	sort.Strings(s.names)

	// The gateway calls this server like any client would, in memory.
	s.gwLis = bufconn.Listen(gatewayBuffer)
	s.gwConn, err = grpc.NewClient("passthrough:///gateway",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.gwLis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tel.TracerProvider),
			otelgrpc.WithMeterProvider(tel.MeterProvider),
			otelgrpc.WithPropagators(tel.Propagator),
		)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.MaxSendBytes), grpc.MaxCallSendMsgSize(cfg.MaxRecvBytes)),
	)
	if err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("gateway client: %w", err)
	}
	gw := runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(headerMatcher),
		runtime.WithHealthzEndpoint(healthpb.NewHealthClient(s.gwConn)),
	)
	for _, r := range opts.Services {
		if r.Gateway == nil {
			continue
		}
		if err := r.Gateway(ctx, gw, s.gwConn); err != nil {
			s.Close() // listeners and the gateway client
			return nil, fmt.Errorf("register gateway for %s: %w", r.Desc.ServiceName, err)
		}
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", tel.MetricsHandler())
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	// The gateway decodes a whole body before gRPC's size limit applies:
	// bound it here (JSON and base64 take more room than protobuf).
	mux.Handle("/", otelhttp.NewHandler(http.MaxBytesHandler(gw, 2*int64(cfg.MaxRecvBytes)), "gateway",
		otelhttp.WithTracerProvider(tel.TracerProvider),
		otelhttp.WithMeterProvider(tel.MeterProvider),
		otelhttp.WithPropagators(tel.Propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }),
	))
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// Keep-alive connections left idle are closed; bodies may take
		// their time (uploads, REST client streams).
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// gatewayBuffer is the in-memory connection's buffer between the gateway
// and gRPC, in bytes.
const gatewayBuffer = 1 << 20

// headerMatcher forwards the credentials headers, and the gateway's
// defaults, to gRPC metadata.
func headerMatcher(key string) (string, bool) {
	switch http.CanonicalHeaderKey(key) {
	case "X-Api-Key":
		return "x-api-key", true
	}
	return runtime.DefaultHeaderMatcher(key)
}

// dialTarget turns a listener address into one a client can dial: an
// unspecified host (0.0.0.0, ::) becomes loopback.
func dialTarget(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	host := tcp.IP
	if host == nil || host.IsUnspecified() {
		if host.To4() == nil && host != nil {
			host = net.IPv6loopback
		} else {
			host = net.IPv4(127, 0, 0, 1)
		}
	}
	return net.JoinHostPort(host.String(), fmt.Sprint(tcp.Port))
}

// GRPCAddr is the address gRPC listens on (with the chosen port).
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the address HTTP listens on (with the chosen port).
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// GRPCTarget is an address clients in this process can dial.
func (s *Server) GRPCTarget() string { return dialTarget(s.grpcLis.Addr()) }

// ServiceNames lists the registered services' full names.
func (s *Server) ServiceNames() []string { return append([]string(nil), s.names...) }

// Serve runs both servers until ctx is done, then shuts down gracefully:
// health turns NOT_SERVING, new connections are refused, in-flight calls
// drain up to the shutdown timeout, streams end with Unavailable. It returns
// nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, n := range s.names {
		s.health.SetServingStatus(n, healthpb.HealthCheckResponse_SERVING)
	}
	errc := make(chan error, 3)
	go func() {
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, net.ErrClosed) {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	}()
	go func() {
		if err := s.grpc.Serve(s.gwLis); err != nil && !errors.Is(err, net.ErrClosed) {
			errc <- fmt.Errorf("grpc server (gateway): %w", err)
		}
	}()
	go func() {
		if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http server: %w", err)
		}
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	shutErr := s.shutdown()
	return errors.Join(serveErr, shutErr)
}

func (s *Server) shutdown() error {
	// NOT_SERVING first: draining ends health Watch streams, and their
	// clients must see the status change before the stream ends.
	s.health.Shutdown()
	s.drainMu.Do(func() { close(s.draining) })
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()

	// New gRPC connections are refused at once, but REST drains before
	// gRPC stops: a REST call reaches gRPC through gwConn (in memory),
	// which GracefulStop would cut, failing calls whose body is still
	// arriving. Existing gRPC connections may start calls until then; both
	// drain under the one deadline.
	_ = s.grpcLis.Close()
	httpErr := s.http.Shutdown(ctx)
	if httpErr != nil {
		_ = s.http.Close()
	}
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("shutdown deadline reached; closing remaining calls", "timeout", s.cfg.ShutdownTimeout)
		s.grpc.Stop()
		// Stop cuts every connection but still waits for handlers; one
		// that ignores its context must not hold the process forever.
		select {
		case <-done:
		case <-time.After(time.Second):
			s.log.Error("handlers still running after shutdown; exiting without them")
		}
	}
	s.gwConn.Close()
	if httpErr != nil && !errors.Is(httpErr, context.DeadlineExceeded) {
		return fmt.Errorf("http shutdown: %w", httpErr)
	}
	return nil
}

// Close releases the listeners of a server that was never served.
func (s *Server) Close() {
	s.closeListeners()
	s.gwConn.Close()
}

func (s *Server) closeListeners() {
	s.grpcLis.Close()
	s.httpLis.Close()
	s.gwLis.Close()
}

// Draining is closed when shutdown starts.
func (s *Server) Draining() <-chan struct{} { return s.draining }

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	select {
	case <-s.draining:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "shutting down")
		return
	default:
	}
	if s.ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	fmt.Fprintln(w, "ready")
}
