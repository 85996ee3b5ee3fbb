package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/risk"
)

func TestBenchUsageErrors(t *testing.T) {
	t.Parallel()
	testUsageErrors(t, "bench", []usageCase{
		{"no scenario", []string{}, []string{"needs a scenario", "experiments", "health"}},
		{"unknown scenario", []string{"nope"}, []string{`unknown bench scenario "nope"`, "experiments, health"}},
		{"extra argument", []string{"health", "more"}, []string{"extra arguments"}},
		{"zero duration", []string{"health", "--duration", "0s"}, []string{"--duration"}},
		{"negative duration", []string{"health", "--duration=-5s"}, []string{"--duration"}},
		{"duration without unit", []string{"health", "--duration", "5"}, []string{"-duration"}},
		{"zero concurrency", []string{"health", "--concurrency", "0"}, []string{"--concurrency"}},
		{"negative concurrency", []string{"experiments", "--concurrency=-2"}, []string{"--concurrency"}},
		{"huge concurrency", []string{"health", "--concurrency", "1000000"}, []string{"--concurrency"}},
		{"negative warm-up", []string{"health", "--warmup=-1s"}, []string{"--warmup"}},
		{"flags before the scenario", []string{"--concurrency", "0", "health"}, []string{"--concurrency"}},
		{"target without port", []string{"health", "--target", "localhost"}, []string{"--target"}},
		{"database url of another kind", []string{"experiments", "--database-url", "mysql://x"}, []string{"--database-url"}},
		{"log level", []string{"health", "--log-level", "loud"}, []string{"--log-level"}},
		{"unknown flag", []string{"health", "--rate", "5"}, []string{"-rate"}},
	})
}

func TestBenchHelp(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"bench", "-h"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, stderr.String())
	}
	for _, w := range []string{"Scenarios:", "experiments", "health", "-concurrency", "-duration", envBenchAPIKey} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("help lacks %q:\n%s", w, stdout.String())
		}
	}
}

// benchJSONKeys are the keys every --json report carries.
var benchJSONKeys = []string{
	"scenario", "concurrency", "duration_s", "ops", "errors", "throughput_per_s",
	"latency_us", "baseline_latency_us", "ratio_p50", "ratio_p99", "store", "target",
	"error_samples",
}

// decodeOne parses out as exactly one JSON object.
func decodeOne(t *testing.T, out []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(out))
	var rep map[string]any
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, out)
	}
	if err := dec.Decode(new(any)); !errors.Is(err, io.EOF) {
		t.Fatalf("stdout holds more than one JSON value: %s", out)
	}
	for _, k := range benchJSONKeys {
		if _, ok := rep[k]; !ok {
			t.Errorf("report lacks %q: %s", k, out)
		}
	}
	for _, k := range []string{"latency_us", "baseline_latency_us"} {
		m, _ := rep[k].(map[string]any)
		for _, p := range []string{"p50", "p95", "p99"} {
			if v, _ := m[p].(float64); v <= 0 {
				t.Errorf("%s.%s = %v, want > 0", k, p, m[p])
			}
		}
	}
	return rep
}

