package experiment_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr/apierrtest"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
)

type harness struct {
	client experimentv1.ExperimentServiceClient
	base   string // REST base URL
}

// start serves ExperimentService on db over real gRPC and REST on loopback.
func start(t *testing.T, db *store.DB) *harness {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st := experiment.NewSQLStore(db)
	t.Cleanup(func() { st.Close() })
	svc := experiment.New(experiment.DefaultConfig(), st, log)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Options{
		Config:   server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second},
		Services: []server.Registration{svc.Registration()},
		Logger:   log,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(srv.GRPCTarget(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{client: experimentv1.NewExperimentServiceClient(conn), base: "http://" + srv.HTTPAddr()}
}

func runServer(t *testing.T, fn func(t *testing.T, h *harness)) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{experiment.Migrations()}, func(t *testing.T, db *store.DB) {
		fn(t, start(t, db))
	})
}

// rest sends a JSON request and decodes the JSON answer.
func (h *harness) rest(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, h.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: decode: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func TestLifecycleOverGRPC(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		created, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{
			Name: "momentum-v2", Description: "first try", Tags: map[string]string{"team": "quant"},
		})
		if err != nil {
			t.Fatal(err)
		}
		e := created.GetExperiment()
		if e.GetExperimentId() == "" || e.GetLifecycleStage() != experimentv1.LifecycleStage_LIFECYCLE_STAGE_ACTIVE ||
			!strings.HasSuffix(e.GetArtifactLocation(), "/"+e.GetExperimentId()) || e.GetCreateTime() == nil {
			t.Fatalf("created %v", e)
		}
		got, err := h.client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{ExperimentId: e.GetExperimentId()})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(e, got.GetExperiment(), protocmp.Transform()); diff != "" {
			t.Errorf("get (-created +got):\n%s", diff)
		}

		upd, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{
			Experiment: &experimentv1.Experiment{ExperimentId: e.GetExperimentId(), Name: "momentum-v3", Description: "ignored"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if upd.GetExperiment().GetName() != "momentum-v3" || upd.GetExperiment().GetDescription() != "first try" {
			t.Errorf("update changed more than the mask: %v", upd.GetExperiment())
		}

		del, err := h.client.DeleteExperiment(ctx, &experimentv1.DeleteExperimentRequest{ExperimentId: e.GetExperimentId()})
		if err != nil {
			t.Fatal(err)
		}
		if del.GetExperiment().GetLifecycleStage() != experimentv1.LifecycleStage_LIFECYCLE_STAGE_DELETED || del.GetExperiment().GetDeleteTime() == nil {
			t.Errorf("deleted: %v", del.GetExperiment())
		}
		list, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetExperiments()) != 0 {
			t.Errorf("active list after delete: %v", list.GetExperiments())
		}
		wantCode(t, "update deleted", codes.FailedPrecondition, func() error {
			_, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{
				Experiment: &experimentv1.Experiment{ExperimentId: e.GetExperimentId(), Description: "x"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
			})
			return err
		})
		wantCode(t, "delete twice", codes.FailedPrecondition, func() error {
			_, err := h.client.DeleteExperiment(ctx, &experimentv1.DeleteExperimentRequest{ExperimentId: e.GetExperimentId()})
			return err
		})
		wantCode(t, "create with a deleted experiment's name", codes.AlreadyExists, func() error {
			_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "momentum-v3"})
			return err
		})

		res, err := h.client.RestoreExperiment(ctx, &experimentv1.RestoreExperimentRequest{ExperimentId: e.GetExperimentId()})
		if err != nil {
			t.Fatal(err)
		}
		if res.GetExperiment().GetLifecycleStage() != experimentv1.LifecycleStage_LIFECYCLE_STAGE_ACTIVE || res.GetExperiment().GetDeleteTime() != nil {
			t.Errorf("restored: %v", res.GetExperiment())
		}
		wantCode(t, "restore active", codes.FailedPrecondition, func() error {
			_, err := h.client.RestoreExperiment(ctx, &experimentv1.RestoreExperimentRequest{ExperimentId: e.GetExperimentId()})
			return err
		})
		byName, err := h.client.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: "momentum-v3"})
		if err != nil {
			t.Fatal(err)
		}
		if byName.GetExperiment().GetExperimentId() != e.GetExperimentId() {
			t.Errorf("by name: %v", byName.GetExperiment())
		}
	})
}

