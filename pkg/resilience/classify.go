package resilience

import (
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// Decision is what a Classifier says about the error of one failed attempt.
type Decision struct {
	// Retry allows another attempt, if attempts remain and the call is
	// retryable at all (see UnaryClientInterceptor).
	Retry bool
	// Failure counts the attempt against the target's health: enough of them
	// open the circuit breaker. An error that is not a Failure counts as a
	// success, since the target answered.
	Failure bool
}

// Common decisions.
var (
	// Transient errors are retried and count as breaker failures.
	Transient = Decision{Retry: true, Failure: true}
	// Permanent errors are returned at once and do not count against the
	// target: it answered, the request was wrong.
	Permanent = Decision{}
)

// Classifier decides how a failed attempt's error is treated. It is called
// with non-nil errors only, and not for attempts that ended because the
// caller's context was done (those are never retried nor failures). It must
// be safe for concurrent use.
type Classifier func(err error) Decision

// DefaultClassifier classifies gRPC status errors, quantmesh domain errors
// (pkg/apierr) and context errors by their gRPC code:
//
//   - Unavailable, DeadlineExceeded (including ErrTimeout): Transient.
//   - Aborted (a concurrency conflict): retried, not a failure — the target is
//     healthy, the retry will see fresh state.
//   - ResourceExhausted: a failure, not retried — the target is shedding load
//     (or the message is too large), and retrying would add to the overload;
//     the breaker gives it a rest if it persists.
//   - Internal, Unknown, DataLoss: a failure, not retried — the target is
//     broken in a way a retry is unlikely to fix.
//   - Canceled, InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
//     OutOfRange, PermissionDenied, Unauthenticated, Unimplemented: Permanent.
//
// Any other error (a driver or network error that is neither a status nor a
// domain error) is assumed Transient, so stores should return domain
// outcomes such as "not found" as apierr sentinels. A custom Classifier can
// handle its special cases and fall back to DefaultClassifier.
func DefaultClassifier(err error) Decision {
	if errors.Is(err, ErrTimeout) {
		return Transient
	}
	s, known := apierr.Status(err)
	if !known {
		return Transient
	}
	switch s.Code() {
	case codes.OK:
		return Permanent
	case codes.Unavailable, codes.DeadlineExceeded:
		return Transient
	case codes.Aborted:
		return Decision{Retry: true}
	case codes.ResourceExhausted, codes.Internal, codes.Unknown, codes.DataLoss:
		return Decision{Failure: true}
	default:
		return Permanent
	}
}
