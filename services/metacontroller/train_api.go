package metacontroller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// RequestIDTag tags a training run with the request's request_id.
const RequestIDTag = "quantmesh.request_id"

// progressEvery is how many epochs are logged to the run at a time while
// training runs.
const progressEvery = 10

// trainCall is a TrainPolicy call by request_id, for retries.
type trainCall struct {
	done chan struct{}
	resp *metacontrollerv1.TrainPolicyResponse
	err  error
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
	if id := req.GetRequestId(); id != "" {
		call := &trainCall{done: make(chan struct{})}
		if prev, loaded := s.requests.LoadOrStore(id, call); loaded {
			p := prev.(*trainCall)
			select {
			case <-p.done:
				if p.err == nil {
					return p.resp, nil
				}
				// A failed call may be retried: replace it.
				s.requests.Store(id, call)
			default:
				return nil, status.Errorf(codes.Aborted, "a TrainPolicy call with request_id %q is still running", id)
			}
		}
		defer func() { close(call.done) }()
		resp, err := s.trainLimited(ctx, registry, req, job)
		call.resp, call.err = resp, err
		return resp, err
	}
	return s.trainLimited(ctx, registry, req, job)
}

func (s *Server) trainLimited(ctx context.Context, registry experimentv1.ExperimentServiceClient, req *metacontrollerv1.TrainPolicyRequest, job *trainJob) (*metacontrollerv1.TrainPolicyResponse, error) {
	select {
	case s.training <- struct{}{}:
		defer func() { <-s.training }()
	default:
		return nil, status.Errorf(codes.ResourceExhausted, "already running %d training(s), the maximum; retry later", cap(s.training))
	}
	resp, err := s.train(ctx, registry, req, job)
	if ctx.Err() != nil {
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
		_, _ = registry.UpdateRun(context.WithoutCancel(ctx), &experimentv1.UpdateRunRequest{
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
	rets := strategy.ReturnMatrix(job.strats, ds.closes)
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
	trainM, err := prep.Evaluate(backtest.HRL, pol, rets, max(2, firstState(prep)+1), job.trainEnd, cfg.SwitchingCostBps, job.periods)
	if err != nil {
		return fail(err)
	}
	summary.TrainMetrics = metricsToProto(backtest.HRL, trainM, job.names)
	final := map[string]float64{}
	for _, pk := range backtest.AllPolicies {
		m, err := prep.Evaluate(pk, pol, rets, job.trainEnd, len(ds.closes), cfg.SwitchingCostBps, job.periods)
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
	resp := &metacontrollerv1.TrainPolicyResponse{
		ExperimentId: expID, RunId: runID,
		Model: &metacontrollerv1.PolicyModel{ModelName: job.model, Version: mv.GetModelVersion().GetVersion()},
	}
	if req.GetPromote() {
		if _, err := registry.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: job.model, Alias: job.alias, Version: resp.Model.Version}); err != nil {
			return fail(upstream("promote", err))
		}
		resp.Promoted, resp.Model.Alias = true, job.alias
	}
	finish(experimentv1.RunStatus_RUN_STATUS_FINISHED)
	summary.Duration = durationpb.New(time.Since(began))
	resp.Summary = summary
	s.log.Info("policy trained", "model", job.model, "version", resp.Model.Version, "run", runID, "promoted", resp.Promoted)
	return resp, nil
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