func TestBenchInProcess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		scenario  string
		backend   string
		wantStore []string
		wantKeys  []string
	}{
		{"health", "sqlite", []string{"sqlite"}, nil},
		{"experiments", "sqlite", []string{"sqlite"}, []string{"creates", "gets", "create_latency_us", "get_latency_us"}},
		{"experiments", "postgres", []string{"postgres", "timescaledb"}, []string{"creates", "gets"}},
	}
	for _, tc := range tests {
		t.Run(tc.scenario+"/"+tc.backend, func(t *testing.T) {
			t.Parallel()
			args := []string{"bench", tc.scenario, "--duration", "1s", "--concurrency", "2", "--json"}
			if tc.backend == "postgres" {
				args = append(args, "--database-url", storetest.NewPostgresDatabase(t))
			}
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), args, &stdout, &stderr); code != exitOK {
				t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
			}
			rep := decodeOne(t, stdout.Bytes())
			if rep["scenario"] != tc.scenario || rep["concurrency"] != 2.0 || rep["in_process"] != true {
				t.Errorf("scenario %v concurrency %v in_process %v", rep["scenario"], rep["concurrency"], rep["in_process"])
			}
			if s, _ := rep["store"].(string); !slices.Contains(tc.wantStore, s) {
				t.Errorf("store = %q, want one of %v", s, tc.wantStore)
			}
			if ops, _ := rep["ops"].(float64); ops <= 0 {
				t.Errorf("ops = %v, want > 0", rep["ops"])
			}
			if rep["errors"] != 0.0 || rep["baseline_errors"] != 0.0 {
				t.Errorf("errors = %v, baseline_errors = %v, want 0: %v", rep["errors"], rep["baseline_errors"], rep["error_samples"])
			}
			if r, _ := rep["ratio_p50"].(float64); r <= 0 {
				t.Errorf("ratio_p50 = %v, want > 0", rep["ratio_p50"])
			}
			for _, k := range tc.wantKeys {
				if _, ok := rep[k]; !ok {
					t.Errorf("report lacks %q", k)
				}
			}
			if tc.scenario == "experiments" && (rep["creates"] != rep["ops"] || rep["gets"] != rep["ops"]) {
				t.Errorf("creates %v, gets %v, want ops %v each", rep["creates"], rep["gets"], rep["ops"])
			}
		})
	}
}

func TestBenchTable(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "health", "--duration", "1500ms", "--concurrency", "2"}
	if code := run(context.Background(), args, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	for _, w := range []string{"scenario", "health", "baseline Health/Check", "ratio scenario/baseline", "p99"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, stdout.String())
		}
	}
	if !regexp.MustCompile(`bench health: [0-9.]+s/1.5s  ops `).MatchString(stderr.String()) {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
}

// startTargetMesh runs a mesh the way `quantmesh up` would, on free ports,
// and returns its gRPC address.
func startTargetMesh(t *testing.T, keys auth.Keys) string {
	t.Helper()
	dir := t.TempDir()

	cfg := mesh.Config{
		Server:     server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"},
		Store:      store.Config{URL: filepath.Join(dir, "quantmesh.db")},
		Services:   mesh.AllServices,
		Keys:       keys,
		Experiment: experiment.Config{ArtifactRoot: "file://" + filepath.Join(dir, "artifacts")},
		Risk:       risk.DefaultConfig(),
	}
	m := meshtest.Start(t, cfg)
	return m.Server.GRPCTarget()
}

func TestBenchTarget(t *testing.T) {
	t.Parallel()
	var keys auth.Keys
	if err := keys.Add("bench-test-key-0123456789", auth.Principal{Name: "bench", Role: auth.RoleResearcher}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		keys     auth.Keys
		wantCode int
		wantErr  []string
	}{
		{name: "open mesh", wantCode: exitOK},
		// QUANTMESH_BENCH_API_KEY is not set: every create is refused,
		// the failures are reported and the exit status says so.
		{name: "mesh with authentication, no key", keys: keys, wantCode: exitFailure,
			wantErr: []string{"every operation failed", "Unauthenticated", envBenchAPIKey}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.keys.Enabled() && os.Getenv(envBenchAPIKey) != "" {
				t.Skipf("%s is set in the environment", envBenchAPIKey)
			}
			target := startTargetMesh(t, tc.keys)
			var stdout, stderr bytes.Buffer
			args := []string{"bench", "experiments", "--target", target, "--duration", "500ms", "--concurrency", "2", "--json"}
			if code := run(context.Background(), args, &stdout, &stderr); code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, stderr.String())
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			var rep map[string]any
			if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
			}
			if rep["target"] != target || rep["in_process"] != false || rep["store"] != "unknown" {
				t.Errorf("target %v in_process %v store %v, want %s false unknown", rep["target"], rep["in_process"], rep["store"], target)
			}
			if tc.wantCode == exitOK && (rep["ops"] == 0.0 || rep["errors"] != 0.0) {
				t.Errorf("ops %v errors %v, want ops > 0 and no errors", rep["ops"], rep["errors"])
			}
			if tc.wantCode != exitOK && (rep["ops"] != 0.0 || rep["errors"] == 0.0) {
				t.Errorf("ops %v errors %v, want every operation failed", rep["ops"], rep["errors"])
			}
		})
	}
}
