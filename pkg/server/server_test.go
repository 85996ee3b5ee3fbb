package server_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/encoding/protojson"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

const experimentService = "quantmesh.experiment.v1.ExperimentService"

func TestHealth(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(&fakeExperiments{})}})
	health := healthpb.NewHealthClient(h.conn)
	for _, svc := range []string{"", experimentService} {
		resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("Check(%q): %v", svc, err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, want SERVING", svc, resp.GetStatus())
		}
	}
	_, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "quantmesh.unknown.v1.UnknownService"})
	wantCode(t, "Check(unknown service)", err, codes.NotFound)

	if diff := cmp.Diff([]string{experimentService}, h.srv.ServiceNames()); diff != "" {
		t.Errorf("ServiceNames mismatch (-want +got):\n%s", diff)
	}
}

// Health watchers learn that the server stops serving before their stream
// is ended by the drain.
func TestHealthNotServingOnShutdown(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(&fakeExperiments{})}})
	health := healthpb.NewHealthClient(h.conn)

	// Several watchers per name, so an ordering race between the status
	// change and the end of the streams shows up.
	type watcher struct {
		svc    string
		stream grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
	}
	var watchers []watcher
	for range 50 {
		for _, svc := range []string{"", experimentService} {
			stream, err := health.Watch(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				t.Fatalf("Watch(%q): %v", svc, err)
			}
			resp, err := stream.Recv()
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("Watch(%q) first status = %v, %v; want SERVING", svc, resp.GetStatus(), err)
			}
			watchers = append(watchers, watcher{svc, stream})
		}
	}

	h.cancel()
	for _, w := range watchers {
		resp, err := w.stream.Recv()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("Watch(%q) after shutdown began = %v, %v; want NOT_SERVING", w.svc, resp.GetStatus(), err)
			continue
		}
		_, err = w.stream.Recv()
		wantCode(t, "Watch after NOT_SERVING", err, codes.Unavailable)
	}
	if err := h.stop(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestReflection(t *testing.T) {
	t.Parallel()
	keys, err := auth.ParseKeys(traderKey + ":trader:desk")
	if err != nil {
		t.Fatal(err)
	}
	// With keys configured, reflection stays public.
	h := start(t, server.Options{Keys: keys, Services: []server.Registration{registration(&fakeExperiments{})}})
	stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection Recv: %v", err)
	}
	var got []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		got = append(got, s.GetName())
	}
	for _, want := range []string{experimentService, "grpc.health.v1.Health"} {
		if !slices.Contains(got, want) {
			t.Errorf("reflection lists %v, want it to include %s", got, want)
		}
	}
	_ = stream.CloseSend()
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	// /healthz is liveness: it does not consult Ready.
	h := start(t, server.Options{
		Services: []server.Registration{registration(&fakeExperiments{})},
		Ready:    func(context.Context) error { return errors.New("database unreachable") },
	})
	code, body := h.do(t, http.MethodGet, "/healthz", nil)
	if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz = %d %q, want 200 ok", code, body)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		ready    func(context.Context) error
		wantCode int
		wantBody string
	}{
		{name: "no Ready func", ready: nil, wantCode: http.StatusOK, wantBody: "ready"},
		{name: "ready", ready: func(context.Context) error { return nil }, wantCode: http.StatusOK, wantBody: "ready"},
		{
			name:     "not ready",
			ready:    func(context.Context) error { return errors.New("database unreachable: dial tcp 127.0.0.1:5432") },
			wantCode: http.StatusServiceUnavailable,
			wantBody: "database unreachable: dial tcp 127.0.0.1:5432",
		},
		{
			name: "Ready is bounded by a deadline",
			ready: func(ctx context.Context) error {
				if _, ok := ctx.Deadline(); !ok {
					return errors.New("no deadline")
				}
				return nil
			},
			wantCode: http.StatusOK,
			wantBody: "ready",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := start(t, server.Options{Services: []server.Registration{registration(&fakeExperiments{})}, Ready: tt.ready})
			code, body := h.do(t, http.MethodGet, "/readyz", nil)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET /readyz = %d %q, want %d containing %q", code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(&fakeExperiments{get: echoGet})}})
	if _, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "e1"}); err != nil {
		t.Fatal(err)
	}

	code, body := h.do(t, http.MethodGet, "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	fam, ok := families["rpc_server_call_duration_seconds"]
	if !ok {
		t.Fatalf("/metrics has no rpc_server_call_duration_seconds; families: %v", keys(families))
	}
	if fam.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("rpc_server_call_duration_seconds is a %v, want a histogram", fam.GetType())
	}
	var call *dto.Histogram
	for _, m := range fam.GetMetric() {
		for _, l := range m.GetLabel() {
			if strings.HasSuffix(l.GetValue(), "ExperimentService/GetExperiment") {
				call = m.GetHistogram()
			}
		}
	}
	if call == nil {
		t.Fatalf("no rpc_server_call_duration_seconds series for GetExperiment: %v", fam)
	}
	if call.GetSampleCount() != 1 {
		t.Errorf("GetExperiment sample count = %d, want 1", call.GetSampleCount())
	}
	var bounds []float64
	for _, b := range call.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	// The decision path lives below a millisecond: the buckets must resolve it.
	for _, want := range []float64{0.0001, 0.0005, 0.001} {
		if !slices.Contains(bounds, want) {
			t.Errorf("bucket bounds %v lack %v", bounds, want)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

const (
	traderKey     = "trader-key-0123456789"
	researcherKey = "researcher-key-0123456789"
)

func authFake() *fakeExperiments {
	return &fakeExperiments{
		get: echoGet,
		create: func(ctx context.Context, req *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error) {
			p, _ := auth.FromContext(ctx)
			return &experimentv1.CreateExperimentResponse{Experiment: &experimentv1.Experiment{ExperimentId: "new", Name: req.GetName() + " by " + p.Name}}, nil
		},
		watch: func(_ *experimentv1.WatchModelRequest, ss grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error {
			p, _ := auth.FromContext(ss.Context())
			return ss.Send(&experimentv1.WatchModelResponse{Alias: p.Name})
		},
	}
}

func TestAuthOverREST(t *testing.T) {
	t.Parallel()
	keys, err := auth.ParseKeys(traderKey + ":trader:desk," + researcherKey + ":researcher:lab")
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, server.Options{Keys: keys, Services: []server.Registration{registration(authFake())}})

	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		header   []string
		wantCode int
		wantName string // name in the returned experiment
	}{
		{name: "no credentials", method: http.MethodGet, path: "/v1/experiments/e1", wantCode: http.StatusUnauthorized},
		{name: "unknown key", method: http.MethodGet, path: "/v1/experiments/e1", header: []string{"X-Api-Key", "unknown-key-0123456789"}, wantCode: http.StatusUnauthorized},
		{name: "bearer", method: http.MethodGet, path: "/v1/experiments/e1", header: []string{"Authorization", "Bearer " + traderKey}, wantCode: http.StatusOK, wantName: "desk"},
		{name: "x-api-key", method: http.MethodGet, path: "/v1/experiments/e1", header: []string{"X-Api-Key", researcherKey}, wantCode: http.StatusOK, wantName: "lab"},
		{name: "role not allowed", method: http.MethodPost, path: "/v1/experiments", body: `{"name":"momentum"}`, header: []string{"X-Api-Key", traderKey}, wantCode: http.StatusForbidden},
		{name: "role allowed", method: http.MethodPost, path: "/v1/experiments", body: `{"name":"momentum"}`, header: []string{"Authorization", "Bearer " + researcherKey}, wantCode: http.StatusOK, wantName: "momentum by lab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, body := h.do(t, tt.method, tt.path, strings.NewReader(tt.body), tt.header...)
			if code != tt.wantCode {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, code, body, tt.wantCode)
			}
			if tt.wantCode != http.StatusOK {
				var st spb.Status
				if err := protojson.Unmarshal([]byte(body), &st); err != nil {
					t.Fatalf("error body %q: %v", body, err)
				}
				if got := runtime.HTTPStatusFromCode(codes.Code(st.GetCode())); got != tt.wantCode {
					t.Errorf("body code %v does not match HTTP %d", codes.Code(st.GetCode()), tt.wantCode)
				}
				return
			}
			var got experimentv1.Experiment
			if err := protojson.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if got.GetName() != tt.wantName {
				t.Errorf("experiment name = %q, want %q (the principal must reach the handler)", got.GetName(), tt.wantName)
			}
		})
	}

	// Operational endpoints are not behind authentication.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, body := h.do(t, http.MethodGet, path, nil); code != http.StatusOK {
			t.Errorf("GET %s without credentials = %d %s, want 200", path, code, body)
		}
	}
}

func TestAuthOverGRPC(t *testing.T) {
	t.Parallel()
	keys, err := auth.ParseKeys(traderKey + ":trader:desk," + researcherKey + ":researcher:lab")
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, server.Options{Keys: keys, Services: []server.Registration{registration(authFake())}})
	withKey := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "x-api-key", key)
	}

	_, err = h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "e1"})
	wantCode(t, "GetExperiment without credentials", err, codes.Unauthenticated)
	_, err = h.client().CreateExperiment(withKey(traderKey), &experimentv1.CreateExperimentRequest{Name: "x"})
	wantCode(t, "CreateExperiment as trader", err, codes.PermissionDenied)

	// Health is public.
	if _, err := healthpb.NewHealthClient(h.conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health Check without credentials: %v", err)
	}

	// Server streams are authenticated, and see their principal.
	stream, err := h.client().WatchModel(t.Context(), &experimentv1.WatchModelRequest{ModelName: "m", Alias: "a"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, "WatchModel without credentials", err, codes.Unauthenticated)

	stream, err = h.client().WatchModel(withKey(traderKey), &experimentv1.WatchModelRequest{ModelName: "m", Alias: "a"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetAlias() != "desk" {
		t.Errorf("WatchModel as trader = %v, %v; want the principal desk in the handler", resp, err)
	}
}

// Every call is logged once, at a level by outcome, with its method, code
// and the principal that made it.
func TestCallLog(t *testing.T) {
	t.Parallel()
	keys, err := auth.ParseKeys(traderKey + ":trader:desk," + researcherKey + ":researcher:lab")
	if err != nil {
		t.Fatal(err)
	}
	fake := authFake()
	fake.get = func(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
		if req.GetExperimentId() == "broken" {
			return nil, errors.New("disk on fire")
		}
		return echoGet(ctx, req)
	}
	h := start(t, server.Options{Keys: keys, Services: []server.Registration{registration(fake)}})
	withKey := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "x-api-key", key)
	}

	// The server logs a call before it answers, so once a call returns its
	// record is written.
	if _, err := h.client().GetExperiment(withKey(traderKey), &experimentv1.GetExperimentRequest{ExperimentId: "e1"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.client().GetExperiment(withKey(researcherKey), &experimentv1.GetExperimentRequest{ExperimentId: "broken"})
	wantCode(t, "GetExperiment(broken)", err, codes.Internal)
	_, err = h.client().CreateExperiment(withKey(traderKey), &experimentv1.CreateExperimentRequest{Name: "x"})
	wantCode(t, "CreateExperiment as trader", err, codes.PermissionDenied)
	stream, err := h.client().WatchModel(withKey(traderKey), &experimentv1.WatchModelRequest{ModelName: "m", Alias: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if err != io.EOF {
				t.Fatalf("WatchModel: %v", err)
			}
			break
		}
	}

	type record struct{ Level, Method, Code, Principal string }
	var got []record
	for _, rec := range h.logs.records(t) {
		if rec["msg"] != "rpc" {
			continue
		}
		str := func(k string) string { s, _ := rec[k].(string); return s }
		got = append(got, record{str("level"), strings.TrimPrefix(str("method"), "/"+experimentService+"/"), str("code"), str("principal")})
	}
	want := []record{
		{"DEBUG", "GetExperiment", "OK", "desk"},
		{"ERROR", "GetExperiment", "Internal", "lab"},
		{"INFO", "CreateExperiment", "PermissionDenied", ""},
		{"DEBUG", "WatchModel", "OK", "desk"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rpc log records mismatch (-want +got):\n%s", diff)
	}
}

func TestMessageSizeLimits(t *testing.T) {
	t.Parallel()
	var created atomic.Int32
	fake := &fakeExperiments{
		create: func(_ context.Context, req *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error) {
			created.Add(1)
			return &experimentv1.CreateExperimentResponse{Experiment: &experimentv1.Experiment{ExperimentId: "e", Name: req.GetName()}}, nil
		},
		get: func(_ context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
			// "big" answers with more than MaxSendBytes.
			desc := ""
			if req.GetExperimentId() == "big" {
				desc = strings.Repeat("d", 8<<10)
			}
			return &experimentv1.GetExperimentResponse{Experiment: &experimentv1.Experiment{ExperimentId: req.GetExperimentId(), Description: desc}}, nil
		},
	}
	cfg := testConfig()
	cfg.MaxRecvBytes = 4 << 10
	cfg.MaxSendBytes = 4 << 10
	h := start(t, server.Options{Config: cfg, Services: []server.Registration{registration(fake)}})

	small := &experimentv1.CreateExperimentRequest{Name: "small", Description: strings.Repeat("x", 1<<10)}
	if _, err := h.client().CreateExperiment(t.Context(), small); err != nil {
		t.Fatalf("CreateExperiment below the limit: %v", err)
	}
	big := &experimentv1.CreateExperimentRequest{Name: "big", Description: strings.Repeat("x", 8<<10)}
	_, err := h.client().CreateExperiment(t.Context(), big)
	wantCode(t, "CreateExperiment above MaxRecvBytes", err, codes.ResourceExhausted)

	// Over REST the gateway enforces the same bound.
	body, err := protojson.Marshal(big)
	if err != nil {
		t.Fatal(err)
	}
	code, respBody := h.do(t, http.MethodPost, "/v1/experiments", strings.NewReader(string(body)))
	if code < 400 || code >= 500 {
		t.Errorf("REST create above MaxRecvBytes = %d %s, want a 4xx", code, respBody)
	}
	if got := created.Load(); got != 1 {
		t.Errorf("handler ran %d times, want 1 (oversized requests must not reach it)", got)
	}

	_, err = h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "big"})
	wantCode(t, "GetExperiment answering above MaxSendBytes", err, codes.ResourceExhausted)
	if _, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "small"}); err != nil {
		t.Errorf("GetExperiment below MaxSendBytes: %v", err)
	}
}

