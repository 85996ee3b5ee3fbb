package experiment_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
)

// ckptEnv is ExperimentService over real gRPC and REST with an artifact
// root in a temporary directory, its logs and its metrics, and the
// database underneath for rows whose RPCs are built elsewhere (runs, the
// model registry).
type ckptEnv struct {
	*harness
	db      *store.DB
	root    string
	logs    *syncBuffer
	metrics *sdkmetric.ManualReader
}

func runCheckpoints(t *testing.T, fn func(t *testing.T, env *ckptEnv)) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{experiment.Migrations()}, func(t *testing.T, db *store.DB) {
		fn(t, startCheckpoints(t, db))
	})
}

func startCheckpoints(t *testing.T, db *store.DB) *ckptEnv {
	t.Helper()
	env := &ckptEnv{db: db, root: filepath.Join(t.TempDir(), "artifacts"), logs: &syncBuffer{}, metrics: sdkmetric.NewManualReader()}
	if err := os.MkdirAll(env.root, 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(env.logs, nil))
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(env.metrics)).Meter("test")
	svc := experiment.New(experiment.Config{ArtifactRoot: "file://" + env.root}, experiment.NewSQLStore(db), log,
		experiment.WithServerMeter(meter))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Options{
		Config:   server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second},
		Services: []server.Registration{svc.Registration()},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
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
	env.harness = &harness{client: experimentv1.NewExperimentServiceClient(conn), base: "http://" + srv.HTTPAddr()}
	return env
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// experiment creates an experiment through the API.
func (env *ckptEnv) experiment(t *testing.T, name string) string {
	t.Helper()
	resp, err := env.client.CreateExperiment(context.Background(), &experimentv1.CreateExperimentRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetExperiment().GetExperimentId()
}

// run inserts a run row (the runs RPCs are built on another branch).
func (env *ckptEnv) run(t *testing.T, experimentID string, stage experiment.Stage) string {
	t.Helper()
	id := uuid.Must(uuid.NewV7()).String()
	env.exec(t, `INSERT INTO runs (run_id, experiment_id, run_name, status, start_time, lifecycle_stage) VALUES ($1, $2, $3, $4, $5, $6)`,
		id, experimentID, "run-"+id[len(id)-6:], "RUNNING", time.Now().UnixMilli(), string(stage))
	return id
}

func (env *ckptEnv) exec(t *testing.T, query string, args ...any) {
	t.Helper()
	if _, err := env.db.Exec(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// version inserts a registered model version with tags (JSON) through
// SQL (the registry RPCs are built on another branch).
func (env *ckptEnv) version(t *testing.T, model string, version int64, tags string) {
	t.Helper()
	now := time.Now().UnixMilli()
	if version == 1 {
		env.exec(t, `INSERT INTO registered_models (name, create_time, update_time) VALUES ($1, $2, $3)`, model, now, now)
	}
	env.exec(t, `INSERT INTO model_versions (model_name, version, format, weights, checksum_sha256, size_bytes, tags, create_time)
		VALUES ($1, $2, 'gorgonia', $3, 'x', 0, $4, $5)`, model, version, []byte{}, tags, now)
}

// alias points model's alias at version; a nil version is a deleted
// alias's tombstone.
func (env *ckptEnv) alias(t *testing.T, model, alias string, version *int64, revision int64) {
	t.Helper()
	v := sql.NullInt64{}
	if version != nil {
		v = sql.NullInt64{Int64: *version, Valid: true}
	}
	env.exec(t, `INSERT INTO model_aliases (model_name, alias, version, revision) VALUES ($1, $2, $3, $4)`, model, alias, v, revision)
}

// age moves a checkpoint's create time back.
func (env *ckptEnv) age(t *testing.T, checkpointID string, by time.Duration) {
	t.Helper()
	env.exec(t, `UPDATE checkpoints SET create_time = $1 WHERE checkpoint_id = $2`, time.Now().Add(-by).UnixMilli(), checkpointID)
}

// file creates a file under the artifact root and returns its file:// URI.
func (env *ckptEnv) file(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(env.root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "file://" + p
}

func (env *ckptEnv) logCheckpoint(t *testing.T, req *experimentv1.LogCheckpointRequest) *experimentv1.Checkpoint {
	t.Helper()
	resp, err := env.client.LogCheckpoint(context.Background(), req)
	if err != nil {
		t.Fatalf("LogCheckpoint(%v): %v", req, err)
	}
	return resp.GetCheckpoint()
}

// list reads every page of a listing.
func (env *ckptEnv) list(t *testing.T, req *experimentv1.ListCheckpointsRequest) []*experimentv1.Checkpoint {
	t.Helper()
	req = proto.Clone(req).(*experimentv1.ListCheckpointsRequest)
	var out []*experimentv1.Checkpoint
	for {
		resp, err := env.client.ListCheckpoints(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp.GetCheckpoints()...)
		if resp.GetNextPageToken() == "" {
			return out
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func (env *ckptEnv) apply(t *testing.T, req *experimentv1.ApplyRetentionPolicyRequest) *experimentv1.ApplyRetentionPolicyResponse {
	t.Helper()
	resp, err := env.client.ApplyRetentionPolicy(context.Background(), req)
	if err != nil {
		t.Fatalf("ApplyRetentionPolicy(%v): %v", req, err)
	}
	return resp
}

// retentionLog returns the attributes of the last "checkpoint retention
// applied" line for an experiment.
func (env *ckptEnv) retentionLog(t *testing.T, experimentID string) map[string]any {
	t.Helper()
	var found map[string]any
	sc := bufio.NewScanner(strings.NewReader(env.logs.String()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if line["msg"] == "checkpoint retention applied" && line["experiment_id"] == experimentID {
			found = line
		}
	}
	if found == nil {
		t.Fatalf("no retention log line for %s in:\n%s", experimentID, env.logs.String())
	}
	return found
}

// fileCounts reads the checkpoint file counter by outcome.
func (env *ckptEnv) fileCounts(t *testing.T) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := env.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "quantmesh.experiment.checkpoint.files" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				o, _ := dp.Attributes.Value("outcome")
				out[o.AsString()] += dp.Value
			}
		}
	}
	return out
}

func ids(cs []*experimentv1.Checkpoint) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.GetCheckpointId()
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestCheckpointsLogAndList(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		ctx := context.Background()
		expA, expB := env.experiment(t, "a"), env.experiment(t, "b")
		r1, r2, r3 := env.run(t, expA, experiment.StageActive), env.run(t, expA, experiment.StageActive), env.run(t, expB, experiment.StageActive)

		var logged []*experimentv1.Checkpoint // in log order
		for i := range 15 {
			run := r1
			if i%5 == 4 {
				run = r2
			}
			req := &experimentv1.LogCheckpointRequest{
				RunId: run, Step: int64(i * 100), Uri: fmt.Sprintf("s3://bucket/a/%d.pt", i), SizeBytes: int64(1000 + i),
				MetricKey: "val_loss", MetricValue: 1 / float64(i+1),
			}
			if i == 7 {
				req.ModelName, req.ModelVersion = "policy-net", 3
			}
			c := env.logCheckpoint(t, req)
			if c.GetCheckpointId() == "" || c.GetExperimentId() != expA || c.GetRunId() != run || c.GetCreateTime() == nil ||
				c.GetStep() != req.GetStep() || c.GetUri() != req.GetUri() || c.GetSizeBytes() != req.GetSizeBytes() ||
				c.GetMetricKey() != "val_loss" || c.GetMetricValue() != req.GetMetricValue() ||
				c.GetModelName() != req.GetModelName() || c.GetModelVersion() != req.GetModelVersion() {
				t.Fatalf("logged %v from %v", c, req)
			}
			logged = append(logged, c)
		}
		env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: r3, Uri: "s3://b/x", MetricKey: "val_loss"})

		// Newest first, every page, same records as logged.
		want := slices.Clone(logged)
		slices.Reverse(want)
		for _, size := range []int32{0, 1, 4, 5, 15, 1000} {
			got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: expA, PageSize: size})
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("list experiment, page size %d (-want +got):\n%s", size, diff)
			}
		}
		var wantR2 []*experimentv1.Checkpoint
		for _, c := range want {
			if c.GetRunId() == r2 {
				wantR2 = append(wantR2, c)
			}
		}
		if diff := cmp.Diff(wantR2, env.list(t, &experimentv1.ListCheckpointsRequest{RunId: r2, PageSize: 2}), protocmp.Transform()); diff != "" {
			t.Errorf("list run (-want +got):\n%s", diff)
		}
		if got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: expA, RunId: r2}); len(got) != 3 {
			t.Errorf("list experiment and run: %d checkpoints, want 3", len(got))
		}
		if got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: expA, RunId: r3}); len(got) != 0 {
			t.Errorf("list experiment with another experiment's run: %v, want none", ids(got))
		}
		if got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: expB}); len(got) != 1 || got[0].GetExperimentId() != expB {
			t.Errorf("list experiment b: %v", got)
		}

		// A page token is bound to its query.
		first, err := env.client.ListCheckpoints(ctx, &experimentv1.ListCheckpointsRequest{ExperimentId: expA, PageSize: 5})
		if err != nil {
			t.Fatal(err)
		}
		wantField(t, "token of another query", "page_token", func() error {
			_, err := env.client.ListCheckpoints(ctx, &experimentv1.ListCheckpointsRequest{RunId: r1, PageSize: 5, PageToken: first.GetNextPageToken()})
			return err
		})

		// Deleted runs take no checkpoints; finished (still active) runs do.
		deleted := env.run(t, expA, experiment.StageDeleted)
		wantCode(t, "log to a deleted run", codes.FailedPrecondition, func() error {
			_, err := env.client.LogCheckpoint(ctx, &experimentv1.LogCheckpointRequest{RunId: deleted, Uri: "s3://b/x", MetricKey: "k"})
			return err
		})
		finished := env.run(t, expA, experiment.StageActive)
		env.exec(t, `UPDATE runs SET status = 'FINISHED', end_time = $1 WHERE run_id = $2`, time.Now().UnixMilli(), finished)
		env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: finished, Uri: "s3://b/y", MetricKey: "k"})
		unknown := uuid.Must(uuid.NewV7()).String()
		wantCode(t, "log to an unknown run", codes.NotFound, func() error {
			_, err := env.client.LogCheckpoint(ctx, &experimentv1.LogCheckpointRequest{RunId: unknown, Uri: "s3://b/x", MetricKey: "k"})
			return err
		})
		wantCode(t, "list an unknown experiment", codes.NotFound, func() error {
			_, err := env.client.ListCheckpoints(ctx, &experimentv1.ListCheckpointsRequest{ExperimentId: unknown})
			return err
		})
		wantCode(t, "list an unknown run", codes.NotFound, func() error {
			_, err := env.client.ListCheckpoints(ctx, &experimentv1.ListCheckpointsRequest{RunId: unknown})
			return err
		})
		// The checkpoints of a run deleted later stay listed.
		env.exec(t, `UPDATE runs SET lifecycle_stage = 'deleted', delete_time = $1 WHERE run_id = $2`, time.Now().UnixMilli(), r2)
		if got := env.list(t, &experimentv1.ListCheckpointsRequest{RunId: r2}); len(got) != 3 {
			t.Errorf("checkpoints of a deleted run: %d, want 3", len(got))
		}
	})
}

