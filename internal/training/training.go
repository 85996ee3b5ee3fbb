// Package training trains the trading policy network from bars and
// publishes it: features and forward-return labels from each series, a
// chronological hold-out, gorgonia training with a progress callback, a run
// in ExperimentService with the params and per-epoch metrics, and a model
// version in the registry (optionally promoted to the production alias).
// `quantmesh train` and the first start of `quantmesh up` both use it.
package training

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// Config says what to train.
type Config struct {
	// Model is the registered model's name.
	Model string
	// DataName names the data in the run's params (a path or a bundled
	// set's name).
	DataName string
	// Horizon is the forward-return horizon of the labels, in bars.
	Horizon int
	// Threshold scales the HOLD band: |forward return| below
	// Threshold·vol·√Horizon is HOLD.
	Threshold float64
	// HoldOut is the chronological fraction of each series kept for the
	// test metrics (never trained on).
	HoldOut float64
	// Train configures the network and its optimiser (Inputs comes from
	// the data).
	Train policy.TrainConfig
	// Experiment names the ExperimentService experiment of the run.
	Experiment string
	// Promote moves the production alias to the new version.
	Promote bool
}

// DefaultConfig returns the defaults of `quantmesh train --model policy`.
func DefaultConfig() Config {
	return Config{
		Model:      "policy",
		Horizon:    5,
		Threshold:  0.5,
		HoldOut:    0.2,
		Experiment: "policy-training",
		Train: policy.TrainConfig{
			Config:             policy.Config{Hidden: []int{64, 32}, Activation: policy.ActivationTanh},
			Epochs:             30,
			BatchSize:          64,
			LearningRate:       1e-3,
			ValidationFraction: 0.1,
			ClassWeights:       true,
			Seed:               1,
		},
	}
}

// ProductionAlias is the alias InferenceService follows by default.
const ProductionAlias = "production"

// FeatureSet is the features every policy model reads: closes only, so
// any instrument with daily closes can be served.
var FeatureSet = features.Set{}

// Dataset is labelled feature vectors, split in time.
type Dataset struct {
	Names       []string
	TrainX      [][]float64
	TrainY      []policy.Action
	TestX       [][]float64
	TestY       []policy.Action
	ClassCounts [policy.NumActions]int
}

// Build turns series into a dataset: the feature vector at each bar
// (FeatureSet) labelled by the forward return from that bar; the last
// holdOut of each series goes to the test part.
func Build(series []marketdata.Series, horizon int, threshold, holdOut float64) (*Dataset, error) {
	if holdOut < 0 || holdOut >= 1 {
		return nil, fmt.Errorf("hold-out fraction must be in [0, 1), got %v", holdOut)
	}
	ds := &Dataset{Names: FeatureSet.Names()}
	for _, s := range series {
		X, err := features.Compute(s.Bars, FeatureSet)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Symbol, err)
		}
		labels, err := features.Labels(s.Closes(), horizon, threshold)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Symbol, err)
		}
		// X[i] is bar Warmup-1+i; labels[t] exists for t < len(labels).
		n := min(len(X), len(labels)-(features.Warmup-1))
		if n <= 0 {
			continue
		}
		split := int(float64(n) * (1 - holdOut))
		for i := range n {
			if split < n && i < split && i >= split-horizon {
				// Purged: the label's forward return reaches into the
				// held-out bars.
				continue
			}
			y := policy.Action(labels[features.Warmup-1+i])
			ds.ClassCounts[y]++
			if i < split {
				ds.TrainX, ds.TrainY = append(ds.TrainX, X[i]), append(ds.TrainY, y)
			} else {
				ds.TestX, ds.TestY = append(ds.TestX, X[i]), append(ds.TestY, y)
			}
		}
	}
	if len(ds.TrainX) == 0 {
		return nil, fmt.Errorf("no training samples: each series needs more than %d bars", features.Warmup+horizon)
	}
	return ds, nil
}

// Result is what Train produced.
type Result struct {
	Network  *policy.Network
	Epochs   []policy.EpochStats
	TestLoss float64
	TestAcc  float64
	RunID    string
	Version  int64
	Promoted bool
}

