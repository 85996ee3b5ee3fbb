package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

// trainer streams metrics the way a training job does: messages of
// crashPoints points under one stream id, one stream per few messages,
// resending from its buffer after a failure. It remembers what the server
// acknowledged.
type trainer struct {
	run, key, streamID string

	mu    sync.Mutex
	sent  uint64 // highest sequence sent on any stream
	acked uint64 // highest sequence acknowledged durable
}

const (
	crashPoints   = 100
	crashMessages = 5 // per stream
)

func (tr *trainer) message(seq uint64) *experimentv1.StreamMetricsRequest {
	m := &experimentv1.StreamMetricsRequest{RunId: tr.run, StreamId: tr.streamID, Sequence: seq}
	for i := range crashPoints {
		step := int64(seq)*crashPoints + int64(i)
		m.Metrics = append(m.Metrics, &experimentv1.Metric{Key: tr.key, Value: float64(step), Step: step, TimestampMs: 1_700_000_000_000 + step})
	}
	return m
}

// stream sends the messages after the last acknowledged one up to to and
// records the acknowledgement.
func (tr *trainer) stream(ctx context.Context, client experimentv1.ExperimentServiceClient, to uint64) error {
	tr.mu.Lock()
	from := tr.acked + 1
	tr.mu.Unlock()
	s, err := client.StreamMetrics(ctx)
	if err != nil {
		return err
	}
	for seq := from; seq <= to; seq++ {
		if err := s.Send(tr.message(seq)); err != nil {
			break
		}
		tr.mu.Lock()
		tr.sent = max(tr.sent, seq)
		tr.mu.Unlock()
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetPersistedThroughSequence() != to {
		return fmt.Errorf("acknowledged through %d, want %d", resp.GetPersistedThroughSequence(), to)
	}
	tr.mu.Lock()
	tr.acked = to
	tr.mu.Unlock()
	return nil
}

func storedPoints(ctx context.Context, t *testing.T, client experimentv1.ExperimentServiceClient, run, key string) int64 {
	t.Helper()
	resp, err := client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: run, MetricKey: key, PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetTotalPoints()
}

// TestStreamedMetricsSurviveSIGKILL kills ExperimentService with SIGKILL
// while training jobs stream metrics, starts it again on the same
// database, and checks that every acknowledged point is stored; then each
// job resends its buffer under the same stream id, and every point it ever
// sent is stored exactly once.
func TestStreamedMetricsSurviveSIGKILL(t *testing.T) {
	t.Parallel()
	for name, dbArgs := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--services", "experiment", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
				"--data-dir", t.TempDir(), "--log-level", "error"}, dbArgs(t)...)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()

			p := startProc(t, nil, args...)
			client := experimentv1.NewExperimentServiceClient(p.conn(t))
			e, err := client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "crash"})
			if err != nil {
				t.Fatal(err)
			}
			var trainers []*trainer
			for i := range 2 {
				r, err := client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: e.GetExperiment().GetExperimentId()})
				if err != nil {
					t.Fatal(err)
				}
				for k := range 3 {
					trainers = append(trainers, &trainer{run: r.GetRun().GetRunId(), key: fmt.Sprintf("loss/%d", k), streamID: fmt.Sprintf("job-%d-%d", i, k)})
				}
			}

			// Every trainer streams until the process dies.
			var (
				wg       sync.WaitGroup
				progress = make(chan struct{}, 1000)
			)
			for _, tr := range trainers {
				wg.Go(func() {
					for to := uint64(crashMessages); ; to += crashMessages {
						if err := tr.stream(ctx, client, to); err != nil {
							return // the process was killed
						}
						progress <- struct{}{}
					}
				})
			}
			for range 3 * len(trainers) {
				select {
				case <-progress:
				case <-ctx.Done():
					t.Fatal("trainers made no progress")
				}
			}
			if err := p.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-p.done
			wg.Wait()

			p2 := startProc(t, nil, args...)
			client = experimentv1.NewExperimentServiceClient(p2.conn(t))
			inFlight := 0
			for _, tr := range trainers {
				if tr.sent > tr.acked {
					inFlight++
				}
				stored := storedPoints(ctx, t, client, tr.run, tr.key)
				if acked := int64(tr.acked) * crashPoints; stored < acked {
					t.Errorf("%s: %d points stored after the crash, %d were acknowledged", tr.streamID, stored, acked)
				}
			}
			t.Logf("%d of %d trainers had unacknowledged messages in flight at the kill", inFlight, len(trainers))

			// The jobs resend everything they sent: what had been stored is
			// skipped, the rest is stored once.
			for _, tr := range trainers {
				tr.acked = 0
				to := max(tr.sent, 1)
				if err := tr.stream(ctx, client, to); err != nil {
					t.Fatalf("%s: resend: %v", tr.streamID, err)
				}
				if stored, want := storedPoints(ctx, t, client, tr.run, tr.key), int64(to)*crashPoints; stored != want {
					t.Errorf("%s: %d points stored after the resend, want exactly %d", tr.streamID, stored, want)
				}
			}
		})
	}
}