func TestCheckpointBadInput(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		ctx := context.Background()
		exp := env.experiment(t, "bad")
		run := env.run(t, exp, experiment.StageActive)
		unknown := uuid.Must(uuid.NewV7()).String()
		ok := func() *experimentv1.LogCheckpointRequest {
			return &experimentv1.LogCheckpointRequest{RunId: run, Step: 1, Uri: "s3://b/c.pt", SizeBytes: 1, MetricKey: "val_loss", MetricValue: 0.5}
		}
		logWith := func(mod func(r *experimentv1.LogCheckpointRequest)) func() error {
			return func() error {
				r := ok()
				mod(r)
				_, err := env.client.LogCheckpoint(ctx, r)
				return err
			}
		}
		apply := func(r *experimentv1.ApplyRetentionPolicyRequest) func() error {
			return func() error { _, err := env.client.ApplyRetentionPolicy(ctx, r); return err }
		}
		list := func(r *experimentv1.ListCheckpointsRequest) func() error {
			return func() error { _, err := env.client.ListCheckpoints(ctx, r); return err }
		}
		tests := []struct {
			name   string
			code   codes.Code
			fields []string // every field a BadRequest violation must name
			call   func() error
		}{
			{"missing run id", codes.InvalidArgument, []string{"run_id"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.RunId = "" })},
			{"malformed run id", codes.InvalidArgument, []string{"run_id"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.RunId = "run-1" })},
			{"negative step", codes.InvalidArgument, []string{"step"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.Step = -1 })},
			{"empty uri", codes.InvalidArgument, []string{"uri"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.Uri = "" })},
			{"uri over 2048 characters", codes.InvalidArgument, []string{"uri"}, logWith(func(r *experimentv1.LogCheckpointRequest) {
				r.Uri = "s3://b/" + strings.Repeat("é", 2042)
			})},
			{"control character in uri", codes.InvalidArgument, []string{"uri"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.Uri = "s3://b/\n" })},
			{"negative size", codes.InvalidArgument, []string{"size_bytes"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.SizeBytes = -1 })},
			{"empty metric key", codes.InvalidArgument, []string{"metric_key"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.MetricKey = "" })},
			{"blank metric key", codes.InvalidArgument, []string{"metric_key"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.MetricKey = "  " })},
			{"metric key over 250 characters", codes.InvalidArgument, []string{"metric_key"}, logWith(func(r *experimentv1.LogCheckpointRequest) {
				r.MetricKey = strings.Repeat("k", 251)
			})},
			{"NaN metric value", codes.InvalidArgument, []string{"metric_value"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.MetricValue = math.NaN() })},
			{"infinite metric value", codes.InvalidArgument, []string{"metric_value"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.MetricValue = math.Inf(1) })},
			{"negative infinite metric value", codes.InvalidArgument, []string{"metric_value"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.MetricValue = math.Inf(-1) })},
			{"negative model version", codes.InvalidArgument, []string{"model_version"}, logWith(func(r *experimentv1.LogCheckpointRequest) {
				r.ModelName, r.ModelVersion = "m", -1
			})},
			{"model name without version", codes.InvalidArgument, []string{"model_version"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.ModelName = "m" })},
			{"model version without name", codes.InvalidArgument, []string{"model_name"}, logWith(func(r *experimentv1.LogCheckpointRequest) { r.ModelVersion = 2 })},
			{"model name with a slash", codes.InvalidArgument, []string{"model_name"}, logWith(func(r *experimentv1.LogCheckpointRequest) {
				r.ModelName, r.ModelVersion = "a/b", 1
			})},
			{"every bad field at once", codes.InvalidArgument, []string{"run_id", "step", "uri", "size_bytes", "metric_key", "metric_value"},
				logWith(func(r *experimentv1.LogCheckpointRequest) {
					*r = experimentv1.LogCheckpointRequest{Step: -1, SizeBytes: -1, MetricValue: math.NaN()}
				})},
			{"unknown run", codes.NotFound, nil, logWith(func(r *experimentv1.LogCheckpointRequest) { r.RunId = unknown })},

			{"list without experiment or run", codes.InvalidArgument, []string{"experiment_id"}, list(&experimentv1.ListCheckpointsRequest{})},
			{"list with a malformed experiment id", codes.InvalidArgument, []string{"experiment_id"}, list(&experimentv1.ListCheckpointsRequest{ExperimentId: "x"})},
			{"list with a malformed run id", codes.InvalidArgument, []string{"run_id"}, list(&experimentv1.ListCheckpointsRequest{RunId: "x"})},
			{"list with a negative page size", codes.InvalidArgument, []string{"page_size"}, list(&experimentv1.ListCheckpointsRequest{ExperimentId: exp, PageSize: -1})},
			{"list with a garbage token", codes.InvalidArgument, []string{"page_token"}, list(&experimentv1.ListCheckpointsRequest{ExperimentId: exp, PageToken: "garbage"})},

			{"policy without metric", codes.InvalidArgument, []string{"metric_key"}, apply(&experimentv1.ApplyRetentionPolicyRequest{})},
			{"policy metric over 250 characters", codes.InvalidArgument, []string{"metric_key"}, apply(&experimentv1.ApplyRetentionPolicyRequest{MetricKey: strings.Repeat("k", 251)})},
			{"policy with an unknown goal", codes.InvalidArgument, []string{"goal"}, apply(&experimentv1.ApplyRetentionPolicyRequest{MetricKey: "k", Goal: 7})},
			{"policy with negative keep_days", codes.InvalidArgument, []string{"keep_days"}, apply(&experimentv1.ApplyRetentionPolicyRequest{MetricKey: "k", KeepDays: proto.Int32(-1)})},
			{"policy with negative keep_best", codes.InvalidArgument, []string{"keep_best"}, apply(&experimentv1.ApplyRetentionPolicyRequest{MetricKey: "k", KeepBest: proto.Int32(-1)})},
			{"policy with a malformed experiment id", codes.InvalidArgument, []string{"experiment_id"}, apply(&experimentv1.ApplyRetentionPolicyRequest{ExperimentId: "x", MetricKey: "k"})},
			{"policy with every bad field", codes.InvalidArgument, []string{"experiment_id", "metric_key", "goal", "keep_best", "keep_days"},
				apply(&experimentv1.ApplyRetentionPolicyRequest{ExperimentId: "x", Goal: -1, KeepBest: proto.Int32(-5), KeepDays: proto.Int32(-5)})},
			{"policy for an unknown experiment", codes.NotFound, nil, apply(&experimentv1.ApplyRetentionPolicyRequest{ExperimentId: unknown, MetricKey: "k"})},
		}
		for _, tt := range tests {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Errorf("%s: code = %v (%v), want %v", tt.name, st.Code(), err, tt.code)
				continue
			}
			if len(tt.fields) == 0 {
				continue
			}
			var named []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						named = append(named, v.GetField())
					}
				}
			}
			for _, f := range tt.fields {
				if !slices.Contains(named, f) {
					t.Errorf("%s: violations name %v, not %q", tt.name, named, f)
				}
			}
		}
		if got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp}); len(got) != 0 {
			t.Errorf("bad requests wrote %d checkpoints", len(got))
		}
	})
}

