package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
)

func init() {
	Register(Spec{
		Name:        "tracking-ingest",
		Summary:     "200 runs each streaming metrics (StreamMetrics), persisted rate, lost points, ratio to a raw COPY",
		New:         func() Scenario { return &ingestScenario{} },
		Concurrency: 200,
	})
	Register(Spec{
		Name:    "tracking-logbatch",
		Summary: "LogBatch of 1000 metric points to the worker's own run",
		New:     func() Scenario { return &logBatchScenario{} },
	})
}

// Shape of the ingest workload: one operation is one StreamMetrics stream
// of ingestMessages messages of ingestPoints points over ingestKeys metric
// keys.
const (
	ingestKeys     = 10
	ingestPoints   = 500
	ingestMessages = 4
)

// ingestScenario measures the tracking write path: each worker owns a run
// and, per operation, opens a StreamMetrics stream with its own stream id,
// sends ingestMessages messages and waits for the summary, which
// acknowledges the points as durable. Sequences continue across a worker's
// operations; a failed operation is resent whole by the next one (the
// server skips what it had stored), as a real client would.
//
// metrics counts the points newly persisted in the window (metrics_per_s is
// the ingest rate). After the window every run's stored points are counted
// through GetMetricHistory: lost_points is acknowledged minus stored and
// must be 0. On PostgreSQL a raw pgx CopyFrom of as many rows as the window
// persisted, into a scratch table with the metrics table's columns and
// indexes, gives copy_rows_per_s, and ratio_to_copy = metrics_per_s /
// copy_rows_per_s.
type ingestScenario struct {
	client experimentv1.ExperimentServiceClient
	env    Env
	prefix string
	runs   []string
	keys   []string
	next   []uint64 // per worker: the first sequence of its next operation

	acked atomic.Int64 // points acknowledged durable (persisted or duplicate), warm-up included

	windowPoints  int64
	windowElapsed time.Duration
	fields        map[string]any
}

// Name implements Scenario.
func (s *ingestScenario) Name() string { return "tracking-ingest" }

// Setup implements Scenario.
func (s *ingestScenario) Setup(ctx context.Context, env Env) error {
	s.client = experimentv1.NewExperimentServiceClient(env.Conn)
	s.env = env
	s.prefix = benchPrefix()
	s.fields = map[string]any{}
	for k := range ingestKeys {
		s.keys = append(s.keys, "train/metric_"+strconv.Itoa(k))
	}
	runs, err := createRuns(ctx, s.client, s.prefix+"ingest", env.Concurrency)
	if err != nil {
		return err
	}
	s.runs = runs
	s.next = make([]uint64, env.Concurrency)
	for i := range s.next {
		s.next[i] = 1
	}
	return nil
}

