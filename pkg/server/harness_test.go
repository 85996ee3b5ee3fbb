package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

// fakeExperiments is an ExperimentService whose handlers each test
// provides; a nil function leaves the method Unimplemented.
type fakeExperiments struct {
	experimentv1.UnimplementedExperimentServiceServer

	get    func(context.Context, *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error)
	create func(context.Context, *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error)
	watch  func(*experimentv1.WatchModelRequest, grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error
	stream func(grpc.ClientStreamingServer[experimentv1.StreamMetricsRequest, experimentv1.StreamMetricsResponse]) error
}

var _ experimentv1.ExperimentServiceServer = (*fakeExperiments)(nil)

func (f *fakeExperiments) GetExperiment(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
	if f.get == nil {
		return f.UnimplementedExperimentServiceServer.GetExperiment(ctx, req)
	}
	return f.get(ctx, req)
}

func (f *fakeExperiments) CreateExperiment(ctx context.Context, req *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error) {
	if f.create == nil {
		return f.UnimplementedExperimentServiceServer.CreateExperiment(ctx, req)
	}
	return f.create(ctx, req)
}

func (f *fakeExperiments) WatchModel(req *experimentv1.WatchModelRequest, ss grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error {
	if f.watch == nil {
		return f.UnimplementedExperimentServiceServer.WatchModel(req, ss)
	}
	return f.watch(req, ss)
}

func (f *fakeExperiments) StreamMetrics(ss grpc.ClientStreamingServer[experimentv1.StreamMetricsRequest, experimentv1.StreamMetricsResponse]) error {
	if f.stream == nil {
		return f.UnimplementedExperimentServiceServer.StreamMetrics(ss)
	}
	return f.stream(ss)
}

// echoGet answers GetExperiment with an experiment named after the caller.
func echoGet(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
	name := "anonymous"
	if p, ok := auth.FromContext(ctx); ok {
		name = p.Name
	}
	return &experimentv1.GetExperimentResponse{Experiment: &experimentv1.Experiment{ExperimentId: req.GetExperimentId(), Name: name}}, nil
}

// experimentPolicy is the policy the tests run with: readers are traders
// and researchers, writers researchers.
func experimentPolicy() auth.Policy {
	svc := experimentv1.File_quantmesh_experiment_v1_experiment_proto.Services().ByName("ExperimentService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleResearcher},
		nil)
}

func registration(impl experimentv1.ExperimentServiceServer) server.Registration {
	return server.Registration{
		Desc:    &experimentv1.ExperimentService_ServiceDesc,
		Impl:    impl,
		Gateway: experimentv1.RegisterExperimentServiceHandler,
		Roles:   experimentPolicy(),
	}
}

// testConfig listens on free loopback ports.
func testConfig() server.Config {
	return server.Config{
		GRPCAddr:        "127.0.0.1:0",
		HTTPAddr:        "127.0.0.1:0",
		ShutdownTimeout: 10 * time.Second,
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records returns the JSON log records written so far.
func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	sc.Buffer(make([]byte, 0, 1<<20), 1<<24)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, rec)
	}
	return out
}

// harness is a served server with a client connection.
type harness struct {
	srv     *server.Server
	conn    *grpc.ClientConn
	baseURL string
	logs    *syncBuffer

	cancel context.CancelFunc
	served chan error
	once   sync.Once
	err    error
}

// start serves opts (with testConfig and a captured JSON logger filled
// in where unset) until the test ends.
func start(t *testing.T, opts server.Options) *harness {
	t.Helper()
	if opts.Config == (server.Config{}) {
		opts.Config = testConfig()
	}
	logs := &syncBuffer{}
	if opts.Logger == nil {
		log, err := telemetry.NewLogger(logs, telemetry.LogConfig{Level: "debug", Format: "json"})
		if err != nil {
			t.Fatal(err)
		}
		opts.Logger = log
	}
	srv, err := server.New(t.Context(), opts)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{
		srv:     srv,
		baseURL: "http://" + srv.HTTPAddr(),
		logs:    logs,
		cancel:  cancel,
		served:  make(chan error, 1),
	}
	go func() { h.served <- srv.Serve(ctx) }()

	conn, err := grpc.NewClient(srv.GRPCTarget(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.conn = conn
	t.Cleanup(func() {
		conn.Close()
		if err := h.stop(t); err != nil {
			t.Errorf("Serve returned %v, want nil", err)
		}
	})
	return h
}

// stop cancels Serve's context and returns what Serve returned; it fails
// the test if Serve does not return within 10 s.
func (h *harness) stop(t *testing.T) error {
	t.Helper()
	h.once.Do(func() {
		h.cancel()
		select {
		case h.err = <-h.served:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return within 10s of cancellation")
		}
	})
	return h.err
}

func (h *harness) client() experimentv1.ExperimentServiceClient {
	return experimentv1.NewExperimentServiceClient(h.conn)
}

// do performs an HTTP request with optional header pairs and returns the status
// and body.
func (h *harness) do(t *testing.T, method, path string, body io.Reader, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, h.baseURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, string(b)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantCode fails the test unless err is a status with code c.
func wantCode(t *testing.T, what string, err error, c codes.Code) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != c {
		t.Fatalf("%s: error = %v, want code %v", what, err, c)
	}
	return st
}

// containsAny reports whether s contains any of subs.
func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
