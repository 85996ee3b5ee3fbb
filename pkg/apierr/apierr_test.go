package apierr_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// want builds the status a test expects.
func want(t *testing.T, c codes.Code, msg string, details ...protoadapt.MessageV1) *status.Status {
	t.Helper()
	s := status.New(c, msg)
	if len(details) == 0 {
		return s
	}
	ds, err := s.WithDetails(details...)
	if err != nil {
		t.Fatalf("WithDetails: %v", err)
	}
	return ds
}

func errorInfo(reason string, md map[string]string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: reason, Domain: apierr.Domain, Metadata: md}
}

func badRequest(fv ...[2]string) *errdetails.BadRequest {
	br := &errdetails.BadRequest{}
	for _, v := range fv {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v[0], Description: v[1]})
	}
	return br
}

func TestStatus(t *testing.T) {
	t.Parallel()

	notFound := apierr.NotFound("experiment", "exp-1")
	var threeFields apierr.Violations
	threeFields.Add("name", "must not be empty")
	threeFields.Add("page_size", "must be >= 0, got %d", -3)
	threeFields.Add("tags[env]", "value longer than %d characters", 5000)

	tests := []struct {
		name      string
		err       error
		want      func(t *testing.T) *status.Status
		wantKnown bool
	}{
		{
			name:      "nil is OK",
			err:       nil,
			want:      func(t *testing.T) *status.Status { return want(t, codes.OK, "") },
			wantKnown: true,
		},
		{
			name: "NotFound has ErrorInfo with reason and metadata",
			err:  notFound,
			want: func(t *testing.T) *status.Status {
				return want(t, codes.NotFound, `experiment "exp-1" not found`,
					errorInfo("EXPERIMENT_NOT_FOUND", map[string]string{"resource": "experiment", "id": "exp-1"}))
			},
			wantKnown: true,
		},
		{
			name: "NotFound wrapped twice keeps the domain message and details",
			err:  fmt.Errorf("handler: %w", fmt.Errorf("load experiment: %w", notFound)),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.NotFound, `experiment "exp-1" not found`,
					errorInfo("EXPERIMENT_NOT_FOUND", map[string]string{"resource": "experiment", "id": "exp-1"}))
			},
			wantKnown: true,
		},
		{
			name: "AlreadyExists with hint",
			err:  apierr.AlreadyExists("model", "alpha", "restore the deleted one instead"),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.AlreadyExists, `model "alpha" already exists: restore the deleted one instead`,
					errorInfo("MODEL_ALREADY_EXISTS", map[string]string{"resource": "model", "id": "alpha"}))
			},
			wantKnown: true,
		},
		{
			name: "AlreadyExists without hint",
			err:  apierr.AlreadyExists("model", "alpha", ""),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.AlreadyExists, `model "alpha" already exists`,
					errorInfo("MODEL_ALREADY_EXISTS", map[string]string{"resource": "model", "id": "alpha"}))
			},
			wantKnown: true,
		},
		{
			name: "Invalid is InvalidArgument with one field violation",
			err:  apierr.Invalid("page_size", "must be >= 0, got %d", -1),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.InvalidArgument, "invalid argument: page_size: must be >= 0, got -1",
					badRequest([2]string{"page_size", "must be >= 0, got -1"}))
			},
			wantKnown: true,
		},
		{
			name: "Violations list every field in order",
			err:  threeFields.Err(),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.InvalidArgument,
					"invalid argument: name: must not be empty; page_size: must be >= 0, got -3; tags[env]: value longer than 5000 characters",
					badRequest(
						[2]string{"name", "must not be empty"},
						[2]string{"page_size", "must be >= 0, got -3"},
						[2]string{"tags[env]", "value longer than 5000 characters"},
					))
			},
			wantKnown: true,
		},
		{
			name: "wrapped Invalid still maps",
			err:  fmt.Errorf("validate: %w", apierr.Invalid("name", "too long")),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.InvalidArgument, "invalid argument: name: too long",
					badRequest([2]string{"name", "too long"}))
			},
			wantKnown: true,
		},
		{
			name: "FailedPrecondition has the reason and no metadata",
			err:  apierr.FailedPrecondition("EXPERIMENT_DELETED", "experiment %q is deleted", "exp-1"),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.FailedPrecondition, `experiment "exp-1" is deleted`,
					errorInfo("EXPERIMENT_DELETED", nil))
			},
			wantKnown: true,
		},
		{
			name: "Unavailable keeps the cause out of the message",
			err:  apierr.Unavailable("postgres", errors.New("dial tcp 10.1.2.3:5432: password authentication failed")),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.Unavailable, "postgres is unavailable",
					errorInfo("UNAVAILABLE", map[string]string{"dependency": "postgres"}))
			},
			wantKnown: true,
		},
		{
			// A dependency that is itself a gRPC service fails with a
			// status error; it is still this service's dependency that is
			// unavailable, and the downstream message stays in the logs.
			name: "Unavailable with a downstream status cause",
			err:  apierr.Unavailable("risk", status.Error(codes.NotFound, "account acct-7 not found on risk-2.internal")),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.Unavailable, "risk is unavailable",
					errorInfo("UNAVAILABLE", map[string]string{"dependency": "risk"}))
			},
			wantKnown: true,
		},
		{
			name: "Unavailable with an invalid-argument cause",
			err:  apierr.Unavailable("feature store", apierr.Invalid("internal_shard", "shard 9 is not configured")),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.Unavailable, "feature store is unavailable",
					errorInfo("UNAVAILABLE", map[string]string{"dependency": "feature store"}))
			},
			wantKnown: true,
		},
		{
			name: "Error with Aborted kind",
			err:  &apierr.Error{Kind: apierr.ErrAborted, Reason: "CONCURRENT_UPDATE", Message: "alias moved concurrently", Metadata: map[string]string{"alias": "production"}},
			want: func(t *testing.T) *status.Status {
				return want(t, codes.Aborted, "alias moved concurrently",
					errorInfo("CONCURRENT_UPDATE", map[string]string{"alias": "production"}))
			},
			wantKnown: true,
		},
		{
			name:      "context.Canceled",
			err:       context.Canceled,
			want:      func(t *testing.T) *status.Status { return want(t, codes.Canceled, "request canceled") },
			wantKnown: true,
		},
		{
			name:      "wrapped context.DeadlineExceeded",
			err:       fmt.Errorf("query runs: %w", context.DeadlineExceeded),
			want:      func(t *testing.T) *status.Status { return want(t, codes.DeadlineExceeded, "deadline exceeded") },
			wantKnown: true,
		},
		{
			name: "existing status error passes through with its details",
			err: func() error {
				s, _ := status.New(codes.PermissionDenied, "role trader may not call SetLimits").
					WithDetails(errorInfo("ROLE_DENIED", map[string]string{"role": "trader"}))
				return s.Err()
			}(),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.PermissionDenied, "role trader may not call SetLimits",
					errorInfo("ROLE_DENIED", map[string]string{"role": "trader"}))
			},
			wantKnown: true,
		},
		{
			name: "existing Internal status passes through unchanged",
			err:  status.Error(codes.Internal, "internal error (trace 0123)"),
			want: func(t *testing.T) *status.Status {
				return want(t, codes.Internal, "internal error (trace 0123)")
			},
			wantKnown: true,
		},
		{
			name:      "unknown error is masked",
			err:       errors.New("pq: password authentication failed for user quant"),
			want:      func(t *testing.T) *status.Status { return want(t, codes.Internal, "internal error") },
			wantKnown: false,
		},
		{
			name:      "wrapped unknown error is masked",
			err:       fmt.Errorf("create run: %w", errors.New("disk full on /var/lib/quantmesh")),
			want:      func(t *testing.T) *status.Status { return want(t, codes.Internal, "internal error") },
			wantKnown: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, known := apierr.Status(tt.err)
			if known != tt.wantKnown {
				t.Errorf("Status(%v) known = %v, want %v", tt.err, known, tt.wantKnown)
			}
			if diff := cmp.Diff(tt.want(t).Proto(), got.Proto(), protocmp.Transform()); diff != "" {
				t.Errorf("Status(%v) mismatch (-want +got):\n%s", tt.err, diff)
			}
		})
	}
}

