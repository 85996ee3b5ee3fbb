package resilience_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

// The test service, registered in the global protobuf registry the way a
// generated package would be:
//
//	service EchoService {
//	  rpc Get(StringValue) returns (StringValue) { option idempotency_level = NO_SIDE_EFFECTS; }
//	  rpc Put(StringValue) returns (StringValue);
//	  rpc Watch(StringValue) returns (stream StringValue);
//	}
const (
	echoService = "quantmesh.resiliencetest.v1.EchoService"
	methodGet   = "/" + echoService + "/Get"
	methodPut   = "/" + echoService + "/Put"
	methodWatch = "/" + echoService + "/Watch"
)

func init() {
	sv := ".google.protobuf.StringValue"
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("quantmesh/resiliencetest/v1/echo.proto"),
		Package:    proto.String("quantmesh.resiliencetest.v1"),
		Dependency: []string{"google/protobuf/wrappers.proto"},
		Syntax:     proto.String("proto3"),
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("EchoService"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{
					Name: proto.String("Get"), InputType: &sv, OutputType: &sv,
					Options: &descriptorpb.MethodOptions{
						IdempotencyLevel: descriptorpb.MethodOptions_NO_SIDE_EFFECTS.Enum(),
					},
				},
				{Name: proto.String("Put"), InputType: &sv, OutputType: &sv},
				{Name: proto.String("Watch"), InputType: &sv, OutputType: &sv, ServerStreaming: proto.Bool(true)},
			},
		}},
	}
	_ = wrapperspb.String("") // wrappers.proto must be registered first
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		panic(err)
	}
	if err := protoregistry.GlobalFiles.RegisterFile(fd); err != nil {
		panic(err)
	}
}

// echoServer fails its first `failures` unary calls with `code`, then
// echoes. With block set, unary calls wait for their context instead.
type echoServer struct {
	failures atomic.Int32
	code     codes.Code
	block    bool
	calls    atomic.Int32
	// deadline is the time left on the last call when it arrived, in ns
	// (-1: the call had no deadline).
	deadline atomic.Int64
	// watchGap separates the messages of Watch.
	watchGap time.Duration
}

func (s *echoServer) unary(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	s.calls.Add(1)
	s.deadline.Store(-1)
	if d, ok := ctx.Deadline(); ok {
		s.deadline.Store(int64(time.Until(d)))
	}
	if s.block {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if s.failures.Add(-1) >= 0 {
		return nil, status.Errorf(s.code, "injected failure")
	}
	return wrapperspb.String("echo: " + in.GetValue()), nil
}

func unaryHandler(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	return srv.(*echoServer).unary(ctx, in)
}

func watchHandler(srv any, stream grpc.ServerStream) error {
	s := srv.(*echoServer)
	in := new(wrapperspb.StringValue)
	if err := stream.RecvMsg(in); err != nil {
		return err
	}
	for i := range 3 {
		if i > 0 {
			time.Sleep(s.watchGap)
		}
		if err := stream.SendMsg(wrapperspb.String(in.GetValue())); err != nil {
			return err
		}
	}
	return nil
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: echoService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Get", Handler: unaryHandler},
		{MethodName: "Put", Handler: unaryHandler},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Watch", Handler: watchHandler, ServerStreams: true},
	},
}

