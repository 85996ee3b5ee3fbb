package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// trainFlags are the settings of `quantmesh train`.
type trainFlags struct {
	target    string
	apiKey    string
	data      string
	model     string
	name      string
	seed      int64
	promote   bool
	epochs    int
	batch     int
	lr        float64
	hidden    string
	horizon   int
	threshold float64
	holdOut   float64
	timeout   time.Duration
	column    string
	set       map[string]bool
}

func (f *trainFlags) register(fs *flag.FlagSet) {
	d := training.DefaultConfig()
	fs.StringVar(&f.target, "target", "127.0.0.1:50051", "host:port of the mesh's gRPC server (ExperimentService), plaintext")
	fs.StringVar(&f.apiKey, "api-key", "", "API key of a researcher or admin, when the mesh requires one (prefer "+envName("api-key")+")")
	fs.StringVar(&f.data, "data", "", "bars to train on: a CSV file (Date,Open,High,Low,Close[,Volume], or a day column and one close column per instrument), or a bundled set: bundled, eustock, ttrc")
	fs.StringVar(&f.model, "model", "policy", "what to train: policy (the trading policy network) or metacontroller (the HRL allocation policy, through MetaControllerService.TrainPolicy)")
	fs.StringVar(&f.name, "name", d.Model, "registered model name of the new version")
	fs.Int64Var(&f.seed, "seed", d.Train.Seed, "random seed: the same data, flags and seed give the same weights")
	fs.BoolVar(&f.promote, "promote", false, "point the production alias at the new version")
	fs.IntVar(&f.epochs, "epochs", d.Train.Epochs, "training epochs")
	fs.IntVar(&f.batch, "batch-size", d.Train.BatchSize, "mini-batch size")
	fs.Float64Var(&f.lr, "learning-rate", d.Train.LearningRate, "Adam learning rate")
	fs.StringVar(&f.hidden, "hidden", "64,32", "hidden layer widths, comma-separated")
	fs.IntVar(&f.horizon, "horizon", d.Horizon, "label horizon: the forward return over this many bars decides BUY, HOLD or SELL")
	fs.Float64Var(&f.threshold, "threshold", d.Threshold, "HOLD band: forward returns within threshold x 20-bar volatility x sqrt(horizon) are HOLD")
	fs.Float64Var(&f.holdOut, "hold-out", d.HoldOut, "last fraction of each series kept out of training for the test metrics")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Minute, "time limit of the whole command")
	fs.StringVar(&f.column, "column", "", "metacontroller: price column of a multi-column file; the first when empty")
}

func trainUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: quantmesh train --data <csv|bundled|eustock|ttrc> [--model policy] [--seed S] [--promote] [flags]

Trains the trading policy network on bars: causal features at each bar,
labelled BUY, HOLD or SELL by the forward return; the last --hold-out of
each series is kept for test metrics. Prints one progress line per epoch,
logs params and metrics to a run in ExperimentService (experiment
policy-training), registers a model version and, with --promote, points
the production alias at it, which InferenceService then swaps in.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func runTrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh train", flag.ContinueOnError)
	var f trainFlags
	f.register(fs)
	if err := parseFlags(fs, args, io.Discard); err != nil {
		if errors.Is(err, errHelp) {
			trainUsage(stdout, fs)
		}
		return err
	}
	if fs.NArg() > 0 {
		return usagef("train takes no arguments, got %q (see 'quantmesh train -h')", fs.Args())
	}
	switch f.model {
	case "policy", "metacontroller":
	default:
		return usagef("invalid --model %q: want policy or metacontroller", f.model)
	}
	if _, _, err := net.SplitHostPort(f.target); err != nil {
		return usagef("invalid --target %q: want host:port", f.target)
	}
	if f.model == "metacontroller" {
		f.set = map[string]bool{}
		fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
		return runTrainMetaController(ctx, &f, stdout, stderr)
	}
	cfg := training.DefaultConfig()
	cfg.Model, cfg.Promote, cfg.DataName = f.name, f.promote, f.data
	cfg.Horizon, cfg.Threshold, cfg.HoldOut = f.horizon, f.threshold, f.holdOut
	cfg.Train.Seed, cfg.Train.Epochs, cfg.Train.BatchSize, cfg.Train.LearningRate = f.seed, f.epochs, f.batch, f.lr
	hidden, err := parseWidths(f.hidden)
	if err != nil {
		return usagef("invalid --hidden %q: %v", f.hidden, err)
	}
	cfg.Train.Hidden = hidden
	switch {
	case f.epochs < 1:
		return usagef("invalid --epochs %d: want 1 or more", f.epochs)
	case f.batch < 1:
		return usagef("invalid --batch-size %d: want 1 or more", f.batch)
	case !(f.lr > 0):
		return usagef("invalid --learning-rate %v: must be positive", f.lr)
	case f.horizon < 1:
		return usagef("invalid --horizon %d: want 1 or more", f.horizon)
	case !(f.threshold >= 0):
		return usagef("invalid --threshold %v: must not be negative", f.threshold)
	case !(f.holdOut >= 0 && f.holdOut < 1):
		return usagef("invalid --hold-out %v: want a fraction in [0, 1)", f.holdOut)
	case f.timeout <= 0:
		return usagef("invalid --timeout %s: must be positive", f.timeout)
	}
	series, err := training.Load(f.data)
	if err != nil {
		return usagef("%v", err)
	}
	ds, err := training.Build(series, cfg.Horizon, cfg.Threshold, cfg.HoldOut)
	if err != nil {
		return fmt.Errorf("build the data set: %w", err)
	}
	fmt.Fprintf(stderr, "train %s on %s: %d series, %d training and %d test samples, %d features, classes buy/hold/sell %d/%d/%d\n",
		cfg.Model, f.data, len(series), len(ds.TrainX), len(ds.TestX), len(ds.Names), ds.ClassCounts[0], ds.ClassCounts[1], ds.ClassCounts[2])

	conn, err := dialMesh(f.target, f.apiKey)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	res, err := training.Train(ctx, experimentv1.NewExperimentServiceClient(conn), cfg, ds, func(s policy.EpochStats) {
		fmt.Fprintf(stderr, "epoch %3d/%d  loss %.4f  accuracy %.3f  val_loss %.4f  val_accuracy %.3f\n",
			s.Epoch, cfg.Train.Epochs, s.Loss, s.Accuracy, s.ValLoss, s.ValAccuracy)
	})
	if err != nil {
		return err
	}
	if math.IsNaN(res.TestLoss) {
		fmt.Fprintf(stdout, "model %s version %d (run %s): no test metrics (nothing held out)", cfg.Model, res.Version, res.RunID)
	} else {
		fmt.Fprintf(stdout, "model %s version %d (run %s): test loss %.4f, test accuracy %.3f", cfg.Model, res.Version, res.RunID, res.TestLoss, res.TestAcc)
	}
	if res.Promoted {
		fmt.Fprintf(stdout, "; %s now points to it", training.ProductionAlias)
	}
	fmt.Fprintln(stdout)
	return nil
}

func parseWidths(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		n, err := strconv.Atoi(part)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive width", part)
		}
		out = append(out, n)
	}
	return out, nil
}
