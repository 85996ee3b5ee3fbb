package metacontroller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// RequestIDTag tags a training run with the request's request_id.
const RequestIDTag = "quantmesh.request_id"

// progressEvery is how many epochs are logged to the run at a time while
// training runs.
const progressEvery = 10

// How long and how many TrainPolicy calls are remembered by request_id.
// A completed call is kept for requestTTL after it ended, and at most
// maxRequests completed calls are kept, the oldest dropped first; running
// calls are never dropped. Each holds its response, with up to 100,000
// epoch objectives (800 KB), so the count bounds memory too (about 100 MB
// at worst). A retry after that, or after a restart, trains again.
const (
	requestTTL  = 24 * time.Hour
	maxRequests = 128
)

// detachedTimeout bounds the registry calls made after a version is
// registered, which no longer follow the caller's context.
const detachedTimeout = 30 * time.Second

// trainCall is a TrainPolicy call by request_id, for retries.
type trainCall struct {
	ended time.Time // zero while running
	resp  *metacontrollerv1.TrainPolicyResponse
	err   error
	// registered is the unpromoted response of a call that registered its
	// version but could not promote it: a retry only promotes it.
	registered *metacontrollerv1.TrainPolicyResponse
}

// trainCalls remembers TrainPolicy calls by request_id (see requestTTL).
type trainCalls struct {
	mu    sync.Mutex
	calls map[string]*trainCall
}

// begin starts a call with request_id id and returns it, or returns the
// answer of the call already holding id: ABORTED while it runs, its
// response once it has succeeded. A call that registered its version but
// could not promote it hands the version to the new call (registered).
func (c *trainCalls) begin(id string, now time.Time) (*trainCall, *metacontrollerv1.TrainPolicyResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evict(now)
	call := &trainCall{}
	if prev, ok := c.calls[id]; ok {
		switch {
		case prev.ended.IsZero():
			return nil, nil, status.Errorf(codes.Aborted, "a TrainPolicy call with request_id %q is still running", id)
		case prev.err == nil:
			return nil, prev.resp, nil
		}
		call.registered = prev.registered
	}
	if c.calls == nil {
		c.calls = map[string]*trainCall{}
	}
	c.calls[id] = call
	return call, nil, nil
}

// end records the outcome of call, begun with id. A call that failed
// without registering a version is forgotten: a retry trains.
func (c *trainCalls) end(id string, call *trainCall, resp *metacontrollerv1.TrainPolicyResponse, err error, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	call.ended, call.resp, call.err = now, resp, err
	var pe *promoteError
	if errors.As(err, &pe) {
		call.registered = pe.resp
	}
	if err != nil && call.registered == nil {
		delete(c.calls, id)
	}
	c.evict(now)
}

// evict drops the completed calls past requestTTL, then the oldest beyond
// maxRequests. Called with mu held.
func (c *trainCalls) evict(now time.Time) {
	var ended []string
	for id, call := range c.calls {
		switch {
		case call.ended.IsZero():
		case now.Sub(call.ended) >= requestTTL:
			delete(c.calls, id)
		default:
			ended = append(ended, id)
		}
	}
	if over := len(ended) - maxRequests; over > 0 {
		slices.SortFunc(ended, func(a, b string) int { return c.calls[a].ended.Compare(c.calls[b].ended) })
		for _, id := range ended[:over] {
			delete(c.calls, id)
		}
	}
}

// TrainPolicy implements MetaControllerServiceServer.
func (s *Server) TrainPolicy(ctx context.Context, req *metacontrollerv1.TrainPolicyRequest) (*metacontrollerv1.TrainPolicyResponse, error) {
	if n := len(req.GetRequestId()); n > 128 {
		return nil, apierr.Invalid("request_id", "at most 128 characters, got %d", n)
	}
	job, err := s.validateTraining(req)
	if err != nil {
		return nil, err
	}
	registry, _ := s.clients()
	if registry == nil {
		return nil, apierr.Unavailable("ExperimentService", errors.New("not reachable from this process"))
	}
	if id := req.GetRegimeModelId(); id != "" {
		// The stored model must predate the held-out rows the summary
		// evaluates.
		if job.regime, err = s.storedRegimeModel(ctx, "regime_model_id", id, job.ds, job.ds.start+job.trainEnd); err != nil {
			return nil, err
		}
	}
	id := req.GetRequestId()
	if id == "" {
		return s.trainLimited(ctx, registry, req, job)
	}
	call, resp, err := s.requests.begin(id, time.Now())
	if call == nil {
		return resp, err
	}
	// Replaced on return; left as is a panic ends the call as failed
	// rather than running forever.
	err = errors.New("TrainPolicy panicked")
	defer func() { s.requests.end(id, call, resp, err, time.Now()) }()
	if call.registered != nil {
		// The first call with this id trained and registered, then
		// failed to promote: only the promotion is left to do.
		resp, err = s.promote(ctx, registry, call.registered, job.alias, id)
	} else {
		resp, err = s.trainLimited(ctx, registry, req, job)
	}
	return resp, err
}

