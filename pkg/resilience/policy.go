package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinels for the errors a Policy produces itself. Match them with
// errors.Is; the errors also carry a gRPC status (GRPCStatus), so a handler
// that returns one sends the right code.
var (
	// ErrOpen: the target's circuit breaker is open (or half-open with all
	// probe slots taken) and the call was not attempted. gRPC code
	// Unavailable; the message names the target.
	ErrOpen = errors.New("resilience: circuit breaker open")
	// ErrTimeout: an attempt ran out of Config.Timeout. gRPC code
	// DeadlineExceeded; the error also wraps the attempt's own error.
	ErrTimeout = errors.New("resilience: attempt timed out")
)

// State is a circuit breaker state. Its value is what the breaker state
// gauge reports.
type State int

// Breaker states.
const (
	// StateClosed: calls flow; failures are counted.
	StateClosed State = 0
	// StateHalfOpen: a few probe calls are let through to test the target.
	StateHalfOpen State = 1
	// StateOpen: calls fail at once with ErrOpen.
	StateOpen State = 2
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

func stateOf(s circuitbreaker.State) State {
	switch s {
	case circuitbreaker.OpenState:
		return StateOpen
	case circuitbreaker.HalfOpenState:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

// Metric instrument names; see the package documentation for the
// Prometheus names.
const (
	metricBreakerState = "quantmesh.resilience.breaker.state"
	metricRetries      = "quantmesh.resilience.retries"
	metricRejections   = "quantmesh.resilience.breaker.rejections"
	metricTimeouts     = "quantmesh.resilience.timeouts"
)

// Option changes how New builds a Policy.
type Option func(*options)

type options struct {
	logger *slog.Logger
}

// WithLogger sets the logger for breaker state changes and retries. The
// default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// Policy applies one Config to every call to one target. It is safe for
// concurrent use; share one Policy per target so all calls feed the same
// circuit breaker.
type Policy struct {
	name     string
	cfg      Config
	classify Classifier
	logger   *slog.Logger
	breaker  circuitbreaker.CircuitBreaker[any]
	// withRetry runs Retry(CircuitBreaker(fn)); once runs CircuitBreaker(fn).
	withRetry failsafe.Executor[any]
	once      failsafe.Executor[any]

	attrs      metric.MeasurementOption
	retries    metric.Int64Counter
	rejections metric.Int64Counter
	timeouts   metric.Int64Counter
	reg        metric.Registration
}

// New builds the Policy for target name (for example "peer:experiment",
// "store", "bus"), which labels its metrics and logs and appears in ErrOpen
// messages. cfg is validated. A nil meter records nothing. Names must be
// unique per meter: two policies with one name would report one gauge.
func New(name string, cfg Config, meter metric.Meter, opts ...Option) (*Policy, error) {
	if name == "" {
		return nil, errors.New("resilience: policy name must not be empty")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{logger: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}

	p := &Policy{
		name:     name,
		cfg:      cfg,
		classify: cfg.Classifier,
		logger:   o.logger.With(slog.String("target", name)),
		attrs:    metric.WithAttributeSet(attribute.NewSet(attribute.String("target", name))),
	}
	if p.classify == nil {
		p.classify = DefaultClassifier
	}

	p.breaker = circuitbreaker.NewBuilder[any]().
		HandleIf(func(_ any, err error) bool {
			var ae *attemptError
			return errors.As(err, &ae) && ae.decision.Failure
		}).
		WithFailureThresholdRatio(uint(cfg.FailureThreshold), uint(cfg.FailureWindow)).
		WithDelay(cfg.OpenDelay).
		WithSuccessThreshold(uint(cfg.SuccessThreshold)).
		OnStateChanged(p.onStateChanged).
		Build()

	retry := retrypolicy.NewBuilder[any]().
		HandleIf(func(_ any, err error) bool {
			var ae *attemptError
			return errors.As(err, &ae) && ae.decision.Retry
		}).
		WithMaxAttempts(cfg.MaxAttempts).
		WithBackoff(cfg.BaseDelay, cfg.MaxDelay).
		WithJitterFactor(cfg.JitterFactor).
		ReturnLastFailure().
		OnRetry(p.onRetry).
		Build()

	p.withRetry = failsafe.With[any](retry, p.breaker)
	p.once = failsafe.With[any](p.breaker)
	if err := p.instrument(meter); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Policy) instrument(meter metric.Meter) error {
	var err error
	if p.retries, err = meter.Int64Counter(metricRetries,
		metric.WithDescription("Retries of outbound calls (attempts after the first), by target."),
		metric.WithUnit("{retry}")); err != nil {
		return fmt.Errorf("resilience: create %s: %w", metricRetries, err)
	}
	if p.rejections, err = meter.Int64Counter(metricRejections,
		metric.WithDescription("Outbound calls rejected without an attempt because the target's circuit breaker was open, by target."),
		metric.WithUnit("{call}")); err != nil {
		return fmt.Errorf("resilience: create %s: %w", metricRejections, err)
	}
	if p.timeouts, err = meter.Int64Counter(metricTimeouts,
		metric.WithDescription("Attempts of outbound calls that ran out of their per-attempt timeout, by target."),
		metric.WithUnit("{attempt}")); err != nil {
		return fmt.Errorf("resilience: create %s: %w", metricTimeouts, err)
	}
	gauge, err := meter.Int64ObservableGauge(metricBreakerState,
		metric.WithDescription("Circuit breaker state by target: 0 closed, 1 half-open, 2 open."))
	if err != nil {
		return fmt.Errorf("resilience: create %s: %w", metricBreakerState, err)
	}
	p.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(gauge, int64(p.State()), p.attrs)
		return nil
	}, gauge)
	if err != nil {
		return fmt.Errorf("resilience: observe %s: %w", metricBreakerState, err)
	}
	return nil
}

// Name returns the target name the Policy was built with.
func (p *Policy) Name() string { return p.name }

// State returns the circuit breaker's current state.
func (p *Policy) State() State {
	return stateOf(p.breaker.State())
}

// Close stops reporting the breaker state gauge. The Policy still works;
// call Close only when dropping a Policy before the process ends.
func (p *Policy) Close() error {
	return p.reg.Unregister()
}

// Run calls fn under the policy: each attempt gets a context with the
// per-attempt deadline, retryable errors are retried with backoff, and an
// open breaker fails the call with ErrOpen without calling fn. Wrap only
// operations that are safe to repeat, or use a Config with MaxAttempts 1.
func (p *Policy) Run(ctx context.Context, fn func(ctx context.Context) error) error {
	_, err := p.execute(ctx, true, true, func(ctx context.Context) (any, error) {
		return nil, fn(ctx)
	})
	return err
}

// Get is Run for a function that returns a value, such as a store read.
func Get[T any](ctx context.Context, p *Policy, fn func(ctx context.Context) (T, error)) (T, error) {
	res, err := p.execute(ctx, true, true, func(ctx context.Context) (any, error) {
		return fn(ctx)
	})
	if err != nil {
		var zero T
		return zero, err
	}
	v, _ := res.(T) // res is nil when T is an interface type and fn returned nil
	return v, nil
}

// execute runs fn through the breaker, with retries when retry is set and
// the per-attempt timeout when timeout is set.
func (p *Policy) execute(ctx context.Context, retry, timeout bool, fn func(context.Context) (any, error)) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	exec := p.once
	if retry && p.cfg.MaxAttempts > 1 {
		exec = p.withRetry
	}
	res, err := exec.WithContext(ctx).Get(func() (any, error) {
		return p.attempt(ctx, timeout, fn)
	})
	if err == nil {
		return res, nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return nil, cerr
	}
	var ae *attemptError
	switch {
	case errors.As(err, &ae):
		return nil, ae.err
	case errors.Is(err, circuitbreaker.ErrOpen):
		p.rejections.Add(ctx, 1, p.attrs)
		return nil, &policyError{
			kind: ErrOpen,
			code: codes.Unavailable,
			msg:  p.openMessage(),
		}
	default:
		return nil, err
	}
}

// attempt runs one attempt and wraps its error with the Classifier's
// decision, which the retry policy and the breaker read.
func (p *Policy) attempt(ctx context.Context, timeout bool, fn func(context.Context) (any, error)) (any, error) {
	actx := ctx
	if timeout && p.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, p.cfg.Timeout)
		defer cancel()
	}
	v, err := fn(actx)
	switch {
	case err == nil:
		return v, nil
	case expired(ctx):
		// The caller gave up: not retried, and not held against the target
		// while the breaker is closed (the caller's deadline may be short).
		// A half-open probe that ended so proved nothing, though: it counts
		// as a failure, or probes abandoned against a hung target would
		// close the breaker.
		return nil, &attemptError{err: err, decision: Decision{Failure: p.breaker.IsHalfOpen()}}
	case expired(actx):
		p.timeouts.Add(ctx, 1, p.attrs)
		err = &policyError{
			kind:  ErrTimeout,
			code:  codes.DeadlineExceeded,
			msg:   fmt.Sprintf("resilience: %s: attempt timed out after %s", p.name, p.cfg.Timeout),
			cause: err,
		}
	}
	return nil, &attemptError{err: err, decision: p.classify(err)}
}

// expired reports whether ctx is done or past its deadline. The second
// check matters: gRPC can fail a call for its deadline a moment before the
// context's own timer fires.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func (p *Policy) openMessage() string {
	msg := fmt.Sprintf("resilience: %s: circuit breaker is %s, call not attempted", p.name, p.State())
	if d := p.breaker.RemainingDelay(); d > 0 {
		msg += fmt.Sprintf(" (probes allowed in %s)", d.Round(time.Millisecond))
	}
	return msg
}

func (p *Policy) onStateChanged(e circuitbreaker.StateChangedEvent) {
	from, to := stateOf(e.OldState), stateOf(e.NewState)
	level := slog.LevelInfo
	if to == StateOpen {
		level = slog.LevelWarn
	}
	p.logger.LogAttrs(context.Background(), level, "circuit breaker state changed",
		slog.String("from", from.String()),
		slog.String("to", to.String()),
		slog.Uint64("failures", uint64(e.Metrics().Failures())),
		slog.Uint64("executions", uint64(e.Metrics().Executions())),
	)
}

func (p *Policy) onRetry(e failsafe.ExecutionEvent[any]) {
	ctx := e.Context()
	p.retries.Add(ctx, 1, p.attrs)
	p.logger.LogAttrs(ctx, slog.LevelDebug, "retrying call",
		slog.Int("attempt", e.Attempts()),
		slog.Any("error", e.LastError()))
}

// attemptError carries an attempt's error and its classification through
// failsafe-go; execute unwraps it before returning.
type attemptError struct {
	err      error
	decision Decision
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// policyError is an error produced by the Policy itself (ErrOpen,
// ErrTimeout), carrying its gRPC status.
type policyError struct {
	kind  error
	code  codes.Code
	msg   string
	cause error
}

func (e *policyError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

// Is makes errors.Is(err, ErrOpen) and errors.Is(err, ErrTimeout) work.
func (e *policyError) Is(target error) bool { return target == e.kind }

// Unwrap returns the attempt's own error, if any.
func (e *policyError) Unwrap() error { return e.cause }

// GRPCStatus gives the error its gRPC code.
func (e *policyError) GRPCStatus() *status.Status { return status.New(e.code, e.Error()) }
