package learner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/binfmt"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// ErrEmptyReplay: a retrain was asked for with no outcomes to learn from.
var ErrEmptyReplay = errors.New("replay: no outcomes to learn from (the replay buffer is empty)")

// ErrNothingNew: the version behind the alias has learned every outcome
// that has left the hold-out (the new ones do not take its features, or
// are still held out). Retrain logs it and counts it neither as a failure
// nor as a rejection.
var ErrNothingNew = errors.New("replay: nothing new to learn")

// maxPublished bounds the versions whose learned outcomes the learner
// remembers.
const maxPublished = 64

// maxFisherSamples bounds the samples behind a Fisher estimate.
const maxFisherSamples = 2000

// Learner fine-tunes the version behind an alias on the outcomes of its
// replay buffer it has not learned yet and publishes candidates that pass
// the stability check.
// Retrain and Run may be called from one goroutine at a time; Add from
// any.
type Learner struct {
	cfg    Config
	client experimentv1.ExperimentServiceClient
	log    *slog.Logger
	ins    *instruments
	replay *Replay

	mu sync.Mutex // one retrain at a time; guards the state below
	// The version the state belongs to (the anchor θ*).
	version int64
	fisher  *policy.Fisher
	// evalX, evalY: the evaluation set of the version (what the stability
	// check holds a candidate to besides the replay hold-out).
	evalX [][]float64
	evalY []policy.Action
	// evalLineage: evalX is the hold-out of the bundled data the version's
	// lineage was trained on, kept across the learner's publishes.
	evalLineage bool
	// learned: the arrival number of the newest outcome the version has
	// learned (0 for a version the learner did not publish); a retrain
	// learns the ones after it.
	learned int64
	// published: learned of the versions the learner registered, so that
	// a version it published comes back with what it learned (the alias
	// rolled back to it, or a publish whose answer was lost).
	published map[int64]int64
	// trainedAt: Replay.Added at the last retrain.
	trainedAt int64
}

// New returns a learner. It checks cfg (the error names the field) but
// does not call ExperimentService: Retrain does.
func New(cfg Config, client experimentv1.ExperimentServiceClient, log *slog.Logger, meter metric.Meter) (*Learner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("learner: no ExperimentService client")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Learner{cfg: cfg, client: client, log: log, replay: NewReplay(cfg.ReplaySize)}
	ins, err := newInstruments(meter, l.replay.Len)
	if err != nil {
		return nil, err
	}
	l.ins = ins
	return l, nil
}

// Add puts outcomes into the replay buffer.
func (l *Learner) Add(os ...Outcome) error {
	if err := l.replay.Add(os...); err != nil {
		return err
	}
	l.ins.outcomes.Add(context.Background(), int64(len(os)))
	return nil
}

// Replay is the learner's buffer.
func (l *Learner) Replay() *Replay { return l.replay }

// Report is what one retrain did.
type Report struct {
	// From is the version fine-tuned; Version the one published (0 when
	// rejected).
	From, Version int64
	Published     bool
	RunID         string
	// Train and HoldOut count the replay outcomes trained on and held out.
	Train, HoldOut int
	// Accuracy of the previous version and of the candidate on the replay
	// hold-out and on the previous version's evaluation set (NaN when it
	// has none).
	PrevHoldOut, CandHoldOut float64
	PrevEval, CandEval       float64
	EvalSamples              int
	// Degradation is the worst relative accuracy drop of the two sets.
	Degradation float64
	// TrainingLoss is the candidate's loss on its training part after the
	// last epoch.
	TrainingLoss float64
	// Reason says why the candidate was rejected.
	Reason string
}

// current is the version behind the alias.
type current struct {
	version  int64
	revision uint64
	net      *policy.Network
	mv       *experimentv1.ModelVersion
}

