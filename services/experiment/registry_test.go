package experiment_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
)

// streamGuard bounds how long a test waits for a stream message, so a bug
// fails the test instead of hanging it. It is never what a test asserts.
const streamGuard = 60 * time.Second

// regServer is ExperimentService over real gRPC and REST, with a way to
// stop it (a drain, as on SIGTERM) in the middle of a test.
type regServer struct {
	*harness
	addr string // gRPC listen address
	stop func() // drains the server and waits until it has stopped
}

// serveRegistry serves ExperimentService on db. grpcAddr may name a fixed
// port (to restart a server where its clients expect it) or port 0.
func serveRegistry(t *testing.T, db *store.DB, grpcAddr string, opts ...experiment.ServerOption) *regServer {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st := experiment.NewSQLStore(db)
	t.Cleanup(func() { st.Close() })
	svc := experiment.New(experiment.DefaultConfig(), st, log, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Options{
		Config:   server.Config{GRPCAddr: grpcAddr, HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second},
		Services: []server.Registration{svc.Registration()},
		Logger:   log,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	conn := dial(t, srv.GRPCTarget())
	return &regServer{
		harness: &harness{client: experimentv1.NewExperimentServiceClient(conn), base: "http://" + srv.HTTPAddr()},
		addr:    srv.GRPCAddr(),
		stop:    stop,
	}
}

// dial connects to target, reconnecting quickly after the server restarts.
func dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func runRegistry(t *testing.T, fn func(t *testing.T, db *store.DB)) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{experiment.Migrations()}, fn)
}

