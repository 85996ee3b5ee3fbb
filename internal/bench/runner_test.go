package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// healthTarget serves the gRPC health service on loopback with the given
// overall status and returns a client connection to it.
func healthTarget(t *testing.T, st healthpb.HealthCheckResponse_ServingStatus) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", st)
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// fakeScenario sleeps a little per operation and fails as fail says.
type fakeScenario struct {
	fail     func(worker, i int) error
	setupErr error
	calls    atomic.Int64
	finished atomic.Bool
	cleaned  atomic.Int64
	workers  int
	// cancel, when set, is called by worker 0 at its 50th operation.
	cancel context.CancelFunc
}

func (s *fakeScenario) Name() string { return "fake" }

func (s *fakeScenario) Setup(_ context.Context, env Env) error {
	s.workers = env.Concurrency
	return s.setupErr
}

func (s *fakeScenario) Op(ctx context.Context, worker, i int) error {
	s.calls.Add(1)
	if s.cancel != nil && worker == 0 && i == 50 {
		s.cancel()
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(100 * time.Microsecond):
	}
	if s.fail != nil {
		if err := s.fail(worker, i); err != nil {
			return err
		}
	}
	Record(ctx, "step", time.Since(start))
	Count(ctx, "steps", 1)
	return nil
}

func (s *fakeScenario) Finish(context.Context) error {
	s.finished.Store(true)
	return nil
}

func (s *fakeScenario) Cleanup(context.Context) error {
	s.cleaned.Add(1)
	return nil
}

func (s *fakeScenario) Fields() map[string]any {
	return map[string]any{"finished": s.finished.Load(), "workers": s.workers}
}

var testRunner = Runner{Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond, Concurrency: 3}

func TestRunCounts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fail       func(worker, i int) error
		wantOps    bool
		wantErrs   bool
		wantSample string
		samples    int
	}{
		{name: "all succeed", wantOps: true},
		{
			name:       "odd operations fail",
			fail:       func(_, i int) error { return oddErr(i) },
			wantOps:    true,
			wantErrs:   true,
			wantSample: "Internal: odd",
			samples:    1,
		},
		{
			name:       "every operation fails",
			fail:       func(int, int) error { return fmt.Errorf("Op: %w", status.Error(codes.Unavailable, "down")) },
			wantErrs:   true,
			wantSample: "Op: Unavailable: down",
			samples:    1,
		},
		{
			name:       "many distinct errors keep the first few",
			fail:       func(w, i int) error { return fmt.Errorf("error %d-%d", w, i) },
			wantErrs:   true,
			wantSample: "error ",
			samples:    maxErrorSamples,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn := healthTarget(t, healthpb.HealthCheckResponse_SERVING)
			sc := &fakeScenario{fail: tc.fail}
			rep, err := testRunner.Run(context.Background(), Env{Conn: conn, Target: "test"}, sc)
			if err != nil {
				t.Fatal(err)
			}
			if got := rep.Ops() > 0; got != tc.wantOps {
				t.Errorf("ops = %d, want ops > 0 = %v", rep.Ops(), tc.wantOps)
			}
			if got := rep.Errors > 0; got != tc.wantErrs {
				t.Errorf("errors = %d, want errors > 0 = %v", rep.Errors, tc.wantErrs)
			}
			if len(rep.ErrorSamples) != tc.samples {
				t.Errorf("error samples = %v, want %d", rep.ErrorSamples, tc.samples)
			}
			if tc.samples == 1 && rep.ErrorSamples[0].Count != rep.Errors {
				t.Errorf("sample count %d, want all %d errors", rep.ErrorSamples[0].Count, rep.Errors)
			}
			for _, s := range rep.ErrorSamples {
				if !strings.HasPrefix(s.Message, tc.wantSample) {
					t.Errorf("sample %q, want prefix %q", s.Message, tc.wantSample)
				}
			}
			// The warm-up is not recorded: the scenario saw more calls
			// than the report counts.
			if got, measured := sc.calls.Load(), rep.Ops()+rep.Errors; got <= measured {
				t.Errorf("scenario called %d times, report measured %d: warm-up recorded?", got, measured)
			}
			// Counters and timings cover exactly the successful measured ops.
			if rep.Counters["steps"] != rep.Ops() {
				t.Errorf("steps = %d, want ops %d", rep.Counters["steps"], rep.Ops())
			}
			if tc.wantOps && rep.Timings["step"].TotalCount() != rep.Ops() {
				t.Errorf("step timings = %d, want ops %d", rep.Timings["step"].TotalCount(), rep.Ops())
			}
			// Every pair ran a baseline check, which never fails here.
			if rep.BaselineErrors != 0 || rep.BaselineOps() != rep.Ops()+rep.Errors {
				t.Errorf("baseline ops %d errors %d, want %d and 0", rep.BaselineOps(), rep.BaselineErrors, rep.Ops()+rep.Errors)
			}
			if rep.Elapsed < testRunner.Duration {
				t.Errorf("elapsed %s shorter than the window %s", rep.Elapsed, testRunner.Duration)
			}
			if rep.Fields["finished"] != true || rep.Fields["workers"] != testRunner.Concurrency {
				t.Errorf("fields = %v, want Finish called before Fields and Setup told the concurrency", rep.Fields)
			}
			if rep.Interrupted {
				t.Error("interrupted = true")
			}
		})
	}
}

func oddErr(i int) error {
	if i%2 == 1 {
		return status.Error(codes.Internal, "odd")
	}
	return nil
}

func TestRunInterrupted(t *testing.T) {
	t.Parallel()
	conn := healthTarget(t, healthpb.HealthCheckResponse_SERVING)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sc := &fakeScenario{cancel: cancel}
	r := Runner{Duration: time.Minute, Concurrency: 2}
	start := time.Now()
	rep, err := r.Run(ctx, Env{Conn: conn}, sc)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("run took %s after the interrupt", time.Since(start))
	}
	if !rep.Interrupted {
		t.Error("interrupted = false")
	}
	if rep.Errors != 0 || rep.BaselineErrors != 0 {
		t.Errorf("errors = %d, baseline errors = %d: calls cut by the interrupt counted as failures (%v)", rep.Errors, rep.BaselineErrors, rep.ErrorSamples)
	}
	if rep.Ops() == 0 {
		t.Error("ops = 0, want the operations before the interrupt")
	}
	if sc.finished.Load() {
		t.Error("Finish ran after an interrupt")
	}
	if n := sc.cleaned.Load(); n != 1 {
		t.Errorf("Cleanup ran %d times after an interrupt, want 1: the target keeps what the scenario changed", n)
	}
}

func TestRunFailsEarly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status healthpb.HealthCheckResponse_ServingStatus
		setup  error
		want   string
	}{
		{name: "target not serving", status: healthpb.HealthCheckResponse_NOT_SERVING, want: "answered NOT_SERVING"},
		{name: "setup fails", status: healthpb.HealthCheckResponse_SERVING, setup: errors.New("no seed"), want: "setup fake: no seed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn := healthTarget(t, tc.status)
			sc := &fakeScenario{setupErr: tc.setup}
			_, err := testRunner.Run(context.Background(), Env{Conn: conn}, sc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run error = %v, want %q", err, tc.want)
			}
			if n := sc.calls.Load(); n != 0 {
				t.Errorf("scenario called %d times, want no load", n)
			}
			// Setup may have changed the target before failing: Cleanup
			// runs after it, and only after it.
			want := int64(0)
			if tc.setup != nil {
				want = 1
			}
			if n := sc.cleaned.Load(); n != want {
				t.Errorf("Cleanup ran %d times, want %d", n, want)
			}
		})
	}
}

func TestRunnerValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		r    Runner
		want string // flag named in the error; empty means valid
	}{
		{"valid", Runner{Duration: time.Second, Concurrency: 1}, ""},
		{"valid with warm-up", Runner{Duration: time.Second, Warmup: time.Second, Concurrency: MaxConcurrency}, ""},
		{"zero duration", Runner{Duration: 0, Concurrency: 1}, "--duration"},
		{"negative duration", Runner{Duration: -time.Second, Concurrency: 1}, "--duration"},
		{"negative warm-up", Runner{Duration: time.Second, Warmup: -1, Concurrency: 1}, "--warmup"},
		{"zero concurrency", Runner{Duration: time.Second}, "--concurrency"},
		{"negative concurrency", Runner{Duration: time.Second, Concurrency: -4}, "--concurrency"},
		{"too many workers", Runner{Duration: time.Second, Concurrency: MaxConcurrency + 1}, "--concurrency"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.r.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

func TestDefaultWarmup(t *testing.T) {
	t.Parallel()
	tests := map[time.Duration]time.Duration{
		time.Second:      100 * time.Millisecond,
		5 * time.Second:  500 * time.Millisecond,
		10 * time.Second: time.Second,
		time.Minute:      time.Second,
	}
	for d, want := range tests {
		if got := DefaultWarmup(d); got != want {
			t.Errorf("DefaultWarmup(%s) = %s, want %s", d, got, want)
		}
	}
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	names := Names()
	for _, want := range []string{"experiments", "health"} {
		if _, ok := Lookup(want); !ok {
			t.Errorf("scenario %q not registered (have %v)", want, names)
		}
	}
	for _, s := range Specs() {
		if got := s.New().Name(); got != s.Name {
			t.Errorf("scenario registered as %q names itself %q", s.Name, got)
		}
		if s.Summary == "" {
			t.Errorf("scenario %q has no summary", s.Name)
		}
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup(nope) found a scenario")
	}
}

// pacedScenario waits 20 ms for its rate before each instant operation.
type pacedScenario struct{ fakeScenario }

func (s *pacedScenario) Pace(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(20 * time.Millisecond):
		return nil
	}
}

func (s *pacedScenario) Op(context.Context, int, int) error { return nil }

// The wait for a scenario's rate is not part of its operations' latency.
func TestPaceIsNotLatency(t *testing.T) {
	t.Parallel()
	conn := healthTarget(t, healthpb.HealthCheckResponse_SERVING)
	rep, err := testRunner.Run(context.Background(), Env{Conn: conn}, &pacedScenario{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Ops() == 0 {
		t.Fatal("no operation measured")
	}
	if p50 := rep.Latency.ValueAtQuantile(50); p50 >= 10_000 {
		t.Errorf("latency p50 %d µs: the 20 ms pace was counted", p50)
	}
}