func TestCheckpointsOverREST(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		exp := env.experiment(t, "rest")
		run := env.run(t, exp, experiment.StageActive)
		code, body := env.rest(t, http.MethodPost, "/v1/runs/"+run+"/checkpoints",
			`{"step":"5","uri":"s3://b/5.pt","sizeBytes":"2048","metricKey":"val_loss","metricValue":0.25,"modelName":"net","modelVersion":"2"}`)
		if code != http.StatusOK {
			t.Fatalf("log: %d %v", code, body)
		}
		// The bare checkpoint, int64 fields as strings (protojson).
		id, _ := body["checkpointId"].(string)
		if id == "" || body["experimentId"] != exp || body["runId"] != run || body["sizeBytes"] != "2048" ||
			body["step"] != "5" || body["metricValue"] != 0.25 || body["modelVersion"] != "2" || body["createTime"] == nil {
			t.Fatalf("log returned %v", body)
		}
		if code, body = env.rest(t, http.MethodPost, "/v1/runs/"+run+"/checkpoints", `{"uri":"s3://b/6.pt","metricKey":"val_loss","metricValue":0.5}`); code != http.StatusOK {
			t.Fatalf("second log: %d %v", code, body)
		}
		code, body = env.rest(t, http.MethodGet, "/v1/checkpoints?runId="+run, "")
		if cs, _ := body["checkpoints"].([]any); code != http.StatusOK || len(cs) != 2 || cs[1].(map[string]any)["checkpointId"] != id {
			t.Errorf("list by run: %d %v", code, body)
		}
		code, body = env.rest(t, http.MethodGet, "/v1/checkpoints?experimentId="+exp+"&pageSize=1", "")
		if cs, _ := body["checkpoints"].([]any); code != http.StatusOK || len(cs) != 1 || body["nextPageToken"] == "" {
			t.Errorf("list by experiment, one per page: %d %v", code, body)
		}
		code, body = env.rest(t, http.MethodPost, "/v1/checkpoints:applyRetentionPolicy",
			`{"experimentId":"`+exp+`","metricKey":"val_loss","goal":"METRIC_GOAL_MINIMIZE","keepBest":1,"keepDays":0,"dryRun":true}`)
		if code != http.StatusOK || body["deletedCount"] != "1" || body["kept"] != "1" || body["bytesFreed"] != "0" || body["dryRun"] != true {
			t.Errorf("dry run: %d %v", code, body)
		}
		if d, _ := body["deleted"].([]any); len(d) != 1 || d[0].(map[string]any)["uri"] != "s3://b/6.pt" {
			t.Errorf("dry run deleted: %v", body["deleted"])
		}
		// Errors keep their codes and field details over REST.
		code, body = env.rest(t, http.MethodPost, "/v1/runs/"+run+"/checkpoints", `{"uri":"s3://b/7.pt","metricKey":""}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "metric_key") {
			t.Errorf("bad log: %d %v", code, body)
		}
		code, _ = env.rest(t, http.MethodPost, "/v1/runs/"+uuid.Must(uuid.NewV7()).String()+"/checkpoints", `{"uri":"s3://b/7.pt","metricKey":"k"}`)
		if code != http.StatusNotFound {
			t.Errorf("log to unknown run: %d, want 404", code)
		}
		code, body = env.rest(t, http.MethodGet, "/v1/checkpoints", "")
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "experiment_id") {
			t.Errorf("list without ids: %d %v", code, body)
		}
		code, body = env.rest(t, http.MethodPost, "/v1/checkpoints:applyRetentionPolicy", `{"metricKey":"k","keepDays":-1}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "keep_days") {
			t.Errorf("negative keep_days: %d %v", code, body)
		}
	})
}