func mustModel(t *testing.T, c experimentv1.ExperimentServiceClient, name string) *experimentv1.RegisteredModel {
	t.Helper()
	resp, err := c.CreateRegisteredModel(context.Background(), &experimentv1.CreateRegisteredModelRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetRegisteredModel()
}

// weightsOf returns distinct weights for a label.
func weightsOf(label string) []byte { return []byte("weights of " + label) }

func mustVersion(t *testing.T, c experimentv1.ExperimentServiceClient, model string, weights []byte) *experimentv1.ModelVersion {
	t.Helper()
	resp, err := c.CreateModelVersion(context.Background(), &experimentv1.CreateModelVersionRequest{
		ModelName: model, Format: "quantmesh.mlp.v1", Weights: weights,
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetModelVersion()
}

func setAlias(t *testing.T, c experimentv1.ExperimentServiceClient, model, alias string, version int64) uint64 {
	t.Helper()
	resp, err := c.SetModelAlias(context.Background(), &experimentv1.SetModelAliasRequest{ModelName: model, Alias: alias, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetRevision()
}

// watcher is one WatchModel stream.
type watcher struct {
	stream grpc.ServerStreamingClient[experimentv1.WatchModelResponse]
	cancel context.CancelFunc
}

func watch(t *testing.T, c experimentv1.ExperimentServiceClient, model, alias string, after uint64) *watcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), streamGuard)
	t.Cleanup(cancel)
	stream, err := c.WatchModel(ctx, &experimentv1.WatchModelRequest{ModelName: model, Alias: alias, AfterRevision: after})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	// Headers come once the server watches (or with its error): changes
	// made after this reach the stream.
	_, _ = stream.Header()
	return &watcher{stream: stream, cancel: cancel}
}

func (w *watcher) next(t *testing.T) *experimentv1.WatchModelResponse {
	t.Helper()
	msg, err := w.stream.Recv()
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	return msg
}

// wantVersion checks a watch message that carries a version.
func wantVersion(t *testing.T, msg *experimentv1.WatchModelResponse, alias string, version int64, weights []byte, revision uint64) {
	t.Helper()
	mv := msg.GetModelVersion()
	if msg.GetDeleted() || msg.GetAlias() != alias || mv.GetVersion() != version || !bytes.Equal(mv.GetWeights(), weights) ||
		(revision != 0 && msg.GetRevision() != revision) {
		t.Fatalf("watch message: alias %q version %d deleted %v revision %d weights %q; want alias %q version %d revision %d weights %q",
			msg.GetAlias(), mv.GetVersion(), msg.GetDeleted(), msg.GetRevision(), mv.GetWeights(), alias, version, revision, weights)
	}
}

func wantDeleted(t *testing.T, msg *experimentv1.WatchModelResponse, alias string, after uint64) {
	t.Helper()
	if !msg.GetDeleted() || msg.GetModelVersion() != nil || msg.GetAlias() != alias || msg.GetRevision() <= after {
		t.Fatalf("watch message %v: want the deletion of %q with a revision above %d", msg, alias, after)
	}
}

func TestRegistryLifecycleOverGRPC(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		run := h.newRun(t, "training")

		created, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{
			Name: "policy.mlp-v1_x", Description: "trading policy", Tags: map[string]string{"team": "quant"},
		})
		if err != nil {
			t.Fatal(err)
		}
		m := created.GetRegisteredModel()
		if m.GetName() != "policy.mlp-v1_x" || m.GetLatestVersion() != 0 || len(m.GetAliases()) != 0 || m.GetCreateTime() == nil {
			t.Fatalf("created %v", m)
		}
		got, err := c.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: m.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(m, got.GetRegisteredModel(), protocmp.Transform()); diff != "" {
			t.Errorf("get (-created +got):\n%s", diff)
		}
		wantCode(t, "create twice", codes.AlreadyExists, func() error {
			_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: m.GetName()})
			return err
		})

		upd, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{
			RegisteredModel: &experimentv1.RegisteredModel{Name: m.GetName(), Description: "v2 policy", Tags: map[string]string{"ignored": "x"}},
			UpdateMask:      &fieldmaskpb.FieldMask{Paths: []string{"description"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if upd.GetRegisteredModel().GetDescription() != "v2 policy" || upd.GetRegisteredModel().GetTags()["team"] != "quant" {
			t.Errorf("update changed more or less than the mask: %v", upd.GetRegisteredModel())
		}

		v1, err := c.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
			ModelName: m.GetName(), Format: "quantmesh.mlp.v1", Weights: weightsOf("v1"), SourceRunId: run.GetRunId(),
			Metrics: map[string]float64{"sharpe": 1.5}, Tags: map[string]string{"stage": "candidate"}, Description: "first",
		})
		if err != nil {
			t.Fatal(err)
		}
		mv := v1.GetModelVersion()
		sum := sha256.Sum256(weightsOf("v1"))
		if mv.GetVersion() != 1 || mv.GetSourceRunId() != run.GetRunId() || mv.GetChecksumSha256() != hex.EncodeToString(sum[:]) ||
			mv.GetSizeBytes() != int64(len(weightsOf("v1"))) || mv.GetWeights() != nil || mv.GetMetrics()["sharpe"] != 1.5 {
			t.Fatalf("version 1: %v", mv)
		}
		if v := mustVersion(t, c, m.GetName(), weightsOf("v2")); v.GetVersion() != 2 {
			t.Fatalf("second version is %d", v.GetVersion())
		}

		rev := setAlias(t, c, m.GetName(), "production", 1)
		if rev == 0 {
			t.Fatal("SetModelAlias returned revision 0")
		}
		if again := setAlias(t, c, m.GetName(), "production", 1); again != rev {
			t.Errorf("setting an alias to its version again: revision %d, want the unchanged %d", again, rev)
		}
		setAlias(t, c, m.GetName(), "staging", 2)
		got, err = c.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: m.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetRegisteredModel().GetLatestVersion() != 2 ||
			!cmp.Equal(got.GetRegisteredModel().GetAliases(), map[string]int64{"production": 1, "staging": 2}) {
			t.Errorf("model with versions and aliases: %v", got.GetRegisteredModel())
		}

		gv, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: m.GetName(), Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(gv.GetModelVersion().GetAliases(), []string{"production"}) || gv.GetModelVersion().GetWeights() != nil {
			t.Errorf("get version 1 (basic view): %v", gv.GetModelVersion())
		}
		uv, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{
			ModelVersion: &experimentv1.ModelVersion{ModelName: m.GetName(), Version: 1, Tags: map[string]string{"stage": "approved"}, Format: "ignored"},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"tags"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if uv.GetModelVersion().GetTags()["stage"] != "approved" || uv.GetModelVersion().GetDescription() != "first" ||
			uv.GetModelVersion().GetFormat() != "quantmesh.mlp.v1" {
			t.Errorf("update version: %v", uv.GetModelVersion())
		}

		byAlias, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{
			ModelName: m.GetName(), Alias: "production", View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL,
		})
		if err != nil {
			t.Fatal(err)
		}
		if byAlias.GetModelVersion().GetVersion() != 1 || !bytes.Equal(byAlias.GetModelVersion().GetWeights(), weightsOf("v1")) {
			t.Errorf("by alias: %v", byAlias.GetModelVersion())
		}

		if _, err := c.DeleteModelAlias(ctx, &experimentv1.DeleteModelAliasRequest{ModelName: m.GetName(), Alias: "staging"}); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "deleted alias", codes.NotFound, func() error {
			_, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: m.GetName(), Alias: "staging"})
			return err
		})
		wantCode(t, "delete alias twice", codes.NotFound, func() error {
			_, err := c.DeleteModelAlias(ctx, &experimentv1.DeleteModelAliasRequest{ModelName: m.GetName(), Alias: "staging"})
			return err
		})

		if _, err := c.DeleteRegisteredModel(ctx, &experimentv1.DeleteRegisteredModelRequest{Name: m.GetName()}); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "get deleted model", codes.NotFound, func() error {
			_, err := c.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: m.GetName()})
			return err
		})
		wantCode(t, "version of a deleted model", codes.NotFound, func() error {
			_, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: m.GetName(), Version: 1})
			return err
		})
		// The name is free again, and versions start from 1.
		mustModel(t, c, m.GetName())
		if v := mustVersion(t, c, m.GetName(), weightsOf("new")); v.GetVersion() != 1 {
			t.Errorf("first version of a re-created model is %d", v.GetVersion())
		}
		wantCode(t, "alias of a deleted model", codes.NotFound, func() error {
			_, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: m.GetName(), Alias: "production"})
			return err
		})
	})
}