// acquireTraining takes one of the MaxTrainings slots, shared by
// TrainPolicy and the backtests that train HRL, or fails with
// RESOURCE_EXHAUSTED when every one is taken.
func (s *Server) acquireTraining() (release func(), err error) {
	select {
	case s.training <- struct{}{}:
		return func() { <-s.training }, nil
	default:
		return nil, status.Errorf(codes.ResourceExhausted, "already running %d training(s), the maximum; retry later", cap(s.training))
	}
}

func (s *Server) trainLimited(ctx context.Context, registry experimentv1.ExperimentServiceClient, req *metacontrollerv1.TrainPolicyRequest, job *trainJob) (*metacontrollerv1.TrainPolicyResponse, error) {
	release, err := s.acquireTraining()
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := s.train(ctx, registry, req, job)
	var pe *promoteError
	if err != nil && ctx.Err() != nil && !errors.As(err, &pe) {
		// Nothing was registered, and the caller's deadline or
		// cancellation is why.
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return resp, err
}

// trainJob is a validated TrainPolicyRequest.
type trainJob struct {
	ds                *dataset
	strats            []strategy.Strategy
	names             []string
	cfg               hrl.Config
	frac              float64
	periods           int
	experiment, model string
	alias             string
	trainEnd          int // rows of ds.closes trained on
	// regime is the stored regime model of regime_model_id; nil to fit
	// one on the training rows.
	regime *backtest.RegimeModel
}

func (s *Server) validateTraining(req *metacontrollerv1.TrainPolicyRequest) (*trainJob, error) {
	job := &trainJob{frac: 0.7, periods: 252, experiment: req.GetExperimentName(), model: req.GetModelName(), alias: req.GetPromoteAlias()}
	// Names the registry would refuse fail here, before any training
	// (and, for the alias, before a version is registered).
	var v apierr.Violations
	if job.experiment != "" {
		naming.Name(&v, "experiment_name", job.experiment)
	}
	if job.model != "" {
		naming.ModelName(&v, "model_name", job.model)
	}
	if job.alias != "" {
		naming.Alias(&v, "promote_alias", job.alias)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	var err error
	if job.ds, err = readDataset("dataset", req.GetDataset()); err != nil {
		return nil, err
	}
	if job.strats, err = strategiesFrom("strategies", req.GetStrategies()); err != nil {
		return nil, err
	}
	for _, st := range job.strats {
		job.names = append(job.names, st.Name)
	}
	if req.TrainFraction != nil {
		job.frac = req.GetTrainFraction()
		if !(job.frac > 0 && job.frac < 1) {
			return nil, apierr.Invalid("train_fraction", "must be in (0, 1), got %v", job.frac)
		}
	}
	if req.PeriodsPerYear != nil {
		job.periods = int(req.GetPeriodsPerYear())
		if job.periods < 1 || job.periods > maxPeriods {
			return nil, apierr.Invalid("periods_per_year", "must be 1 to %d, got %d", maxPeriods, job.periods)
		}
	}
	if job.cfg, err = hrlConfig("hrl", req.GetHrl(), nil); err != nil {
		return nil, err
	}
	splits, err := backtest.Splits(len(job.ds.closes), job.frac, 1)
	if err != nil {
		return nil, apierr.Invalid("dataset", "%v", err)
	}
	job.trainEnd = splits[0][0]
	if job.experiment == "" {
		job.experiment = "metacontroller"
	}
	if job.model == "" {
		job.model = s.cfg.ModelName
	}
	if job.alias == "" {
		job.alias = s.cfg.Alias
	}
	return job, nil
}

func fmtFloat(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }

// train runs a validated training: run, fit, evaluation, registration.
func (s *Server) train(ctx context.Context, registry experimentv1.ExperimentServiceClient, req *metacontrollerv1.TrainPolicyRequest, job *trainJob) (*metacontrollerv1.TrainPolicyResponse, error) {
	began := time.Now()
	expID, err := experimentID(ctx, registry, job.experiment)
	if err != nil {
		return nil, err
	}
	tags := map[string]string{"model": job.model, "trainer": "MetaControllerService.TrainPolicy"}
	if req.GetRequestId() != "" {
		tags[RequestIDTag] = req.GetRequestId()
	}
	run, err := registry.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: expID, RunName: fmt.Sprintf("%s-seed%d", job.model, job.cfg.Seed), Tags: tags})
	if err != nil {
		return nil, upstream("create run", err)
	}
	runID := run.GetRun().GetRunId()
	finish := func(st experimentv1.RunStatus) {
		// Also after the caller has gone: the run must not stay RUNNING.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
		defer cancel()
		_, _ = registry.UpdateRun(fctx, &experimentv1.UpdateRunRequest{
			Run: &experimentv1.Run{RunId: runID, Status: st}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"status"}},
		})
	}
	fail := func(err error) (*metacontrollerv1.TrainPolicyResponse, error) {
		if ctx.Err() != nil {
			finish(experimentv1.RunStatus_RUN_STATUS_KILLED)
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
		return nil, err
	}
	ds := job.ds
	cfg := job.cfg
	params := map[string]string{
		"dataset": ds.name, "rows": fmt.Sprintf("%d-%d", ds.start, ds.start+len(ds.closes)), "train_fraction": fmtFloat(job.frac),
		"strategies": strings.Join(job.names, ","), "num_options": strconv.Itoa(cfg.NumOptions), "learning_rate": fmtFloat(cfg.LearningRate),
		"epochs": strconv.Itoa(cfg.Epochs), "switching_cost_bps": fmtFloat(cfg.SwitchingCostBps), "blend_rate": fmtFloat(cfg.BlendRate),
		"discount": fmtFloat(cfg.Discount), "termination_regularization": fmtFloat(cfg.TerminationRegularization),
		"entropy_coefficient": fmtFloat(cfg.EntropyCoefficient), "hidden_units": strconv.Itoa(cfg.HiddenUnits), "seed": strconv.FormatInt(cfg.Seed, 10),
	}
	if id := req.GetRegimeModelId(); id != "" {
		params["regime_model_id"] = id
	}
	if len(ds.poolNames) > 0 {
		params["pooled_columns"] = strings.Join(ds.poolNames, ",")
	}
	batch := &experimentv1.LogBatchRequest{RunId: runID}
	for k, v := range params {
		batch.Params = append(batch.Params, &experimentv1.Param{Key: k, Value: v})
	}
	if _, err := registry.LogBatch(ctx, batch); err != nil {
		return fail(upstream("log params", err))
	}
	var prep *backtest.Prepared
	if job.regime != nil {
		prep, err = backtest.PrepareWith(ctx, ds.closes, job.regime, job.strats, backtest.DefaultSmoothing())
	} else {
		prep, err = backtest.Prepare(ctx, ds.closes, job.trainEnd, job.strats, cfg.Seed, backtest.DefaultSmoothing())
	}
	if err != nil {
		if errors.Is(err, backtest.ErrInvalid) {
			return fail(apierr.Invalid("dataset", "%v", err))
		}
		return fail(err)
	}
	rets, pos := strategy.Matrices(job.strats, ds.closes)
	states, next := prep.TrainingData(rets, job.trainEnd)
	// The same training rows of the dataset's other columns, each with
	// its own regime model: more history, no evaluated row.
	ps, pn, err := backtest.PooledTrainingData(ctx, backtest.Config{Pool: ds.pool, Strategies: job.strats, Seed: cfg.Seed, Regime: job.regime}, job.trainEnd)
	if err != nil {
		if errors.Is(err, backtest.ErrInvalid) {
			return fail(apierr.Invalid("dataset", "%v", err))
		}
		return fail(err)
	}
	states, next = append(states, ps...), append(next, pn...)
	var pending []*experimentv1.Metric
	flush := func(c context.Context) error {
		if len(pending) == 0 {
			return nil
		}
		_, err := registry.LogBatch(c, &experimentv1.LogBatchRequest{RunId: runID, Metrics: pending})
		pending = nil
		return err
	}
	var logErr error
	episodes := s.ins.startTraining()
	p, stats, err := hrl.Train(ctx, cfg, job.names, states, next, func(st hrl.EpochStats) {
		s.ins.episode(ctx, episodes, st.Episode)
		pending = append(pending, &experimentv1.Metric{Key: "objective", Value: st.Objective, Step: int64(st.Epoch)})
		if st.Epoch%progressEvery == 0 && logErr == nil {
			logErr = flush(ctx)
		}
	})
	if err == nil {
		err = logErr
	}
	if err == nil {
		err = flush(ctx)
	}
	if err != nil {
		if errors.Is(err, hrl.ErrInvalidInput) {
			return fail(apierr.Invalid("dataset", "%v", err))
		}
		return fail(err)
	}
	p.TrainDataset, p.TrainStart, p.TrainEnd = ds.name, ds.start, ds.start+job.trainEnd
	if len(ds.pool) > 0 {
		// Trained on these rows of every column.
		p.TrainDataset = ds.datasetID
	}
	summary := &metacontrollerv1.TrainingSummary{
		Hrl: hrlConfigToProto(cfg), TrainRange: &metacontrollerv1.IndexRange{Start: int64(ds.start), End: int64(ds.start + job.trainEnd)},
		TestRange:  &metacontrollerv1.IndexRange{Start: int64(ds.start + job.trainEnd), End: int64(ds.start + len(ds.closes))},
		Strategies: job.names, EpochsCompleted: int32(len(stats)), RegimeModelId: req.GetRegimeModelId(),
	}
	for _, st := range stats {
		summary.EpochObjectives = append(summary.EpochObjectives, st.Objective)
	}
	pol := backtest.HRLPolicy(p)
	trainM, err := prep.Evaluate(backtest.HRL, pol, rets, pos, max(2, firstState(prep)+1), job.trainEnd, cfg.SwitchingCostBps, job.periods)
	if err != nil {
		return fail(err)
	}
	summary.TrainMetrics = metricsToProto(backtest.HRL, trainM, job.names)
	final := map[string]float64{}
	for _, pk := range backtest.AllPolicies {
		m, err := prep.Evaluate(pk, pol, rets, pos, job.trainEnd, len(ds.closes), cfg.SwitchingCostBps, job.periods)
		if err != nil {
			return fail(err)
		}
		summary.TestMetrics = append(summary.TestMetrics, metricsToProto(pk, m, job.names))
		for k, v := range map[string]float64{"churn_rate": m.ChurnRate, "max_disruption": m.MaxDisruption, "sharpe": m.Sharpe,
			"total_return": m.TotalReturn, "max_drawdown": m.MaxDrawdown, "turnover_cost": m.TurnoverCost} {
			final[fmt.Sprintf("test/%s/%s", pk, k)] = v
		}
	}
	var metrics []*experimentv1.Metric
	for k, v := range final {
		metrics = append(metrics, &experimentv1.Metric{Key: k, Value: v, Step: int64(len(stats))})
	}
	if _, err := registry.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: runID, Metrics: metrics}); err != nil {
		return fail(upstream("log metrics", err))
	}
	weights, err := p.MarshalBinary()
	if err != nil {
		return fail(err)
	}
	if err := ensureModel(ctx, registry, job.model); err != nil {
		return fail(err)
	}
	hrlTest := map[string]float64{}
	for k, v := range final {
		if strings.HasPrefix(k, "test/hrl/") {
			hrlTest[k] = v
		}
	}
	mv, err := registry.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
		ModelName: job.model, Format: hrl.Format, Weights: weights, SourceRunId: runID, Metrics: hrlTest,
		Tags:        versionTags(ds.name, p, job.names, req.GetRegimeModelId()),
		Description: fmt.Sprintf("HRL allocation policy (%d options) trained on %s rows %d-%d (seed %d)", cfg.NumOptions, ds.name, p.TrainStart, p.TrainEnd, cfg.Seed),
	})
	if err != nil {
		return fail(upstream("register model version", err))
	}
	// The version is registered: from here the call completes whatever
	// happens to the caller's context, so that a failed call still means
	// nothing was registered and a retry with the same request_id gets this
	// response instead of training again.
	finish(experimentv1.RunStatus_RUN_STATUS_FINISHED)
	summary.Duration = durationpb.New(time.Since(began))
	resp := &metacontrollerv1.TrainPolicyResponse{
		ExperimentId: expID, RunId: runID, Summary: summary,
		Model: &metacontrollerv1.PolicyModel{ModelName: job.model, Version: mv.GetModelVersion().GetVersion()},
	}
	s.log.Info("policy trained", "model", job.model, "version", resp.Model.Version, "run", runID)
	if req.GetPromote() {
		return s.promote(ctx, registry, resp, job.alias, req.GetRequestId())
	}
	return resp, nil
}

