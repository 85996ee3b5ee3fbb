package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// TestLearnKafkaServesMetrics: a long-running `quantmesh learn
// --kafka-brokers` serves its metrics (the ModelRetrainingFailed and
// OnlineLearningDegradation alerts read them) and stops cleanly on SIGTERM.
func TestLearnKafkaServesMetrics(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	p := startProc(t, nil, "serve", "--services", "experiment", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--log-level", "error", "--bootstrap-model=false")

	cmd := exec.Command(binary(t), "learn", "--target", p.grpcAddr, "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","),
		"--metrics-addr", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		line := regexp.MustCompile(`^learner metrics at (http://\S+/metrics)$`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := line.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	var url string
	select {
	case url = <-addr:
	case err := <-done:
		t.Fatalf("learn exited before serving metrics: %v\nstderr:\n%s", err, stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("learn did not announce its metrics address in 30s\nstderr:\n%s", stderr)
	}
	code, body := httpGet(t, url)
	if code != 200 {
		t.Fatalf("GET %s: %d\n%s", url, code, body)
	}
	for _, family := range []string{"quantmesh_learner_since_last_publish_seconds", "quantmesh_learner_replay_outcomes", "quantmesh_learner_consecutive_failures"} {
		if !strings.Contains(body, "\n"+family+"{") && !strings.Contains(body, "\n"+family+" ") {
			t.Errorf("%s: no %s\n%s", url, family, body)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\nstderr:\n%s", err, stderr)
		}
	case <-ctx.Done():
		t.Fatalf("no exit 20s after SIGTERM\nstderr:\n%s", stderr)
	}
}