func TestRegistryOverREST(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		code, body := h.rest(t, http.MethodPost, "/v1/models", `{"name":"rest.model","description":"d","tags":{"a":"b"}}`)
		if code != http.StatusOK || body["name"] != "rest.model" {
			t.Fatalf("create: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/models/rest.model", "")
		if code != http.StatusOK || body["description"] != "d" {
			t.Errorf("get: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPatch, "/v1/models/rest.model", `{"description":"patched"}`)
		if code != http.StatusOK || body["description"] != "patched" || fmt.Sprint(body["tags"]) != "map[a:b]" {
			t.Errorf("patch: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/models?pageSize=10", "")
		if code != http.StatusOK || len(body["registeredModels"].([]any)) != 1 {
			t.Errorf("list: %d %v", code, body)
		}

		weights := []byte{0, 1, 2, 250, 251, 255}
		sum := sha256.Sum256(weights)
		code, body = h.rest(t, http.MethodPost, "/v1/models/rest.model/versions", fmt.Sprintf(
			`{"format":"quantmesh.mlp.v1","weights":%q,"checksumSha256":%q,"metrics":{"sharpe":1.25}}`,
			base64.StdEncoding.EncodeToString(weights), hex.EncodeToString(sum[:])))
		if code != http.StatusOK || body["version"] != "1" || body["sizeBytes"] != "6" || body["weights"] != "" {
			t.Fatalf("create version: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/models/rest.model/versions/1?view=MODEL_VERSION_VIEW_FULL", "")
		if code != http.StatusOK || body["weights"] != base64.StdEncoding.EncodeToString(weights) {
			t.Errorf("get version with weights: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPatch, "/v1/models/rest.model/versions/1", `{"description":"best so far"}`)
		if code != http.StatusOK || body["description"] != "best so far" {
			t.Errorf("patch version: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/models/rest.model/versions", "")
		if code != http.StatusOK || len(body["modelVersions"].([]any)) != 1 {
			t.Errorf("list versions: %d %v", code, body)
		}

		code, body = h.rest(t, http.MethodPut, "/v1/models/rest.model/aliases/production", `{"version":"1","expectedRevision":"0"}`)
		if code != http.StatusOK || body["revision"] == nil {
			t.Fatalf("set alias: %d %v", code, body)
		}
		rev := body["revision"].(string)
		code, body = h.rest(t, http.MethodPut, "/v1/models/rest.model/aliases/production", `{"version":"1","expectedRevision":"0"}`)
		if code != http.StatusOK || body["revision"] != rev {
			t.Errorf("set alias again: %d %v, want revision %s", code, body, rev)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/models/rest.model/aliases/production", "")
		if code != http.StatusOK || body["version"] != "1" || fmt.Sprint(body["aliases"]) != "[production]" {
			t.Errorf("get by alias: %d %v", code, body)
		}

		// WatchModel is newline-delimited JSON, one {"result": ...} per
		// message.
		req, err := http.NewRequest(http.MethodGet, h.base+"/v1/models/rest.model/aliases/production:watch", nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), streamGuard)
		defer cancel()
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
		if err != nil {
			t.Fatalf("watch over REST: %v", err)
		}
		cancel()
		resp.Body.Close()
		var msg struct {
			Result struct {
				ModelVersion struct {
					Version string `json:"version"`
					Weights string `json:"weights"`
				} `json:"modelVersion"`
				Revision string `json:"revision"`
				Alias    string `json:"alias"`
			} `json:"result"`
		}
		if err := json.Unmarshal(line, &msg); err != nil {
			t.Fatalf("watch line %s: %v", line, err)
		}
		if r := msg.Result; r.Alias != "production" || r.Revision != rev || r.ModelVersion.Version != "1" ||
			r.ModelVersion.Weights != base64.StdEncoding.EncodeToString(weights) {
			t.Errorf("watch over REST: %s", line)
		}

		code, body = h.rest(t, http.MethodDelete, "/v1/models/rest.model/aliases/production", "")
		if code != http.StatusOK {
			t.Errorf("delete alias: %d %v", code, body)
		}
		code, _ = h.rest(t, http.MethodGet, "/v1/models/rest.model/aliases/production", "")
		if code != http.StatusNotFound {
			t.Errorf("deleted alias: %d, want 404", code)
		}
		code, body = h.rest(t, http.MethodPut, "/v1/models/rest.model/aliases/latest", `{"version":"1"}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "alias") {
			t.Errorf("reserved alias: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/models/rest.model/versions", `{"format":"f","weights":"AAE=","checksumSha256":"`+strings.Repeat("0", 64)+`"}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "checksum_sha256") {
			t.Errorf("checksum mismatch: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodDelete, "/v1/models/rest.model", "")
		if code != http.StatusOK {
			t.Errorf("delete model: %d %v", code, body)
		}
		code, _ = h.rest(t, http.MethodGet, "/v1/models/rest.model", "")
		if code != http.StatusNotFound {
			t.Errorf("deleted model: %d, want 404", code)
		}
	})
}

func TestRegistryPagination(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		var want []string
		for i := range 25 {
			name := fmt.Sprintf("model-%02d", 24-i) // created out of order
			mustModel(t, c, name)
			want = append(want, name)
		}
		sort.Strings(want)
		var got []string
		token, pages := "", 0
		for {
			resp, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{PageSize: 10, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, m := range resp.GetRegisteredModels() {
				got = append(got, m.GetName())
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		if pages != 3 {
			t.Errorf("model pages = %d, want 3", pages)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("models in name order (-want +got):\n%s", diff)
		}
		all, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{PageSize: 25})
		if err != nil {
			t.Fatal(err)
		}
		if len(all.GetRegisteredModels()) != 25 || all.GetNextPageToken() != "" {
			t.Errorf("page of 25 of 25: %d models, token %q", len(all.GetRegisteredModels()), all.GetNextPageToken())
		}

		// Versions: newest first; aliases listed on each page.
		for i := range 12 {
			mustVersion(t, c, "model-03", weightsOf(fmt.Sprint(i)))
		}
		mustVersion(t, c, "model-04", weightsOf("other"))
		setAlias(t, c, "model-03", "production", 7)
		setAlias(t, c, "model-04", "production", 1)
		var versions [][]int64
		token = ""
		for {
			resp, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "model-03", PageSize: 5, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			var pageVersions []int64
			for _, v := range resp.GetModelVersions() {
				pageVersions = append(pageVersions, v.GetVersion())
				if v.GetWeights() != nil {
					t.Errorf("listed version %d carries weights", v.GetVersion())
				}
				if wantAliases := v.GetVersion() == 7; wantAliases != (len(v.GetAliases()) == 1) {
					t.Errorf("version %d aliases %v", v.GetVersion(), v.GetAliases())
				}
			}
			versions = append(versions, pageVersions)
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		if diff := cmp.Diff([][]int64{{12, 11, 10, 9, 8}, {7, 6, 5, 4, 3}, {2, 1}}, versions); diff != "" {
			t.Errorf("version pages (-want +got):\n%s", diff)
		}
		first, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "model-03", PageSize: 5})
		if err != nil {
			t.Fatal(err)
		}
		wantField(t, "token of another model's versions", "page_token", func() error {
			_, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "model-04", PageToken: first.GetNextPageToken()})
			return err
		})
		wantField(t, "versions token used for models", "page_token", func() error {
			_, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{PageToken: first.GetNextPageToken()})
			return err
		})
		listed, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{PageSize: 2, PageToken: mustToken(t, c, 3)})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range listed.GetRegisteredModels() {
			if m.GetName() == "model-03" && (m.GetLatestVersion() != 12 || m.GetAliases()["production"] != 7) ||
				m.GetName() == "model-04" && (m.GetLatestVersion() != 1 || m.GetAliases()["production"] != 1) {
				t.Errorf("listed model %v", m)
			}
		}
		if len(listed.GetRegisteredModels()) != 2 || listed.GetRegisteredModels()[0].GetName() != "model-03" {
			t.Errorf("page after model-02: %v", listed.GetRegisteredModels())
		}
		empty, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "model-00"})
		if err != nil || len(empty.GetModelVersions()) != 0 || empty.GetNextPageToken() != "" {
			t.Errorf("versions of a model without any: %v, %v", empty, err)
		}
	})
}

// mustToken returns the token of the page after the first n models.
func mustToken(t *testing.T, c experimentv1.ExperimentServiceClient, n int32) string {
	t.Helper()
	resp, err := c.ListRegisteredModels(context.Background(), &experimentv1.ListRegisteredModelsRequest{PageSize: n})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetNextPageToken()
}

func TestModelVersionNumbersUnderConcurrency(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		mustModel(t, h.client, "contended")
		const workers, each = 8, 5
		var (
			mu  sync.Mutex
			got []int64
			wg  sync.WaitGroup
		)
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					resp, err := h.client.CreateModelVersion(context.Background(), &experimentv1.CreateModelVersionRequest{
						ModelName: "contended", Format: "f", Weights: weightsOf(fmt.Sprintf("%d-%d", w, i)),
					})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					got = append(got, resp.GetModelVersion().GetVersion())
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
		var want []int64
		for v := int64(1); v <= workers*each; v++ {
			want = append(want, v)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("version numbers from concurrent creators (-want +got):\n%s", diff)
		}
		m, err := h.client.GetRegisteredModel(context.Background(), &experimentv1.GetRegisteredModelRequest{Name: "contended"})
		if err != nil {
			t.Fatal(err)
		}
		if m.GetRegisteredModel().GetLatestVersion() != workers*each {
			t.Errorf("latest_version = %d, want %d", m.GetRegisteredModel().GetLatestVersion(), workers*each)
		}
	})
}

