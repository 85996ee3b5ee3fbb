package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/auth"
)

// errorUnary maps a handler's domain error to a gRPC status once, at the
// edge. Errors that are not domain errors are logged in full and reach the
// client as a masked Internal status carrying the trace id.
func errorUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			return nil, toStatus(ctx, log, info.FullMethod, err)
		}
		return resp, nil
	}
}

func errorStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := handler(srv, ss); err != nil {
			return toStatus(ss.Context(), log, info.FullMethod, err)
		}
		return nil
	}
}

func toStatus(ctx context.Context, log *slog.Logger, method string, err error) error {
	st, known := apierr.Status(err)
	if known {
		// A domain error's cause (a store or peer failure behind an
		// Unavailable, say) is not for the client: log it here, or it is
		// lost.
		var de *apierr.Error
		if errors.As(err, &de) && de.Cause != nil {
			log.WarnContext(ctx, "call failed", "method", method, "code", st.Code().String(), "error", st.Message(), "cause", de.Cause)
		}
		return st.Err()
	}
	traceID := trace.SpanContextFromContext(ctx).TraceID()
	log.ErrorContext(ctx, "internal error", "method", method, "error", err)
	msg := "internal error"
	if traceID.IsValid() {
		msg = "internal error (trace " + traceID.String() + ")"
	}
	return status.Error(codes.Internal, msg)
}

// recoverUnary turns a panic in a handler into an error (Internal at the
// edge) and logs the stack.
func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				log.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				resp, err = nil, fmt.Errorf("panic: %v", p)
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				log.ErrorContext(ss.Context(), "panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return handler(srv, ss)
	}
}

// callInfo collects what inner interceptors learn about a call for the
// log line written by the outermost one.
type callInfo struct {
	principal string
}

type callInfoKey struct{}

// logUnary logs every call: successes at debug, client errors at info,
// server-side failures at error.
func logUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ci := &callInfo{}
		resp, err := handler(context.WithValue(ctx, callInfoKey{}, ci), req)
		logCall(ctx, log, info.FullMethod, start, ci, err)
		return resp, err
	}
}

func logStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		ci := &callInfo{}
		err := handler(srv, &ctxStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callInfoKey{}, ci)})
		logCall(ss.Context(), log, info.FullMethod, start, ci, err)
		return err
	}
}

// notePrincipalUnary records the authenticated principal for the call log;
// it runs after authentication.
func notePrincipalUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		notePrincipal(ctx)
		return handler(ctx, req)
	}
}

func notePrincipalStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		notePrincipal(ss.Context())
		return handler(srv, ss)
	}
}

func notePrincipal(ctx context.Context) {
	ci, ok := ctx.Value(callInfoKey{}).(*callInfo)
	if !ok {
		return
	}
	if p, ok := auth.FromContext(ctx); ok {
		ci.principal = p.Name
	}
}

func logCall(ctx context.Context, log *slog.Logger, method string, start time.Time, ci *callInfo, err error) {
	code := status.Code(err)
	level := slog.LevelDebug
	switch code {
	case codes.OK:
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable:
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", method),
		slog.String("code", code.String()),
		slog.Duration("duration", time.Since(start)),
	}
	if ci.principal != "" {
		attrs = append(attrs, slog.String("principal", ci.principal))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	log.LogAttrs(ctx, level, "rpc", attrs...)
}

// drainStream cancels a stream's context when the server starts draining,
// so long-lived streams end promptly with Unavailable and their clients
// reconnect elsewhere, instead of holding shutdown until its deadline.
func drainStream(draining <-chan struct{}) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !info.IsServerStream {
			// Client streams end when their client says so; shutdown waits
			// for them up to its deadline.
			return handler(srv, ss)
		}
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		go func() {
			select {
			case <-draining:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
		select {
		case <-draining:
			if err == nil || ctx.Err() != nil {
				return status.Error(codes.Unavailable, "server is shutting down; reconnect and resume")
			}
		default:
		}
		return err
	}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }
