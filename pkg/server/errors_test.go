package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/testing/protocmp"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// secret is in every error the handlers below fail with unexpectedly; it
// must reach the logs and never the client.
const secret = "postgres://quant:hunter2@db.internal:5432"

var maskedMessage = regexp.MustCompile(`^internal error \(trace ([0-9a-f]{32})\)$`)

// behaviours of the fake GetExperiment and WatchModel, by experiment id or
// model name.
var behaviours = map[string]func() error{
	"not-found": func() error { return apierr.NotFound("experiment", "not-found") },
	"wrapped-not-found": func() error {
		return fmt.Errorf("get experiment: %w", apierr.NotFound("experiment", "wrapped-not-found"))
	},
	"invalid": func() error {
		var v apierr.Violations
		v.Add("experiment_id", "must be a UUID")
		v.Add("view", "unknown view %d", 7)
		return v.Err()
	},
	"precondition": func() error {
		return apierr.FailedPrecondition("EXPERIMENT_DELETED", "experiment %q is deleted", "precondition")
	},
	"unavailable": func() error { return apierr.Unavailable("database", errors.New(secret+": connection refused")) },
	"status":      func() error { return status.Error(codes.Aborted, "alias moved concurrently") },
	"deadline":    func() error { return fmt.Errorf("query: %w", context.DeadlineExceeded) },
	"plain":       func() error { return fmt.Errorf("scan row: %w", errors.New(secret+": relation does not exist")) },
	"panic":       func() error { panic("nil map write near " + secret) },
}

func behavingFake() *fakeExperiments {
	return &fakeExperiments{
		get: func(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
			if b, ok := behaviours[req.GetExperimentId()]; ok {
				return nil, b()
			}
			return echoGet(ctx, req)
		},
		watch: func(req *experimentv1.WatchModelRequest, ss grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error {
			if err := ss.Send(&experimentv1.WatchModelResponse{Alias: req.GetAlias(), Revision: 1}); err != nil {
				return err
			}
			if b, ok := behaviours[req.GetModelName()]; ok {
				return b()
			}
			return nil
		},
	}
}

func statusProto(t *testing.T, c codes.Code, msg string, details ...protoadapt.MessageV1) *spb.Status {
	t.Helper()
	s := status.New(c, msg)
	if len(details) > 0 {
		var err error
		if s, err = s.WithDetails(details...); err != nil {
			t.Fatal(err)
		}
	}
	return s.Proto()
}

type errorCase struct {
	id   string
	want func(t *testing.T) *spb.Status // nil: a masked Internal
}

func errorCases() []errorCase {
	notFound := func(id string) func(t *testing.T) *spb.Status {
		return func(t *testing.T) *spb.Status {
			return statusProto(t, codes.NotFound, fmt.Sprintf("experiment %q not found", id), &errdetails.ErrorInfo{
				Reason: "EXPERIMENT_NOT_FOUND", Domain: apierr.Domain,
				Metadata: map[string]string{"resource": "experiment", "id": id},
			})
		}
	}
	return []errorCase{
		{id: "not-found", want: notFound("not-found")},
		{id: "wrapped-not-found", want: notFound("wrapped-not-found")},
		{id: "invalid", want: func(t *testing.T) *spb.Status {
			return statusProto(t, codes.InvalidArgument, "invalid argument: experiment_id: must be a UUID; view: unknown view 7",
				&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
					{Field: "experiment_id", Description: "must be a UUID"},
					{Field: "view", Description: "unknown view 7"},
				}})
		}},
		{id: "precondition", want: func(t *testing.T) *spb.Status {
			return statusProto(t, codes.FailedPrecondition, `experiment "precondition" is deleted`,
				&errdetails.ErrorInfo{Reason: "EXPERIMENT_DELETED", Domain: apierr.Domain})
		}},
		{id: "unavailable", want: func(t *testing.T) *spb.Status {
			return statusProto(t, codes.Unavailable, "database is unavailable",
				&errdetails.ErrorInfo{Reason: "UNAVAILABLE", Domain: apierr.Domain, Metadata: map[string]string{"dependency": "database"}})
		}},
		{id: "status", want: func(t *testing.T) *spb.Status {
			return statusProto(t, codes.Aborted, "alias moved concurrently")
		}},
		{id: "deadline", want: func(t *testing.T) *spb.Status {
			return statusProto(t, codes.DeadlineExceeded, "deadline exceeded")
		}},
		{id: "plain"},
		{id: "panic"},
	}
}

// checkMasked asserts st is a masked Internal status whose trace id leads
// to a log record holding the original error.
func checkMasked(t *testing.T, h *harness, st *spb.Status) {
	t.Helper()
	if codes.Code(st.GetCode()) != codes.Internal {
		t.Errorf("code = %v, want Internal", codes.Code(st.GetCode()))
	}
	if len(st.GetDetails()) != 0 {
		t.Errorf("masked status has details: %v", st.GetDetails())
	}
	m := maskedMessage.FindStringSubmatch(st.GetMessage())
	if m == nil {
		t.Fatalf("message = %q, want %q", st.GetMessage(), maskedMessage)
	}
	traceID := m[1]
	for _, rec := range h.logs.records(t) {
		if rec["msg"] == "internal error" && rec["trace_id"] == traceID {
			if errText, _ := rec["error"].(string); !strings.Contains(errText, secret) {
				t.Errorf("internal error log %v does not carry the original error", rec)
			}
			return
		}
	}
	t.Errorf("no internal error log record with trace_id %s", traceID)
}