// startEcho serves srv on a 127.0.0.1 listener and returns a client
// connection through p's interceptors.
func startEcho(t *testing.T, srv *echoServer, p *resilience.Policy, opts ...resilience.InterceptorOption) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	gs := grpc.NewServer()
	gs.RegisterService(&echoDesc, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(resilience.UnaryClientInterceptor(p, opts...)),
		grpc.WithChainStreamInterceptor(resilience.StreamClientInterceptor(p)),
	)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestUnaryClientInterceptorRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		method    string
		opts      []resilience.InterceptorOption
		failures  int32
		code      codes.Code
		wantCalls int32
		wantCode  codes.Code
	}{
		{"idempotent in proto is retried", methodGet, nil, 2, codes.Unavailable, 3, codes.OK},
		{"retries stop at MaxAttempts", methodGet, nil, 5, codes.Unavailable, 3, codes.Unavailable},
		{"non-idempotent gets one attempt", methodPut, nil, 2, codes.Unavailable, 1, codes.Unavailable},
		{"idempotent by option is retried", methodPut, []resilience.InterceptorOption{resilience.WithIdempotentMethods(methodPut)}, 2, codes.Unavailable, 3, codes.OK},
		{"invalid argument is not retried", methodGet, nil, 1, codes.InvalidArgument, 1, codes.InvalidArgument},
		{"aborted is retried", methodGet, nil, 1, codes.Aborted, 2, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig()
			cfg.Timeout = 5 * time.Second
			h := newHarness(t, "peer:echo", cfg)
			srv := &echoServer{code: tt.code}
			srv.failures.Store(tt.failures)
			conn := startEcho(t, srv, h.p, tt.opts...)

			out := new(wrapperspb.StringValue)
			err := conn.Invoke(context.Background(), tt.method, wrapperspb.String("hi"), out)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("Invoke() = %v, want code %s", err, tt.wantCode)
			}
			if err == nil && out.GetValue() != "echo: hi" {
				t.Errorf("reply = %q, want %q", out.GetValue(), "echo: hi")
			}
			if got := srv.calls.Load(); got != tt.wantCalls {
				t.Errorf("server saw %d calls, want %d", got, tt.wantCalls)
			}
			if got := h.counter(t, retriesMetric); got != int64(tt.wantCalls-1) {
				t.Errorf("retries metric = %d, want %d", got, tt.wantCalls-1)
			}
		})
	}
}

func TestUnaryClientInterceptorBreaker(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.FailureThreshold = 2
	cfg.FailureWindow = 2
	h := newHarness(t, "peer:echo", cfg)
	srv := &echoServer{code: codes.Unavailable}
	srv.failures.Store(1000)
	conn := startEcho(t, srv, h.p)
	ctx := context.Background()

	for i := range 2 {
		err := conn.Invoke(ctx, methodPut, wrapperspb.String("x"), new(wrapperspb.StringValue))
		if status.Code(err) != codes.Unavailable || errors.Is(err, resilience.ErrOpen) {
			t.Fatalf("call %d: Invoke() = %v, want the server's Unavailable", i, err)
		}
	}
	err := conn.Invoke(ctx, methodPut, wrapperspb.String("x"), new(wrapperspb.StringValue))
	if !errors.Is(err, resilience.ErrOpen) || status.Code(err) != codes.Unavailable {
		t.Fatalf("Invoke() with the breaker open = %v (code %s), want ErrOpen with code Unavailable", err, status.Code(err))
	}
	if s, _ := status.FromError(err); !strings.Contains(s.Message(), "peer:echo") {
		t.Errorf("status message %q does not name the target", s.Message())
	}
	if got := srv.calls.Load(); got != 2 {
		t.Errorf("server saw %d calls, want 2: an open breaker must not call", got)
	}
	if got, _ := h.metric(t, stateMetric); got != int64(resilience.StateOpen) {
		t.Errorf("breaker state gauge = %d, want %d", got, resilience.StateOpen)
	}
}

func TestUnaryClientInterceptorTimeout(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.Timeout = 50 * time.Millisecond
	cfg.MaxAttempts = 2
	h := newHarness(t, "peer:echo", cfg)
	srv := &echoServer{block: true}
	conn := startEcho(t, srv, h.p)

	err := conn.Invoke(context.Background(), methodGet, wrapperspb.String("x"), new(wrapperspb.StringValue))
	if !errors.Is(err, resilience.ErrTimeout) || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Invoke() = %v (code %s), want ErrTimeout with code DeadlineExceeded", err, status.Code(err))
	}
	if got := srv.calls.Load(); got != 2 {
		t.Errorf("server saw %d calls, want 2", got)
	}
	if d := time.Duration(srv.deadline.Load()); d <= 0 || d > cfg.Timeout {
		t.Errorf("server saw %s left on the call, want a deadline within %s", d, cfg.Timeout)
	}
	if got := h.counter(t, timeoutsMetric); got != 2 {
		t.Errorf("timeouts metric = %d, want 2", got)
	}
}