// Every sentinel, wrapped with context, maps to its code and keeps the full
// text (the caller chose to expose it), without details.
func TestStatusSentinels(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind error
		want codes.Code
	}{
		{apierr.ErrInvalidArgument, codes.InvalidArgument},
		{apierr.ErrNotFound, codes.NotFound},
		{apierr.ErrAlreadyExists, codes.AlreadyExists},
		{apierr.ErrFailedPrecondition, codes.FailedPrecondition},
		{apierr.ErrUnavailable, codes.Unavailable},
		{apierr.ErrResourceExhausted, codes.ResourceExhausted},
		{apierr.ErrPermissionDenied, codes.PermissionDenied},
		{apierr.ErrUnauthenticated, codes.Unauthenticated},
		{apierr.ErrAborted, codes.Aborted},
	}
	for _, tt := range tests {
		t.Run(tt.want.String(), func(t *testing.T) {
			t.Parallel()
			err := fmt.Errorf("run %s: %w", "run-9", tt.kind)
			got, known := apierr.Status(err)
			if !known {
				t.Errorf("Status(%v) known = false, want true", err)
			}
			wantProto := status.New(tt.want, "run run-9: "+tt.kind.Error()).Proto()
			if diff := cmp.Diff(wantProto, got.Proto(), protocmp.Transform()); diff != "" {
				t.Errorf("Status(%v) mismatch (-want +got):\n%s", err, diff)
			}

			// The same kind on an *Error decides the code too.
			de := &apierr.Error{Kind: tt.kind, Reason: "R", Message: "m"}
			if got, _ := apierr.Status(de); got.Code() != tt.want {
				t.Errorf("Status(&Error{Kind: %v}) code = %v, want %v", tt.kind, got.Code(), tt.want)
			}
		})
	}
}

