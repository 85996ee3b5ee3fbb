package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
)

// TestTrainRegistersAndPromotes runs `quantmesh train` twice with one seed
// against a running mesh: both versions have the same weights (same
// checksum), the run carries params and per-epoch metrics, and --promote
// moves production, which InferenceService then serves.
func TestTrainRegistersAndPromotes(t *testing.T) {
	t.Parallel()
	p := startProc(t, nil, "serve", "--services", "experiment,inference", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--log-level", "error", "--bootstrap-model=false")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	train := func(extra ...string) (stdout, stderr string) {
		t.Helper()
		args := append([]string{"train", "--target", p.grpcAddr, "--data", "eustock", "--seed", "3", "--epochs", "3"}, extra...)
		cmd := exec.CommandContext(ctx, binary(t), args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("quantmesh %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errb.String())
		}
		return out.String(), errb.String()
	}
	out1, err1 := train()
	out2, _ := train("--promote")
	if !strings.Contains(err1, "epoch   3/3  loss ") || !strings.Contains(out1, "version 1") || !strings.Contains(out2, "version 2") ||
		!strings.Contains(out2, "production now points to it") {
		t.Fatalf("train output:\n%s%s%s", err1, out1, out2)
	}

	client := experimentv1.NewExperimentServiceClient(p.conn(t))
	var sums []string
	for v := int64(1); v <= 2; v++ {
		mv, err := client.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: "policy", Version: v})
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, mv.GetModelVersion().GetChecksumSha256())
		if v == 2 {
			run, err := client.GetRun(ctx, &experimentv1.GetRunRequest{RunId: mv.GetModelVersion().GetSourceRunId()})
			if err != nil {
				t.Fatal(err)
			}
			r := run.GetRun()
			if r.GetParams()["seed"] != "3" || r.GetParams()["data"] != "eustock" || r.GetStatus() != experimentv1.RunStatus_RUN_STATUS_FINISHED {
				t.Errorf("training run: %v", r)
			}
			hist, err := client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: r.GetRunId(), MetricKey: "train/loss"})
			if err != nil || len(hist.GetMetrics()) != 3 {
				t.Errorf("train/loss history: %v %v", hist, err)
			}
		}
	}
	if sums[0] == "" || sums[0] != sums[1] {
		t.Errorf("same data and seed gave weights %s and %s", sums[0], sums[1])
	}

	inf := inferencev1.NewInferenceServiceClient(p.conn(t))
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "policy"})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetModels()[0].GetLoadedVersion() == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("InferenceService did not load version 2: %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