// Op implements Scenario.
func (s *ingestScenario) Op(ctx context.Context, worker, _ int) error {
	first := s.next[worker]
	stream, err := s.client.StreamMetrics(ctx)
	if err != nil {
		return fmt.Errorf("StreamMetrics: %w", err)
	}
	streamID := s.prefix + strconv.Itoa(worker)
	for m := range ingestMessages {
		seq := first + uint64(m)
		req := &experimentv1.StreamMetricsRequest{
			RunId: s.runs[worker], StreamId: streamID, Sequence: seq,
			Metrics: make([]*experimentv1.Metric, ingestPoints),
		}
		// Deterministic content: a resent message is the same message.
		ts := int64(1_700_000_000_000) + int64(seq)
		for i := range req.Metrics {
			step := int64(seq)*ingestPoints/ingestKeys + int64(i/ingestKeys)
			req.Metrics[i] = &experimentv1.Metric{Key: s.keys[i%ingestKeys], Value: float64(step%1000) / 1000, Step: step, TimestampMs: ts}
		}
		if err := stream.Send(req); err != nil {
			break // the server ended the stream: CloseAndRecv says why
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("StreamMetrics: %w", err)
	}
	last := first + ingestMessages - 1
	if resp.GetPersistedThroughSequence() != last || resp.GetPointsPersisted()+resp.GetPointsDuplicate() != ingestMessages*ingestPoints {
		return fmt.Errorf("StreamMetrics acknowledged through %d with %d persisted and %d duplicate points, want through %d with %d",
			resp.GetPersistedThroughSequence(), resp.GetPointsPersisted(), resp.GetPointsDuplicate(), last, ingestMessages*ingestPoints)
	}
	s.next[worker] = last + 1
	s.acked.Add(resp.GetPointsPersisted() + resp.GetPointsDuplicate())
	Count(ctx, "metrics", resp.GetPointsPersisted())
	return nil
}

// Measured implements Measurer.
func (s *ingestScenario) Measured(counters map[string]int64, elapsed time.Duration) {
	s.windowPoints, s.windowElapsed = counters["metrics"], elapsed
}

// Finish implements Finisher: it counts what is stored and times the raw
// copy.
func (s *ingestScenario) Finish(ctx context.Context) error {
	stored, err := countStored(ctx, s.client, s.runs, s.keys)
	if err != nil {
		return err
	}
	acked := s.acked.Load()
	s.fields["acknowledged_points"] = acked
	s.fields["stored_points"] = stored
	s.fields["lost_points"] = max(0, acked-stored)
	s.fields["points_per_message"] = ingestPoints
	s.fields["messages_per_stream"] = ingestMessages
	if !store.IsPostgresURL(s.env.DatabaseURL) || s.windowPoints == 0 || s.windowElapsed <= 0 {
		s.fields["ratio_to_copy"] = nil
		return nil
	}
	copyRate, err := rawCopyRate(ctx, s.env.DatabaseURL, s.windowPoints, ingestKeys)
	if err != nil {
		return fmt.Errorf("raw copy: %w", err)
	}
	rate := float64(s.windowPoints) / s.windowElapsed.Seconds()
	s.fields["copy_rows"] = s.windowPoints
	s.fields["copy_rows_per_s"] = round1(copyRate)
	s.fields["ratio_to_copy"] = round3(rate / copyRate)
	return nil
}

// Fields implements Scenario.
func (s *ingestScenario) Fields() map[string]any { return s.fields }

// rawCopyRate copies n rows shaped like metric points into a scratch table
// with the metrics table's columns and indexes, in one transaction, and
// returns rows per second. The table is dropped afterwards.
func rawCopyRate(ctx context.Context, url string, n int64, keys int) (float64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	table := "bench_copy_" + randomHex(4)
	if _, err := conn.Exec(ctx, `CREATE TABLE `+table+` (run_key BIGINT NOT NULL, key TEXT NOT NULL, step BIGINT NOT NULL,
		ts BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL)`); err != nil {
		return 0, err
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `DROP TABLE IF EXISTS `+table) }()
	if _, err := conn.Exec(ctx, `CREATE INDEX ON `+table+` (run_key, key, step, ts)`); err != nil {
		return 0, err
	}
	names := make([]string, keys)
	for k := range names {
		names[k] = "train/metric_" + strconv.Itoa(k)
	}
	var (
		i    int64
		vals = make([]any, 5)
	)
	src := pgx.CopyFromFunc(func() ([]any, error) {
		if i == n {
			return nil, nil
		}
		run := i % 200
		step := i / 200
		vals[0], vals[1], vals[2], vals[3], vals[4] = run, names[int(step)%keys], step, int64(1_700_000_000_000)+step, float64(step%1000)/1000
		i++
		return vals, nil
	})
	start := time.Now()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{table}, []string{"run_key", "key", "step", "ts", "value"}, src); err != nil {
		_ = tx.Rollback(ctx)
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// logBatchScenario measures LogBatch of a full batch (1000 points, MLflow's
// limit) to the worker's own run; metrics_per_s is points written.
type logBatchScenario struct {
	client experimentv1.ExperimentServiceClient
	runs   []string
	step   []int64
}

const logBatchPoints = 1000

// Name implements Scenario.
func (s *logBatchScenario) Name() string { return "tracking-logbatch" }

// Setup implements Scenario.
func (s *logBatchScenario) Setup(ctx context.Context, env Env) error {
	s.client = experimentv1.NewExperimentServiceClient(env.Conn)
	runs, err := createRuns(ctx, s.client, benchPrefix()+"logbatch", env.Concurrency)
	if err != nil {
		return err
	}
	s.runs = runs
	s.step = make([]int64, env.Concurrency)
	return nil
}

// Op implements Scenario.
func (s *logBatchScenario) Op(ctx context.Context, worker, _ int) error {
	req := &experimentv1.LogBatchRequest{RunId: s.runs[worker], Metrics: make([]*experimentv1.Metric, logBatchPoints)}
	for i := range req.Metrics {
		step := s.step[worker] + int64(i/10)
		req.Metrics[i] = &experimentv1.Metric{Key: "metric_" + strconv.Itoa(i%10), Value: float64(i), Step: step}
	}
	if _, err := s.client.LogBatch(ctx, req); err != nil {
		return fmt.Errorf("LogBatch: %w", err)
	}
	s.step[worker] += logBatchPoints / 10
	Count(ctx, "metrics", logBatchPoints)
	return nil
}

// Fields implements Scenario.
func (s *logBatchScenario) Fields() map[string]any {
	return map[string]any{"points_per_batch": logBatchPoints}
}

// createRuns creates an experiment named name and n runs in it, a few at a
// time, and returns the run ids.
func createRuns(ctx context.Context, client experimentv1.ExperimentServiceClient, name string, n int) ([]string, error) {
	e, err := client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name, Description: "quantmesh bench"})
	if err != nil {
		return nil, fmt.Errorf("CreateExperiment: %w", err)
	}
	runs := make([]string, n)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range min(n, 16) {
		wg.Go(func() {
			for i := range next {
				r, err := client.CreateRun(ctx, &experimentv1.CreateRunRequest{
					ExperimentId: e.GetExperiment().GetExperimentId(), RunName: "run-" + strconv.Itoa(i),
				})
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					continue
				}
				runs[i] = r.GetRun().GetRunId()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("CreateRun: %d of %d failed, first: %w", len(errs), n, errs[0])
	}
	return runs, nil
}

// countStored sums the stored points of keys over runs.
func countStored(ctx context.Context, client experimentv1.ExperimentServiceClient, runs, keys []string) (int64, error) {
	var total int64
	for _, run := range runs {
		for _, key := range keys {
			resp, err := client.GetMetricHistory(ctx, &experimentv1.GetMetricHistoryRequest{RunId: run, MetricKey: key, PageSize: 1})
			if err != nil {
				return 0, fmt.Errorf("GetMetricHistory(%s, %s): %w", run, key, err)
			}
			total += resp.GetTotalPoints()
		}
	}
	return total, nil
}

// benchPrefix names what one run creates, unique across runs, so runs
// against one database never collide.
func benchPrefix() string {
	return "bench-" + time.Now().UTC().Format("20060102T150405") + "-" + randomHex(4) + "-"
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(errors.Join(errors.New("bench: random"), err)) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }
func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }
