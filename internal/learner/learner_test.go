package learner_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

const inputs = 4

// synthetic returns outcomes of a learnable rule: BUY when w·x > 0.5,
// SELL below −0.5, HOLD between.
func synthetic(n int, seed uint64) []learner.Outcome {
	r := rand.New(rand.NewPCG(seed, 1))
	w := []float64{1, -0.8, 0.6, 0.3}
	out := make([]learner.Outcome, n)
	for i := range out {
		x := make([]float64, inputs)
		var s float64
		for j := range x {
			x[j] = r.NormFloat64()
			s += w[j] * x[j]
		}
		label := policy.ActionHold
		switch {
		case s > 0.5:
			label = policy.ActionBuy
		case s < -0.5:
			label = policy.ActionSell
		}
		out[i] = learner.Outcome{Symbol: "SYN", Features: x, Label: label}
	}
	return out
}

func xy(os []learner.Outcome) ([][]float64, []policy.Action) {
	X := make([][]float64, len(os))
	y := make([]policy.Action, len(os))
	for i, o := range os {
		X[i], y[i] = o.Features, o.Label
	}
	return X, y
}

// startMesh runs a mesh of the given services on SQLite and returns a
// connection to it.
func startMesh(t *testing.T, services ...string) (*mesh.Mesh, *grpc.ClientConn) {
	t.Helper()
	return meshtest.Serve(t, meshtest.Config(t, services...))
}

// registerInitial trains a network on the synthetic rule and points
// policy@production at it; it returns the version.
func registerInitial(t *testing.T, client experimentv1.ExperimentServiceClient) int64 {
	t.Helper()
	ctx := context.Background()
	X, y := xy(synthetic(400, 1))
	net, _, err := policy.Train(ctx, policy.TrainConfig{Config: policy.Config{Hidden: []int{8}}, Epochs: 30, LearningRate: 0.02, Seed: 1}, X, y, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, acc := policy.Evaluate(net, X, y); acc < 0.8 {
		t.Fatalf("initial model accuracy %.3f: the synthetic rule is not learned", acc)
	}
	w, err := net.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "policy"}); err != nil {
		t.Fatal(err)
	}
	mv, err := client.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: "policy", Format: policy.Format, Weights: w})
	if err != nil {
		t.Fatal(err)
	}
	v := mv.GetModelVersion().GetVersion()
	if _, err := client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "policy", Alias: "production", Version: v}); err != nil {
		t.Fatal(err)
	}
	return v
}

// policyMesh runs a mesh with ExperimentService and policy@production at
// registerInitial's version, which it returns.
func policyMesh(t *testing.T) (experimentv1.ExperimentServiceClient, int64) {
	t.Helper()
	_, conn := startMesh(t, mesh.Experiment)
	client := experimentv1.NewExperimentServiceClient(conn)
	return client, registerInitial(t, client)
}

func aliasVersion(t *testing.T, client experimentv1.ExperimentServiceClient) int64 {
	t.Helper()
	mv, err := client.GetModelVersionByAlias(context.Background(), &experimentv1.GetModelVersionByAliasRequest{ModelName: "policy", Alias: "production"})
	if err != nil {
		t.Fatal(err)
	}
	return mv.GetModelVersion().GetVersion()
}

func servedVersion(t *testing.T, inf inferencev1.InferenceServiceClient) int64 {
	t.Helper()
	st, err := inf.GetModelStatus(context.Background(), &inferencev1.GetModelStatusRequest{ModelName: "policy"})
	if err != nil {
		t.Fatal(err)
	}
	return st.GetModels()[0].GetLoadedVersion()
}