// promoteError is the failure of a call that registered its version but
// could not point the alias at it.
type promoteError struct {
	resp *metacontrollerv1.TrainPolicyResponse // registered, not promoted
	err  error                                 // an *apierr.Error
}

func (e *promoteError) Error() string { return e.err.Error() }
func (e *promoteError) Unwrap() error { return e.err }

// promote points alias at the version registered in resp and returns the
// promoted response. It runs detached from the caller's cancellation: the
// version is registered whether or not the caller is still there. When the
// registry refuses or cannot be reached the call fails with a
// *promoteError naming the registered version (the run stays FINISHED: its
// training and registration succeeded); with a request_id a retry then
// only repeats the promotion, without training or registering again.
func (s *Server) promote(ctx context.Context, registry experimentv1.ExperimentServiceClient, resp *metacontrollerv1.TrainPolicyResponse, alias, requestID string) (*metacontrollerv1.TrainPolicyResponse, error) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	m := resp.GetModel()
	_, err := registry.SetModelAlias(pctx, &experimentv1.SetModelAliasRequest{ModelName: m.GetModelName(), Alias: alias, Version: m.GetVersion()})
	if err != nil {
		s.log.Warn("policy registered but not promoted", "model", m.GetModelName(), "version", m.GetVersion(), "alias", alias, "run", resp.GetRunId(), "err", err)
		// Retryable unless the registry said why not.
		kind := apierr.ErrUnavailable
		switch status.Code(err) {
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated:
			kind = apierr.ErrFailedPrecondition
		}
		msg := fmt.Sprintf("version %d of %s is registered (run %s) but alias %s could not be moved to it", m.GetVersion(), m.GetModelName(), resp.GetRunId(), alias)
		if requestID != "" {
			msg += "; a retry with the same request_id promotes it without training again"
		}
		return nil, &promoteError{resp: resp, err: &apierr.Error{
			Kind: kind, Reason: "POLICY_NOT_PROMOTED", Message: msg, Cause: err,
			Metadata: map[string]string{"model_name": m.GetModelName(), "version": strconv.FormatInt(m.GetVersion(), 10), "alias": alias, "run_id": resp.GetRunId()},
		}}
	}
	out := proto.Clone(resp).(*metacontrollerv1.TrainPolicyResponse)
	out.Promoted, out.Model.Alias = true, alias
	s.log.Info("policy promoted", "model", m.GetModelName(), "version", m.GetVersion(), "alias", alias)
	return out, nil
}

