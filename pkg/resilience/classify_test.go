package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/resilience"
)

func TestDefaultClassifier(t *testing.T) {
	t.Parallel()
	failureOnly := resilience.Decision{Failure: true}
	retryOnly := resilience.Decision{Retry: true}
	tests := []struct {
		name string
		err  error
		want resilience.Decision
	}{
		{"unavailable", status.Error(codes.Unavailable, "down"), resilience.Transient},
		{"deadline exceeded", status.Error(codes.DeadlineExceeded, "slow"), resilience.Transient},
		{"wrapped status", fmt.Errorf("call: %w", status.Error(codes.Unavailable, "down")), resilience.Transient},
		{"attempt timeout", fmt.Errorf("x: %w", resilience.ErrTimeout), resilience.Transient},
		{"aborted", status.Error(codes.Aborted, "conflict"), retryOnly},
		{"resource exhausted", status.Error(codes.ResourceExhausted, "busy"), failureOnly},
		{"internal", status.Error(codes.Internal, "bug"), failureOnly},
		{"unknown", status.Error(codes.Unknown, "?"), failureOnly},
		{"canceled status", status.Error(codes.Canceled, "bye"), resilience.Permanent},
		{"context canceled", context.Canceled, resilience.Permanent},
		{"context deadline", context.DeadlineExceeded, resilience.Transient},
		{"invalid argument", status.Error(codes.InvalidArgument, "bad"), resilience.Permanent},
		{"not found", status.Error(codes.NotFound, "no"), resilience.Permanent},
		{"failed precondition", status.Error(codes.FailedPrecondition, "no"), resilience.Permanent},
		{"already exists", status.Error(codes.AlreadyExists, "dup"), resilience.Permanent},
		{"permission denied", status.Error(codes.PermissionDenied, "no"), resilience.Permanent},
		{"unauthenticated", status.Error(codes.Unauthenticated, "who"), resilience.Permanent},
		{"unimplemented", status.Error(codes.Unimplemented, "no"), resilience.Permanent},
		{"domain not found", apierr.NotFound("run", "r1"), resilience.Permanent},
		{"domain invalid", apierr.Invalid("name", "must not be empty"), resilience.Permanent},
		{"domain unavailable", apierr.Unavailable("store", errors.New("conn refused")), resilience.Transient},
		{"plain error", errors.New("connection reset by peer"), resilience.Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, resilience.DefaultClassifier(tt.err)); diff != "" {
				t.Errorf("DefaultClassifier(%v) mismatch (-want +got):\n%s", tt.err, diff)
			}
		})
	}
}