func TestStreamClientInterceptorLeavesOpenStreamAlone(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.Timeout = 20 * time.Millisecond
	h := newHarness(t, "peer:echo", cfg)
	// Messages 30ms apart: the stream outlives the per-attempt timeout.
	conn := startEcho(t, &echoServer{watchGap: 30 * time.Millisecond}, h.p)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, methodWatch)
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	if err := cs.SendMsg(wrapperspb.String("tick")); err != nil {
		t.Fatalf("SendMsg: %v", err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	got := 0
	for {
		m := new(wrapperspb.StringValue)
		err := cs.RecvMsg(m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("RecvMsg after %d messages: %v", got, err)
		}
		got++
	}
	if got != 3 {
		t.Errorf("received %d messages, want 3", got)
	}
	if n := h.counter(t, timeoutsMetric); n != 0 {
		t.Errorf("timeouts metric = %d, want 0 for a stream", n)
	}
}

// fakeStream stands in for an established client stream.
type fakeStream struct{ grpc.ClientStream }

func TestStreamClientInterceptorEstablishment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		failures   int
		code       codes.Code
		threshold  int
		wantCalls  int
		wantCode   codes.Code // OK: the stream is returned
		secondCall bool       // make a second call and expect ErrOpen
	}{
		{name: "retried until it opens", failures: 2, code: codes.Unavailable, threshold: 100, wantCalls: 3},
		{name: "permanent error not retried", failures: 1, code: codes.PermissionDenied, threshold: 100, wantCalls: 1, wantCode: codes.PermissionDenied},
		{name: "open breaker fails fast", failures: 100, code: codes.Unavailable, threshold: 3, wantCalls: 3, wantCode: codes.Unavailable, secondCall: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig()
			cfg.FailureThreshold = tt.threshold
			cfg.FailureWindow = tt.threshold
			h := newHarness(t, "peer:echo", cfg)
			intercept := resilience.StreamClientInterceptor(h.p)

			calls := 0
			want := &fakeStream{}
			streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
				calls++
				if calls <= tt.failures {
					return nil, status.Error(tt.code, "injected")
				}
				return want, nil
			}
			cs, err := intercept(context.Background(), &grpc.StreamDesc{ServerStreams: true}, nil, methodWatch, streamer)
			if calls != tt.wantCalls {
				t.Errorf("streamer called %d times, want %d", calls, tt.wantCalls)
			}
			if tt.wantCode == codes.OK {
				if err != nil || cs != want {
					t.Fatalf("interceptor = %v, %v, want the established stream", cs, err)
				}
				return
			}
			if status.Code(err) != tt.wantCode || cs != nil {
				t.Fatalf("interceptor = %v, %v, want code %s", cs, err, tt.wantCode)
			}
			if tt.secondCall {
				_, err := intercept(context.Background(), &grpc.StreamDesc{ServerStreams: true}, nil, methodWatch, streamer)
				if !errors.Is(err, resilience.ErrOpen) || status.Code(err) != codes.Unavailable || calls != tt.wantCalls {
					t.Errorf("second call = %v after %d streamer calls, want ErrOpen without a call", err, calls)
				}
			}
		})
	}
}

func TestUnaryClientInterceptorCanceledCaller(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "peer:echo", fastConfig())
	conn := startEcho(t, &echoServer{}, h.p)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := conn.Invoke(ctx, methodGet, wrapperspb.String("x"), new(wrapperspb.StringValue))
	if status.Code(err) != codes.Canceled {
		t.Errorf("Invoke(canceled ctx) = %v, want code Canceled", err)
	}
}