func TestModelAliasExpectedRevision(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		mustModel(t, c, "m")
		for i := range 9 {
			mustVersion(t, c, "m", weightsOf(fmt.Sprint(i+1)))
		}
		set := func(version int64, expected *uint64) (uint64, error) {
			resp, err := c.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "m", Alias: "production", Version: version, ExpectedRevision: expected})
			return resp.GetRevision(), err
		}
		ptr := func(r uint64) *uint64 { return &r }
		aborted := func(what string, err error) {
			t.Helper()
			st := status.Convert(err)
			if st.Code() != codes.Aborted {
				t.Fatalf("%s: %v, want Aborted", what, err)
			}
			for _, d := range st.Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "ALIAS_REVISION_MISMATCH" {
					return
				}
			}
			t.Errorf("%s: no ErrorInfo ALIAS_REVISION_MISMATCH in %v", what, st.Details())
		}

		r1, err := set(1, ptr(0))
		if err != nil {
			t.Fatalf("set an unset alias with expected 0: %v", err)
		}
		_, err = set(2, ptr(0))
		aborted("expected 0 on a set alias", err)
		r2, err := set(2, ptr(r1))
		if err != nil || r2 <= r1 {
			t.Fatalf("move with the current revision: %d, %v", r2, err)
		}
		_, err = set(3, ptr(r1))
		aborted("move with a stale revision", err)
		// Asking for the state the alias is in already succeeds with its
		// revision, whatever was expected: a retried call that committed
		// does not fail.
		if same, err := set(2, ptr(r1)); err != nil || same != r2 {
			t.Errorf("set to the current version with a stale revision: %d, %v; want %d", same, err, r2)
		}
		if _, err := c.DeleteModelAlias(ctx, &experimentv1.DeleteModelAliasRequest{ModelName: "m", Alias: "production"}); err != nil {
			t.Fatal(err)
		}
		_, err = set(3, ptr(r2))
		aborted("expected the revision before the deletion", err)
		r4, err := set(3, ptr(0))
		if err != nil || r4 <= r2+1 {
			t.Fatalf("set a deleted alias with expected 0: %d, %v", r4, err)
		}

		// Concurrent promotions from one observed revision: exactly one
		// wins, and the others are told.
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []int64
		)
		for v := int64(4); v <= 9; v++ {
			wg.Go(func() {
				_, err := set(v, ptr(r4))
				switch status.Code(err) {
				case codes.OK:
					mu.Lock()
					winners = append(winners, v)
					mu.Unlock()
				case codes.Aborted:
				default:
					t.Errorf("concurrent promotion to %d: %v", v, err)
				}
			})
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("concurrent promotions from revision %d: winners %v, want exactly one", r4, winners)
		}
		got, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: "m", Alias: "production"})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetModelVersion().GetVersion() != winners[0] {
			t.Errorf("alias points to %d, the winner was %d", got.GetModelVersion().GetVersion(), winners[0])
		}
	})
}