// TestRetentionPolicy runs the policy over the API on records with every
// reason to keep or delete, then checks what a dry run reports, that it
// changes nothing, and that the real run deletes exactly that.
func TestRetentionPolicy(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		exp := env.experiment(t, "retention")
		run := env.run(t, exp, experiment.StageActive)
		day := 24 * time.Hour
		old := 100 * day

		// The registry: m1 v1 has the alias "production"; m1 v2 a tag
		// valued Production; m2 v1 a tag keyed production; m2 v2 had an
		// alias that was deleted (a tombstone) and a staging tag; m3 has
		// an alias on version 2 only.
		env.version(t, "m1", 1, `{}`)
		env.version(t, "m1", 2, `{"stage":" Production "}`)
		env.version(t, "m2", 1, `{"production":"false"}`)
		env.version(t, "m2", 2, `{"stage":"staging","owner":"prod-team"}`)
		env.version(t, "m3", 1, `{}`)
		env.version(t, "m3", 2, `{}`)
		one, two := int64(1), int64(2)
		env.alias(t, "m1", "production", &one, 1)
		env.alias(t, "m2", "champion", nil, 2)
		env.alias(t, "m3", "staging", &two, 3)

		type spec struct {
			name   string
			key    string
			value  float64
			age    time.Duration
			model  string
			ver    int64
			delete bool
		}
		specs := []spec{
			{name: "c1", key: "val_loss", value: 0.50, age: old, delete: true},
			{name: "c2", key: "val_loss", value: 0.10, age: old},                                         // best
			{name: "c3", key: "val_loss", value: 0.30, age: old},                                         // second best
			{name: "c4", key: "val_loss", value: 0.90, age: day},                                         // recent
			{name: "c5", key: "train_loss", value: 0.01, age: old, delete: true},                         // another metric ranks last
			{name: "c6", key: "val_loss", value: 0.95, age: old, model: "m1", ver: 1},                    // alias
			{name: "c7", key: "val_loss", value: 0.99, age: old, model: "m1", ver: 2},                    // tag value production
			{name: "c8", key: "val_loss", value: 0.98, age: old, model: "m2", ver: 1},                    // tag key production
			{name: "c9", key: "val_loss", value: 0.97, age: old, model: "m2", ver: 2, delete: true},      // tombstone alias, other tags
			{name: "c10", key: "val_loss", value: 0.96, age: old, model: "m3", ver: 1, delete: true},     // alias on another version
			{name: "c11", key: "val_loss", value: 0.94, age: old, model: "nobody", ver: 1, delete: true}, // not registered
		}
		byName := map[string]*experimentv1.Checkpoint{}
		var wantDeleted []string
		var wantBytes int64
		for i, s := range specs {
			c := env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{
				RunId: run, Step: int64(i), Uri: env.file(t, s.name+".pt"), SizeBytes: int64(100 * (i + 1)),
				MetricKey: s.key, MetricValue: s.value, ModelName: s.model, ModelVersion: s.ver,
			})
			env.age(t, c.GetCheckpointId(), s.age)
			byName[s.name] = c
			if s.delete {
				wantDeleted = append(wantDeleted, c.GetCheckpointId())
				wantBytes += c.GetSizeBytes()
			}
		}
		// Another experiment, to show the policy stays in its own.
		other := env.experiment(t, "other")
		otherRun := env.run(t, other, experiment.StageActive)
		for i := range 3 {
			c := env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: otherRun, Uri: env.file(t, fmt.Sprintf("o%d.pt", i)), MetricKey: "val_loss", MetricValue: float64(i)})
			env.age(t, c.GetCheckpointId(), old)
		}
		before := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp})

		req := &experimentv1.ApplyRetentionPolicyRequest{
			ExperimentId: exp, MetricKey: "val_loss", Goal: experimentv1.MetricGoal_METRIC_GOAL_MINIMIZE,
			KeepBest: proto.Int32(2), KeepDays: proto.Int32(30), DryRun: true,
		}
		dry := env.apply(t, req)
		if diff := cmp.Diff(sorted(wantDeleted), sorted(ids(dry.GetDeleted()))); diff != "" {
			t.Errorf("dry run would delete (-want +got):\n%s", diff)
		}
		if dry.GetDeletedCount() != int64(len(wantDeleted)) || dry.GetBytesFreed() != wantBytes || dry.GetKept() != int64(len(specs)-len(wantDeleted)) ||
			!dry.GetDryRun() || dry.GetTruncated() {
			t.Errorf("dry run: count %d bytes %d kept %d dry %v truncated %v; want %d %d %d true false",
				dry.GetDeletedCount(), dry.GetBytesFreed(), dry.GetKept(), dry.GetDryRun(), dry.GetTruncated(),
				len(wantDeleted), wantBytes, len(specs)-len(wantDeleted))
		}
		// A dry run changes nothing: records and files stay.
		if diff := cmp.Diff(before, env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp}), protocmp.Transform()); diff != "" {
			t.Errorf("records after a dry run (-before +after):\n%s", diff)
		}
		for _, s := range specs {
			if _, err := os.Stat(filepath.Join(env.root, s.name+".pt")); err != nil {
				t.Errorf("dry run touched %s: %v", s.name, err)
			}
		}

		req.DryRun = false
		real := env.apply(t, req)
		if diff := cmp.Diff(dry.GetDeleted(), real.GetDeleted(), protocmp.Transform()); diff != "" {
			t.Errorf("deleted differs from the dry run (-dry +real):\n%s", diff)
		}
		if real.GetDeletedCount() != dry.GetDeletedCount() || real.GetBytesFreed() != wantBytes || real.GetKept() != dry.GetKept() || real.GetDryRun() {
			t.Errorf("real run: %v", real)
		}
		var wantKept []string
		for _, s := range specs {
			_, err := os.Stat(filepath.Join(env.root, s.name+".pt"))
			if s.delete {
				if !os.IsNotExist(err) {
					t.Errorf("file of deleted %s: %v, want removed", s.name, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("file of kept %s: %v", s.name, err)
			}
			wantKept = append(wantKept, byName[s.name].GetCheckpointId())
		}
		if diff := cmp.Diff(sorted(wantKept), sorted(ids(env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp})))); diff != "" {
			t.Errorf("kept records (-want +got):\n%s", diff)
		}
		if got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: other}); len(got) != 3 {
			t.Errorf("the other experiment has %d checkpoints, want its 3", len(got))
		}
		line := env.retentionLog(t, exp)
		if line["deleted"] != float64(len(wantDeleted)) || line["files_removed"] != float64(len(wantDeleted)) || line["protected"] != 3.0 {
			t.Errorf("log line: %v", line)
		}

		// Applying it again deletes nothing.
		again := env.apply(t, req)
		if again.GetDeletedCount() != 0 || again.GetKept() != int64(len(wantKept)) || len(again.GetDeleted()) != 0 {
			t.Errorf("second run: %v", again)
		}

		// Maximize on the other experiment, alone.
		maxResp := env.apply(t, &experimentv1.ApplyRetentionPolicyRequest{
			ExperimentId: other, MetricKey: "val_loss", Goal: experimentv1.MetricGoal_METRIC_GOAL_MAXIMIZE, KeepBest: proto.Int32(1), KeepDays: proto.Int32(0),
		})
		got := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: other})
		if maxResp.GetDeletedCount() != 2 || len(got) != 1 || got[0].GetMetricValue() != 2 {
			t.Errorf("maximize: deleted %d, left %v; want the value 2 left", maxResp.GetDeletedCount(), got)
		}
		if n := len(env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp})); n != len(wantKept) {
			t.Errorf("a policy on one experiment changed another: %d left, want %d", n, len(wantKept))
		}
	})
}