// With no limit configured, messages above gRPC's own 4 MiB default pass,
// over gRPC and REST.
func TestMessageSizeDefault(t *testing.T) {
	t.Parallel()
	var got atomic.Int64
	fake := &fakeExperiments{
		create: func(_ context.Context, req *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error) {
			got.Store(int64(len(req.GetDescription())))
			return &experimentv1.CreateExperimentResponse{Experiment: &experimentv1.Experiment{ExperimentId: "e"}}, nil
		},
	}
	h := start(t, server.Options{Services: []server.Registration{registration(fake)}})
	const size = 5 << 20
	req := &experimentv1.CreateExperimentRequest{Name: "big", Description: strings.Repeat("x", size)}
	if _, err := h.client().CreateExperiment(t.Context(), req); err != nil {
		t.Fatalf("CreateExperiment of %d bytes with default limits: %v", size, err)
	}
	if got.Load() != size {
		t.Errorf("handler got %d bytes, want %d", got.Load(), size)
	}
	body, err := protojson.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if code, respBody := h.do(t, http.MethodPost, "/v1/experiments", strings.NewReader(string(body))); code != http.StatusOK {
		t.Errorf("REST create of %d bytes = %d %.200s, want 200", size, code, respBody)
	}
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// occupied returns an address something already listens on.
func occupied(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// canListen reports whether addr can be bound (and releases it).
func canListen(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func TestNewListenError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cfg      func(busy, free string) server.Config
		wantWhat string
	}{
		{
			name:     "gRPC port in use",
			cfg:      func(busy, free string) server.Config { return server.Config{GRPCAddr: busy, HTTPAddr: free} },
			wantWhat: "gRPC",
		},
		{
			name:     "HTTP port in use",
			cfg:      func(busy, free string) server.Config { return server.Config{GRPCAddr: free, HTTPAddr: busy} },
			wantWhat: "HTTP",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			busy, free := occupied(t), freeAddr(t)
			srv, err := server.New(t.Context(), server.Options{
				Config:   tt.cfg(busy, free),
				Services: []server.Registration{registration(&fakeExperiments{})},
			})
			if err == nil {
				srv.Close()
				t.Fatal("New succeeded on a port in use")
			}
			var le *server.ListenError
			if !errors.As(err, &le) {
				t.Fatalf("New error = %T %v, want *server.ListenError", err, err)
			}
			if le.Addr != busy || le.What != tt.wantWhat {
				t.Errorf("ListenError{What: %q, Addr: %q}, want {%q, %q}", le.What, le.Addr, tt.wantWhat, busy)
			}
			if !strings.Contains(err.Error(), busy) {
				t.Errorf("error %q does not name the address %s", err, busy)
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error %v does not wrap EADDRINUSE", err)
			}
			// Whatever New bound before failing is released.
			if !canListen(free) {
				t.Errorf("%s still bound after New failed", free)
			}
		})
	}
}