// The test: the alias moves twice while a client is disconnected;
// on reconnect the client gets the latest version exactly once.
func TestWatchModelReconnectGetsLatestOnce(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c := h.client
		mustModel(t, c, "policy")
		for _, v := range []string{"v1", "v2", "v3"} {
			mustVersion(t, c, "policy", weightsOf(v))
		}
		r1 := setAlias(t, c, "policy", "production", 1)

		w := watch(t, c, "policy", "production", 0)
		wantVersion(t, w.next(t), "production", 1, weightsOf("v1"), r1)
		w.cancel() // the client goes away

		setAlias(t, c, "policy", "production", 2)
		r3 := setAlias(t, c, "policy", "production", 3)

		w = watch(t, c, "policy", "production", r1)
		wantVersion(t, w.next(t), "production", 3, weightsOf("v3"), r3)
		// The next message is the next change: version 3 is not repeated
		// and version 2 never comes.
		r4 := setAlias(t, c, "policy", "production", 1)
		wantVersion(t, w.next(t), "production", 1, weightsOf("v1"), r4)
		// Other aliases' changes are not this stream's.
		setAlias(t, c, "policy", "staging", 3)
		r6 := setAlias(t, c, "policy", "production", 2)
		wantVersion(t, w.next(t), "production", 2, weightsOf("v2"), r6)

		// Resuming at the current revision sends nothing until a change.
		w2 := watch(t, c, "policy", "production", r6)
		r7 := setAlias(t, c, "policy", "production", 3)
		wantVersion(t, w2.next(t), "production", 3, weightsOf("v3"), r7)
		wantVersion(t, w.next(t), "production", 3, weightsOf("v3"), r7)
	})
}

func TestWatchModelSeesDeletions(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		mustModel(t, c, "doomed")
		mustVersion(t, c, "doomed", weightsOf("old"))
		rp := setAlias(t, c, "doomed", "production", 1)
		rs := setAlias(t, c, "doomed", "staging", 1)
		prod := watch(t, c, "doomed", "production", 0)
		wantVersion(t, prod.next(t), "production", 1, weightsOf("old"), rp)
		staging := watch(t, c, "doomed", "staging", 0)
		wantVersion(t, staging.next(t), "staging", 1, weightsOf("old"), rs)
		// An alias that was never set: the stream waits for it.
		canary := watch(t, c, "doomed", "canary", 0)

		if _, err := c.DeleteModelAlias(ctx, &experimentv1.DeleteModelAliasRequest{ModelName: "doomed", Alias: "staging"}); err != nil {
			t.Fatal(err)
		}
		gone := staging.next(t)
		wantDeleted(t, gone, "staging", rs)

		if _, err := c.DeleteRegisteredModel(ctx, &experimentv1.DeleteRegisteredModelRequest{Name: "doomed"}); err != nil {
			t.Fatal(err)
		}
		deleted := prod.next(t)
		wantDeleted(t, deleted, "production", gone.GetRevision())

		// A new stream on a deleted model is NOT_FOUND; open streams stay.
		dead := watch(t, c, "doomed", "production", 0)
		if _, err := dead.stream.Recv(); status.Code(err) != codes.NotFound {
			t.Errorf("watch a deleted model: %v, want NotFound", err)
		}

		// The model comes back: the open streams send the new state.
		mustModel(t, c, "doomed")
		mustVersion(t, c, "doomed", weightsOf("new"))
		r := setAlias(t, c, "doomed", "production", 1)
		wantVersion(t, prod.next(t), "production", 1, weightsOf("new"), r)
		rc := setAlias(t, c, "doomed", "canary", 1)
		wantVersion(t, canary.next(t), "canary", 1, weightsOf("new"), rc)
		// A fresh stream on an alias whose latest state is a tombstone
		// starts with the deletion.
		fresh := watch(t, c, "doomed", "staging", 0)
		if msg := fresh.next(t); !msg.GetDeleted() || msg.GetRevision() != gone.GetRevision() {
			t.Errorf("fresh watch of a deleted alias: %v, want the tombstone at revision %d", msg, gone.GetRevision())
		}
		rs2 := setAlias(t, c, "doomed", "staging", 1)
		wantVersion(t, staging.next(t), "staging", 1, weightsOf("new"), rs2)
	})
}

