package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
)

// TestLearnPublishSwapsServedVersion: with a mesh running and a client
// predicting continuously, `quantmesh learn --replay` publishes a new
// version; InferenceService swaps it in and no request fails.
func TestLearnPublishSwapsServedVersion(t *testing.T) {
	t.Parallel()
	p := startProc(t, nil, "serve", "--services", "experiment,inference", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--log-level", "error", "--bootstrap-model=false")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	quantmesh := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, binary(t), args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("quantmesh %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errb.String())
		}
		return out.String()
	}
	if out := quantmesh("train", "--target", p.grpcAddr, "--data", "eustock", "--epochs", "2", "--promote"); !strings.Contains(out, "version 1") {
		t.Fatalf("train: %s", out)
	}

	inf := inferencev1.NewInferenceServiceClient(p.conn(t))
	var (
		mu       sync.Mutex
		versions = map[int64]int{}
		failures []error
	)
	predict := func(i int) {
		resp, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "DAX", RequestId: fmt.Sprint(i),
			Features: []float64{0.001, 0.01, 0.012, 0.011, 0.02, 0.03, 0.05, -0.02, 0.9}})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures = append(failures, err)
			return
		}
		versions[resp.GetModelVersion()]++
	}
	served := func(v int64) bool {
		mu.Lock()
		defer mu.Unlock()
		return versions[v] > 0
	}
	// Wait until version 1 answers (until it is loaded, calls find no model).
	for {
		resp, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "DAX",
			Features: []float64{0, 0, 0, 0, 0, 0, 0, 0, 1}})
		if err == nil && resp.GetModelVersion() == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("InferenceService did not serve version 1: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	stop := make(chan struct{})
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			predict(i)
		}
	}()
	out := quantmesh("learn", "--target", p.grpcAddr, "--replay", "ttrc", "--epochs", "2", "--degradation-threshold", "1")
	if !strings.Contains(out, "version 2 published from version 1") {
		t.Errorf("learn: %s", out)
	}
	for !served(2) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-clientDone
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("%d requests failed, first: %v", len(failures), failures[0])
	}
	if versions[1] == 0 || versions[2] == 0 {
		t.Errorf("versions answered %v, want 1 then 2", versions)
	}
}
