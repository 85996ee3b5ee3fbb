package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
)

func init() {
	Register(Spec{
		Name:    "tracking-search",
		Summary: "SearchRuns over 100,000 runs (--size) with 10 params and 10 metrics each: 3-clause filter, ordered by a metric, 100 per page",
		New:     func() Scenario { return &searchScenario{} },
		// The goal is one search's latency. At the command's default of 16
		// concurrent searches on 2 cores a search mostly waits for the
		// other 15 (throughput, not latency); say --concurrency 16 for that.
		Concurrency: 1,
	})
}

// Shape of the search data set.
const (
	searchDefaultRuns = 100_000
	searchParams      = 10
	searchMetrics     = 10
	searchPageSize    = 100
)

// searchScenario measures SearchRuns on a large experiment. Setup creates
// --size runs (100,000 by default) in one experiment, each with a tag team
// (one of 4), 10 params p0..p9 (values v0..v9) and 10 metrics m0..m9
// (uniform in [0, 1)), through CreateRun and LogBatch. Each operation is
// one SearchRuns page: a new random three-clause filter
// (metrics.mA > x AND params.pB = 'vC' AND tags.team != 'T') ordered by
// metrics.mD DESC, or, every other operation of a worker, the next page of
// its previous search. After the load, the tables' statistics are refreshed
// (VACUUM (ANALYZE) on PostgreSQL, ANALYZE on SQLite), as autovacuum would
// do shortly after a bulk load.
//
// A complete load is named after its size (searchDataName), and a later run
// against the same database with the same --size searches it again instead
// of loading another (loading 100,000 runs takes minutes); the report's
// reused_load says which happened.
type searchScenario struct {
	client experimentv1.ExperimentServiceClient
	expID  string
	rngs   []*rand.Rand
	tokens []*experimentv1.SearchRunsRequest // per worker: the next page to read, if any
	runs   int
	// reused says whether the runs were loaded by an earlier run.
	reused bool
	// analyzed says how the statistics were refreshed after the load.
	analyzed string
}

// Name implements Scenario.
func (s *searchScenario) Name() string { return "tracking-search" }

// Setup implements Scenario.
func (s *searchScenario) Setup(ctx context.Context, env Env) error {
	s.client = experimentv1.NewExperimentServiceClient(env.Conn)
	s.runs = env.Size
	if s.runs == 0 {
		s.runs = searchDefaultRuns
	}
	s.rngs = make([]*rand.Rand, env.Concurrency)
	for i := range s.rngs {
		s.rngs[i] = rand.New(rand.NewPCG(uint64(i), 42))
	}
	s.tokens = make([]*experimentv1.SearchRunsRequest, env.Concurrency)
	// A complete load of this size from an earlier run is searched again:
	// loading takes minutes, searching it does not change it.
	got, err := s.client.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: searchDataName(s.runs)})
	switch {
	case err == nil && got.GetExperiment().GetLifecycleStage() == experimentv1.LifecycleStage_LIFECYCLE_STAGE_ACTIVE:
		s.expID, s.reused = got.GetExperiment().GetExperimentId(), true
		env.Log.Info("tracking-search reuses an earlier load", "experiment", s.expID, "runs", s.runs)
		return s.analyze(ctx, env)
	case err != nil && status.Code(err) != codes.NotFound:
		return fmt.Errorf("GetExperimentByName: %w", err)
	}
	e, err := s.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: benchPrefix() + "search", Description: "quantmesh bench"})
	if err != nil {
		return fmt.Errorf("CreateExperiment: %w", err)
	}
	s.expID = e.GetExperiment().GetExperimentId()
	start := time.Now()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		done     atomic.Int64
		next     = make(chan int)
	)
	for w := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range next {
				if err := s.createRun(ctx, rng, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				if n := done.Add(1); n%10_000 == 0 {
					env.Log.Info("tracking-search setup", "runs", n, "of", s.runs, "elapsed", time.Since(start).Round(time.Second))
				}
			}
		})
	}
feed:
	for i := range s.runs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Only a complete load gets the name a later run looks for.
	if _, err := s.client.UpdateExperiment(ctx, &experimentv1.UpdateExperimentRequest{
		Experiment: &experimentv1.Experiment{ExperimentId: s.expID, Name: searchDataName(s.runs)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
	}); err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("UpdateExperiment: %w", err)
	}
	return s.analyze(ctx, env)
}

// searchDataName names the experiment of a complete load of runs runs, so
// that later runs against the same database search it instead of loading
// another. The version changes with the shape of the data.
func searchDataName(runs int) string {
	return "bench-tracking-search-v1-" + strconv.Itoa(runs)
}