func noLeak(t *testing.T, where, s string) {
	t.Helper()
	if containsAny(s, "hunter2", "db.internal", "nil map write", "relation does not exist") {
		t.Errorf("%s leaks the original error: %q", where, s)
	}
}

func TestErrorsOverGRPC(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(behavingFake())}})
	for _, tt := range errorCases() {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			_, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: tt.id})
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("error %v is not a status", err)
			}
			noLeak(t, "status", err.Error())
			if tt.want == nil {
				checkMasked(t, h, st.Proto())
				return
			}
			if diff := cmp.Diff(tt.want(t), st.Proto(), protocmp.Transform()); diff != "" {
				t.Errorf("status mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// Server streams map their errors, and recover from panics, as unary
// calls do.
func TestErrorsOverGRPCStream(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(behavingFake())}})
	for _, tt := range errorCases() {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			stream, err := h.client().WatchModel(t.Context(), &experimentv1.WatchModelRequest{ModelName: tt.id, Alias: "production"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatalf("first Recv: %v", err)
			}
			_, err = stream.Recv()
			st, ok := status.FromError(err)
			if !ok || err == nil {
				t.Fatalf("second Recv error = %v, want a status", err)
			}
			noLeak(t, "status", err.Error())
			if tt.want == nil {
				checkMasked(t, h, st.Proto())
				return
			}
			if diff := cmp.Diff(tt.want(t), st.Proto(), protocmp.Transform()); diff != "" {
				t.Errorf("status mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// A panic is logged with its stack, and the server goes on serving.
func TestPanicRecovery(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(behavingFake())}})
	for range 3 {
		_, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "panic"})
		wantCode(t, "GetExperiment(panic)", err, codes.Internal)
		resp, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "fine"})
		if err != nil || resp.GetExperiment().GetExperimentId() != "fine" {
			t.Fatalf("GetExperiment after a panic = %v, %v; want the experiment", resp, err)
		}
	}
	var panics int
	for _, rec := range h.logs.records(t) {
		if rec["msg"] != "panic in handler" {
			continue
		}
		panics++
		if p, _ := rec["panic"].(string); !strings.Contains(p, "nil map write") {
			t.Errorf("panic log %v lacks the panic value", rec)
		}
		if st, _ := rec["stack"].(string); !strings.Contains(st, "goroutine") {
			t.Errorf("panic log lacks the stack: %v", rec["stack"])
		}
		if rec["method"] != experimentv1.ExperimentService_GetExperiment_FullMethodName {
			t.Errorf("panic log method = %v", rec["method"])
		}
	}
	if panics != 3 {
		t.Errorf("logged %d panics, want 3", panics)
	}
}

// The REST gateway turns the same statuses into HTTP codes and the JSON
// google.rpc.Status, details included.
func TestErrorsOverREST(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(behavingFake())}})
	wantHTTP := map[string]int{
		"not-found":         http.StatusNotFound,
		"wrapped-not-found": http.StatusNotFound,
		"invalid":           http.StatusBadRequest,
		"precondition":      http.StatusBadRequest,
		"unavailable":       http.StatusServiceUnavailable,
		"status":            http.StatusConflict,
		"deadline":          http.StatusGatewayTimeout,
		"plain":             http.StatusInternalServerError,
		"panic":             http.StatusInternalServerError,
	}
	for _, tt := range errorCases() {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			code, body := h.do(t, http.MethodGet, "/v1/experiments/"+tt.id, nil)
			if code != wantHTTP[tt.id] {
				t.Errorf("HTTP status = %d, want %d (body %s)", code, wantHTTP[tt.id], body)
			}
			noLeak(t, "body", body)
			var got spb.Status
			if err := protojson.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body %q is not a google.rpc.Status: %v", body, err)
			}
			if tt.want == nil {
				checkMasked(t, h, &got)
				return
			}
			if diff := cmp.Diff(tt.want(t), &got, protocmp.Transform()); diff != "" {
				t.Errorf("status mismatch (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("success", func(t *testing.T) {
		t.Parallel()
		code, body := h.do(t, http.MethodGet, "/v1/experiments/exp-42", nil)
		if code != http.StatusOK {
			t.Fatalf("HTTP status = %d, want 200 (body %s)", code, body)
		}
		var got experimentv1.Experiment
		if err := protojson.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		want := &experimentv1.Experiment{ExperimentId: "exp-42", Name: "anonymous"}
		if diff := cmp.Diff(want, &got, protocmp.Transform()); diff != "" {
			t.Errorf("experiment mismatch (-want +got):\n%s", diff)
		}
	})
}

// A domain error's cause reaches the log (never the client): an
// Unavailable's store failure is otherwise lost.
func TestDomainErrorCauseIsLogged(t *testing.T) {
	t.Parallel()
	h := start(t, server.Options{Services: []server.Registration{registration(behavingFake())}})
	_, err := h.client().GetExperiment(t.Context(), &experimentv1.GetExperimentRequest{ExperimentId: "unavailable"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("error %v, want Unavailable", err)
	}
	noLeak(t, "status", err.Error())
	for _, rec := range h.logs.records(t) {
		if cause, _ := rec["cause"].(string); rec["msg"] == "call failed" && strings.Contains(cause, secret) {
			return
		}
	}
	t.Error("no log record carries the Unavailable's cause")
}
