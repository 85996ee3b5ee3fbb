package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	xrate "golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/policy"
	"github.com/quantmesh/quantmesh/pkg/store"
)

func init() {
	Register(Spec{
		Name:    "predict",
		Summary: "Predict over gRPC for the served policy model (registers one when the alias is unset)",
		New:     func() Scenario { return &predictScenario{} },
	})
	Register(Spec{
		Name:     "decisions-lag",
		Summary:  "5,000 Predict/s for 30 s; lag from decision to persisted row, lost and duplicated decisions",
		New:      func() Scenario { return &lagScenario{} },
		Duration: 30 * time.Second,
		// Enough workers to reach the rate with the baseline interleaved.
		Concurrency: 32,
	})
}

// The served model the inference scenarios drive.
const (
	benchModel = "policy"
	benchAlias = "production"
)

// predictScenario measures InferenceService's hot path: one operation is
// one Predict of the served model with a random feature vector. Setup
// registers and promotes a freshly initialised network (9 inputs, 64-32
// hidden, the trained policy's shape) when the model's alias is unset, and
// waits until InferenceService has loaded a version.
type predictScenario struct {
	client   inferencev1.InferenceServiceClient
	features int
	rngs     []*rand.Rand
	symbol   string
}

// Name implements Scenario.
func (s *predictScenario) Name() string { return "predict" }

// Setup implements Scenario.
func (s *predictScenario) Setup(ctx context.Context, env Env) error {
	s.client = inferencev1.NewInferenceServiceClient(env.Conn)
	n, err := ensureServedModel(ctx, env)
	if err != nil {
		return err
	}
	s.features, s.symbol = n, benchPrefix()+"predict"
	s.rngs = make([]*rand.Rand, env.Concurrency)
	for i := range s.rngs {
		s.rngs[i] = rand.New(rand.NewPCG(uint64(i), 3))
	}
	return nil
}

// Op implements Scenario.
func (s *predictScenario) Op(ctx context.Context, worker, _ int) error {
	_, err := s.client.Predict(ctx, randomRequest(s.rngs[worker], s.features, s.symbol))
	if err != nil {
		return fmt.Errorf("predict: %w", err)
	}
	return nil
}

// Fields implements Scenario.
func (s *predictScenario) Fields() map[string]any {
	return map[string]any{"model": benchModel, "features": s.features}
}

func randomRequest(rng *rand.Rand, n int, symbol string) *inferencev1.PredictRequest {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64() * 0.02
	}
	return &inferencev1.PredictRequest{ModelName: benchModel, Symbol: symbol, UnitId: "bench", Features: x}
}