// waitServed waits until InferenceService serves version v (through
// WatchModel), for at most a minute.
func waitServed(t *testing.T, inf inferencev1.InferenceServiceClient, v int64) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); servedVersion(t, inf) != v; {
		if time.Now().After(deadline) {
			t.Fatalf("InferenceService did not load version %d", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newLearner returns a learner of cfg with outs in its buffer.
func newLearner(t *testing.T, cfg learner.Config, client experimentv1.ExperimentServiceClient, meter metric.Meter, outs ...learner.Outcome) *learner.Learner {
	t.Helper()
	l, err := learner.New(cfg, client, nil, meter)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Add(outs...); err != nil {
		t.Fatal(err)
	}
	return l
}

// addAndRetrain adds outs and runs a retrain that must not fail.
func addAndRetrain(t *testing.T, l *learner.Learner, outs ...learner.Outcome) *learner.Report {
	t.Helper()
	if err := l.Add(outs...); err != nil {
		t.Fatal(err)
	}
	rep, err := l.Retrain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func testConfig() learner.Config {
	cfg := learner.DefaultConfig()
	cfg.ReplaySize, cfg.Epochs, cfg.LearningRate, cfg.BatchSize = 300, 5, 0.01, 32
	return cfg
}

// TestRetrainPublishesThenRejectsDegraded: a fine-tune on more outcomes of
// the same rule is published (run, version, alias moved); then a candidate
// trained on shuffled labels is rejected against the published version's
// evaluation set, counted, and the alias does not move.
func TestRetrainPublishesThenRejectsDegraded(t *testing.T) {
	t.Parallel()
	_, conn := startMesh(t, mesh.Experiment, mesh.Inference)
	client := experimentv1.NewExperimentServiceClient(conn)
	inf := inferencev1.NewInferenceServiceClient(conn)
	v1 := registerInitial(t, client)
	ctx := context.Background()

	// Plain fine-tuning (λ 0) at a high rate: nothing holds a candidate
	// trained on noise near the previous weights but the stability check.
	cfg := testConfig()
	cfg.Lambda, cfg.Epochs, cfg.LearningRate = 0, 40, 0.05
	meter, read := meterReader(t)
	l := newLearner(t, cfg, client, meter)
	rep := addAndRetrain(t, l, synthetic(300, 2)...)
	if !rep.Published || rep.From != v1 || rep.Version <= v1 || rep.RunID == "" {
		t.Fatalf("first retrain: %+v, want version %d fine-tuned and published", rep, v1)
	}
	if got := aliasVersion(t, client); got != rep.Version {
		t.Fatalf("production is at version %d, want the published %d", got, rep.Version)
	}
	run, err := client.GetRun(ctx, &experimentv1.GetRunRequest{RunId: rep.RunID})
	if err != nil {
		t.Fatal(err)
	}
	if r := run.GetRun(); r.GetStatus() != experimentv1.RunStatus_RUN_STATUS_FINISHED || r.GetParams()["lambda"] != "0" || r.GetTags()["decision"] != "published" {
		t.Errorf("publish run: %v", r)
	}
	v2 := rep.Version
	waitServed(t, inf, v2)

	// Shuffled labels: features of the same rule, labels permuted.
	bad := synthetic(300, 3)
	r := rand.New(rand.NewPCG(4, 4))
	r.Shuffle(len(bad), func(i, j int) { bad[i].Label, bad[j].Label = bad[j].Label, bad[i].Label })
	rep = addAndRetrain(t, l, bad...) // evicts every good outcome
	if rep.Published || rep.Version != 0 || rep.From != v2 || rep.Degradation <= cfg.DegradationThreshold || !strings.Contains(rep.Reason, "more than the 20% threshold") {
		t.Fatalf("degraded retrain: %+v, want a rejection", rep)
	}
	t.Logf("rejected: %s", rep.Reason)
	if got := aliasVersion(t, client); got != v2 {
		t.Errorf("production moved to version %d after a rejection; want %d", got, v2)
	}
	if got := servedVersion(t, inf); got != v2 {
		t.Errorf("InferenceService serves version %d after a rejection; want %d", got, v2)
	}
	if rep.Train != 240 {
		t.Errorf("the degraded retrain trained on %d outcomes, want the 240 new ones before the hold-out", rep.Train)
	}
	m := read()
	for name, want := range map[string]float64{
		"quantmesh.learner.retrains{result=published}": 1, "quantmesh.learner.retrains{result=rejected}": 1, "quantmesh.learner.retrains{result=failed}": 0,
		"quantmesh.learner.consecutive_failures": 1, "quantmesh.learner.degradation_ratio": rep.Degradation,
		"quantmesh.learner.training_loss": rep.TrainingLoss, "quantmesh.learner.outcomes": 600, "quantmesh.learner.replay_outcomes": 300,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (reported: %v), want %v", name, got, ok, want)
		}
	}
	if s, ok := m["quantmesh.learner.since_last_publish"]; !ok || s < 0 {
		t.Errorf("since_last_publish = %v, %v", s, ok)
	}
	list, err := client.ListModelVersions(ctx, &experimentv1.ListModelVersionsRequest{ModelName: "policy"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetModelVersions()); n != 2 {
		t.Errorf("%d versions registered, want 2 (a rejected candidate is not registered)", n)
	}
	if rep.RunID != "" {
		run, err := client.GetRun(ctx, &experimentv1.GetRunRequest{RunId: rep.RunID})
		if err != nil || run.GetRun().GetTags()["decision"] != "rejected" || run.GetRun().GetStatus() != experimentv1.RunStatus_RUN_STATUS_FAILED {
			t.Errorf("rejection run: %v %v", run, err)
		}
	}
	// A rejected retrain learned nothing: the next one learns the same
	// outcomes again.
	rep, err = l.Retrain(ctx)
	if err != nil || rep.Published || rep.Train != 240 {
		t.Errorf("retrain after the rejection: %+v, %v; want the same 240 outcomes, rejected again", rep, err)
	}
}

// TestRetrainLearnsEachOutcomeOnce: a retrain learns the outcomes before
// the hold-out that the version behind the alias has not learned, and only
// those; a rejected retrain's outcomes are learned by the next one; the
// previous evaluation set is scored without what the candidate learns.
func TestRetrainLearnsEachOutcomeOnce(t *testing.T) {
	t.Parallel()
	client, v1 := policyMesh(t)
	ctx := context.Background()
	l := newLearner(t, testConfig(), client, nil) // a buffer of 300, the newest 20% held out
	rep := addAndRetrain(t, l, synthetic(300, 2)...)
	// Outcomes 1-240 learned, 241-300 held out (the next evaluation set).
	if !rep.Published || rep.From != v1 || rep.Train != 240 || rep.HoldOut != 60 {
		t.Fatalf("first retrain: %+v, want 240 outcomes learned, 60 held out, published", rep)
	}
	v2 := rep.Version
	if _, err := l.Retrain(ctx); err == nil || !strings.Contains(err.Error(), "has learned every outcome before the hold-out") {
		t.Fatalf("a retrain with nothing new: %v, want it refused", err)
	}
	if got := aliasVersion(t, client); got != v2 {
		t.Fatalf("production at version %d, want %d", got, v2)
	}
	// 30 more: the buffer holds 31-330, 271-330 are held out, and 241-270
	// left the hold-out: those are what the next retrain learns, and
	// 271-300 is what is left of the evaluation set.
	rep = addAndRetrain(t, l, synthetic(30, 5)...)
	if rep.From != v2 || rep.Train != 30 || rep.HoldOut != 60 || rep.EvalSamples != 30 {
		t.Fatalf("second retrain: %+v, want 30 outcomes learned, 60 held out, 30 left of the evaluation set", rep)
	}
	if !rep.Published {
		t.Fatalf("second retrain rejected: %s", rep.Reason)
	}
}

// withFeatures returns n outcomes of k features each (a version of
// another shape's).
func withFeatures(n, k int) []learner.Outcome {
	out := make([]learner.Outcome, n)
	for i := range out {
		out[i] = learner.Outcome{Symbol: "OTHER", Features: make([]float64, k), Label: policy.ActionHold}
	}
	return out
}

// TestRetrainNothingNew: outcomes are numbered by arrival, whatever their
// features; a retrain with nothing new to learn says so without counting
// a failure, and the next outcomes are what the next retrain learns.
func TestRetrainNothingNew(t *testing.T) {
	t.Parallel()
	client, _ := policyMesh(t)
	ctx := context.Background()
	meter, read := meterReader(t)
	l := newLearner(t, testConfig(), client, meter) // a buffer of 300
	// 1-20 take 5 features, 21-300 the version's 4: 224 learned (21-244),
	// 56 held out.
	rep := addAndRetrain(t, l, append(withFeatures(20, 5), synthetic(280, 2)...)...)
	if !rep.Published || rep.Train != 224 || rep.HoldOut != 56 {
		t.Fatalf("first retrain: %+v, want 224 outcomes learned, 56 held out, published", rep)
	}
	// Outcomes of another shape: nothing new for this version.
	if err := l.Add(withFeatures(10, 5)...); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Retrain(ctx); !errors.Is(err, learner.ErrNothingNew) || !strings.Contains(err.Error(), "has learned every outcome before the hold-out") {
		t.Fatalf("retrain with nothing new: %v, want ErrNothingNew", err)
	}
	if p := l.Pending(); p != 0 {
		t.Errorf("pending %d after a retrain that found nothing new, want 0 (Run would retry it every cadence)", p)
	}
	m := read()
	if f := m["quantmesh.learner.consecutive_failures"]; f != 0 || m["quantmesh.learner.retrains{result=failed}"] != 0 {
		t.Errorf("consecutive failures %v, failed retrains %v after nothing new; want 0 and 0", f, m["quantmesh.learner.retrains{result=failed}"])
	}
	// 30 more: the buffer holds 41-340, of which 41-300 and 311-340 (290)
	// take 4 features; 232 are before the hold-out, up to outcome 272, so
	// 245-272 are new.
	if rep = addAndRetrain(t, l, synthetic(30, 5)...); rep.Train != 28 || rep.HoldOut != 58 {
		t.Fatalf("retrain after 30 new outcomes: %+v, want the 28 that left the hold-out learned, 58 held out", rep)
	}
}

// TestRetrainLogsLostOutcomes: outcomes that leave the buffer before a
// published retrain learns them are logged once, by the next retrain; a
// version just adopted counts none.
func TestRetrainLogsLostOutcomes(t *testing.T) {
	t.Parallel()
	client, _ := policyMesh(t)
	var logs bytes.Buffer
	l, err := learner.New(testConfig(), client, slog.New(slog.NewTextHandler(&logs, nil)), nil) // a buffer of 300
	if err != nil {
		t.Fatal(err)
	}
	lost := func() string {
		t.Helper()
		var out []string
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "outcomes left the replay buffer") {
				_, n, _ := strings.Cut(line, " outcomes=")
				out = append(out, strings.Fields(n)[0])
			}
		}
		logs.Reset()
		return strings.Join(out, ",")
	}
	// Adopted with a full buffer, of which 1-100 already left: not counted.
	addAndRetrain(t, l, synthetic(400, 2)...) // learns 101-340
	if got := lost(); got != "" {
		t.Errorf("after an adoption: lost %q, want none", got)
	}
	// 400 more without a retrain: 341-500 left unlearned.
	if rep := addAndRetrain(t, l, synthetic(400, 3)...); !rep.Published {
		t.Fatalf("retrain: %+v", rep)
	}
	if got := lost(); got != "160" {
		t.Errorf("lost %q, want 160 (outcomes 341-500)", got)
	}
	addAndRetrain(t, l, synthetic(30, 4)...)
	if got := lost(); got != "" {
		t.Errorf("lost %q on the next retrain, want none (logged already)", got)
	}
}

// TestRetrainAfterRollback: when the alias is moved back to a version the
// learner published, the learner resumes from what that version learned.
func TestRetrainAfterRollback(t *testing.T) {
	t.Parallel()
	client, _ := policyMesh(t)
	ctx := context.Background()
	cfg := testConfig()
	cfg.DegradationThreshold = 1 // the test is about what is learned
	l := newLearner(t, cfg, client, nil)
	retrain := func(add, want int) int64 {
		t.Helper()
		rep := addAndRetrain(t, l, synthetic(add, uint64(10+add))...)
		if !rep.Published || rep.Train != want {
			t.Fatalf("retrain: %+v, want %d outcomes learned and published", rep, want)
		}
		return rep.Version
	}
	v2 := retrain(300, 240) // learned 1-240
	retrain(30, 30)         // v3 learned 241-270
	if _, err := client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "policy", Alias: "production", Version: v2}); err != nil {
		t.Fatal(err)
	}
	// Back at v2, which learned up to 240: the buffer holds 61-360 and
	// 241-300 are before the hold-out.
	retrain(30, 60)
}