// load fetches the version behind the alias with the alias's revision.
func (l *Learner) load(ctx context.Context) (*current, error) {
	if _, err := l.client.GetRegisteredModel(ctx, &experimentv1.GetRegisteredModelRequest{Name: l.cfg.Model}); err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, fmt.Errorf("model: unknown model %q: it is not registered", l.cfg.Model)
		}
		return nil, fmt.Errorf("model %q: %w", l.cfg.Model, err)
	}
	if _, err := l.client.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: l.cfg.Model, Alias: l.cfg.Alias}); err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, fmt.Errorf("alias: model %q has no version behind alias %q to learn from", l.cfg.Model, l.cfg.Alias)
		}
		return nil, fmt.Errorf("alias %s@%s: %w", l.cfg.Model, l.cfg.Alias, err)
	}
	// WatchModel's first message is the alias's state with its revision,
	// which a publish passes as expected_revision.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := l.client.WatchModel(wctx, &experimentv1.WatchModelRequest{ModelName: l.cfg.Model, Alias: l.cfg.Alias})
	if err != nil {
		return nil, fmt.Errorf("watch %s@%s: %w", l.cfg.Model, l.cfg.Alias, err)
	}
	msg, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("watch %s@%s: %w", l.cfg.Model, l.cfg.Alias, err)
	}
	if msg.GetDeleted() || msg.GetModelVersion() == nil {
		return nil, fmt.Errorf("alias: model %q has no version behind alias %q to learn from", l.cfg.Model, l.cfg.Alias)
	}
	mv := msg.GetModelVersion()
	if mv.GetFormat() != policy.Format {
		return nil, fmt.Errorf("model: %s version %d is %q, not a policy network (%s)", l.cfg.Model, mv.GetVersion(), mv.GetFormat(), policy.Format)
	}
	net, err := policy.Unmarshal(mv.GetWeights())
	if err != nil {
		return nil, fmt.Errorf("model: %s version %d: %w", l.cfg.Model, mv.GetVersion(), err)
	}
	return &current{version: mv.GetVersion(), revision: msg.GetRevision(), net: net, mv: mv}, nil
}

// adopt resets the state to a version the learner did not just publish:
// it has learned none of the replay (or, for a version the learner
// published before, what it learned then), its evaluation set is the
// hold-out of the bundled data its lineage names (tag data), if any, and
// its Fisher estimate is computed on that data's training part, or else
// on the replay's training part. For the learner's own version whose
// Fisher update failed it only recomputes the Fisher.
func (l *Learner) adopt(ctx context.Context, cur *current, fallbackX [][]float64) error {
	fisherX := fallbackX
	if cur.version != l.version {
		l.version, l.learned, l.evalX, l.evalY, l.evalLineage = cur.version, l.published[cur.version], nil, nil, false
	}
	l.fisher = nil
	switch data := l.origin(ctx, cur.mv); data {
	case training.Bundled, "eustock", "ttrc":
		series, err := training.Load(data)
		if err != nil {
			return err
		}
		d := training.DefaultConfig()
		ds, err := training.Build(series, d.Horizon, d.Threshold, d.HoldOut)
		if err != nil {
			return err
		}
		if len(ds.Names) == cur.net.Inputs() {
			if l.evalX == nil {
				l.evalX, l.evalY, l.evalLineage = ds.TestX, ds.TestY, true
			}
			fisherX = ds.TrainX
		}
	}
	f, err := policy.ComputeFisher(cur.net, thin(fisherX, maxFisherSamples))
	if err != nil {
		return fmt.Errorf("the Fisher estimate of version %d: %w", cur.version, err)
	}
	l.fisher = f
	return nil
}

// origin is the data tag of mv or, for a version the learner published
// (data "online"), of its nearest ancestor that has another: the data
// whose hold-out is the lineage's evaluation set.
func (l *Learner) origin(ctx context.Context, mv *experimentv1.ModelVersion) string {
	for range 100 {
		data := mv.GetTags()["data"]
		parent, err := strconv.ParseInt(mv.GetTags()["parent_version"], 10, 64)
		if data != "online" || err != nil {
			return data
		}
		got, err := l.client.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: l.cfg.Model, Version: parent, View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_BASIC})
		if err != nil {
			l.log.Warn("online learning: lineage not followed", "version", parent, "err", err)
			return ""
		}
		mv = got.GetModelVersion()
	}
	return ""
}

// thin returns at most n of X, evenly spaced.
func thin(X [][]float64, n int) [][]float64 {
	if len(X) <= n {
		return X
	}
	out := make([][]float64, n)
	for i := range out {
		out[i] = X[i*len(X)/n]
	}
	return out
}

