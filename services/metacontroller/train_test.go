package metacontroller

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// fakeRegistry is an ExperimentService keeping what TrainPolicy writes:
// runs and their last status, versions and aliases. The hooks, when set,
// run inside the calls (n counts the calls from 1) and may fail them.
type fakeRegistry struct {
	experimentv1.UnimplementedExperimentServiceServer

	mu       sync.Mutex
	runs     []experimentv1.RunStatus // run-<i+1>'s status
	versions int64
	aliases  map[string]int64

	onCreateRun func(n int) error
	onUpdateRun func(experimentv1.RunStatus)
	onSetAlias  func(n int) error
	setAliases  int
}

func (f *fakeRegistry) GetExperimentByName(context.Context, *experimentv1.GetExperimentByNameRequest) (*experimentv1.GetExperimentByNameResponse, error) {
	return &experimentv1.GetExperimentByNameResponse{Experiment: &experimentv1.Experiment{ExperimentId: "e1"}}, nil
}

func (f *fakeRegistry) CreateRun(context.Context, *experimentv1.CreateRunRequest) (*experimentv1.CreateRunResponse, error) {
	f.mu.Lock()
	f.runs = append(f.runs, experimentv1.RunStatus_RUN_STATUS_RUNNING)
	n := len(f.runs)
	hook := f.onCreateRun
	f.mu.Unlock()
	if hook != nil {
		if err := hook(n); err != nil {
			return nil, err
		}
	}
	return &experimentv1.CreateRunResponse{Run: &experimentv1.Run{RunId: fmt.Sprintf("run-%d", n)}}, nil
}

func (f *fakeRegistry) UpdateRun(_ context.Context, req *experimentv1.UpdateRunRequest) (*experimentv1.UpdateRunResponse, error) {
	var n int
	if _, err := fmt.Sscanf(req.GetRun().GetRunId(), "run-%d", &n); err != nil {
		return nil, status.Error(codes.NotFound, "no such run")
	}
	f.mu.Lock()
	f.runs[n-1] = req.GetRun().GetStatus()
	f.mu.Unlock()
	if f.onUpdateRun != nil {
		f.onUpdateRun(req.GetRun().GetStatus())
	}
	return &experimentv1.UpdateRunResponse{}, nil
}

func (f *fakeRegistry) LogBatch(context.Context, *experimentv1.LogBatchRequest) (*experimentv1.LogBatchResponse, error) {
	return &experimentv1.LogBatchResponse{}, nil
}

func (f *fakeRegistry) CreateRegisteredModel(context.Context, *experimentv1.CreateRegisteredModelRequest) (*experimentv1.CreateRegisteredModelResponse, error) {
	return nil, status.Error(codes.AlreadyExists, "exists")
}

func (f *fakeRegistry) CreateModelVersion(_ context.Context, req *experimentv1.CreateModelVersionRequest) (*experimentv1.CreateModelVersionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.versions++
	return &experimentv1.CreateModelVersionResponse{ModelVersion: &experimentv1.ModelVersion{ModelName: req.GetModelName(), Version: f.versions}}, nil
}