// versionTags are a registered version's tags.
func versionTags(dataset string, p *hrl.Policy, names []string, regimeModelID string) map[string]string {
	tags := map[string]string{"dataset": dataset, "train_rows": fmt.Sprintf("%d-%d", p.TrainStart, p.TrainEnd), "strategies": strings.Join(names, ",")}
	if regimeModelID != "" {
		tags["regime_model_id"] = regimeModelID
	}
	return tags
}

// firstState is the first row with a regime state.
func firstState(p *backtest.Prepared) int {
	for t, st := range p.States {
		if st != nil {
			return t
		}
	}
	return len(p.States)
}

func upstream(what string, err error) error {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return err
		}
		return apierr.Unavailable("ExperimentService", fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

func experimentID(ctx context.Context, registry experimentv1.ExperimentServiceClient, name string) (string, error) {
	got, err := registry.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: name})
	if err == nil {
		return got.GetExperiment().GetExperimentId(), nil
	}
	if status.Code(err) != codes.NotFound {
		return "", upstream("experiment "+name, err)
	}
	created, err := registry.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name, Description: "MetaControllerService policy trainings"})
	if status.Code(err) == codes.AlreadyExists {
		return experimentID(ctx, registry, name)
	}
	if err != nil {
		return "", upstream("create experiment "+name, err)
	}
	return created.GetExperiment().GetExperimentId(), nil
}

func ensureModel(ctx context.Context, registry experimentv1.ExperimentServiceClient, name string) error {
	_, err := registry.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{
		Name: name, Description: "MetaControllerService hierarchical allocation policy (" + hrl.Format + ")",
	})
	if err == nil || status.Code(err) == codes.AlreadyExists {
		return nil
	}
	return upstream("register model "+name, err)
}