func TestListPaginationOverGRPC(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		var want []string
		for i := range 25 {
			name := fmt.Sprintf("exp-%02d", i)
			if _, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name}); err != nil {
				t.Fatal(err)
			}
			want = append([]string{name}, want...) // newest first
		}
		var got []string
		token := ""
		pages := 0
		for {
			resp, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{PageSize: 10, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, e := range resp.GetExperiments() {
				got = append(got, e.GetName())
			}
			token = resp.GetNextPageToken()
			if token == "" {
				break
			}
		}
		if pages != 3 {
			t.Errorf("pages = %d, want 3", pages)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("names (-want +got):\n%s", diff)
		}
		// A token is bound to its query.
		first, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{PageSize: 10})
		if err != nil {
			t.Fatal(err)
		}
		wantField(t, "token from another view", "page_token", func() error {
			_, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{
				PageSize: 10, PageToken: first.GetNextPageToken(), View: experimentv1.ViewType_VIEW_TYPE_ALL,
			})
			return err
		})
		// An exact multiple of the page size ends with an empty token.
		resp, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{PageSize: 25})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetExperiments()) != 25 || resp.GetNextPageToken() != "" {
			t.Errorf("page of 25 of 25: %d items, token %q", len(resp.GetExperiments()), resp.GetNextPageToken())
		}
	})
}

func TestBadInput(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		unknown := "0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f"
		long := strings.Repeat("n", 251)
		tests := []struct {
			name  string
			code  codes.Code
			field string // the field a BadRequest violation must name
			call  func() error
		}{
			{"empty name", codes.InvalidArgument, "name", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{})
				return err
			}},
			{"blank name", codes.InvalidArgument, "name", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "   "})
				return err
			}},
			{"oversized name", codes.InvalidArgument, "name", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: long})
				return err
			}},
			{"control character in name", codes.InvalidArgument, "name", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "a\x00b"})
				return err
			}},
			{"oversized description", codes.InvalidArgument, "description", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "ok", Description: strings.Repeat("d", 5001)})
				return err
			}},
			{"oversized tag key", codes.InvalidArgument, "tags[" + strings.Repeat("k", 40) + "…]", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "ok", Tags: map[string]string{strings.Repeat("k", 251): "v"}})
				return err
			}},
			{"empty tag key", codes.InvalidArgument, "tags", func() error {
				_, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "ok", Tags: map[string]string{"": "v"}})
				return err
			}},
			{"missing id", codes.InvalidArgument, "experiment_id", func() error {
				_, err := h.client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{})
				return err
			}},
			{"malformed id", codes.InvalidArgument, "experiment_id", func() error {
				_, err := h.client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{ExperimentId: "42"})
				return err
			}},
			{"unknown id", codes.NotFound, "", func() error {
				_, err := h.client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{ExperimentId: unknown})
				return err
			}},
			{"unknown name", codes.NotFound, "", func() error {
				_, err := h.client.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: "nobody"})
				return err
			}},
			{"negative page size", codes.InvalidArgument, "page_size", func() error {
				_, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{PageSize: -1})
				return err
			}},
			{"garbage page token", codes.InvalidArgument, "page_token", func() error {
				_, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{PageToken: "not-a-token"})
				return err
			}},
			{"unknown view", codes.InvalidArgument, "view", func() error {
				_, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{View: 99})
				return err
			}},
			{"update without experiment", codes.InvalidArgument, "experiment", func() error {
				_, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{})
				return err
			}},
			{"update without mask", codes.InvalidArgument, "update_mask", func() error {
				_, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{Experiment: &experimentv1.Experiment{ExperimentId: unknown}})
				return err
			}},
			{"update of an immutable field", codes.InvalidArgument, "update_mask", func() error {
				_, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{
					Experiment: &experimentv1.Experiment{ExperimentId: unknown},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"create_time"}},
				})
				return err
			}},
			{"update with an empty name", codes.InvalidArgument, "experiment.name", func() error {
				_, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{
					Experiment: &experimentv1.Experiment{ExperimentId: unknown},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
				})
				return err
			}},
			{"update unknown", codes.NotFound, "", func() error {
				_, err := h.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{
					Experiment: &experimentv1.Experiment{ExperimentId: unknown, Description: "x"},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
				})
				return err
			}},
			{"delete unknown", codes.NotFound, "", func() error {
				_, err := h.client.DeleteExperiment(ctx, &experimentv1.DeleteExperimentRequest{ExperimentId: unknown})
				return err
			}},
			{"restore malformed", codes.InvalidArgument, "experiment_id", func() error {
				_, err := h.client.RestoreExperiment(ctx, &experimentv1.RestoreExperimentRequest{ExperimentId: "x"})
				return err
			}},
		}
		for _, tt := range tests {
			err := tt.call()
			if got := status.Code(err); got != tt.code {
				t.Errorf("%s: code = %v (%v), want %v", tt.name, got, err, tt.code)
				continue
			}
			if tt.field != "" {
				wantField(t, tt.name, tt.field, func() error { return err })
			}
		}
		// Nothing above was written.
		list, err := h.client.ListExperiments(ctx, &experimentv1.ListExperimentsRequest{View: experimentv1.ViewType_VIEW_TYPE_ALL})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetExperiments()) != 0 {
			t.Errorf("bad requests wrote %d experiments", len(list.GetExperiments()))
		}
	})
}

