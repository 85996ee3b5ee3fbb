package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/risk"
)

func TestCleanupUsageErrors(t *testing.T) {
	t.Parallel()
	testUsageErrors(t, "cleanup", []usageCase{
		{"no metric", []string{}, []string{"--metric is required"}},
		{"blank metric", []string{"--metric", " "}, []string{"--metric is required"}},
		{"unknown goal", []string{"--metric", "val_loss", "--goal", "best"}, []string{`invalid --goal "best"`, "min or max"}},
		{"negative keep-best", []string{"--metric", "val_loss", "--keep-best=-1"}, []string{"--keep-best"}},
		{"negative keep-days", []string{"--metric", "val_loss", "--keep-days", "-3"}, []string{"--keep-days"}},
		{"keep-days not a number", []string{"--metric", "val_loss", "--keep-days", "week"}, []string{"-keep-days"}},
		{"target without port", []string{"--metric", "val_loss", "--target", "localhost"}, []string{"--target"}},
		{"zero timeout", []string{"--metric", "val_loss", "--timeout", "0s"}, []string{"--timeout"}},
		{"an argument", []string{"--metric", "val_loss", "exp-1"}, []string{"no arguments", "exp-1"}},
		{"unknown flag", []string{"--metric", "val_loss", "--force"}, []string{"-force"}},
	})
}

func TestCleanupHelp(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"cleanup", "-h"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, stderr.String())
	}
	for _, w := range []string{"quantmesh cleanup --metric", "-dry-run", "-keep-best", "-keep-days", "-goal", "-experiment", "-target", "QUANTMESH_API_KEY"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("help lacks %q:\n%s", w, stdout.String())
		}
	}
}

func TestHumanBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{
		0: "0 B", 999: "999 B", 1000: "1.0 kB", 2048: "2.0 kB", 999_949: "999.9 kB", 999_950: "1.0 MB",
		1_200_000_000: "1.2 GB", 3_000_000_000_000: "3.0 TB", 1 << 62: "4611.7 PB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// cleanupMesh is a mesh served the way `quantmesh up` serves it, with its
// database for the rows whose RPCs are built elsewhere (runs).
type cleanupMesh struct {
	target string
	db     *store.DB
	root   string
	client experimentv1.ExperimentServiceClient
}

func startCleanupMesh(t *testing.T, backend string, keys auth.Keys, clientKey string) *cleanupMesh {
	t.Helper()
	dir := t.TempDir()
	dbURL := filepath.Join(dir, "quantmesh.db")
	if backend == "postgres" {
		dbURL = storetest.NewPostgresDatabase(t)
	}
	root := filepath.Join(dir, "artifacts")
	cfg := mesh.Config{
		Server:     server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"},
		Store:      store.Config{URL: dbURL},
		Services:   mesh.AllServices,
		Keys:       keys,
		Experiment: experiment.Config{ArtifactRoot: "file://" + root},
		Risk:       risk.DefaultConfig(),
	}
	m := meshtest.Start(t, cfg)
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if clientKey != "" {
		opts = append(opts, auth.PerRPCKey(clientKey))
	}
	conn, err := grpc.NewClient(m.Server.GRPCTarget(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &cleanupMesh{target: m.Server.GRPCTarget(), db: m.DB, root: root, client: experimentv1.NewExperimentServiceClient(conn)}
}

// seed creates an experiment with a run and one checkpoint per value, each
// a file under the artifact root of size bytes, logged days ago.
func (cm *cleanupMesh) seed(t *testing.T, name string, size int64, values ...float64) (id string, files []string) {
	t.Helper()
	ctx := context.Background()
	e, err := cm.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	id = e.GetExperiment().GetExperimentId()
	run := uuid.Must(uuid.NewV7()).String()
	// The runs RPCs are built on another branch: the row goes in by SQL.
	if _, err := cm.db.Exec(ctx, `INSERT INTO runs (run_id, experiment_id, run_name, status, start_time, lifecycle_stage)
		VALUES ($1, $2, 'r', 'RUNNING', $3, 'active')`, run, id, time.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
	for i, v := range values {
		p := filepath.Join(cm.root, name, fmt.Sprintf("ckpt-%d.pt", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("w"), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := cm.client.LogCheckpoint(ctx, &experimentv1.LogCheckpointRequest{
			RunId: run, Step: int64(i), Uri: "file://" + p, SizeBytes: size, MetricKey: "val_loss", MetricValue: v,
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cm.db.Exec(ctx, `UPDATE checkpoints SET create_time = $1 WHERE checkpoint_id = $2`,
			time.Now().Add(-60*24*time.Hour).UnixMilli(), c.GetCheckpoint().GetCheckpointId()); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	return id, files
}

func exist(files []string) (n int) {
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			n++
		}
	}
	return n
}

// TestCleanupEndToEnd drives `quantmesh cleanup` against a running mesh:
// a dry run reports and changes nothing, the real run deletes records and
// files, one experiment can be chosen by name or id.
func TestCleanupEndToEnd(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			cm := startCleanupMesh(t, backend, auth.Keys{}, "")
			_, filesA := cm.seed(t, "exp-a", 600_000_000, 0.5, 0.1, 0.3, 0.9) // keep 2 best: 0.1, 0.3
			idB, filesB := cm.seed(t, "exp-b", 1000, 1, 2, 3)                 // keep 2 best: 1, 2
			cm.seed(t, "exp-empty", 0)

			base := []string{"cleanup", "--target", cm.target, "--metric", "val_loss", "--keep-best", "2", "--keep-days", "7"}
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), append(base, "--dry-run"), &stdout, &stderr); code != exitOK {
				t.Fatalf("dry run: exit %d; stderr:\n%s", code, stderr.String())
			}
			for _, w := range []*regexp.Regexp{
				regexp.MustCompile(`(?m)^\[\d/3\] exp-a: 2 of 4 checkpoints to delete, 1\.2 GB$`),
				regexp.MustCompile(`(?m)^\[\d/3\] exp-b: 1 of 3 checkpoints to delete, 1\.0 kB$`),
				regexp.MustCompile(`(?m)^\[\d/3\] exp-empty: no checkpoints$`),
				regexp.MustCompile(`(?m)^dry run: 3 checkpoints \(1\.2 GB\) would be deleted`),
			} {
				if !w.MatchString(stderr.String()) {
					t.Errorf("stderr does not match %s:\n%s", w, stderr.String())
				}
			}
			for _, w := range []*regexp.Regexp{
				regexp.MustCompile(`experiment +kept +deleted +bytes freed +dry run`),
				regexp.MustCompile(`exp-a +2 +2 +1\.2 GB +yes`),
				regexp.MustCompile(`exp-b +2 +1 +1\.0 kB +yes`),
				regexp.MustCompile(`total \(3 experiments\) +4 +3 +1\.2 GB +yes`),
			} {
				if !w.MatchString(stdout.String()) {
					t.Errorf("table does not match %s:\n%s", w, stdout.String())
				}
			}
			if strings.Contains(stdout.String(), "exp-empty") {
				t.Errorf("the table lists an experiment without checkpoints:\n%s", stdout.String())
			}
			if exist(filesA)+exist(filesB) != 7 {
				t.Fatalf("the dry run removed files")
			}

			// One experiment by name, for real, as JSON.
			stdout.Reset()
			stderr.Reset()
			if code := run(context.Background(), append(base, "--experiment", "exp-b", "--json"), &stdout, &stderr); code != exitOK {
				t.Fatalf("exp-b: exit %d; stderr:\n%s", code, stderr.String())
			}
			var rep struct {
				DryRun      bool `json:"dry_run"`
				Experiments []struct {
					ExperimentID string `json:"experiment_id"`
					Name         string `json:"name"`
					Kept         int64  `json:"kept"`
					Deleted      int64  `json:"deleted"`
					BytesFreed   int64  `json:"bytes_freed"`
					Checkpoints  []struct {
						MetricValue float64 `json:"metric_value"`
						URI         string  `json:"uri"`
					} `json:"deleted_checkpoints"`
				} `json:"experiments"`
				Total struct {
					Experiments int   `json:"experiments"`
					Deleted     int64 `json:"deleted"`
					BytesFreed  int64 `json:"bytes_freed"`
				} `json:"total"`
			}
			if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
			}
			if rep.DryRun || len(rep.Experiments) != 1 || rep.Total.Experiments != 1 || rep.Total.Deleted != 1 || rep.Total.BytesFreed != 1000 {
				t.Fatalf("report: %+v", rep)
			}
			e := rep.Experiments[0]
			if e.ExperimentID != idB || e.Name != "exp-b" || e.Kept != 2 || e.Deleted != 1 || len(e.Checkpoints) != 1 ||
				e.Checkpoints[0].MetricValue != 3 || e.Checkpoints[0].URI != "file://"+filesB[2] {
				t.Errorf("exp-b: %+v", e)
			}
			if !regexp.MustCompile(`(?m)^\[1/1\] exp-b: 1 of 3 checkpoints deleted, 1\.0 kB freed$`).MatchString(stderr.String()) {
				t.Errorf("progress:\n%s", stderr.String())
			}
			if exist(filesB) != 2 || exist(filesA) != 4 {
				t.Errorf("files left: exp-b %d (want 2), exp-a %d (want 4)", exist(filesB), exist(filesA))
			}

			// Everything else, for real.
			stdout.Reset()
			stderr.Reset()
			if code := run(context.Background(), base, &stdout, &stderr); code != exitOK {
				t.Fatalf("all: exit %d; stderr:\n%s", code, stderr.String())
			}
			if !regexp.MustCompile(`total \(3 experiments\) +4 +2 +1\.2 GB +no`).MatchString(stdout.String()) {
				t.Errorf("table:\n%s", stdout.String())
			}
			if exist(filesA) != 2 || exist(filesB) != 2 {
				t.Errorf("files left: exp-a %d, exp-b %d; want 2 each", exist(filesA), exist(filesB))
			}
			if _, err := os.Stat(filesA[1]); err != nil {
				t.Errorf("the best checkpoint's file: %v", err)
			}

			// By id, again: nothing left to delete.
			stdout.Reset()
			stderr.Reset()
			if code := run(context.Background(), append(base, "--experiment", idB), &stdout, &stderr); code != exitOK {
				t.Fatalf("by id: exit %d; stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), "[1/1] exp-b: 0 of 2 checkpoints deleted, 0 B freed") {
				t.Errorf("by id:\n%s", stderr.String())
			}
		})
	}
}

func TestCleanupFailures(t *testing.T) {
	t.Parallel()
	if os.Getenv(envName("api-key")) != "" {
		t.Skipf("%s is set in the environment", envName("api-key"))
	}
	var keys auth.Keys
	const researcher, trader = "cleanup-researcher-key-0123", "cleanup-trader-key-0123456"
	if err := keys.Add(researcher, auth.Principal{Name: "r", Role: auth.RoleResearcher}); err != nil {
		t.Fatal(err)
	}
	if err := keys.Add(trader, auth.Principal{Name: "t", Role: auth.RoleTrader}); err != nil {
		t.Fatal(err)
	}
	cm := startCleanupMesh(t, "sqlite", keys, researcher)
	_, files := cm.seed(t, "exp", 10, 1, 2)
	base := []string{"cleanup", "--target", cm.target, "--metric", "val_loss", "--keep-best", "0", "--keep-days", "0"}
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no key", nil, exitFailure, []string{"Unauthenticated", "QUANTMESH_API_KEY"}},
		{"a trader's key", []string{"--api-key", trader}, exitFailure, []string{"PermissionDenied", "researcher"}},
		{"an unknown experiment", []string{"--api-key", researcher, "--experiment", "nope"}, exitFailure, []string{`experiment "nope"`, "NotFound"}},
		{"an unknown experiment id", []string{"--api-key", researcher, "--experiment", uuid.Must(uuid.NewV7()).String()}, exitFailure, []string{"NotFound"}},
		{"nothing listens", []string{"--target", "127.0.0.1:1", "--timeout", "2s"}, exitFailure, []string{"Unavailable"}},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), append(base, tc.args...), &stdout, &stderr); code != tc.code {
			t.Errorf("%s: exit %d, want %d; stderr:\n%s", tc.name, code, tc.code, stderr.String())
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%s: stderr lacks %q:\n%s", tc.name, w, stderr.String())
			}
		}
	}
	if exist(files) != 2 {
		t.Fatal("a failed cleanup removed files")
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), append(base, "--api-key", researcher), &stdout, &stderr); code != exitOK {
		t.Fatalf("with a researcher's key: exit %d; stderr:\n%s", code, stderr.String())
	}
	if exist(files) != 0 {
		t.Errorf("%d files left, want none", exist(files))
	}
}
