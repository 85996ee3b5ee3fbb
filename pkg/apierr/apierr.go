// Package apierr holds the domain errors every quantmesh service returns and
// their one mapping to gRPC status codes.
//
// Services return plain Go errors built here (or wrapping the sentinels);
// the server's error interceptor calls Status once, at the edge. Errors that
// are not domain errors become codes.Internal with a masked message: the
// original is logged, never sent to the client.
package apierr

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// Domain is the ErrorInfo domain of every quantmesh error.
const Domain = "quantmesh"

// Sentinel kinds. Match them with errors.Is.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrAborted            = errors.New("aborted")
)

var kindCodes = []struct {
	kind error
	code codes.Code
}{
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{ErrAlreadyExists, codes.AlreadyExists},
	{ErrFailedPrecondition, codes.FailedPrecondition},
	{ErrUnavailable, codes.Unavailable},
	{ErrResourceExhausted, codes.ResourceExhausted},
	{ErrPermissionDenied, codes.PermissionDenied},
	{ErrUnauthenticated, codes.Unauthenticated},
	{ErrAborted, codes.Aborted},
}

// Error is a domain error with a machine-readable reason and metadata, sent
// to clients as an ErrorInfo detail.
type Error struct {
	// Kind is one of the sentinels; it decides the gRPC code.
	Kind error
	// Reason is an UPPER_SNAKE_CASE identifier, for example
	// EXPERIMENT_NOT_FOUND.
	Reason string
	// Message is the human-readable text sent to the client.
	Message string
	// Metadata adds structured facts (resource, id, ...).
	Metadata map[string]string
	// Cause is an optional underlying error; it is logged, not sent.
	Cause error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Message + ": " + e.Cause.Error()
	}
	return e.Message
}

// Is reports whether target is e's kind, so errors.Is(err, ErrNotFound)
// works on an *Error.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// NotFound reports that a resource of the given type and id does not exist.
func NotFound(resource, id string) error {
	return &Error{
		Kind:     ErrNotFound,
		Reason:   strings.ToUpper(resource) + "_NOT_FOUND",
		Message:  fmt.Sprintf("%s %q not found", resource, id),
		Metadata: map[string]string{"resource": resource, "id": id},
	}
}

// AlreadyExists reports that a resource with this identity exists.
func AlreadyExists(resource, id, hint string) error {
	msg := fmt.Sprintf("%s %q already exists", resource, id)
	if hint != "" {
		msg += ": " + hint
	}
	return &Error{
		Kind:     ErrAlreadyExists,
		Reason:   strings.ToUpper(resource) + "_ALREADY_EXISTS",
		Message:  msg,
		Metadata: map[string]string{"resource": resource, "id": id},
	}
}

// FailedPrecondition reports that the system is not in a state that allows
// the operation. reason is an UPPER_SNAKE_CASE identifier.
func FailedPrecondition(reason, format string, args ...any) error {
	return &Error{Kind: ErrFailedPrecondition, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Unavailable reports that a dependency cannot be reached; the client may
// retry. cause is logged.
func Unavailable(what string, cause error) error {
	return &Error{
		Kind:     ErrUnavailable,
		Reason:   "UNAVAILABLE",
		Message:  what + " is unavailable",
		Metadata: map[string]string{"dependency": what},
		Cause:    cause,
	}
}

// FieldViolation names one invalid request field.
type FieldViolation struct {
	// Field is the path of the field in the request, for example
	// experiment.name or page_size.
	Field string
	// Description says what is wrong and what is allowed.
	Description string
}

// InvalidError is an invalid-argument error listing every bad field.
type InvalidError struct {
	Violations []FieldViolation
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	b.WriteString("invalid argument: ")
	for i, v := range e.Violations {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.Field)
		b.WriteString(": ")
		b.WriteString(v.Description)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalidArgument) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalidArgument }

// Invalid returns an invalid-argument error for one field.
func Invalid(field, format string, args ...any) error {
	return &InvalidError{Violations: []FieldViolation{{Field: field, Description: fmt.Sprintf(format, args...)}}}
}

// Violations collects field violations while a request is validated.
// The zero value is ready to use.
type Violations struct {
	list []FieldViolation
}

// Add records a violation of field.
func (v *Violations) Add(field, format string, args ...any) {
	v.list = append(v.list, FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// Merge adds every violation of err when it is an *InvalidError and reports
// whether it was; other errors are left to the caller.
func (v *Violations) Merge(err error) bool {
	var inv *InvalidError
	if errors.As(err, &inv) {
		v.list = append(v.list, inv.Violations...)
		return true
	}
	return false
}

// Err returns nil when nothing was recorded, else an *InvalidError.
func (v *Violations) Err() error {
	if len(v.list) == 0 {
		return nil
	}
	return &InvalidError{Violations: v.list}
}

// Status converts err to a gRPC status. The second result is false when err
// is not a domain error: the status is then a masked codes.Internal, and the
// caller should log err. A nil err gives an OK status.
func Status(err error) (*status.Status, bool) {
	if err == nil {
		return status.New(codes.OK, ""), true
	}
	// A domain error decides its own code, whatever its cause: checked
	// first, so Unavailable("risk", <a NotFound status>) stays Unavailable.
	var de *Error
	if errors.As(err, &de) && de.Kind != nil {
		code := codeOf(de.Kind)
		info := &errdetails.ErrorInfo{Reason: de.Reason, Domain: Domain, Metadata: de.Metadata}
		return withDetails(status.New(code, de.Message), info), code != codes.Internal
	}
	if s, ok := status.FromError(err); ok {
		return s, true
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled"), true
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded"), true
	}

	var inv *InvalidError
	if errors.As(err, &inv) {
		br := &errdetails.BadRequest{}
		for _, v := range inv.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
				Field:       v.Field,
				Description: v.Description,
			})
		}
		return withDetails(status.New(codes.InvalidArgument, inv.Error()), br), true
	}

	for _, kc := range kindCodes {
		if errors.Is(err, kc.kind) {
			return status.New(kc.code, err.Error()), true
		}
	}
	return status.New(codes.Internal, "internal error"), false
}

func codeOf(kind error) codes.Code {
	for _, kc := range kindCodes {
		if kind == kc.kind {
			return kc.code
		}
	}
	return codes.Internal
}

func withDetails(s *status.Status, details ...protoadapt.MessageV1) *status.Status {
	ds, err := s.WithDetails(details...)
	if err != nil {
		return s
	}
	return ds
}