func TestRESTRoutes(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		code, body := h.rest(t, http.MethodPost, "/v1/experiments", `{"name":"rest-one","tags":{"a":"b"}}`)
		if code != http.StatusOK {
			t.Fatalf("create: %d %v", code, body)
		}
		id, _ := body["experimentId"].(string)
		if id == "" || body["name"] != "rest-one" {
			t.Fatalf("create returned %v", body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/experiments/"+id, "")
		if code != http.StatusOK || body["experimentId"] != id {
			t.Errorf("get: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/experiments:byName?name=rest-one", "")
		if code != http.StatusOK || body["experimentId"] != id {
			t.Errorf("get by name: %d %v", code, body)
		}
		// PATCH derives the field mask from the body's fields.
		code, body = h.rest(t, http.MethodPatch, "/v1/experiments/"+id, `{"description":"patched"}`)
		if code != http.StatusOK || body["description"] != "patched" || body["name"] != "rest-one" {
			t.Errorf("patch: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/experiments?pageSize=1", "")
		if code != http.StatusOK || len(body["experiments"].([]any)) != 1 {
			t.Errorf("list: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodDelete, "/v1/experiments/"+id, "")
		if code != http.StatusOK || body["lifecycleStage"] != "LIFECYCLE_STAGE_DELETED" {
			t.Errorf("delete: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/experiments/"+id+":restore", `{}`)
		if code != http.StatusOK || body["lifecycleStage"] != "LIFECYCLE_STAGE_ACTIVE" {
			t.Errorf("restore: %d %v", code, body)
		}
		// Errors keep their codes and field details over REST.
		code, body = h.rest(t, http.MethodPost, "/v1/experiments", `{"name":""}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "name") {
			t.Errorf("bad create: %d %v", code, body)
		}
		code, _ = h.rest(t, http.MethodGet, "/v1/experiments/0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f", "")
		if code != http.StatusNotFound {
			t.Errorf("unknown id: %d, want 404", code)
		}
		code, _ = h.rest(t, http.MethodGet, "/v1/experiments?pageSize=-5", "")
		if code != http.StatusBadRequest {
			t.Errorf("negative page size: %d, want 400", code)
		}
		code, _ = h.rest(t, http.MethodPost, "/v1/abtests", `{"name":"x"}`)
		if code != http.StatusBadRequest {
			t.Errorf("A/B test without a model over REST: %d, want 400", code)
		}
	})
}

var (
	wantCode  = apierrtest.Code
	wantField = apierrtest.Field
)