func TestErrorsIs(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection refused")
	tests := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"NotFound is ErrNotFound", apierr.NotFound("run", "r1"), apierr.ErrNotFound, true},
		{"NotFound is not ErrAlreadyExists", apierr.NotFound("run", "r1"), apierr.ErrAlreadyExists, false},
		{"wrapped NotFound is ErrNotFound", fmt.Errorf("x: %w", apierr.NotFound("run", "r1")), apierr.ErrNotFound, true},
		{"AlreadyExists is ErrAlreadyExists", apierr.AlreadyExists("run", "r1", ""), apierr.ErrAlreadyExists, true},
		{"FailedPrecondition is ErrFailedPrecondition", apierr.FailedPrecondition("R", "m"), apierr.ErrFailedPrecondition, true},
		{"Unavailable is ErrUnavailable", apierr.Unavailable("db", cause), apierr.ErrUnavailable, true},
		{"Unavailable unwraps to its cause", apierr.Unavailable("db", cause), cause, true},
		{"Invalid is ErrInvalidArgument", apierr.Invalid("f", "bad"), apierr.ErrInvalidArgument, true},
		{"Invalid is not ErrNotFound", apierr.Invalid("f", "bad"), apierr.ErrNotFound, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := errors.Is(tt.err, tt.target); got != tt.want {
				t.Errorf("errors.Is(%v, %v) = %v, want %v", tt.err, tt.target, got, tt.want)
			}
		})
	}
}

// Error() is what gets logged: it carries the cause, which Status keeps
// from the client.
func TestErrorText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"NotFound", apierr.NotFound("experiment", "e1"), `experiment "e1" not found`},
		{"Unavailable includes the cause", apierr.Unavailable("postgres", errors.New("dial tcp: refused")), "postgres is unavailable: dial tcp: refused"},
		{"Unavailable without cause", apierr.Unavailable("postgres", nil), "postgres is unavailable"},
		{"Invalid", apierr.Invalid("name", "must match %s", "[a-z]+"), "invalid argument: name: must match [a-z]+"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestViolations(t *testing.T) {
	t.Parallel()

	t.Run("zero value has no error", func(t *testing.T) {
		t.Parallel()
		var v apierr.Violations
		if err := v.Err(); err != nil {
			t.Errorf("Err() = %v, want nil", err)
		}
	})

	t.Run("Merge adds an InvalidError's violations", func(t *testing.T) {
		t.Parallel()
		var v apierr.Violations
		v.Add("name", "empty")
		var nested apierr.Violations
		nested.Add("tags[a]", "too long")
		nested.Add("tags[b]", "too long")
		if !v.Merge(fmt.Errorf("tags: %w", nested.Err())) {
			t.Fatal("Merge(wrapped InvalidError) = false, want true")
		}
		var inv *apierr.InvalidError
		if !errors.As(v.Err(), &inv) {
			t.Fatalf("Err() = %v, want *InvalidError", v.Err())
		}
		want := []apierr.FieldViolation{
			{Field: "name", Description: "empty"},
			{Field: "tags[a]", Description: "too long"},
			{Field: "tags[b]", Description: "too long"},
		}
		if diff := cmp.Diff(want, inv.Violations); diff != "" {
			t.Errorf("violations mismatch (-want +got):\n%s", diff)
		}
	})

	t.Run("Merge leaves other errors to the caller", func(t *testing.T) {
		t.Parallel()
		var v apierr.Violations
		for _, err := range []error{nil, errors.New("boom"), apierr.NotFound("run", "r")} {
			if v.Merge(err) {
				t.Errorf("Merge(%v) = true, want false", err)
			}
		}
		if err := v.Err(); err != nil {
			t.Errorf("Err() after merging non-invalid errors = %v, want nil", err)
		}
	})
}

// The masked message must not carry anything of the original error.
func TestStatusMasksUnknownErrorText(t *testing.T) {
	t.Parallel()
	secret := "postgres://quant:hunter2@db.internal/prod"
	st, known := apierr.Status(fmt.Errorf("open %s: %w", secret, errors.New("timeout")))
	if known {
		t.Error("known = true for an unknown error")
	}
	if strings.Contains(st.Message(), "hunter2") || strings.Contains(st.String(), "db.internal") {
		t.Errorf("masked status leaks the original error: %v", st)
	}
}
