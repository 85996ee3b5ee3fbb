package resilience_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/resilience"
)

const (
	stateMetric      = "quantmesh.resilience.breaker.state"
	retriesMetric    = "quantmesh.resilience.retries"
	rejectionsMetric = "quantmesh.resilience.breaker.rejections"
	timeoutsMetric   = "quantmesh.resilience.timeouts"
)

var (
	errUnavailable = status.Error(codes.Unavailable, "peer down")
	errInvalid     = status.Error(codes.InvalidArgument, "bad request")
)

func TestBreakerLifecycle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		probes          []error // calls made once the open delay has passed
		wantState       resilience.State
		wantTransitions []string
	}{
		{
			name:      "closes after successful probes",
			probes:    []error{nil, nil},
			wantState: resilience.StateClosed,
			wantTransitions: []string{
				"closed->open", "open->half-open", "half-open->closed",
			},
		},
		{
			name:      "failed probe reopens",
			probes:    []error{nil, errUnavailable},
			wantState: resilience.StateOpen,
			wantTransitions: []string{
				"closed->open", "open->half-open", "half-open->open",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig()
			cfg.MaxAttempts = 1
			cfg.FailureThreshold = 3
			cfg.FailureWindow = 5
			cfg.OpenDelay = 50 * time.Millisecond
			cfg.SuccessThreshold = 2
			h := newHarness(t, "peer:experiment", cfg)
			ctx := context.Background()

			wantGauge := func(want resilience.State) {
				t.Helper()
				if got := h.p.State(); got != want {
					t.Fatalf("State() = %s, want %s", got, want)
				}
				got, ok := h.metric(t, stateMetric)
				if !ok || got != int64(want) {
					t.Fatalf("breaker state gauge = %d (reported %t), want %d", got, ok, want)
				}
			}
			wantGauge(resilience.StateClosed)

			// Two failures among successes stay under the threshold of 3.
			fn, calls := script(errUnavailable, nil, errUnavailable)
			for range 3 {
				_ = h.p.Run(ctx, fn)
			}
			wantGauge(resilience.StateClosed)
			// The third failure in the window opens the breaker.
			if err := h.p.Run(ctx, func(context.Context) error { return errUnavailable }); status.Code(err) != codes.Unavailable || errors.Is(err, resilience.ErrOpen) {
				t.Fatalf("third failure: Run() = %v, want the call's own Unavailable error", err)
			}
			wantGauge(resilience.StateOpen)

			// Open: fail fast, without calling fn.
			err := h.p.Run(ctx, fn)
			if !errors.Is(err, resilience.ErrOpen) {
				t.Fatalf("open: Run() = %v, want ErrOpen", err)
			}
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "peer:experiment") {
				t.Fatalf("open: Run() = %v (code %s), want Unavailable naming the target", err, status.Code(err))
			}
			if calls() != 3 {
				t.Fatalf("open: fn called %d times, want 3", calls())
			}
			if got := h.counter(t, rejectionsMetric); got != 1 {
				t.Fatalf("rejections = %d, want 1", got)
			}

			time.Sleep(cfg.OpenDelay + 10*time.Millisecond)
			for i, probe := range tt.probes {
				if err := h.p.Run(ctx, func(context.Context) error { return probe }); !errors.Is(err, probe) {
					t.Fatalf("probe %d: Run() = %v, want %v", i, err, probe)
				}
				if i == 0 {
					wantGauge(resilience.StateHalfOpen)
				}
			}
			wantGauge(tt.wantState)
			if diff := cmp.Diff(tt.wantTransitions, h.transitions(t)); diff != "" {
				t.Errorf("logged transitions mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPermanentErrorsDoNotOpenBreaker(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.MaxAttempts = 1
	cfg.FailureThreshold = 2
	cfg.FailureWindow = 2
	h := newHarness(t, "store", cfg)
	for _, err := range []error{errInvalid, apierr.NotFound("run", "r1"), status.Error(codes.Aborted, "conflict"), context.Canceled} {
		for range 3 {
			_ = h.p.Run(context.Background(), func(context.Context) error { return err })
		}
	}
	if got := h.p.State(); got != resilience.StateClosed {
		t.Fatalf("State() = %s after permanent errors only, want closed", got)
	}
}

func TestRetry(t *testing.T) {
	t.Parallel()
	connReset := errors.New("connection reset by peer")
	tests := []struct {
		name        string
		maxAttempts int
		errs        []error // returned by successive attempts, then nil
		wantCalls   int
		wantErr     error // matched with errors.Is; nil means success
	}{
		{"transient then success", 3, []error{errUnavailable, errUnavailable}, 3, nil},
		{"stops at MaxAttempts", 3, []error{errUnavailable, errUnavailable, errUnavailable, errUnavailable}, 3, errUnavailable},
		{"no retries with one attempt", 1, []error{errUnavailable}, 1, errUnavailable},
		{"plain error is transient", 3, []error{connReset}, 2, nil},
		{"aborted is retried", 3, []error{status.Error(codes.Aborted, "conflict")}, 2, nil},
		{"invalid argument is not retried", 3, []error{errInvalid}, 1, errInvalid},
		{"domain not found is not retried", 3, []error{apierr.ErrNotFound}, 1, apierr.ErrNotFound},
		{"resource exhausted is not retried", 3, []error{status.Error(codes.ResourceExhausted, "busy")}, 1, nil},
		{"internal is not retried", 3, []error{status.Error(codes.Internal, "bug")}, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig()
			cfg.MaxAttempts = tt.maxAttempts
			h := newHarness(t, "store", cfg)
			fn, calls := script(tt.errs...)
			err := h.p.Run(context.Background(), fn)
			if calls() != tt.wantCalls {
				t.Errorf("fn called %d times, want %d", calls(), tt.wantCalls)
			}
			wantFail := tt.wantCalls <= len(tt.errs)
			switch {
			case !wantFail && err != nil:
				t.Errorf("Run() = %v, want nil", err)
			case wantFail && err == nil:
				t.Errorf("Run() = nil, want an error")
			case wantFail && tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("Run() = %v, want %v", err, tt.wantErr)
			}
			if got := h.counter(t, retriesMetric); got != int64(tt.wantCalls-1) {
				t.Errorf("retries metric = %d, want %d", got, tt.wantCalls-1)
			}
		})
	}
}

func TestBackoffGrowsToMaxDelay(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.MaxAttempts = 4
	cfg.BaseDelay = 10 * time.Millisecond
	cfg.MaxDelay = 15 * time.Millisecond
	h := newHarness(t, "bus", cfg)

	var at []time.Time
	err := h.p.Run(context.Background(), func(context.Context) error {
		at = append(at, time.Now())
		return errUnavailable
	})
	if !errors.Is(err, errUnavailable) {
		t.Fatalf("Run() = %v, want the last attempt's error", err)
	}
	want := []time.Duration{10 * time.Millisecond, 15 * time.Millisecond, 15 * time.Millisecond}
	if len(at) != len(want)+1 {
		t.Fatalf("%d attempts, want %d", len(at), len(want)+1)
	}
	for i, min := range want {
		if gap := at[i+1].Sub(at[i]); gap < min {
			t.Errorf("delay before retry %d = %s, want at least %s", i+1, gap, min)
		}
	}
}

func TestAttemptTimeout(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.Timeout = 20 * time.Millisecond
	cfg.MaxAttempts = 2
	cfg.FailureThreshold = 2
	cfg.FailureWindow = 2
	h := newHarness(t, "store", cfg)

	calls := 0
	start := time.Now()
	err := h.p.Run(context.Background(), func(ctx context.Context) error {
		calls++
		deadline, ok := ctx.Deadline()
		if !ok || time.Until(deadline) > cfg.Timeout {
			t.Errorf("attempt context deadline = %v (set %t), want within %s", deadline, ok, cfg.Timeout)
		}
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, resilience.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run() = %v, want ErrTimeout wrapping context.DeadlineExceeded", err)
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("status code = %s, want DeadlineExceeded", status.Code(err))
	}
	if calls != 2 {
		t.Errorf("fn called %d times, want 2 (timeouts are retried)", calls)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Run took %s, the attempts were not cut off", elapsed)
	}
	if got := h.counter(t, timeoutsMetric); got != 2 {
		t.Errorf("timeouts metric = %d, want 2", got)
	}
	if got := h.p.State(); got != resilience.StateOpen {
		t.Errorf("State() = %s, want open: timeouts count as failures", got)
	}
}

func TestCallerContextEndsCall(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		cancel  bool // cancel the caller's context once fn runs
		wantErr error
	}{
		{
			name:    "canceled",
			ctx:     func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			cancel:  true,
			wantErr: context.Canceled,
		},
		{
			name: "deadline shorter than Timeout",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 20*time.Millisecond)
			},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig()
			cfg.Timeout = time.Minute
			cfg.FailureThreshold = 1
			cfg.FailureWindow = 1
			h := newHarness(t, "peer:risk", cfg)
			ctx, cancel := tt.ctx()
			defer cancel()

			calls := 0
			err := h.p.Run(ctx, func(actx context.Context) error {
				calls++
				if tt.cancel {
					cancel()
				}
				<-actx.Done()
				return status.FromContextError(actx.Err()).Err()
			})
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Run() = %v, want %v", err, tt.wantErr)
			}
			if calls != 1 {
				t.Errorf("fn called %d times, want 1", calls)
			}
			if got := h.p.State(); got != resilience.StateClosed {
				t.Errorf("State() = %s, want closed: the caller gave up, the target did not fail", got)
			}
			if got := h.counter(t, timeoutsMetric); got != 0 {
				t.Errorf("timeouts metric = %d, want 0", got)
			}
			// A context already done is not even attempted.
			if err := h.p.Run(ctx, func(context.Context) error { calls++; return nil }); !errors.Is(err, tt.wantErr) || calls != 1 {
				t.Errorf("Run(done ctx) = %v after %d calls, want %v without a call", err, calls, tt.wantErr)
			}
		})
	}
}

