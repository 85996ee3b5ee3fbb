// Package e2e drives the quantmesh binary as separate processes, the way an
// operator and a client would: build it, start it, call it over REST and
// gRPC, stop it with a signal, start it again.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

var allServices = []string{
	"quantmesh.experiment.v1.ExperimentService",
	"quantmesh.inference.v1.InferenceService",
	"quantmesh.metacontroller.v1.MetaControllerService",
	"quantmesh.regime.v1.RegimeService",
	"quantmesh.risk.v1.RiskService",
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/quantmesh once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "quantmesh-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "quantmesh")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/quantmesh/quantmesh/cmd/quantmesh").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a running quantmesh process.
type proc struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string
	stderr   *lockedBuffer
	done     chan struct{} // closed when the process has exited
	waitErr  error         // its exit error, set before done closes
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var (
	grpcLine = regexp.MustCompile(`^\s+gRPC\s+(\S+)`)
	restLine = regexp.MustCompile(`^\s+REST\s+http://([^/\s]+)/`)
)

// startProc runs the binary with args and waits for its banner.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		announced := false
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if m := grpcLine.FindStringSubmatch(line); m != nil {
				p.grpcAddr = m[1]
			}
			if m := restLine.FindStringSubmatch(line); m != nil {
				p.httpAddr = m[1]
			}
			if p.grpcAddr != "" && p.httpAddr != "" && !announced {
				announced = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("quantmesh exited before it was ready: %v\nstderr:\n%s", p.waitErr, p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("quantmesh did not print its banner in 30s\nstderr:\n%s", p.stderr)
	}
	return p
}

// stop sends SIGTERM and requires a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.waitErr != nil {
			t.Fatalf("exit after SIGTERM: %v\nstderr:\n%s", p.waitErr, p.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit 20s after SIGTERM\nstderr:\n%s", p.stderr)
	}
}

func (p *proc) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// backends lists how to point the binary at each store.
func backends(t *testing.T) map[string]func(t *testing.T) []string {
	return map[string]func(t *testing.T) []string{
		"sqlite": func(t *testing.T) []string { return nil },
		"postgres": func(t *testing.T) []string {
			return []string{"--database-url", storetest.NewPostgresDatabase(t)}
		},
	}
}

func TestUpServesRESTAndGRPCAndSurvivesRestart(t *testing.T) {
	t.Parallel()
	for name, dbArgs := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			extra := dbArgs(t)
			dataDir := t.TempDir()
			args := append([]string{"up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "warn"}, extra...)
			p := startProc(t, nil, args...)

			// Create over REST.
			resp, err := http.Post("http://"+p.httpAddr+"/v1/experiments", "application/json",
				strings.NewReader(`{"name":"e2e","description":"made over REST","tags":{"via":"curl"}}`))
			if err != nil {
				t.Fatal(err)
			}
			var created map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&created); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("REST create: %d %v", resp.StatusCode, created)
			}
			id, _ := created["experimentId"].(string)

			// Read over gRPC.
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			client := experimentv1.NewExperimentServiceClient(p.conn(t))
			got, err := client.GetExperiment(ctx, &experimentv1.GetExperimentRequest{ExperimentId: id})
			if err != nil {
				t.Fatal(err)
			}
			if got.GetExperiment().GetName() != "e2e" || got.GetExperiment().GetTags()["via"] != "curl" {
				t.Errorf("gRPC read %v", got.GetExperiment())
			}

			// The health service lists all five services, each serving.
			health := healthpb.NewHealthClient(p.conn(t))
			list, err := health.List(ctx, &healthpb.HealthListRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for svc, st := range list.GetStatuses() {
				if svc == "" {
					continue
				}
				names = append(names, svc)
				if st.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("%s: %v", svc, st.GetStatus())
				}
			}
			sort.Strings(names)
			if diff := cmp.Diff(allServices, names); diff != "" {
				t.Errorf("health services (-want +got):\n%s", diff)
			}

			// /metrics carries rpc server metrics of the calls above.
			code, metrics := httpGet(t, "http://"+p.httpAddr+"/metrics")
			if code != http.StatusOK || !strings.Contains(metrics, `rpc_server_call_duration_seconds_count{`) ||
				!strings.Contains(metrics, `rpc_method="quantmesh.experiment.v1.ExperimentService/GetExperiment"`) {
				t.Errorf("/metrics (%d) lacks rpc server metrics for GetExperiment", code)
			}
			if code, body := httpGet(t, "http://"+p.httpAddr+"/readyz"); code != http.StatusOK {
				t.Errorf("/readyz: %d %s", code, body)
			}
			// The first start trained and promoted an initial policy model:
			// Predict works out of the box.
			inf := inferencev1.NewInferenceServiceClient(p.conn(t))
			deadline := time.Now().Add(90 * time.Second)
			for {
				st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "policy"})
				if err != nil {
					t.Fatal(err)
				}
				if m := st.GetModels()[0]; m.GetLoadedVersion() > 0 {
					x := make([]float64, m.GetFeatureCount())
					resp, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "DAX", Features: x})
					if err != nil || resp.GetModelVersion() != m.GetLoadedVersion() || len(m.GetFeatureNames()) != len(x) {
						t.Errorf("predict with the initial model: %v %v (status %v)", resp, err, m)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no initial model loaded in 90s: %v", st)
				}
				time.Sleep(100 * time.Millisecond)
			}
			// A/B tests are served: an id that is not a test's is NotFound.
			if _, err := experimentv1.NewExperimentServiceClient(p.conn(t)).GetABTest(ctx, &experimentv1.GetABTestRequest{AbTestId: id}); status.Code(err) != codes.NotFound {
				t.Errorf("GetABTest: %v, want NotFound", err)
			}

			p.stop(t)

			// A second start on the same data still has the experiment.
			p2 := startProc(t, nil, args...)
			code, body := httpGet(t, "http://"+p2.httpAddr+"/v1/experiments/"+id)
			if code != http.StatusOK || !strings.Contains(body, `"name":"e2e"`) {
				t.Errorf("after restart: %d %s", code, body)
			}
			p2.stop(t)
		})
	}
}