func TestNewGatewayErrorReleasesListeners(t *testing.T) {
	t.Parallel()
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	reg := registration(&fakeExperiments{})
	reg.Gateway = func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error {
		return errors.New("duplicate route")
	}
	srv, err := server.New(t.Context(), server.Options{
		Config:   server.Config{GRPCAddr: grpcAddr, HTTPAddr: httpAddr},
		Services: []server.Registration{reg},
	})
	if err == nil {
		srv.Close()
		t.Fatal("New succeeded with a failing gateway registration")
	}
	if !strings.Contains(err.Error(), experimentService) || !strings.Contains(err.Error(), "duplicate route") {
		t.Errorf("error %q does not name the service and the cause", err)
	}
	for _, addr := range []string{grpcAddr, httpAddr} {
		if !canListen(addr) {
			t.Errorf("%s still bound after New failed", addr)
		}
	}
}

func TestCloseReleasesListeners(t *testing.T) {
	t.Parallel()
	srv, err := server.New(t.Context(), server.Options{
		Config:   testConfig(),
		Services: []server.Registration{registration(&fakeExperiments{})},
	})
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := srv.GRPCAddr(), srv.HTTPAddr()
	if canListen(grpcAddr) || canListen(httpAddr) {
		t.Fatal("New did not bind its addresses")
	}
	srv.Close()
	for _, addr := range []string{grpcAddr, httpAddr} {
		if !canListen(addr) {
			t.Errorf("%s still bound after Close", addr)
		}
	}
}