// Two servers on one database stand for two processes: a change made
// through one reaches the other's streams by polling alone.
func TestWatchModelAcrossServers(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		a := serveRegistry(t, db, "127.0.0.1:0", experiment.WithAliasPollInterval(20*time.Millisecond))
		b := serveRegistry(t, db, "127.0.0.1:0", experiment.WithAliasPollInterval(20*time.Millisecond))
		mustModel(t, a.client, "shared")
		mustVersion(t, a.client, "shared", weightsOf("1"))
		mustVersion(t, a.client, "shared", weightsOf("2"))

		w := watch(t, b.client, "shared", "production", 0)
		r1 := setAlias(t, a.client, "shared", "production", 1)
		wantVersion(t, w.next(t), "production", 1, weightsOf("1"), r1)
		r2 := setAlias(t, a.client, "shared", "production", 2)
		wantVersion(t, w.next(t), "production", 2, weightsOf("2"), r2)
		if _, err := a.client.DeleteRegisteredModel(context.Background(), &experimentv1.DeleteRegisteredModelRequest{Name: "shared"}); err != nil {
			t.Fatal(err)
		}
		wantDeleted(t, w.next(t), "production", r2)
	})
}

// Draining ends WatchModel streams with UNAVAILABLE, and the streams leave
// no goroutine behind (the shared poller included). Not parallel: the leak
// check needs a quiet process.
func TestWatchModelDrain(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	storetest.Run(t, []store.MigrationSet{experiment.Migrations()}, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0", experiment.WithAliasPollInterval(10*time.Millisecond))
		mustModel(t, h.client, "m")
		mustVersion(t, h.client, "m", weightsOf("1"))
		r := setAlias(t, h.client, "m", "production", 1)
		live := watch(t, h.client, "m", "production", 0)
		wantVersion(t, live.next(t), "production", 1, weightsOf("1"), r)
		waiting := watch(t, h.client, "m", "never-set", 0)

		h.stop()
		for name, w := range map[string]*watcher{"live": live, "waiting": waiting} {
			if _, err := w.stream.Recv(); status.Code(err) != codes.Unavailable {
				t.Errorf("%s stream after the drain: %v, want Unavailable", name, err)
			}
		}
	})
}

func TestModelWeightsRoundTrip(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		mustModel(t, c, "big")
		rng := rand.New(rand.NewPCG(1, 2))
		weights := make([]byte, 1<<20)
		for i := range weights {
			weights[i] = byte(rng.Uint32())
		}
		sum := sha256.Sum256(weights)
		checksum := hex.EncodeToString(sum[:])
		metrics := map[string]float64{"sharpe": 1.37, "tiny": 1e-300, "huge": -1.5e300, "zero": 0, "tenth": 0.1}
		created, err := c.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
			ModelName: "big", Format: "quantmesh.mlp.v1", Weights: weights,
			ChecksumSha256: strings.ToUpper(checksum), // hex in either case
			Metrics:        metrics,
		})
		if err != nil {
			t.Fatal(err)
		}
		mv := created.GetModelVersion()
		if mv.GetChecksumSha256() != checksum || mv.GetSizeBytes() != 1<<20 || mv.GetWeights() != nil {
			t.Fatalf("created: checksum %s size %d weights %d bytes", mv.GetChecksumSha256(), mv.GetSizeBytes(), len(mv.GetWeights()))
		}
		if diff := cmp.Diff(metrics, mv.GetMetrics()); diff != "" {
			t.Errorf("metrics (-sent +stored):\n%s", diff)
		}
		basic, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "big", Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		if basic.GetModelVersion().GetWeights() != nil {
			t.Error("basic view carries weights")
		}
		full, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "big", Version: 1, View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL})
		if err != nil {
			t.Fatal(err)
		}
		got := full.GetModelVersion()
		if !bytes.Equal(got.GetWeights(), weights) || got.GetChecksumSha256() != checksum {
			t.Errorf("full view: %d bytes, checksum %s", len(got.GetWeights()), got.GetChecksumSha256())
		}
		if diff := cmp.Diff(metrics, got.GetMetrics()); diff != "" {
			t.Errorf("metrics read back (-sent +read):\n%s", diff)
		}
		r := setAlias(t, c, "big", "production", 1)
		wantVersion(t, watch(t, c, "big", "production", 0).next(t), "production", 1, weights, r)

		weights[0] ^= 0xff // one flipped byte
		wantField(t, "checksum of other weights", "checksum_sha256", func() error {
			_, err := c.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: "big", Format: "f", Weights: weights, ChecksumSha256: checksum})
			return err
		})
	})
}