func TestServeRunsOnlyTheNamedServices(t *testing.T) {
	t.Parallel()
	p := startProc(t, nil, "serve", "--services", "experiment,risk", "--grpc-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0", "--data-dir", t.TempDir(), "--peer-inference", "127.0.0.1:1", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := healthpb.NewHealthClient(p.conn(t)).List(ctx, &healthpb.HealthListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for svc := range list.GetStatuses() {
		if svc != "" {
			names = append(names, svc)
		}
	}
	sort.Strings(names)
	want := []string{"quantmesh.experiment.v1.ExperimentService", "quantmesh.risk.v1.RiskService"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	p.stop(t)
}

// TestStartFailuresAreClear checks the one-line messages and exit statuses
// of start-up failures.
func TestStartFailuresAreClear(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Subtests run after this function returns: close in Cleanup, not defer.
	t.Cleanup(func() { busy.Close() })

	conflict := filepath.Join(t.TempDir(), "conflict.db")
	{
		// A table in the way of the first migration.
		cmd := exec.Command(binary(t), "migrate", "--database-url", filepath.Join(t.TempDir(), "ok.db"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("migrate on a fresh file: %v\n%s", err, out)
		}
	}
	if err := makeConflictingSQLite(conflict); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		wantMsg  string
	}{
		{"unknown flag", []string{"up", "--no-such-flag"}, nil, 2, "no-such-flag"},
		{"bad address", []string{"up", "--grpc-addr", "nowhere"}, nil, 2, "--grpc-addr"},
		{"bad env", []string{"up"}, []string{"QUANTMESH_SHUTDOWN_TIMEOUT=soon"}, 2, "QUANTMESH_SHUTDOWN_TIMEOUT"},
		{"non-loopback without auth", []string{"up", "--grpc-addr", "0.0.0.0:0"}, nil, 2, "--insecure"},
		{"unknown service", []string{"serve", "--services", "risk,nope"}, nil, 2, "nope"},
		{"port in use", []string{"up", "--grpc-addr", busy.Addr().String(), "--http-addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, nil, 1, "cannot listen for gRPC on " + busy.Addr().String()},
		{"unreachable database", []string{"up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--database-url", "postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}, nil, 1, "unreachable"},
		{"failed migration", []string{"up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--database-url", conflict}, nil, 1, "migration experiment/sqlite/0001_experiments.sql failed"},
		{"unknown command", []string{"fly"}, nil, 2, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary(t), tt.args...)
			cmd.Env = append(os.Environ(), tt.env...)
			cmd.Dir = t.TempDir()
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tt.wantCode {
				t.Errorf("exit %d, want %d\n%s", code, tt.wantCode, out)
			}
			if !strings.Contains(string(out), tt.wantMsg) {
				t.Errorf("output lacks %q:\n%s", tt.wantMsg, out)
			}
			if strings.Contains(string(out), "goroutine ") || strings.Contains(string(out), "panic:") {
				t.Errorf("output has a stack trace:\n%s", out)
			}
		})
	}
}