// A server listening on every interface is still reachable in-process,
// and the gateway dials it on loopback.
func TestUnspecifiedHost(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.GRPCAddr = "0.0.0.0:0"
	h := start(t, server.Options{Config: cfg, Services: []server.Registration{registration(&fakeExperiments{get: echoGet})}})
	// Go may bind 0.0.0.0 as a dual-stack [::]; either loopback will do.
	host, _, err := net.SplitHostPort(h.srv.GRPCTarget())
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Errorf("GRPCTarget() = %q, want a loopback address", h.srv.GRPCTarget())
	}
	if _, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "e1"}); err != nil {
		t.Errorf("gRPC call via GRPCTarget: %v", err)
	}
	if code, body := h.do(t, http.MethodGet, "/v1/experiments/e1", nil); code != http.StatusOK {
		t.Errorf("REST call = %d %s, want 200", code, body)
	}
}

// MaxRecvBytes protects the server's memory from REST callers too: a body
// far above it is refused as soon as the limit is passed, not buffered and
// decoded in full first (and before authentication, which happens behind
// the gateway).
func TestRESTBodyLimit(t *testing.T) {
	t.Parallel()
	keys, err := auth.ParseKeys(traderKey + ":trader:desk")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.MaxRecvBytes = 4 << 10
	h := start(t, server.Options{Config: cfg, Keys: keys, Services: []server.Registration{registration(authFake())}})

	conn, err := net.Dial("tcp", h.srv.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Announce 64 MiB, send the first 256 KiB (64 times the limit), and
	// wait for an answer without sending the rest.
	const announced = 64 << 20
	head := "POST /v1/experiments HTTP/1.1\r\nHost: quantmesh\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(announced) + "\r\n\r\n" + `{"name":"x","description":"`
	if _, err := io.WriteString(conn, head+strings.Repeat("x", 256<<10)); err != nil {
		t.Fatalf("write request: %v", err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer 3s after sending 64x MaxRecvBytes of a %d-byte body: %v (the server is waiting to buffer all of it)", announced, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 400 || resp.StatusCode >= 500 {
		t.Errorf("oversized body answered %s, want a 4xx", resp.Status)
	}
}