func TestRetentionDefaultsAndAllExperiments(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		day := 24 * time.Hour
		// Experiment a: 12 old checkpoints valued 1..12, one recent valued
		// 100, one 31 days old valued 200. Defaults keep the 10 best and
		// the last 30 days: 11, 12 and 200 go.
		a := env.experiment(t, "a")
		runA := env.run(t, a, experiment.StageActive)
		var wantA []float64
		for i := 1; i <= 12; i++ {
			c := env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: runA, Uri: "s3://b/a", MetricKey: "val_loss", MetricValue: float64(i), SizeBytes: 1})
			env.age(t, c.GetCheckpointId(), 40*day)
		}
		env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: runA, Uri: "s3://b/a", MetricKey: "val_loss", MetricValue: 100, SizeBytes: 1})
		c := env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: runA, Uri: "s3://b/a", MetricKey: "val_loss", MetricValue: 200, SizeBytes: 1})
		env.age(t, c.GetCheckpointId(), 31*day)
		wantA = []float64{11, 12, 200}

		// Experiment b (deleted, its checkpoints still count): keep_best 0
		// and keep_days 0 delete everything.
		b := env.experiment(t, "b")
		runB := env.run(t, b, experiment.StageActive)
		for range 2 {
			env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: runB, Uri: "s3://b/b", MetricKey: "val_loss", SizeBytes: 5})
		}
		if _, err := env.client.DeleteExperiment(context.Background(), &experimentv1.DeleteExperimentRequest{ExperimentId: b}); err != nil {
			t.Fatal(err)
		}
		// Experiment c has no checkpoints.
		env.experiment(t, "c")

		resp := env.apply(t, &experimentv1.ApplyRetentionPolicyRequest{MetricKey: "val_loss", DryRun: true})
		var gotA []float64
		for _, d := range resp.GetDeleted() {
			if d.GetExperimentId() == a {
				gotA = append(gotA, d.GetMetricValue())
			}
		}
		slices.Sort(gotA)
		if diff := cmp.Diff(wantA, gotA); diff != "" {
			t.Errorf("defaults (-want +got):\n%s", diff)
		}
		if resp.GetDeletedCount() != 3 || resp.GetKept() != 11+2 {
			t.Errorf("defaults over every experiment: deleted %d kept %d, want 3 and 13", resp.GetDeletedCount(), resp.GetKept())
		}

		resp = env.apply(t, &experimentv1.ApplyRetentionPolicyRequest{MetricKey: "val_loss", KeepBest: proto.Int32(0), KeepDays: proto.Int32(0)})
		if resp.GetDeletedCount() != 16 || resp.GetKept() != 0 || resp.GetBytesFreed() != 14+10 {
			t.Errorf("keep nothing over every experiment: %v", resp)
		}
		// Each experiment is logged on its own.
		env.retentionLog(t, a)
		env.retentionLog(t, b)
		for _, e := range []string{a, b} {
			if n := len(env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: e})); n != 0 {
				t.Errorf("experiment %s keeps %d checkpoints", e, n)
			}
		}
	})
}

