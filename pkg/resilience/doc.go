// Package resilience wraps quantmesh's outbound calls — gRPC peer calls,
// store calls and bus publishes — in failsafe-go policies: a per-attempt
// timeout, retries with exponential backoff and jitter, and a circuit
// breaker, all configured in one place (Config) and visible as metrics.
//
// Build one Policy per target and share it by every call to that target:
//
//	p, err := resilience.New("store", resilience.StoreConfig(), meter)
//	run, err := resilience.Get(ctx, p, func(ctx context.Context) (*Run, error) {
//		return store.GetRun(ctx, id)
//	})
//
// For gRPC clients, install the interceptors on the connection to a peer:
//
//	p, err := resilience.New("peer:experiment", resilience.PeerConfig(), meter)
//	conn, err := grpc.NewClient(addr,
//		grpc.WithChainUnaryInterceptor(resilience.UnaryClientInterceptor(p)),
//		grpc.WithChainStreamInterceptor(resilience.StreamClientInterceptor(p)))
//
// # Composition
//
// A call runs as Retry(CircuitBreaker(Timeout(fn))): each attempt has its own
// deadline (Config.Timeout, never later than the caller's), each attempt is
// recorded by the breaker, and the retry policy repeats attempts whose error
// the Classifier calls retryable, with exponential backoff between them. When
// the breaker is open, calls fail at once with an error matching ErrOpen
// (gRPC code Unavailable) and the function is not called.
//
// The per-attempt timeout is a context deadline rather than failsafe-go's
// timeout policy: the timeout policy cancels a child context without a
// deadline, so a gRPC peer or a database would never learn the budget, while
// a deadline travels as grpc-timeout and reaches pgx.
//
// # Errors
//
// The error a call returns is the last attempt's own error, except:
//   - ErrOpen when the breaker rejected the call (codes.Unavailable);
//   - ErrTimeout when the last attempt ran out of Config.Timeout
//     (codes.DeadlineExceeded; it also wraps the attempt's error);
//   - the caller's context error when the caller's context ended first.
//
// An attempt that fails because the caller's own context is done (canceled or
// past its deadline) is never retried and never counts as a breaker failure:
// the caller gave up, the dependency did nothing wrong. Slowness is judged by
// Config.Timeout alone.
//
// # Metrics
//
// Instruments (attribute "target" = the policy's name) and the names the
// OpenTelemetry Prometheus exporter gives them with its default translation
// (UnderscoreEscapingWithSuffixes):
//
//	OTel instrument                          type     Prometheus series
//	quantmesh.resilience.breaker.state       gauge    quantmesh_resilience_breaker_state{target}
//	quantmesh.resilience.retries             counter  quantmesh_resilience_retries_total{target}
//	quantmesh.resilience.breaker.rejections  counter  quantmesh_resilience_breaker_rejections_total{target}
//	quantmesh.resilience.timeouts            counter  quantmesh_resilience_timeouts_total{target}
//
// The breaker state gauge is 0 closed, 1 half-open, 2 open (see State). The
// breaker moves from open to half-open lazily, on the first call after
// Config.OpenDelay, so an idle target keeps reporting 2 until it is called
// again. Breaker state changes are also logged (slog, message "circuit
// breaker state changed").
package resilience