// Pending is the number of outcomes added since the last retrain.
func (l *Learner) Pending() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.replay.Added() - l.trainedAt
}

// Retrain fine-tunes the version behind the alias on the outcomes it has
// not learned (those that left the hold-out since it was published) under
// the EWC penalty, checks the candidate and publishes it or rejects
// it. A rejection is a Report with Published false and a nil error; an
// error means the retrain failed (both count as consecutive failures).
func (l *Learner) Retrain(ctx context.Context) (*Report, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rep, err := l.retrain(ctx)
	switch {
	case errors.Is(err, ErrNothingNew):
		l.log.Info("online learning: nothing new to learn", "model", l.cfg.Model, "alias", l.cfg.Alias, "err", err)
	case err != nil:
		l.ins.retrained(resultFailed, 0, 0, false)
		l.log.Error("online learning: retrain failed", "model", l.cfg.Model, "alias", l.cfg.Alias, "err", err,
			"consecutive_failures", l.ins.consecutiveFailures())
	case rep.Published:
		l.ins.retrained(resultPublished, rep.Degradation, rep.TrainingLoss, true)
		l.log.Info("online learning: published", "model", l.cfg.Model, "alias", l.cfg.Alias, "from", rep.From, "version", rep.Version,
			"degradation", rep.Degradation, "holdout_accuracy", rep.CandHoldOut, "training_loss", rep.TrainingLoss, "run", rep.RunID)
	default:
		l.ins.retrained(resultRejected, rep.Degradation, rep.TrainingLoss, true)
		l.log.Warn("online learning: candidate rejected, previous version kept", "model", l.cfg.Model, "alias", l.cfg.Alias,
			"version", rep.From, "reason", rep.Reason, "degradation", rep.Degradation, "consecutive_failures", l.ins.consecutiveFailures())
	}
	return rep, err
}