func TestRegistryBadInput(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		mustModel(t, c, "m")
		mustModel(t, c, "other")
		mustVersion(t, c, "m", weightsOf("1"))
		unknownRun := "0192f1f0-5b7e-7c3a-9d2e-1a2b3c4d5e6f"
		long := strings.Repeat("n", 251)
		nan, inf := math.NaN(), math.Inf(1)
		otherToken := mustToken(t, c, 1)
		revision, err := c.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "m", Alias: "production", Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		version := func(mutate func(*experimentv1.CreateModelVersionRequest)) func() error {
			return func() error {
				req := &experimentv1.CreateModelVersionRequest{ModelName: "m", Format: "f", Weights: []byte{1}}
				mutate(req)
				_, err := c.CreateModelVersion(ctx, req)
				return err
			}
		}
		alias := func(a string, v int64) func() error {
			return func() error {
				_, err := c.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "m", Alias: a, Version: v})
				return err
			}
		}
		watchErr := func(req *experimentv1.WatchModelRequest) func() error {
			return func() error {
				wctx, cancel := context.WithTimeout(ctx, streamGuard)
				defer cancel()
				stream, err := c.WatchModel(wctx, req)
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			}
		}
		tests := []struct {
			name  string
			code  codes.Code
			field string // the field a BadRequest violation must name
			call  func() error
		}{
			{"empty model name", codes.InvalidArgument, "name", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{})
				return err
			}},
			{"space in model name", codes.InvalidArgument, "name", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "my model"})
				return err
			}},
			{"slash in model name", codes.InvalidArgument, "name", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "a/b"})
				return err
			}},
			{"non-ASCII model name", codes.InvalidArgument, "name", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "modèle"})
				return err
			}},
			{"oversized model name", codes.InvalidArgument, "name", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: long})
				return err
			}},
			{"model name ..", codes.InvalidArgument, "name", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: ".."})
				return err
			}},
			{"oversized model description", codes.InvalidArgument, "description", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "ok", Description: strings.Repeat("d", 5001)})
				return err
			}},
			{"empty model tag key", codes.InvalidArgument, "tags", func() error {
				_, err := c.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "ok", Tags: map[string]string{"": "v"}})
				return err
			}},
			{"get with a bad name", codes.InvalidArgument, "name", func() error {
				_, err := c.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: "a b"})
				return err
			}},
			{"get unknown model", codes.NotFound, "", func() error {
				_, err := c.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: "nobody"})
				return err
			}},
			{"negative page size", codes.InvalidArgument, "page_size", func() error {
				_, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{PageSize: -1})
				return err
			}},
			{"garbage page token", codes.InvalidArgument, "page_token", func() error {
				_, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{PageToken: "garbage"})
				return err
			}},
			{"update without model", codes.InvalidArgument, "registered_model", func() error {
				_, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{})
				return err
			}},
			{"update without mask", codes.InvalidArgument, "update_mask", func() error {
				_, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{RegisteredModel: &experimentv1.RegisteredModel{Name: "m"}})
				return err
			}},
			{"update the name", codes.InvalidArgument, "update_mask", func() error {
				_, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{
					RegisteredModel: &experimentv1.RegisteredModel{Name: "m"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}})
				return err
			}},
			{"update with a bad name", codes.InvalidArgument, "registered_model.name", func() error {
				_, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{
					RegisteredModel: &experimentv1.RegisteredModel{Name: ""}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
				return err
			}},
			{"update with bad tags", codes.InvalidArgument, "registered_model.tags", func() error {
				_, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{
					RegisteredModel: &experimentv1.RegisteredModel{Name: "m", Tags: map[string]string{" ": "x"}},
					UpdateMask:      &fieldmaskpb.FieldMask{Paths: []string{"tags"}}})
				return err
			}},
			{"update unknown model", codes.NotFound, "", func() error {
				_, err := c.UpdateRegisteredModel(ctx, &experimentv1.UpdateRegisteredModelRequest{
					RegisteredModel: &experimentv1.RegisteredModel{Name: "nobody"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
				return err
			}},
			{"delete with a bad name", codes.InvalidArgument, "name", func() error {
				_, err := c.DeleteRegisteredModel(ctx, &experimentv1.DeleteRegisteredModelRequest{})
				return err
			}},
			{"delete unknown model", codes.NotFound, "", func() error {
				_, err := c.DeleteRegisteredModel(ctx, &experimentv1.DeleteRegisteredModelRequest{Name: "nobody"})
				return err
			}},
			{"version of a bad model name", codes.InvalidArgument, "model_name", version(func(r *experimentv1.CreateModelVersionRequest) { r.ModelName = "" })},
			{"version of an unknown model", codes.NotFound, "", version(func(r *experimentv1.CreateModelVersionRequest) { r.ModelName = "nobody" })},
			{"empty format", codes.InvalidArgument, "format", version(func(r *experimentv1.CreateModelVersionRequest) { r.Format = "" })},
			{"oversized format", codes.InvalidArgument, "format", version(func(r *experimentv1.CreateModelVersionRequest) { r.Format = strings.Repeat("f", 101) })},
			{"empty weights", codes.InvalidArgument, "weights", version(func(r *experimentv1.CreateModelVersionRequest) { r.Weights = nil })},
			{"malformed checksum", codes.InvalidArgument, "checksum_sha256", version(func(r *experimentv1.CreateModelVersionRequest) { r.ChecksumSha256 = "abc" })},
			{"wrong checksum", codes.InvalidArgument, "checksum_sha256", version(func(r *experimentv1.CreateModelVersionRequest) { r.ChecksumSha256 = strings.Repeat("a", 64) })},
			{"malformed source run", codes.InvalidArgument, "source_run_id", version(func(r *experimentv1.CreateModelVersionRequest) { r.SourceRunId = "42" })},
			{"unknown source run", codes.NotFound, "", version(func(r *experimentv1.CreateModelVersionRequest) { r.SourceRunId = unknownRun })},
			{"NaN metric", codes.InvalidArgument, "metrics[sharpe]", version(func(r *experimentv1.CreateModelVersionRequest) { r.Metrics = map[string]float64{"sharpe": nan} })},
			{"infinite metric", codes.InvalidArgument, "metrics[loss]", version(func(r *experimentv1.CreateModelVersionRequest) { r.Metrics = map[string]float64{"loss": inf} })},
			{"empty metric key", codes.InvalidArgument, "metrics[]", version(func(r *experimentv1.CreateModelVersionRequest) { r.Metrics = map[string]float64{"": 1} })},
			{"bad version tag", codes.InvalidArgument, "tags", version(func(r *experimentv1.CreateModelVersionRequest) { r.Tags = map[string]string{"": "x"} })},
			{"oversized version description", codes.InvalidArgument, "description", version(func(r *experimentv1.CreateModelVersionRequest) {
				r.Description = strings.Repeat("d", 5001)
			})},
			{"version 0", codes.InvalidArgument, "version", func() error {
				_, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "m"})
				return err
			}},
			{"negative version", codes.InvalidArgument, "version", func() error {
				_, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "m", Version: -1})
				return err
			}},
			{"unknown view", codes.InvalidArgument, "view", func() error {
				_, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "m", Version: 1, View: 9})
				return err
			}},
			{"unknown version", codes.NotFound, "", func() error {
				_, err := c.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "m", Version: 99})
				return err
			}},
			{"list versions of a bad name", codes.InvalidArgument, "model_name", func() error {
				_, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "a b"})
				return err
			}},
			{"list versions with a models token", codes.InvalidArgument, "page_token", func() error {
				_, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "m", PageToken: otherToken})
				return err
			}},
			{"list versions, negative page size", codes.InvalidArgument, "page_size", func() error {
				_, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "m", PageSize: -3})
				return err
			}},
			{"list versions of an unknown model", codes.NotFound, "", func() error {
				_, err := c.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "nobody"})
				return err
			}},
			{"update version without version", codes.InvalidArgument, "model_version", func() error {
				_, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{})
				return err
			}},
			{"update version with a bad model name", codes.InvalidArgument, "model_version.model_name", func() error {
				_, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{
					ModelVersion: &experimentv1.ModelVersion{Version: 1}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
				return err
			}},
			{"update version 0", codes.InvalidArgument, "model_version.version", func() error {
				_, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{
					ModelVersion: &experimentv1.ModelVersion{ModelName: "m"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
				return err
			}},
			{"update the weights", codes.InvalidArgument, "update_mask", func() error {
				_, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{
					ModelVersion: &experimentv1.ModelVersion{ModelName: "m", Version: 1}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"weights"}}})
				return err
			}},
			{"update version description too long", codes.InvalidArgument, "model_version.description", func() error {
				_, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{
					ModelVersion: &experimentv1.ModelVersion{ModelName: "m", Version: 1, Description: strings.Repeat("d", 5001)},
					UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
				return err
			}},
			{"update unknown version", codes.NotFound, "", func() error {
				_, err := c.UpdateModelVersion(ctx, &experimentv1.UpdateModelVersionRequest{
					ModelVersion: &experimentv1.ModelVersion{ModelName: "m", Version: 42}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
				return err
			}},
			{"empty alias", codes.InvalidArgument, "alias", alias("", 1)},
			{"uppercase alias", codes.InvalidArgument, "alias", alias("Production", 1)},
			{"dotted alias", codes.InvalidArgument, "alias", alias("prod.1", 1)},
			{"reserved alias latest", codes.InvalidArgument, "alias", alias("latest", 1)},
			{"reserved alias v3", codes.InvalidArgument, "alias", alias("v3", 1)},
			{"oversized alias", codes.InvalidArgument, "alias", alias(long, 1)},
			{"alias to version 0", codes.InvalidArgument, "version", alias("production", 0)},
			{"alias to an unknown version", codes.NotFound, "", alias("production", 7)},
			{"alias of a bad model name", codes.InvalidArgument, "model_name", func() error {
				_, err := c.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "a b", Alias: "production", Version: 1})
				return err
			}},
			{"alias of an unknown model", codes.NotFound, "", func() error {
				_, err := c.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "nobody", Alias: "production", Version: 1})
				return err
			}},
			{"delete a reserved alias", codes.InvalidArgument, "alias", func() error {
				_, err := c.DeleteModelAlias(ctx, &experimentv1.DeleteModelAliasRequest{ModelName: "m", Alias: "v1"})
				return err
			}},
			{"delete an unset alias", codes.NotFound, "", func() error {
				_, err := c.DeleteModelAlias(ctx, &experimentv1.DeleteModelAliasRequest{ModelName: "m", Alias: "staging"})
				return err
			}},
			{"resolve a reserved alias", codes.InvalidArgument, "alias", func() error {
				_, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: "m", Alias: "latest"})
				return err
			}},
			{"resolve with an unknown view", codes.InvalidArgument, "view", func() error {
				_, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: "m", Alias: "production", View: 5})
				return err
			}},
			{"resolve an unset alias", codes.NotFound, "", func() error {
				_, err := c.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: "m", Alias: "staging"})
				return err
			}},
			{"watch without a model", codes.InvalidArgument, "model_name", watchErr(&experimentv1.WatchModelRequest{Alias: "production"})},
			{"watch a reserved alias", codes.InvalidArgument, "alias", watchErr(&experimentv1.WatchModelRequest{ModelName: "m", Alias: "latest"})},
			{"watch an unknown model", codes.NotFound, "", watchErr(&experimentv1.WatchModelRequest{ModelName: "nobody", Alias: "production"})},
			{"watch from a revision the registry never reached", codes.OutOfRange, "",
				watchErr(&experimentv1.WatchModelRequest{ModelName: "m", Alias: "production", AfterRevision: revision.GetRevision() + 1000})},
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
		m, err := c.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: "m"})
		if err != nil {
			t.Fatal(err)
		}
		if m.GetRegisteredModel().GetLatestVersion() != 1 || !cmp.Equal(m.GetRegisteredModel().GetAliases(), map[string]int64{"production": 1}) {
			t.Errorf("bad requests changed the model: %v", m.GetRegisteredModel())
		}
		list, err := c.ListRegisteredModels(ctx, &experimentv1.ListRegisteredModelsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetRegisteredModels()) != 2 {
			t.Errorf("bad requests created models: %v", list.GetRegisteredModels())
		}
	})
}