// TestRetrainKeepsLineageEvaluationSet: for a version trained on bundled
// data, the previous evaluation set is that data's hold-out, and it stays
// so across the learner's publishes (a replay hold-out would only repeat
// the current one, since each outcome is learned once it leaves it).
func TestRetrainKeepsLineageEvaluationSet(t *testing.T) {
	t.Parallel()
	_, conn := startMesh(t, mesh.Experiment)
	client := experimentv1.NewExperimentServiceClient(conn)
	ctx := context.Background()
	series, err := training.Load("eustock")
	if err != nil {
		t.Fatal(err)
	}
	d := training.DefaultConfig()
	ds, err := training.Build(series, d.Horizon, d.Threshold, d.HoldOut)
	if err != nil {
		t.Fatal(err)
	}
	net, _, err := policy.Train(ctx, policy.TrainConfig{Config: policy.Config{Hidden: []int{8}}, Epochs: 2, LearningRate: 0.01, Seed: 1}, ds.TrainX, ds.TrainY, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := net.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "policy"}); err != nil {
		t.Fatal(err)
	}
	mv, err := client.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{ModelName: "policy", Format: policy.Format, Weights: w,
		Tags: map[string]string{"data": "eustock"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: "policy", Alias: "production", Version: mv.GetModelVersion().GetVersion()}); err != nil {
		t.Fatal(err)
	}
	ttrc, err := training.Load("ttrc")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.DegradationThreshold = 1 // the test is about what the check scores
	outs, err := learner.ReplaySeries(ttrc, cfg.Horizon, cfg.LabelThreshold)
	if err != nil {
		t.Fatal(err)
	}
	l := newLearner(t, cfg, client, nil)
	for i, n := range []int{300, 30} {
		rep := addAndRetrain(t, l, outs[:n]...)
		outs = outs[n:]
		if !rep.Published || rep.EvalSamples != len(ds.TestX) {
			t.Fatalf("retrain %d: %+v, want published and scored on eustock's %d held-out samples", i+1, rep, len(ds.TestX))
		}
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	_, conn := startMesh(t, mesh.Experiment)
	client := experimentv1.NewExperimentServiceClient(conn)
	for _, tc := range []struct {
		edit func(*learner.Config)
		want string
	}{
		{func(c *learner.Config) { c.Lambda = -1 }, "lambda: must be finite and ≥ 0, got -1"},
		{func(c *learner.Config) { c.Gamma = 1.5 }, "gamma: must be in [0, 1], got 1.5"},
		{func(c *learner.Config) { c.LearningRate = 0 }, "learning rate: must be finite and > 0, got 0"},
		{func(c *learner.Config) { c.BatchSize = 0 }, "batch size: must be ≥ 1, got 0"},
		{func(c *learner.Config) { c.Cadence = 0 }, "cadence: must be positive"},
		{func(c *learner.Config) { c.ReplaySize = 1 }, "replay size: must be ≥ 2"},
		{func(c *learner.Config) { c.DegradationThreshold = 2 }, "degradation threshold: must be in [0, 1], got 2"},
		{func(c *learner.Config) { c.Model = "" }, "model: required"},
		{func(c *learner.Config) { c.Alias = "" }, "alias: required"},
	} {
		cfg := learner.DefaultConfig()
		tc.edit(&cfg)
		if _, err := learner.New(cfg, client, nil, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
	ctx := context.Background()
	// An empty replay set.
	l, err := learner.New(learner.DefaultConfig(), client, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Retrain(ctx); !errors.Is(err, learner.ErrEmptyReplay) || !strings.Contains(err.Error(), "replay: no outcomes") {
		t.Errorf("empty replay: %v", err)
	}
	// An unknown model.
	cfg := learner.DefaultConfig()
	cfg.Model = "nope"
	l, err = learner.New(cfg, client, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Add(synthetic(10, 1)...); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Retrain(ctx); err == nil || !strings.Contains(err.Error(), `model: unknown model "nope"`) {
		t.Errorf("unknown model: %v", err)
	}
	// A model with no version behind the alias.
	if _, err := client.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "nope"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Retrain(ctx); err == nil || !strings.Contains(err.Error(), `alias: model "nope" has no version behind alias "production"`) {
		t.Errorf("unset alias: %v", err)
	}
	// Outcomes that do not fit the model.
	if err := l.Add(learner.Outcome{Features: []float64{1}, Label: 7}); err == nil || !strings.Contains(err.Error(), "label 7 is not an action") {
		t.Errorf("bad label: %v", err)
	}
}

// aliasMover moves the alias to another version just before the learner
// publishes, as another trainer might.
type aliasMover struct {
	experimentv1.ExperimentServiceClient
	to int64
}

func (c aliasMover) SetModelAlias(ctx context.Context, req *experimentv1.SetModelAliasRequest, opts ...grpc.CallOption) (*experimentv1.SetModelAliasResponse, error) {
	if _, err := c.ExperimentServiceClient.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: req.GetModelName(), Alias: req.GetAlias(), Version: c.to}); err != nil {
		return nil, err
	}
	return c.ExperimentServiceClient.SetModelAlias(ctx, req, opts...)
}

// A candidate that cannot be published (the alias moved meanwhile) fails
// the retrain, and its run ends FAILED with decision "failed", not as a
// published one.
func TestPublishLostRace(t *testing.T) {
	t.Parallel()
	_, conn := startMesh(t, mesh.Experiment)
	client := experimentv1.NewExperimentServiceClient(conn)
	v1 := registerInitial(t, client)
	current, err := client.GetModelVersion(context.Background(), &experimentv1.GetModelVersionRequest{ModelName: "policy", Version: v1,
		View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL})
	if err != nil {
		t.Fatal(err)
	}
	// A second version, not behind the alias.
	mv, err := client.CreateModelVersion(context.Background(), &experimentv1.CreateModelVersionRequest{ModelName: "policy", Format: policy.Format,
		Weights: current.GetModelVersion().GetWeights()})
	if err != nil {
		t.Fatal(err)
	}
	other := mv.GetModelVersion().GetVersion()
	cfg := testConfig()
	cfg.DegradationThreshold = 1
	l, err := learner.New(cfg, aliasMover{client, other}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Add(synthetic(300, 2)...); err != nil {
		t.Fatal(err)
	}
	rep, err := l.Retrain(context.Background())
	if err == nil || !strings.Contains(err.Error(), "moved while the learner trained") {
		t.Fatalf("retrain: %+v, %v; want the lost race reported", rep, err)
	}
	if got := aliasVersion(t, client); got != other {
		t.Errorf("production at version %d, want %d (the other trainer's)", got, other)
	}
	runs, err := client.SearchRuns(context.Background(), &experimentv1.SearchRunsRequest{ExperimentIds: []string{experimentIDOf(t, client, cfg.Experiment)}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(runs.GetRuns()); n != 1 {
		t.Fatalf("%d runs, want 1", n)
	}
	if r := runs.GetRuns()[0]; r.GetStatus() != experimentv1.RunStatus_RUN_STATUS_FAILED || r.GetTags()["decision"] != "failed" {
		t.Errorf("run %v, want FAILED with decision failed", r)
	}
}

func experimentIDOf(t *testing.T, client experimentv1.ExperimentServiceClient, name string) string {
	t.Helper()
	got, err := client.GetExperimentByName(context.Background(), &experimentv1.GetExperimentByNameRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return got.GetExperiment().GetExperimentId()
}