func (l *Learner) retrain(ctx context.Context) (*Report, error) {
	outs, added := l.replay.Snapshot()
	if len(outs) == 0 {
		return nil, ErrEmptyReplay
	}
	cur, err := l.load(ctx)
	if err != nil {
		return nil, err
	}
	// seq[i] is the arrival number of X[i] (1 for the first outcome ever
	// added), which says whether the version has learned it.
	var X [][]float64
	var y []policy.Action
	var seq []int64
	first := added - int64(len(outs)) + 1
	for i, o := range outs {
		if len(o.Features) == cur.net.Inputs() {
			X, y, seq = append(X, o.Features), append(y, o.Label), append(seq, first+int64(i))
		}
	}
	if len(X) < 2 {
		return nil, fmt.Errorf("replay: %d of %d outcomes have the %d features version %d takes; need at least 2", len(X), len(outs), cur.net.Inputs(), cur.version)
	}
	split := min(len(X)-1, max(1, int(math.Round(float64(len(X))*(1-l.cfg.HoldOut)))))
	holdX, holdY := X[split:], y[split:]
	adopted := cur.version != l.version
	if adopted || l.fisher == nil {
		if err := l.adopt(ctx, cur, X[:split]); err != nil {
			return nil, err
		}
	}
	// Outcomes that left the buffer before a published retrain learned
	// them: those before first, less the ones learned and the ones that had
	// left it by the last retrain (logged then). For a version just
	// adopted, none are counted.
	if lost := first - 1 - max(l.learned, l.trainedAt-int64(l.cfg.ReplaySize)); !adopted && lost > 0 {
		l.log.Warn("online learning: outcomes left the replay buffer before a published retrain learned them", "model", l.cfg.Model,
			"alias", l.cfg.Alias, "version", cur.version, "outcomes", lost)
	}
	l.trainedAt = added
	// A retrain learns the outcomes before the hold-out that the version
	// has not learned yet, each once: what it learned before is in the
	// penalty's Fisher and anchor, and fitting it again would count it
	// twice and memorise it (README, Online learning).
	from, _ := slices.BinarySearch(seq[:split], l.learned+1)
	trainX, trainY := X[from:split], y[from:split]
	if len(trainX) == 0 {
		return nil, fmt.Errorf("%w: version %d has learned every outcome before the hold-out (%d of %d outcomes take its %d features)",
			ErrNothingNew, cur.version, len(X), len(outs), cur.net.Inputs())
	}
	// The previous evaluation set (the last hold-out, or the bundled
	// data's) is scored without what the candidate trains on, or the
	// stability check would score it on what it learned.
	evalX, evalY := without(l.evalX, l.evalY, trainX)

	tc := policy.TrainConfig{
		Start: cur.net, EWC: &policy.EWC{Lambda: l.cfg.Lambda, Anchor: cur.net, Fisher: l.fisher},
		Epochs: l.cfg.Epochs, BatchSize: min(l.cfg.BatchSize, len(trainX)), LearningRate: l.cfg.LearningRate,
		ClassWeights: true, Seed: l.cfg.Seed,
	}
	cand, stats, err := policy.Train(ctx, tc, trainX, trainY, nil)
	if err != nil {
		return nil, fmt.Errorf("fine-tune version %d: %w", cur.version, err)
	}
	rep := &Report{From: cur.version, Train: len(trainX), HoldOut: len(holdX), TrainingLoss: stats[len(stats)-1].Loss,
		PrevEval: math.NaN(), CandEval: math.NaN(), EvalSamples: len(evalX)}
	_, rep.PrevHoldOut = policy.Evaluate(cur.net, holdX, holdY)
	_, rep.CandHoldOut = policy.Evaluate(cand, holdX, holdY)
	rep.Degradation = drop(rep.PrevHoldOut, rep.CandHoldOut)
	if len(evalX) > 0 {
		_, rep.PrevEval = policy.Evaluate(cur.net, evalX, evalY)
		_, rep.CandEval = policy.Evaluate(cand, evalX, evalY)
		rep.Degradation = max(rep.Degradation, drop(rep.PrevEval, rep.CandEval))
	}
	if math.IsNaN(rep.Degradation) {
		return nil, fmt.Errorf("stability check of the candidate from version %d: accuracy is not a number", cur.version)
	}
	if rep.Degradation > l.cfg.DegradationThreshold {
		rep.Reason = fmt.Sprintf("accuracy drops %.1f%% (hold-out %.3f → %.3f, previous evaluation set %.3f → %.3f), more than the %.0f%% threshold",
			100*rep.Degradation, rep.PrevHoldOut, rep.CandHoldOut, rep.PrevEval, rep.CandEval, 100*l.cfg.DegradationThreshold)
		rep.RunID = l.logRun(ctx, rep, stats)
		return rep, nil
	}
	err = l.publish(ctx, cur, cand, rep, stats)
	if rep.Version != 0 { // registered, whether or not the alias moved
		l.remember(rep.Version, seq[split-1])
	}
	if err != nil {
		return nil, err
	}
	// The new version is the anchor of the next retrain: F ← γF + F_new,
	// the new Fisher on what it just learned; its evaluation set is this
	// retrain's hold-out.
	l.version, l.learned = rep.Version, seq[split-1]
	if !l.evalLineage {
		l.evalX, l.evalY = holdX, holdY
	}
	fnew, err := policy.ComputeFisher(cand, thin(trainX, maxFisherSamples))
	if err == nil {
		l.fisher, err = l.fisher.Combine(l.cfg.Gamma, fnew)
	}
	if err != nil { // published, but the Fisher is stale: the next retrain recomputes it
		l.fisher = nil
		l.log.Warn("online learning: Fisher update failed; the next retrain recomputes it", "err", err)
	}
	return rep, nil
}

// remember records what a registered version learned.
func (l *Learner) remember(version, learned int64) {
	if l.published == nil {
		l.published = make(map[int64]int64)
	}
	if len(l.published) >= maxPublished {
		delete(l.published, slices.Min(slices.Collect(maps.Keys(l.published))))
	}
	l.published[version] = learned
}

// without returns the samples of X (and their labels) whose feature
// vector is not in except.
func without(X [][]float64, y []policy.Action, except [][]float64) ([][]float64, []policy.Action) {
	if len(except) == 0 {
		return X, y
	}
	key := func(x []float64) string { return string(binfmt.AppendFloats(make([]byte, 0, 8*len(x)), x)) }
	skip := make(map[string]struct{}, len(except))
	for _, x := range except {
		skip[key(x)] = struct{}{}
	}
	var keptX [][]float64
	var keptY []policy.Action
	for i, x := range X {
		if _, ok := skip[key(x)]; !ok {
			keptX, keptY = append(keptX, x), append(keptY, y[i])
		}
	}
	return keptX, keptY
}

// drop is the relative accuracy drop from prev to cand (negative when cand
// is better), 0 when prev is 0.
func drop(prev, cand float64) float64 {
	if prev == 0 {
		return 0
	}
	return (prev - cand) / prev
}

// Decisions of a retrain, its run's tag "decision".
const (
	decisionPublished = "published"
	decisionRejected  = "rejected"
	// decisionFailed: the candidate passed the check but could not be
	// registered or published.
	decisionFailed = "failed"
)

// logRun records a rejected retrain in ExperimentService as a FAILED run
// and returns the run id ("" when ExperimentService failed; a rejection is
// still a rejection).
func (l *Learner) logRun(ctx context.Context, rep *Report, stats []policy.EpochStats) string {
	id, err := l.createRun(ctx, rep, stats, decisionRejected)
	if err == nil {
		err = l.endRun(ctx, id, experimentv1.RunStatus_RUN_STATUS_FAILED)
	}
	if err != nil {
		l.log.Warn("online learning: run not logged", "err", err)
	}
	return id
}

// createRun logs a retrain as a running run with its params and metrics.
func (l *Learner) createRun(ctx context.Context, rep *Report, stats []policy.EpochStats, decision string) (string, error) {
	exp, err := experimentID(ctx, l.client, l.cfg.Experiment)
	if err != nil {
		return "", err
	}
	run, err := l.client.CreateRun(ctx, &experimentv1.CreateRunRequest{
		ExperimentId: exp, RunName: fmt.Sprintf("%s-from-v%d", l.cfg.Model, rep.From),
		Tags: map[string]string{"model": l.cfg.Model, "alias": l.cfg.Alias, "trainer": "quantmesh learn", "decision": decision,
			"parent_version": strconv.FormatInt(rep.From, 10)},
	})
	if err != nil {
		return "", fmt.Errorf("create run: %w", err)
	}
	id := run.GetRun().GetRunId()
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	batch := &experimentv1.LogBatchRequest{RunId: id}
	for k, v := range map[string]string{
		"lambda": f(l.cfg.Lambda), "gamma": f(l.cfg.Gamma), "learning_rate": f(l.cfg.LearningRate), "batch_size": strconv.Itoa(l.cfg.BatchSize),
		"epochs": strconv.Itoa(l.cfg.Epochs), "degradation_threshold": f(l.cfg.DegradationThreshold), "parent_version": strconv.FormatInt(rep.From, 10),
		"train_outcomes": strconv.Itoa(rep.Train), "holdout_outcomes": strconv.Itoa(rep.HoldOut), "eval_samples": strconv.Itoa(rep.EvalSamples),
	} {
		batch.Params = append(batch.Params, &experimentv1.Param{Key: k, Value: v})
	}
	for _, s := range stats {
		batch.Metrics = append(batch.Metrics, &experimentv1.Metric{Key: "train/loss", Value: s.Loss, Step: int64(s.Epoch)},
			&experimentv1.Metric{Key: "train/accuracy", Value: s.Accuracy, Step: int64(s.Epoch)})
	}
	for k, v := range rep.metrics() {
		batch.Metrics = append(batch.Metrics, &experimentv1.Metric{Key: k, Value: v, Step: int64(len(stats))})
	}
	if _, err := l.client.LogBatch(ctx, batch); err != nil {
		return id, fmt.Errorf("log run %s: %w", id, err)
	}
	return id, nil
}

// endRun sets a run's final status.
func (l *Learner) endRun(ctx context.Context, id string, st experimentv1.RunStatus) error {
	if _, err := l.client.UpdateRun(ctx, &experimentv1.UpdateRunRequest{
		Run: &experimentv1.Run{RunId: id, Status: st}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"status"}},
	}); err != nil {
		return fmt.Errorf("end run %s: %w", id, err)
	}
	return nil
}