// ensureServedModel makes sure InferenceService serves benchModel and
// returns its feature count: when the alias is unset it registers a
// network initialised with seed 1 (9 inputs, the size of the trained
// policy) and promotes it, then waits for the load.
func ensureServedModel(ctx context.Context, env Env) (int, error) {
	inf := inferencev1.NewInferenceServiceClient(env.Conn)
	exp := experimentv1.NewExperimentServiceClient(env.Conn)
	_, err := exp.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: benchModel, Alias: benchAlias})
	if status.Code(err) == codes.NotFound {
		net, err := policy.New(policy.DefaultConfig(9), 1)
		if err != nil {
			return 0, err
		}
		w, err := net.MarshalBinary()
		if err != nil {
			return 0, err
		}
		if _, err := exp.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: benchModel}); err != nil && status.Code(err) != codes.AlreadyExists {
			return 0, fmt.Errorf("CreateRegisteredModel: %w", err)
		}
		mv, err := exp.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: benchModel, Format: policy.Format, Weights: w, Description: "quantmesh bench"})
		if err != nil {
			return 0, fmt.Errorf("CreateModelVersion: %w", err)
		}
		if _, err := exp.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: benchModel, Alias: benchAlias, Version: mv.GetModelVersion().GetVersion()}); err != nil {
			return 0, fmt.Errorf("SetModelAlias: %w", err)
		}
	} else if err != nil {
		return 0, fmt.Errorf("GetModelVersionByAlias: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: benchModel})
		if err != nil {
			return 0, fmt.Errorf("GetModelStatus: %w", err)
		}
		if m := st.GetModels()[0]; m.GetLoadedVersion() > 0 {
			return int(m.GetFeatureCount()), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("InferenceService loaded no version of %s in 30s: %s", benchModel, st.GetModels()[0].GetLastError())
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lagRate is the decisions-lag scenario's total rate of predictions.
const lagRate = 5000

// lagScenario measures the decisions path end to end: workers share a
// rate of lagRate predictions per second, each under a symbol unique to
// the run. After the window it waits until every decision answered is
// stored (up to 30 s) and reads them back from the database (--database-url,
// or the in-process mesh's): lag_ms is persisted_time - decision_time of
// each (from the answer, just before it is queued for the bus, to the
// forensics consumer's write), lost counts answered decisions not stored,
// duplicated counts stored rows beyond one per decision id.
type lagScenario struct {
	predictScenario
	env     Env
	limiter *xrate.Limiter

	mu       sync.Mutex
	answered map[string]bool
	fields   map[string]any
}

// Name implements Scenario.
func (s *lagScenario) Name() string { return "decisions-lag" }

// Setup implements Scenario.
func (s *lagScenario) Setup(ctx context.Context, env Env) error {
	if env.DatabaseURL == "" {
		return errors.New("decisions-lag reads the decisions table: give --database-url (a running mesh's database), or run it in process")
	}
	if err := s.predictScenario.Setup(ctx, env); err != nil {
		return err
	}
	s.env = env
	s.limiter = xrate.NewLimiter(lagRate, env.Concurrency)
	s.answered = map[string]bool{}
	s.fields = map[string]any{"target_rate_per_s": lagRate}
	return nil
}

// Pace implements Pacer: the workers share lagRate predictions a second.
func (s *lagScenario) Pace(ctx context.Context) error { return s.limiter.Wait(ctx) }

// Op implements Scenario.
func (s *lagScenario) Op(ctx context.Context, worker, _ int) error {
	resp, err := s.client.Predict(ctx, randomRequest(s.rngs[worker], s.features, s.symbol))
	if err != nil {
		return fmt.Errorf("predict: %w", err)
	}
	s.mu.Lock()
	s.answered[resp.GetDecisionId()] = true
	s.mu.Unlock()
	return nil
}

// Finish implements Finisher: it reads the stored decisions back.
func (s *lagScenario) Finish(ctx context.Context) error {
	db, err := store.Open(ctx, store.Config{URL: s.env.DatabaseURL, MaxConns: 2})
	if err != nil {
		return err
	}
	defer db.Close()
	s.mu.Lock()
	answered := len(s.answered)
	s.mu.Unlock()
	type row struct {
		id           string
		at, storedAt int64
	}
	var rows []row
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows = rows[:0]
		rs, err := db.Reader().QueryContext(ctx, `SELECT decision_id, decision_time, persisted_time FROM decisions WHERE symbol = $1`, s.symbol)
		if err != nil {
			return fmt.Errorf("read decisions: %w", err)
		}
		for rs.Next() {
			var r row
			if err := rs.Scan(&r.id, &r.at, &r.storedAt); err != nil {
				rs.Close()
				return err
			}
			rows = append(rows, r)
		}
		rs.Close()
		if len(rows) >= answered || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	seen := map[string]int{}
	lags := make([]float64, 0, len(rows))
	for _, r := range rows {
		seen[r.id]++
		if seen[r.id] == 1 {
			lags = append(lags, float64(r.storedAt-r.at)/1000)
		}
	}
	lost, dup := 0, 0
	s.mu.Lock()
	for id := range s.answered {
		if seen[id] == 0 {
			lost++
		}
	}
	s.mu.Unlock()
	for _, n := range seen {
		dup += n - 1
	}
	sort.Float64s(lags)
	s.fields["decisions"] = answered
	s.fields["stored"] = len(seen)
	s.fields["lost"] = lost
	s.fields["duplicated"] = dup
	s.fields["lag_ms"] = nil
	if len(lags) > 0 {
		s.fields["lag_ms"] = map[string]float64{"p50": quantile(lags, 0.5), "p95": quantile(lags, 0.95), "p99": quantile(lags, 0.99), "max": quantile(lags, 1)}
	}
	return nil
}

// Fields implements Scenario.
func (s *lagScenario) Fields() map[string]any { return s.fields }

// quantile of sorted, non-empty xs (nearest rank), rounded to 0.01.
func quantile(xs []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	i = max(0, min(i, len(xs)-1))
	return math.Round(xs[i]*100) / 100
}