// searchTables are the tables a search reads.
var searchTables = []string{"runs", "run_params", "run_tags", "latest_metrics"}

// analyze refreshes the planner's statistics (and, on PostgreSQL, the
// visibility map that index-only scans rely on) after the bulk load, as
// autovacuum would shortly after one: the window then measures the steady
// state, not a freshly loaded table. It needs the database (an in-process
// mesh's, or --database-url); without it the load is left as it is.
func (s *searchScenario) analyze(ctx context.Context, env Env) error {
	s.analyzed = "no (database not known)"
	if env.DatabaseURL == "" {
		return nil
	}
	start := time.Now()
	if store.IsPostgresURL(env.DatabaseURL) {
		conn, err := pgx.Connect(ctx, env.DatabaseURL)
		if err != nil {
			return fmt.Errorf("analyze: %w", err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		for _, t := range searchTables {
			if _, err := conn.Exec(ctx, `VACUUM (ANALYZE) `+t); err != nil {
				return fmt.Errorf("vacuum analyze %s: %w", t, err)
			}
		}
		s.analyzed = "VACUUM (ANALYZE) after the load"
	} else {
		db, err := store.Open(ctx, store.Config{URL: env.DatabaseURL})
		if err != nil {
			return fmt.Errorf("analyze: %w", err)
		}
		defer db.Close()
		for _, t := range searchTables {
			if _, err := db.Exec(ctx, `ANALYZE `+t); err != nil {
				return fmt.Errorf("analyze %s: %w", t, err)
			}
		}
		s.analyzed = "ANALYZE after the load"
	}
	env.Log.Info("tracking-search statistics refreshed", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (s *searchScenario) createRun(ctx context.Context, rng *rand.Rand, i int) error {
	r, err := s.client.CreateRun(ctx, &experimentv1.CreateRunRequest{
		ExperimentId: s.expID, RunName: "run-" + strconv.Itoa(i),
		Tags: map[string]string{"team": "team-" + strconv.Itoa(rng.IntN(4))},
	})
	if err != nil {
		return fmt.Errorf("CreateRun: %w", err)
	}
	req := &experimentv1.LogBatchRequest{RunId: r.GetRun().GetRunId()}
	for p := range searchParams {
		req.Params = append(req.Params, &experimentv1.Param{Key: "p" + strconv.Itoa(p), Value: "v" + strconv.Itoa(rng.IntN(10))})
	}
	for m := range searchMetrics {
		req.Metrics = append(req.Metrics, &experimentv1.Metric{Key: "m" + strconv.Itoa(m), Value: rng.Float64(), Step: 1})
	}
	if _, err := s.client.LogBatch(ctx, req); err != nil {
		return fmt.Errorf("LogBatch: %w", err)
	}
	return nil
}

// Op implements Scenario.
func (s *searchScenario) Op(ctx context.Context, worker, _ int) error {
	req := s.tokens[worker]
	s.tokens[worker] = nil
	page := "first"
	if req == nil {
		rng := s.rngs[worker]
		filter := fmt.Sprintf("metrics.m%d > %.3f AND params.p%d = 'v%d' AND tags.team != 'team-%d'",
			rng.IntN(searchMetrics), rng.Float64(), rng.IntN(searchParams), rng.IntN(10), rng.IntN(4))
		req = &experimentv1.SearchRunsRequest{
			ExperimentIds: []string{s.expID}, Filter: filter,
			OrderBy: []string{"metrics.m" + strconv.Itoa(rng.IntN(searchMetrics)) + " DESC"}, PageSize: searchPageSize,
		}
	} else {
		page = "next"
	}
	start := time.Now()
	resp, err := s.client.SearchRuns(ctx, req)
	if err != nil {
		return fmt.Errorf("SearchRuns: %w", err)
	}
	Record(ctx, page, time.Since(start))
	Count(ctx, "runs_returned", int64(len(resp.GetRuns())))
	if t := resp.GetNextPageToken(); t != "" && page == "first" {
		next := proto.Clone(req).(*experimentv1.SearchRunsRequest)
		next.PageToken = t
		s.tokens[worker] = next
	}
	return nil
}

// Fields implements Scenario.
func (s *searchScenario) Fields() map[string]any {
	return map[string]any{"runs": s.runs, "page_size": searchPageSize, "params_per_run": searchParams, "metrics_per_run": searchMetrics,
		"statistics": s.analyzed, "reused_load": s.reused}
}