// metrics are the stability check's numbers (the finite ones).
func (rep *Report) metrics() map[string]float64 {
	m := map[string]float64{
		"holdout/accuracy_previous": rep.PrevHoldOut, "holdout/accuracy": rep.CandHoldOut,
		"eval/accuracy_previous": rep.PrevEval, "eval/accuracy": rep.CandEval,
		"degradation": rep.Degradation, "train/final_loss": rep.TrainingLoss,
	}
	for k, v := range m {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			delete(m, k)
		}
	}
	return m
}

// publish logs the run, registers the candidate and moves the alias, if
// it still points where the candidate came from. The run is FINISHED
// (decision published) only once the alias has moved; otherwise it ends
// FAILED with decision failed.
func (l *Learner) publish(ctx context.Context, cur *current, cand *policy.Network, rep *Report, stats []policy.EpochStats) (err error) {
	runID, err := l.createRun(ctx, rep, stats, decisionPublished)
	if err != nil {
		return err
	}
	rep.RunID = runID
	defer func() {
		st := experimentv1.RunStatus_RUN_STATUS_FINISHED
		if err != nil {
			st = experimentv1.RunStatus_RUN_STATUS_FAILED
			if _, terr := l.client.SetRunTag(ctx, &experimentv1.SetRunTagRequest{RunId: runID, Key: "decision", Value: decisionFailed}); terr != nil {
				l.log.Warn("online learning: run not tagged failed", "run", runID, "err", terr)
			}
		}
		if eerr := l.endRun(ctx, runID, st); eerr != nil {
			l.log.Warn("online learning: run not ended", "run", runID, "err", eerr)
		}
	}()
	weights, err := cand.MarshalBinary()
	if err != nil {
		return err
	}
	tags := map[string]string{"data": "online", "trainer": "quantmesh learn", "parent_version": strconv.FormatInt(cur.version, 10)}
	if names, ok := cur.mv.GetTags()[training.FeaturesTag]; ok {
		tags[training.FeaturesTag] = names
	}
	mv, err := l.client.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
		ModelName: l.cfg.Model, Format: policy.Format, Weights: weights, SourceRunId: runID, Metrics: rep.metrics(), Tags: tags,
		Description: fmt.Sprintf("online EWC fine-tune of version %d on %d outcomes (λ %g)", cur.version, rep.Train, l.cfg.Lambda),
	})
	if err != nil {
		return fmt.Errorf("register the candidate: %w", err)
	}
	rep.Version = mv.GetModelVersion().GetVersion()
	_, err = l.client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{
		ModelName: l.cfg.Model, Alias: l.cfg.Alias, Version: rep.Version, ExpectedRevision: proto.Uint64(cur.revision),
	})
	if status.Code(err) == codes.Aborted {
		return fmt.Errorf("alias %s@%s moved while the learner trained: version %d registered but not published", l.cfg.Model, l.cfg.Alias, rep.Version)
	}
	if err != nil {
		return fmt.Errorf("move alias %s@%s to version %d: %w", l.cfg.Model, l.cfg.Alias, rep.Version, err)
	}
	rep.Published = true
	return nil
}

func experimentID(ctx context.Context, client experimentv1.ExperimentServiceClient, name string) (string, error) {
	got, err := client.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: name})
	if err == nil {
		return got.GetExperiment().GetExperimentId(), nil
	}
	if status.Code(err) != codes.NotFound {
		return "", fmt.Errorf("experiment %q: %w", name, err)
	}
	created, err := client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name, Description: "online learning (EWC) retrains"})
	if status.Code(err) == codes.AlreadyExists {
		return experimentID(ctx, client, name)
	}
	if err != nil {
		return "", fmt.Errorf("create experiment %q: %w", name, err)
	}
	return created.GetExperiment().GetExperimentId(), nil
}

// Run retrains every Cadence once MinNewOutcomes outcomes have arrived
// since the last retrain, until ctx is done.
func (l *Learner) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.Cadence)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.Pending() < int64(l.cfg.MinNewOutcomes) {
			continue
		}
		_, _ = l.Retrain(ctx) // logged and counted
	}
}