func (f *fakeRegistry) SetModelAlias(_ context.Context, req *experimentv1.SetModelAliasRequest) (*experimentv1.SetModelAliasResponse, error) {
	f.mu.Lock()
	f.setAliases++
	n := f.setAliases
	f.mu.Unlock()
	if f.onSetAlias != nil {
		if err := f.onSetAlias(n); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.aliases == nil {
		f.aliases = map[string]int64{}
	}
	f.aliases[req.GetAlias()] = req.GetVersion()
	return &experimentv1.SetModelAliasResponse{}, nil
}

// state returns the runs' statuses, the number of versions and the
// aliases.
func (f *fakeRegistry) state() ([]experimentv1.RunStatus, int64, map[string]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	aliases := map[string]int64{}
	for k, v := range f.aliases {
		aliases[k] = v
	}
	return append([]experimentv1.RunStatus(nil), f.runs...), f.versions, aliases
}

// serveFake serves the services register adds on loopback until the test
// ends and returns a client connection to them.
func serveFake(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	register(gs)
	go func() { _ = gs.Serve(lis) }() // returns when stopped
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// useRegistry serves f and makes it s's registry.
func useRegistry(t *testing.T, s *Server, f *fakeRegistry) {
	t.Helper()
	conn := serveFake(t, func(gs *grpc.Server) { experimentv1.RegisterExperimentServiceServer(gs, f) })
	s.clientsMu.Lock()
	s.registry = experimentv1.NewExperimentServiceClient(conn)
	s.clientsMu.Unlock()
}

// smallTraining is a TrainPolicyRequest that trains in well under a
// second.
func smallTraining(requestID string, promote bool) *metacontrollerv1.TrainPolicyRequest {
	return &metacontrollerv1.TrainPolicyRequest{
		Dataset:   eustockDAX(&metacontrollerv1.IndexRange{Start: 0, End: 600}),
		Hrl:       &metacontrollerv1.HrlConfig{Epochs: proto.Int32(1), Seed: proto.Int64(1), HiddenUnits: proto.Int32(4)},
		RequestId: requestID, Promote: promote,
	}
}

// A training window the regime fit rejects (a flat series: its features
// are constant) is the caller's data: InvalidArgument, no version.
func TestTrainPolicyDegenerateDataset(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	f := &fakeRegistry{}
	useRegistry(t, s, f)
	_, err := s.TrainPolicy(context.Background(), &metacontrollerv1.TrainPolicyRequest{
		Dataset: flatBars(400), Hrl: &metacontrollerv1.HrlConfig{Epochs: proto.Int32(1), Seed: proto.Int64(1), HiddenUnits: proto.Int32(4)},
	})
	wantInvalid(t, err, "dataset")
	if _, versions, _ := f.state(); versions != 0 {
		t.Errorf("%d versions registered", versions)
	}
}

// Once the version is registered the call completes: a caller that
// cancels then gets no error of it (it is gone), and the retry with the
// same request_id gets the response instead of training again.
func TestTrainPolicyCompletesOnceRegistered(t *testing.T) {
	t.Parallel()
	for _, promote := range []bool{false, true} {
		t.Run(fmt.Sprintf("promote=%v", promote), func(t *testing.T) {
			t.Parallel()
			s := newServer(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f := &fakeRegistry{}
			// The caller leaves right after registration: at the
			// promotion, or at the run's end without one.
			f.onSetAlias = func(int) error { cancel(); return nil }
			f.onUpdateRun = func(experimentv1.RunStatus) {
				if !promote {
					cancel()
				}
			}
			useRegistry(t, s, f)
			resp, err := s.TrainPolicy(ctx, smallTraining("r1", promote))
			if err != nil {
				t.Fatalf("cancelled after registration: %v, want the response", err)
			}
			runs, versions, aliases := f.state()
			if resp.GetPromoted() != promote || resp.GetModel().GetVersion() != 1 || versions != 1 ||
				len(runs) != 1 || runs[0] != experimentv1.RunStatus_RUN_STATUS_FINISHED {
				t.Fatalf("response %v; runs %v, %d versions", resp.GetModel(), runs, versions)
			}
			if promote && aliases["production"] != 1 {
				t.Errorf("aliases %v, want production at 1", aliases)
			}
			again, err := s.TrainPolicy(context.Background(), smallTraining("r1", promote))
			if err != nil || !proto.Equal(again, resp) {
				t.Fatalf("retry: %v, %v; want the first response", again.GetModel(), err)
			}
			if runs, versions, _ := f.state(); len(runs) != 1 || versions != 1 {
				t.Errorf("retry trained again: %d runs, %d versions", len(runs), versions)
			}
		})
	}
}

// A failed promotion fails the call naming the registered version; the
// retry with the same request_id promotes that version, without training
// or registering again.
func TestTrainPolicyRetriesOnlyTheFailedPromotion(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	f := &fakeRegistry{onSetAlias: func(n int) error {
		if n == 1 {
			return status.Error(codes.Unavailable, "registry restarting")
		}
		return nil
	}}
	useRegistry(t, s, f)
	ctx := context.Background()
	_, err := s.TrainPolicy(ctx, smallTraining("r1", true))
	st, _ := apierr.Status(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "version 1 of metacontroller is registered") {
		t.Fatalf("promotion failed: %v, want Unavailable naming version 1", err)
	}
	if runs, versions, aliases := f.state(); len(runs) != 1 || runs[0] != experimentv1.RunStatus_RUN_STATUS_FINISHED || versions != 1 || len(aliases) != 0 {
		t.Fatalf("after the failed promotion: runs %v, %d versions, aliases %v", runs, versions, aliases)
	}
	resp, err := s.TrainPolicy(ctx, smallTraining("r1", true))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetPromoted() || resp.GetModel().GetVersion() != 1 || resp.GetModel().GetAlias() != "production" || resp.GetRunId() != "run-1" {
		t.Fatalf("retry: %v", resp)
	}
	if runs, versions, aliases := f.state(); len(runs) != 1 || versions != 1 || aliases["production"] != 1 {
		t.Fatalf("after the retry: runs %v, %d versions, aliases %v; want one run and version, promoted", runs, versions, aliases)
	}
}

// Concurrent retries of a failed call: one trains, the others are told it
// is running.
func TestTrainPolicyConcurrentRetriesTrainOnce(t *testing.T) {
	t.Parallel()
	const retries = 16
	cfg := DefaultConfig()
	cfg.MaxTrainings = retries // the limit must not be what stops them
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	second := make(chan struct{}, retries) // a run beyond the one retry that trains
	f := &fakeRegistry{onCreateRun: func(n int) error {
		if n > 2 {
			second <- struct{}{}
		}
		if n > 1 {
			<-release
		}
		return status.Error(codes.FailedPrecondition, "no")
	}}
	useRegistry(t, s, f)
	ctx := context.Background()
	if _, err := s.TrainPolicy(ctx, smallTraining("r1", false)); err == nil {
		t.Fatal("first call succeeded")
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	var aborted sync.WaitGroup
	aborted.Add(retries - 1)
	for range retries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := s.TrainPolicy(ctx, smallTraining("r1", false))
			if status.Code(err) == codes.Aborted {
				aborted.Done()
			}
		}()
	}
	close(start)
	// One retry trains (its run waits for release); every other one is
	// ABORTED. Only once they all are is the training let go: a retry
	// after that would be a new call, not a concurrent one.
	done := make(chan struct{})
	go func() { aborted.Wait(); close(done) }()
	select {
	case <-done:
	case <-second:
		close(release)
		t.Fatal("a second concurrent retry trained")
	case <-time.After(2 * time.Minute):
		close(release)
		t.Fatal("the retries were neither all ABORTED nor training after 2 minutes")
	}
	close(release)
	wg.Wait()
	if runs, _, _ := f.state(); len(runs) != 2 {
		t.Fatalf("%d concurrent retries created %d runs, want 1", retries, len(runs)-1)
	}
}

// The request_id memory is bounded: completed calls are forgotten after
// requestTTL, and beyond maxRequests the oldest first; running calls stay.
func TestTrainCallsBounded(t *testing.T) {
	t.Parallel()
	var c trainCalls
	t0 := time.Now()
	ok := &metacontrollerv1.TrainPolicyResponse{RunId: "x"}
	if call, _, _ := c.begin("running", t0); call == nil {
		t.Fatal("begin running: no call")
	}
	for i := range maxRequests + 10 {
		id := fmt.Sprint(i)
		call, _, err := c.begin(id, t0)
		if call == nil {
			t.Fatalf("begin %s: %v", id, err)
		}
		c.end(id, call, ok, nil, t0.Add(time.Duration(i)*time.Second))
	}
	if n := len(c.calls); n != maxRequests+1 {
		t.Fatalf("%d calls kept, want %d completed and the running one", n, maxRequests)
	}
	for i, want := range map[int]bool{0: false, 9: false, 10: true, maxRequests + 9: true} {
		if _, kept := c.calls[fmt.Sprint(i)]; kept != want {
			t.Errorf("call %d kept %v, want %v", i, kept, want)
		}
	}
	if _, resp, err := c.begin("10", t0.Add(time.Hour)); err != nil || resp != ok {
		t.Errorf("retry of a kept call: %v, %v; want its response", resp, err)
	}
	// A day after the newest ended, only the running call is left.
	call, _, _ := c.begin("new", t0.Add(requestTTL+time.Duration(maxRequests+10)*time.Second))
	if _, kept := c.calls["running"]; !kept || call == nil || len(c.calls) != 2 {
		t.Errorf("after the TTL: %d calls kept, want the running and the new one", len(c.calls))
	}
	if _, _, err := c.begin("running", t0.Add(2*requestTTL)); status.Code(err) != codes.Aborted {
		t.Errorf("retry of the running call: %v, want Aborted", err)
	}
}

// A backtest that trains HRL takes a MaxTrainings slot: none free,
// RESOURCE_EXHAUSTED as for TrainPolicy; baselines need none.
func TestRunBacktestTrainingLimit(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	for range cap(s.training) {
		s.training <- struct{}{}
	}
	ctx := context.Background()
	_, err := s.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
		Dataset: eustockDAX(&metacontrollerv1.IndexRange{Start: 0, End: 600}),
		Hrl:     &metacontrollerv1.HrlConfig{Epochs: proto.Int32(1), Seed: proto.Int64(1), HiddenUnits: proto.Int32(4)},
	})
	if st, _ := apierr.Status(err); st.Code() != codes.ResourceExhausted {
		t.Fatalf("HRL backtest with every training slot taken: %v, want ResourceExhausted", err)
	}
	if _, err := s.RunBacktest(ctx, &metacontrollerv1.RunBacktestRequest{
		Dataset:  eustockDAX(nil),
		Policies: []metacontrollerv1.PolicyKind{metacontrollerv1.PolicyKind_POLICY_KIND_EQUAL_WEIGHT},
	}); err != nil {
		t.Fatalf("baseline backtest: %v", err)
	}
}