func TestGet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "store", fastConfig())
	ctx := context.Background()

	attempts := 0
	got, err := resilience.Get(ctx, h.p, func(context.Context) (int, error) {
		attempts++
		if attempts == 1 {
			return -1, errUnavailable
		}
		return 42, nil
	})
	if err != nil || got != 42 {
		t.Errorf("Get() = %d, %v, want 42, nil", got, err)
	}

	s, err := resilience.Get(ctx, h.p, func(context.Context) (*string, error) {
		v := "partial"
		return &v, errInvalid
	})
	if s != nil || !errors.Is(err, errInvalid) {
		t.Errorf("Get() = %v, %v, want nil, %v", s, err, errInvalid)
	}

	var e error
	e, err = resilience.Get(ctx, h.p, func(context.Context) (error, error) { return nil, nil })
	if e != nil || err != nil {
		t.Errorf("Get() of a nil interface = %v, %v, want nil, nil", e, err)
	}
}

func TestCustomClassifier(t *testing.T) {
	t.Parallel()
	errBusy := errors.New("sqlite: database is locked")
	cfg := fastConfig()
	cfg.Classifier = func(err error) resilience.Decision {
		if errors.Is(err, errBusy) {
			return resilience.Decision{Retry: true} // contention, not ill health
		}
		return resilience.DefaultClassifier(err)
	}
	cfg.FailureThreshold = 1
	cfg.FailureWindow = 1
	h := newHarness(t, "store", cfg)
	fn, calls := script(errBusy, errBusy)
	if err := h.p.Run(context.Background(), fn); err != nil || calls() != 3 {
		t.Errorf("Run() = %v after %d calls, want nil after 3", err, calls())
	}
	if got := h.p.State(); got != resilience.StateClosed {
		t.Errorf("State() = %s, want closed", got)
	}
}

// A half-open probe whose caller gave up proved nothing about the target:
// it counts as a failure, so probes abandoned against a hung target reopen
// the breaker instead of closing it.
func TestAbandonedHalfOpenProbeReopens(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.Timeout, cfg.FailureThreshold, cfg.FailureWindow, cfg.OpenDelay = time.Minute, 1, 1, 20*time.Millisecond
	h := newHarness(t, "peer:risk", cfg)
	down := func(context.Context) error { return status.Error(codes.Unavailable, "down") }
	for i := 0; i < 20 && h.p.State() != resilience.StateOpen; i++ {
		_ = h.p.Run(context.Background(), down)
	}
	if h.p.State() != resilience.StateOpen {
		t.Fatalf("state %s after failures, want open", h.p.State())
	}
	time.Sleep(2 * cfg.OpenDelay) // the next call is a half-open probe
	hang := func(ctx context.Context) error { <-ctx.Done(); return status.FromContextError(ctx.Err()).Err() }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := h.p.Run(ctx, hang); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe: %v, want the caller's deadline", err)
	}
	if got := h.p.State(); got != resilience.StateOpen {
		t.Errorf("state %s after an abandoned half-open probe, want open again", got)
	}
}
