package resilience

import (
	"context"
	"errors"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// InterceptorOption configures UnaryClientInterceptor.
type InterceptorOption func(*interceptorOptions)

type interceptorOptions struct {
	idempotent map[string]bool
}

// WithIdempotentMethods marks more unary methods as safe to retry, by full
// method name ("/quantmesh.risk.v1.RiskService/GetLimits"). Prefer
// declaring idempotency in the proto instead.
func WithIdempotentMethods(fullMethods ...string) InterceptorOption {
	return func(o *interceptorOptions) {
		for _, m := range fullMethods {
			o.idempotent[m] = true
		}
	}
}

// UnaryClientInterceptor applies p to every unary call on a connection: the
// per-attempt timeout (as the attempt's deadline, which the server sees),
// the circuit breaker, and retries.
//
// Only idempotent methods are retried: those whose proto declares
// `option idempotency_level = NO_SIDE_EFFECTS;` (or IDEMPOTENT), looked up
// in the global protobuf registry, plus those named with
// WithIdempotentMethods. Other methods get a single attempt — a request that
// timed out may still have taken effect on the server — though still under
// the timeout and the breaker. (gRPC itself transparently retries requests
// that never reached the server.)
//
// Errors come back as gRPC status errors: ErrOpen as Unavailable, ErrTimeout
// as DeadlineExceeded (both still match errors.Is), and a caller's context
// error as Canceled or DeadlineExceeded.
func UnaryClientInterceptor(p *Policy, opts ...InterceptorOption) grpc.UnaryClientInterceptor {
	o := interceptorOptions{idempotent: map[string]bool{}}
	for _, opt := range opts {
		opt(&o)
	}
	var cache sync.Map // full method name -> bool
	retryable := func(method string) bool {
		if o.idempotent[method] {
			return true
		}
		if v, ok := cache.Load(method); ok {
			return v.(bool)
		}
		v := idempotentInRegistry(protoregistry.GlobalFiles, method)
		cache.Store(method, v)
		return v
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		_, err := p.execute(ctx, retryable(method), true, func(ctx context.Context) (any, error) {
			return nil, invoker(ctx, method, req, reply, cc, callOpts...)
		})
		return grpcError(err)
	}
}

// StreamClientInterceptor applies p to the establishment of every stream on
// a connection: the breaker and retries guard opening the stream, which is
// always safe to retry because no request message has been sent yet. Once
// open, the stream is the caller's: it gets no per-attempt timeout (it lives
// as long as the caller's context) and its later errors are not retried nor
// seen by the breaker — reconnecting and resuming is the stream client's job.
// Note that gRPC reports most server-side failures on the first RecvMsg, not
// when the stream opens, so this mainly catches an unreachable peer.
func StreamClientInterceptor(p *Policy) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, callOpts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := p.execute(ctx, true, false, func(ctx context.Context) (any, error) {
			return streamer(ctx, desc, cc, method, callOpts...)
		})
		if err != nil {
			return nil, grpcError(err)
		}
		stream, _ := cs.(grpc.ClientStream)
		return stream, nil
	}
}

// grpcError turns a bare context error into its status error, as gRPC does;
// every other error already carries a status.
func grpcError(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if _, ok := status.FromError(err); !ok {
			return status.FromContextError(err).Err()
		}
	}
	return err
}

// idempotentInRegistry reports whether the method ("/pkg.Service/Method")
// is declared NO_SIDE_EFFECTS or IDEMPOTENT in files.
func idempotentInRegistry(files *protoregistry.Files, fullMethod string) bool {
	svc, name, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok {
		return false
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return false
	}
	mo, ok := md.Options().(*descriptorpb.MethodOptions)
	if !ok {
		return false
	}
	switch mo.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS, descriptorpb.MethodOptions_IDEMPOTENT:
		return true
	default:
		return false
	}
}