// Train fits the network on ds, logs the run to ExperimentService through
// client, registers the version and, with cfg.Promote, promotes it.
// progress sees each epoch.
func Train(ctx context.Context, client experimentv1.ExperimentServiceClient, cfg Config, ds *Dataset, progress func(policy.EpochStats)) (*Result, error) {
	exp, err := experimentByName(ctx, client, cfg.Experiment)
	if err != nil {
		return nil, err
	}
	run, err := client.CreateRun(ctx, &experimentv1.CreateRunRequest{
		ExperimentId: exp, RunName: fmt.Sprintf("%s-seed%d", cfg.Model, cfg.Train.Seed),
		Tags: map[string]string{"model": cfg.Model, "trainer": "quantmesh train"},
	})
	if err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	runID := run.GetRun().GetRunId()
	finish := func(st experimentv1.RunStatus) {
		_, _ = client.UpdateRun(context.WithoutCancel(ctx), &experimentv1.UpdateRunRequest{
			Run: &experimentv1.Run{RunId: runID, Status: st}, UpdateMask: maskOf("status"),
		})
	}
	tc := cfg.Train
	tc.Inputs = len(ds.Names)
	params := map[string]string{
		"data": cfg.DataName, "horizon": strconv.Itoa(cfg.Horizon), "threshold": fmtFloat(cfg.Threshold),
		"hold_out": fmtFloat(cfg.HoldOut), "network": tc.Config.String(), "epochs": strconv.Itoa(tc.Epochs),
		"batch_size": strconv.Itoa(tc.BatchSize), "learning_rate": fmtFloat(tc.LearningRate), "seed": strconv.FormatInt(tc.Seed, 10),
		"features": strings.Join(ds.Names, ","), "train_samples": strconv.Itoa(len(ds.TrainX)), "test_samples": strconv.Itoa(len(ds.TestX)),
	}
	batch := &experimentv1.LogBatchRequest{RunId: runID}
	for k, v := range params {
		batch.Params = append(batch.Params, &experimentv1.Param{Key: k, Value: v})
	}
	if _, err := client.LogBatch(ctx, batch); err != nil {
		finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
		return nil, fmt.Errorf("log params: %w", err)
	}

	var epochs []*experimentv1.Metric
	net, stats, err := policy.Train(ctx, tc, ds.TrainX, ds.TrainY, func(s policy.EpochStats) {
		step := int64(s.Epoch)
		epochs = append(epochs,
			&experimentv1.Metric{Key: "train/loss", Value: s.Loss, Step: step},
			&experimentv1.Metric{Key: "train/accuracy", Value: s.Accuracy, Step: step},
			&experimentv1.Metric{Key: "val/loss", Value: s.ValLoss, Step: step},
			&experimentv1.Metric{Key: "val/accuracy", Value: s.ValAccuracy, Step: step})
		if progress != nil {
			progress(s)
		}
	})
	if err != nil {
		finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
		return nil, fmt.Errorf("train: %w", err)
	}
	res := &Result{Network: net, Epochs: stats, RunID: runID}
	final := map[string]float64{}
	if len(ds.TestX) > 0 { // --hold-out 0 holds nothing out: no test metrics
		res.TestLoss, res.TestAcc = policy.Evaluate(net, ds.TestX, ds.TestY)
		final["test/loss"], final["test/accuracy"] = res.TestLoss, res.TestAcc
	} else {
		res.TestLoss, res.TestAcc = math.NaN(), math.NaN()
	}
	for k, v := range final {
		epochs = append(epochs, &experimentv1.Metric{Key: k, Value: v, Step: int64(len(stats))})
	}
	for start := 0; start < len(epochs); start += 1000 {
		if _, err := client.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: runID, Metrics: epochs[start:min(start+1000, len(epochs))]}); err != nil {
			finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
			return nil, fmt.Errorf("log metrics: %w", err)
		}
	}

	weights, err := net.MarshalBinary()
	if err != nil {
		finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
		return nil, err
	}
	if err := ensureModel(ctx, client, cfg.Model); err != nil {
		finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
		return nil, err
	}
	mv, err := client.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
		ModelName: cfg.Model, Format: policy.Format, Weights: weights, SourceRunId: runID,
		Metrics:     final,
		Tags:        map[string]string{FeaturesTag: strings.Join(ds.Names, ","), "data": cfg.DataName},
		Description: fmt.Sprintf("%s trained on %s (seed %d)", tc.Config.String(), cfg.DataName, tc.Seed),
	})
	if err != nil {
		finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
		return nil, fmt.Errorf("register model version: %w", err)
	}
	res.Version = mv.GetModelVersion().GetVersion()
	if cfg.Promote {
		if _, err := client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: cfg.Model, Alias: ProductionAlias, Version: res.Version}); err != nil {
			finish(experimentv1.RunStatus_RUN_STATUS_FAILED)
			return nil, fmt.Errorf("promote version %d: %w", res.Version, err)
		}
		res.Promoted = true
	}
	finish(experimentv1.RunStatus_RUN_STATUS_FINISHED)
	return res, nil
}