func TestRetentionTruncatesTheDeletedList(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		ctx := context.Background()
		exp := env.experiment(t, "many")
		run := env.run(t, exp, experiment.StageActive)
		const n = 1003
		created := time.Now().Add(-90 * 24 * time.Hour).UnixMilli()
		err := env.db.InTx(ctx, func(tx *sql.Tx) error {
			for i := range n {
				if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoints (checkpoint_id, run_id, experiment_id, step, uri, size_bytes, metric_key, metric_value, create_time)
					VALUES ($1, $2, $3, $4, 's3://b/x', 2, 'val_loss', $5, $6)`, uuid.Must(uuid.NewV7()).String(), run, exp, i, float64(i), created); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, dry := range []bool{true, false} {
			resp := env.apply(t, &experimentv1.ApplyRetentionPolicyRequest{
				ExperimentId: exp, MetricKey: "val_loss", KeepBest: proto.Int32(1), KeepDays: proto.Int32(0), DryRun: dry,
			})
			if len(resp.GetDeleted()) != 1000 || resp.GetDeletedCount() != n-1 || !resp.GetTruncated() || resp.GetBytesFreed() != 2*(n-1) || resp.GetKept() != 1 {
				t.Errorf("dry run %v: %d listed, count %d, truncated %v, bytes %d, kept %d", dry,
					len(resp.GetDeleted()), resp.GetDeletedCount(), resp.GetTruncated(), resp.GetBytesFreed(), resp.GetKept())
			}
		}
		left := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp})
		if len(left) != 1 || left[0].GetMetricValue() != 0 {
			t.Errorf("left %v, want the best (0)", left)
		}
	})
}

// TestRetentionFiles: deleted checkpoints' files are removed only under
// the artifact root; everything else is left alone and reported in the log
// line and the counter.
func TestRetentionFiles(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		exp := env.experiment(t, "files")
		run := env.run(t, exp, experiment.StageActive)
		outsideDir := t.TempDir()
		outside := filepath.Join(outsideDir, "precious.pt")
		if err := os.WriteFile(outside, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(env.root, "link.pt")
		if err := os.Symlink(outside, link); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outsideDir, filepath.Join(env.root, "escape")); err != nil {
			t.Fatal(err)
		}
		inside := env.file(t, "exp/run/ckpt.pt")
		up, err := filepath.Rel(env.root, outside)
		if err != nil {
			t.Fatal(err)
		}
		uris := []string{
			inside,                            // removed
			"file://" + env.root + "/gone.pt", // missing
			"file://" + outside,               // outside the root
			"file://" + link,                  // a symlink escaping the root
			"file://" + filepath.Join(env.root, "escape", "precious.pt"), // a directory symlink escaping it
			"file://" + env.root + "/" + up,                              // dot-dot
			"s3://bucket/ckpt.pt",                                        // another store
			"file://" + filepath.Join(env.root, "exp"),                   // a directory
		}
		for i, u := range uris {
			env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: run, Uri: u, SizeBytes: int64(i + 1), MetricKey: "val_loss"})
		}
		req := &experimentv1.ApplyRetentionPolicyRequest{ExperimentId: exp, MetricKey: "val_loss", KeepBest: proto.Int32(0), KeepDays: proto.Int32(0), DryRun: true}
		env.apply(t, req)
		if _, err := os.Stat(strings.TrimPrefix(inside, "file://")); err != nil {
			t.Fatalf("dry run removed a file: %v", err)
		}
		if got := env.fileCounts(t); got["removed"] != 0 || got["outside_root"] != 0 {
			t.Errorf("dry run counted files: %v", got)
		}
		req.DryRun = false
		resp := env.apply(t, req)
		if resp.GetDeletedCount() != int64(len(uris)) || resp.GetBytesFreed() != 36 {
			t.Errorf("deleted %d, bytes %d; want %d and 36", resp.GetDeletedCount(), resp.GetBytesFreed(), len(uris))
		}
		if _, err := os.Stat(strings.TrimPrefix(inside, "file://")); !os.IsNotExist(err) {
			t.Errorf("file under the root: %v, want removed", err)
		}
		if b, err := os.ReadFile(outside); err != nil || string(b) != "keep me" {
			t.Errorf("file outside the root: %q, %v", b, err)
		}
		if _, err := os.Lstat(link); err != nil {
			t.Errorf("the escaping symlink itself: %v, want left alone", err)
		}
		want := map[string]int64{"removed": 1, "missing": 1, "outside_root": 4, "other_uri": 1, "not_regular": 1, "failed": 0, "still_referenced": 0}
		if diff := cmp.Diff(want, env.fileCounts(t)); diff != "" {
			t.Errorf("file counter (-want +got):\n%s", diff)
		}
		line := env.retentionLog(t, exp)
		for o, n := range want {
			if line["files_"+o] != float64(n) {
				t.Errorf("log line files_%s = %v, want %d: %v", o, line["files_"+o], n, line)
			}
		}
		if !strings.Contains(env.logs.String(), "checkpoint file outside the artifact root left alone") {
			t.Errorf("no line names a file left outside the root:\n%s", env.logs.String())
		}
	})
}

// TestRetentionSharedFiles: a file that a remaining checkpoint still
// names, by the same URI or another spelling of its path, in the same or
// another experiment, is left alone; a file named by several deleted
// checkpoints is removed once.
func TestRetentionSharedFiles(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		exp, other := env.experiment(t, "shared"), env.experiment(t, "other")
		run, otherRun := env.run(t, exp, experiment.StageActive), env.run(t, other, experiment.StageActive)
		alias := filepath.Join(t.TempDir(), "alias")
		if err := os.Symlink(env.root, alias); err != nil {
			t.Fatal(err)
		}
		best, dup, model, prot, shadow := env.file(t, "run/best.pt"), env.file(t, "run/dup.pt"), env.file(t, "run/model.pt"),
			env.file(t, "run/prot.pt"), env.file(t, "run/shadow.pt")
		env.version(t, "net", 1, `{}`)
		one := int64(1)
		env.alias(t, "net", "production", &one, 1)
		for _, req := range []*experimentv1.LogCheckpointRequest{
			// A run that overwrites best.pt each time it improves.
			{RunId: run, Uri: best, MetricValue: 0.9},
			{RunId: run, Uri: best, MetricValue: 0.1}, // kept: the best
			{RunId: run, Uri: dup, MetricValue: 0.5},
			{RunId: run, Uri: dup, MetricValue: 0.5},
			{RunId: run, Uri: strings.Replace(model, "file://", "file://localhost", 1), MetricValue: 0.6},
			{RunId: run, Uri: prot, MetricValue: 0.7, ModelName: "net", ModelVersion: 1}, // kept: aliased
			{RunId: run, Uri: prot, MetricValue: 0.8},
			{RunId: run, Uri: shadow, MetricValue: 0.85},
			// Another experiment names model.pt with "..", and shadow.pt
			// through a symlink to the root.
			{RunId: otherRun, Uri: "file://" + env.root + "/run/../run/model.pt", MetricValue: 1},
			{RunId: otherRun, Uri: "file://" + filepath.Join(alias, "run", "shadow.pt"), MetricValue: 1},
		} {
			req.MetricKey = "val_loss"
			env.logCheckpoint(t, req)
		}
		resp := env.apply(t, &experimentv1.ApplyRetentionPolicyRequest{ExperimentId: exp, MetricKey: "val_loss", KeepBest: proto.Int32(1), KeepDays: proto.Int32(0)})
		if resp.GetDeletedCount() != 6 || resp.GetKept() != 2 {
			t.Fatalf("deleted %d, kept %d; want 6 and 2", resp.GetDeletedCount(), resp.GetKept())
		}
		exists := func(uri string) bool {
			_, err := os.Stat(strings.TrimPrefix(uri, "file://"))
			return err == nil
		}
		for name, uri := range map[string]string{
			"best.pt (kept checkpoint)": best, "prot.pt (aliased checkpoint)": prot,
			"model.pt (other experiment)": model, "shadow.pt (other experiment, through a symlink)": shadow,
		} {
			if !exists(uri) {
				t.Errorf("%s: removed while a remaining checkpoint names it", name)
			}
		}
		if exists(dup) {
			t.Error("dup.pt: not removed")
		}
		line := env.retentionLog(t, exp)
		if line["files_removed"] != 2.0 || line["files_missing"] != 0.0 || line["files_still_referenced"] != 4.0 {
			t.Errorf("log line: removed %v, missing %v, still referenced %v; want 2, 0 (removed once) and 4: %v",
				line["files_removed"], line["files_missing"], line["files_still_referenced"], line)
		}

		// Once the last checkpoint naming it goes, so does the file (a
		// path through a symlink to the root lies outside it).
		env.apply(t, &experimentv1.ApplyRetentionPolicyRequest{ExperimentId: other, MetricKey: "val_loss", KeepBest: proto.Int32(0), KeepDays: proto.Int32(0)})
		if exists(model) {
			t.Error("model.pt: not removed with the last checkpoint naming it")
		}
		if got := env.fileCounts(t); got["removed"] != 3 || got["missing"] != 0 || got["still_referenced"] != 4 || got["outside_root"] != 1 {
			t.Errorf("file counter: %v; want 3 removed, 0 missing, 4 still referenced, 1 outside the root", got)
		}
	})
}

// TestRetentionConcurrentRuns: two real runs of one policy on one
// experiment delete each checkpoint once between them.
func TestRetentionConcurrentRuns(t *testing.T) {
	runCheckpoints(t, func(t *testing.T, env *ckptEnv) {
		exp := env.experiment(t, "race")
		run := env.run(t, exp, experiment.StageActive)
		for i := range 20 {
			env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: run, Uri: "s3://b/x", MetricKey: "val_loss", MetricValue: float64(i), SizeBytes: 1})
		}
		req := &experimentv1.ApplyRetentionPolicyRequest{ExperimentId: exp, MetricKey: "val_loss", KeepBest: proto.Int32(5), KeepDays: proto.Int32(0)}
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			total int64
			seen  = map[string]int{}
		)
		for range 2 {
			wg.Go(func() {
				resp, err := env.client.ApplyRetentionPolicy(context.Background(), req)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				total += resp.GetDeletedCount()
				for _, d := range resp.GetDeleted() {
					seen[d.GetCheckpointId()]++
				}
				if resp.GetKept() != 5 {
					t.Errorf("kept %d, want 5", resp.GetKept())
				}
			})
		}
		wg.Wait()
		if total != 15 || len(seen) != 15 {
			t.Errorf("two runs deleted %d (%d distinct), want 15 once each", total, len(seen))
		}
		if n := len(env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp})); n != 5 {
			t.Errorf("%d left, want 5", n)
		}
	})
}

// TestRetentionRechecksProtectionOnPostgres: an alias that appears
// between the read and the delete (a registry write committed by another
// connection) keeps its checkpoint. SQLite has one writer, so there nothing
// can commit in between.
func TestRetentionRechecksProtectionOnPostgres(t *testing.T) {
	t.Parallel()
	db := storetest.Postgres(t, experiment.Migrations())
	env := startCheckpoints(t, db)
	ctx := context.Background()
	exp := env.experiment(t, "recheck")
	run := env.run(t, exp, experiment.StageActive)
	env.version(t, "net", 1, `{}`)
	c := env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: run, Uri: "s3://b/x", MetricKey: "val_loss", ModelName: "net", ModelVersion: 1})
	env.logCheckpoint(t, &experimentv1.LogCheckpointRequest{RunId: run, Uri: "s3://b/y", MetricKey: "val_loss"})

	st := experiment.NewSQLStore(db)
	out, err := st.ApplyRetention(ctx, exp, func(cands []experiment.RetentionCandidate) []experiment.KeepReason {
		// The plan sees no protection; then the alias commits.
		for _, rc := range cands {
			if rc.Aliased || rc.Production {
				t.Errorf("protected before the alias exists: %+v", rc)
			}
		}
		if _, err := db.Pool().Exec(ctx, `INSERT INTO model_aliases (model_name, alias, version, revision) VALUES ('net', 'production', 1, 1)`); err != nil {
			t.Error(err)
		}
		return make([]experiment.KeepReason, len(cands)) // delete both
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Deleted) != 1 || out.Deleted[0].ID == c.GetCheckpointId() || out.Reprieved != 1 || out.Kept != 1 {
		t.Errorf("outcome: %d deleted, reprieved %d, kept %d; want the unprotected one deleted and the aliased one kept", len(out.Deleted), out.Reprieved, out.Kept)
	}
	left := env.list(t, &experimentv1.ListCheckpointsRequest{ExperimentId: exp})
	if len(left) != 1 || left[0].GetCheckpointId() != c.GetCheckpointId() {
		t.Errorf("left %v, want the aliased checkpoint", ids(left))
	}
}