// FeaturesTag is the model version tag that lists the feature names in
// vector order, comma-separated.
const FeaturesTag = "features"

func experimentByName(ctx context.Context, client experimentv1.ExperimentServiceClient, name string) (string, error) {
	got, err := client.GetExperimentByName(ctx, &experimentv1.GetExperimentByNameRequest{Name: name})
	if err == nil {
		return got.GetExperiment().GetExperimentId(), nil
	}
	if status.Code(err) != codes.NotFound {
		return "", fmt.Errorf("experiment %q: %w", name, err)
	}
	created, err := client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: name, Description: "policy network training runs"})
	if status.Code(err) == codes.AlreadyExists { // created concurrently
		return experimentByName(ctx, client, name)
	}
	if err != nil {
		return "", fmt.Errorf("create experiment %q: %w", name, err)
	}
	return created.GetExperiment().GetExperimentId(), nil
}

func ensureModel(ctx context.Context, client experimentv1.ExperimentServiceClient, name string) error {
	_, err := client.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{
		Name: name, Description: "trading policy network: features to BUY/HOLD/SELL",
	})
	if err == nil || status.Code(err) == codes.AlreadyExists {
		return nil
	}
	return fmt.Errorf("register model %q: %w", name, err)
}

// HasAlias reports whether model has a version behind alias.
func HasAlias(ctx context.Context, client experimentv1.ExperimentServiceClient, model, alias string) (bool, error) {
	_, err := client.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: model, Alias: alias})
	switch status.Code(err) {
	case codes.OK:
		return true, nil
	case codes.NotFound:
		return false, nil
	}
	return false, err
}

func fmtFloat(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }

// EnsureInitial makes sure model's alias points to a version: if it does
// not, it trains one on the bundled data (DefaultConfig, seed 1) and
// promotes it, logging progress. InferenceService then loads it through
// WatchModel. It waits (with backoff) for ExperimentService to answer.
func EnsureInitial(ctx context.Context, client experimentv1.ExperimentServiceClient, model, alias string, log *slog.Logger) error {
	var has bool
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		var err error
		has, err = HasAlias(ctx, client, model, alias)
		if err == nil {
			break
		}
		if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
	if has {
		return nil
	}
	cfg := DefaultConfig()
	cfg.Model, cfg.DataName, cfg.Promote = model, Bundled, false
	series, err := Load(Bundled)
	if err != nil {
		return err
	}
	ds, err := Build(series, cfg.Horizon, cfg.Threshold, cfg.HoldOut)
	if err != nil {
		return err
	}
	log.Info("training an initial model on the bundled data", "model", model, "alias", alias, "samples", len(ds.TrainX), "epochs", cfg.Train.Epochs)
	start := time.Now()
	res, err := Train(ctx, client, cfg, ds, func(s policy.EpochStats) {
		if s.Epoch%10 == 0 {
			log.Info("initial model training", "model", model, "epoch", s.Epoch, "loss", s.Loss, "accuracy", s.Accuracy)
		}
	})
	if err != nil {
		return err
	}
	// Promote only if nobody set the alias meanwhile.
	_, err = client.SetModelAlias(ctx, &experimentv1.SetModelAliasRequest{ModelName: model, Alias: alias, Version: res.Version, ExpectedRevision: proto.Uint64(0)})
	if status.Code(err) == codes.Aborted {
		log.Info("initial model registered but not promoted: the alias was set meanwhile", "model", model, "version", res.Version)
		return nil
	}
	if err != nil {
		return fmt.Errorf("promote version %d: %w", res.Version, err)
	}
	log.Info("initial model registered and promoted", "model", model, "alias", alias, "version", res.Version,
		"test_accuracy", res.TestAcc, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
