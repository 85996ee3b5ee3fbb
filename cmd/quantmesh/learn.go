package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/policy"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

// forgettingFlags are the settings of `quantmesh learn --forgetting-benchmark`.
type forgettingFlags struct {
	run      bool
	json     bool
	regimeA  string
	regimeB  string
	lambdas  string
	hidden   string
	epochs   int
	ftEpochs int
	lr       float64
	seed     int64
	fisher   string
	ftLR     float64
	ftBatch  int
	seeds    int
	retrains int
	chunk    int
	gamma    float64
	ftOpt    string
	joint    bool
	act      string
}

func (f *forgettingFlags) register(fs *flag.FlagSet) {
	train, ft := learner.DefaultForgettingTrain()
	fs.BoolVar(&f.run, "forgetting-benchmark", false, "run the forgetting benchmark (train on regime A, continue on B with and without EWC) and exit; needs no mesh")
	fs.BoolVar(&f.json, "json", false, "with --forgetting-benchmark: print the result as JSON")
	fs.StringVar(&f.regimeA, "regime-a", learner.RegimeIndices, "forgetting benchmark: regime A, a bundled regime: eustock, ttrc, dax-1 or dax-2")
	fs.StringVar(&f.regimeB, "regime-b", learner.RegimeStock, "forgetting benchmark: regime B (as --regime-a)")
	fs.StringVar(&f.lambdas, "lambdas", joinFloats(learner.DefaultLambdas), "forgetting benchmark: EWC λ values to sweep, comma-separated")
	fs.StringVar(&f.hidden, "bench-hidden", "64,32", "forgetting benchmark: hidden layer widths")
	fs.StringVar(&f.act, "bench-activation", train.Activation, "forgetting benchmark: activation of the hidden layers, tanh (the serving network's) or relu")
	fs.IntVar(&f.epochs, "bench-epochs", train.Epochs, "forgetting benchmark: epochs on regime A")
	fs.IntVar(&f.ftEpochs, "bench-fine-tune-epochs", ft.Epochs, "forgetting benchmark: epochs on regime B")
	fs.Float64Var(&f.lr, "bench-learning-rate", train.LearningRate, "forgetting benchmark: Adam learning rate of both phases")
	fs.Int64Var(&f.seed, "bench-seed", train.Seed, "forgetting benchmark: seed of the training on A (B uses seed+1); the first seed with --bench-seeds")
	fs.IntVar(&f.chunk, "bench-chunk", learner.DefaultConfig().MinNewOutcomes, "forgetting benchmark: B reaches the learner this many outcomes at a time (the learner's --min-new-outcomes), one retrain per chunk that learns that chunk; 0: retrains (--bench-retrains, 1 by default) on all of B")
	fs.IntVar(&f.retrains, "bench-retrains", 1, "forgetting benchmark: with --bench-chunk 0, refit all of B this many retrains in a row (how the learner retrained before it learned each outcome once)")
	fs.Float64Var(&f.gamma, "bench-gamma", learner.DefaultConfig().Gamma, "forgetting benchmark: online Fisher decay γ between retrains (the learner's --gamma)")
	fs.IntVar(&f.seeds, "bench-seeds", 5, "forgetting benchmark: runs with seeds --bench-seed, --bench-seed+1, ...; the table is their mean")
	fs.StringVar(&f.fisher, "bench-fisher", learner.FisherDiagonal, "forgetting benchmark: the EWC penalty's Fisher estimate: diagonal (the learner's), empirical (diagonal, at the labels) or kronecker (K-FAC)")
	fs.Float64Var(&f.ftLR, "bench-fine-tune-learning-rate", 0, "forgetting benchmark: learning rate on regime B (0: --bench-learning-rate)")
	fs.IntVar(&f.ftBatch, "bench-fine-tune-batch-size", ft.BatchSize, "forgetting benchmark: batch size on regime B (the learner's)")
	fs.StringVar(&f.ftOpt, "bench-fine-tune-optimizer", policy.OptimizerAdam, "forgetting benchmark: optimizer on regime B, adam or momentum (SGD with momentum 0.9)")
	fs.BoolVar(&f.joint, "bench-joint", false, "forgetting benchmark: also continue on A and B together, a reference that is not continual learning")
}

func joinFloats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatFloat(x, 'g', -1, 64)
	}
	return strings.Join(s, ",")
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		x, err := strconv.ParseFloat(part, 64)
		if err != nil || !(x > 0) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("%q is not a positive number", part)
		}
		out = append(out, x)
	}
	if len(out) == 0 {
		return nil, errors.New("no values")
	}
	return out, nil
}

func runForgetting(ctx context.Context, f *forgettingFlags, stdout, stderr io.Writer) error {
	lambdas, err := parseFloats(f.lambdas)
	if err != nil {
		return usagef("invalid --lambdas %q: %v", f.lambdas, err)
	}
	hidden, err := parseWidths(f.hidden)
	if err != nil {
		return usagef("invalid --bench-hidden %q: %v", f.hidden, err)
	}
	switch {
	case f.epochs < 1:
		return usagef("invalid --bench-epochs %d: want 1 or more", f.epochs)
	case f.ftEpochs < 1:
		return usagef("invalid --bench-fine-tune-epochs %d: want 1 or more", f.ftEpochs)
	case f.retrains < 1 || f.retrains > 100:
		return usagef("invalid --bench-retrains %d: want 1 to 100", f.retrains)
	case f.retrains > 1 && f.chunk > 0:
		return usagef("invalid --bench-retrains %d with --bench-chunk %d: refitting all of B needs --bench-chunk 0", f.retrains, f.chunk)
	case f.chunk < 0:
		return usagef("invalid --bench-chunk %d: want 0 (all of B in one retrain) or more", f.chunk)
	case (f.retrains > 1 || f.chunk > 0) && f.fisher == learner.FisherKronecker:
		return usagef("invalid --bench-fisher kronecker with more than one retrain: chained retrains need a diagonal Fisher (add --bench-chunk 0)")
	case !(f.gamma >= 0 && f.gamma <= 1):
		return usagef("invalid --bench-gamma %v: must be in [0, 1]", f.gamma)
	case f.seeds < 1 || f.seeds > 100:
		return usagef("invalid --bench-seeds %d: want 1 to 100", f.seeds)
	case f.ftBatch < 1:
		return usagef("invalid --bench-fine-tune-batch-size %d: want 1 or more", f.ftBatch)
	case !(f.lr > 0) || math.IsInf(f.lr, 0):
		return usagef("invalid --bench-learning-rate %v: must be positive", f.lr)
	case !slices.Contains(learner.FisherEstimates, f.fisher):
		return usagef("invalid --bench-fisher %q: want one of %s", f.fisher, strings.Join(learner.FisherEstimates, ", "))
	case !(f.ftLR >= 0) || math.IsInf(f.ftLR, 0):
		return usagef("invalid --bench-fine-tune-learning-rate %v: must be positive (or 0 for --bench-learning-rate)", f.ftLR)
	case f.act != policy.ActivationTanh && f.act != policy.ActivationReLU:
		return usagef("invalid --bench-activation %q: want %s or %s", f.act, policy.ActivationTanh, policy.ActivationReLU)
	case f.ftOpt != policy.OptimizerAdam && f.ftOpt != policy.OptimizerMomentum:
		return usagef("invalid --bench-fine-tune-optimizer %q: want %s or %s", f.ftOpt, policy.OptimizerAdam, policy.OptimizerMomentum)
	}
	d := training.DefaultConfig()
	A, err := learner.LoadRegime(f.regimeA, d.Horizon, d.Threshold, d.HoldOut)
	if err != nil {
		return usagef("invalid --regime-a: %v", err)
	}
	B, err := learner.LoadRegime(f.regimeB, d.Horizon, d.Threshold, d.HoldOut)
	if err != nil {
		return usagef("invalid --regime-b: %v", err)
	}
	train, ft := learner.DefaultForgettingTrain()
	train.Hidden, train.Activation, train.Epochs, train.LearningRate, train.Seed = hidden, f.act, f.epochs, f.lr, f.seed
	ft.Epochs, ft.BatchSize, ft.LearningRate, ft.Seed, ft.Optimizer = f.ftEpochs, f.ftBatch, f.lr, f.seed+1, f.ftOpt
	if f.ftLR > 0 {
		ft.LearningRate = f.ftLR
	}
	fmt.Fprintf(stderr, "forgetting benchmark: %s then %s, %s %s, %d+%d epochs, learning rate %g then %s %g (batch %d), λ %s, %s Fisher, %d seed(s) from %d ...\n",
		f.regimeA, f.regimeB, f.hidden, f.act, f.epochs, f.ftEpochs, train.LearningRate, ft.Optimizer, ft.LearningRate, ft.BatchSize, joinFloats(lambdas), f.fisher, f.seeds, f.seed)
	start := time.Now()
	res, err := learner.Forgetting(ctx, learner.ForgettingConfig{A: A, B: B, Train: train, FineTune: ft, Lambdas: lambdas, Fisher: f.fisher, Joint: f.joint, Seeds: f.seeds,
		Retrains: f.retrains, Gamma: f.gamma, Chunk: f.chunk})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "took %s\n", time.Since(start).Round(time.Millisecond))
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	res.WriteTable(stdout)
	return nil
}

// learnFlags are the learner's settings, shared by `quantmesh learn` (no
// prefix) and `quantmesh up|serve --learn` (prefix "learn-").
type learnFlags struct {
	model, alias, experiment string
	lambda, gamma, lr        float64
	batch, epochs            int
	cadence                  time.Duration
	minNew, replaySize       int
	holdOut, degradation     float64
	seed                     int64
}

func (f *learnFlags) register(fs *flag.FlagSet, prefix string) {
	d := learner.DefaultConfig()
	fs.StringVar(&f.model, prefix+"model", d.Model, "learner: registered model to fine-tune")
	fs.StringVar(&f.alias, prefix+"alias", d.Alias, "learner: alias to fine-tune from and to move on a publish (InferenceService follows it)")
	fs.StringVar(&f.experiment, prefix+"experiment", d.Experiment, "learner: ExperimentService experiment of its runs")
	fs.Float64Var(&f.lambda, prefix+"lambda", d.Lambda, "learner: EWC strength λ (0: plain fine-tuning)")
	fs.Float64Var(&f.gamma, prefix+"gamma", d.Gamma, "learner: online EWC decay γ of the Fisher estimate, F <- γF + F_new")
	fs.Float64Var(&f.lr, prefix+"learning-rate", d.LearningRate, "learner: Adam learning rate")
	fs.IntVar(&f.batch, prefix+"batch-size", d.BatchSize, "learner: mini-batch size")
	fs.IntVar(&f.epochs, prefix+"epochs", d.Epochs, "learner: epochs over the outcomes a retrain learns (each outcome is learned once, after it leaves the hold-out)")
	fs.DurationVar(&f.cadence, prefix+"cadence", d.Cadence, "learner: how often to consider a retrain")
	fs.IntVar(&f.minNew, prefix+"min-new-outcomes", d.MinNewOutcomes, "learner: new outcomes needed before the next retrain (about how many it learns)")
	fs.IntVar(&f.replaySize, prefix+"replay-size", d.ReplaySize, "learner: replay buffer capacity (newest outcomes kept)")
	fs.Float64Var(&f.holdOut, prefix+"hold-out", d.HoldOut, "learner: newest fraction of the replay buffer held out for the stability check")
	fs.Float64Var(&f.degradation, prefix+"degradation-threshold", d.DegradationThreshold, "learner: reject a candidate whose accuracy drops more than this fraction")
	fs.Int64Var(&f.seed, prefix+"seed", d.Seed, "learner: seed of the fine-tuning")
}

// config builds and validates the learner's config; the error names the flag.
func (f *learnFlags) config(prefix string) (learner.Config, error) {
	d := learner.DefaultConfig()
	cfg := learner.Config{
		Model: f.model, Alias: f.alias, Experiment: f.experiment, Lambda: f.lambda, Gamma: f.gamma, LearningRate: f.lr,
		BatchSize: f.batch, Epochs: f.epochs, Cadence: f.cadence, MinNewOutcomes: f.minNew, ReplaySize: f.replaySize,
		HoldOut: f.holdOut, DegradationThreshold: f.degradation, Horizon: d.Horizon, LabelThreshold: d.LabelThreshold, Seed: f.seed,
	}
	if err := cfg.Validate(); err != nil {
		name, rest, _ := strings.Cut(err.Error(), ": ")
		return cfg, usagef("invalid --%s%s: %s", prefix, strings.ReplaceAll(name, " ", "-"), rest)
	}
	return cfg, nil
}

func learnUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: quantmesh learn --replay <bundled|eustock|ttrc|csv> [flags]
       quantmesh learn --kafka-brokers <host:port,...> [flags]
       quantmesh learn --forgetting-benchmark [--json] [flags]

Online learning of the policy network with Elastic Weight Consolidation.
The learner fine-tunes the version behind --alias of --model on outcomes
(decisions joined with the realised forward return of their symbol) under
the EWC penalty, checks the candidate on a held-out part of the replay
buffer and on the previous version's evaluation set, and either publishes
it (a run in ExperimentService, a model version, the alias moved, which
InferenceService swaps in) or rejects it and keeps the previous version.

--replay plays bars of the data through the join as if the policy had
decided at every bar, retrains once and exits. --kafka-brokers consumes the
bus topics decisions and market.bars and retrains every --cadence until
stopped (with the in-process bus, run 'quantmesh up --learn' instead).

--forgetting-benchmark trains on regime A (bundled data) as 'quantmesh
train' trains the served policy, then streams regime B to the learner
--bench-chunk outcomes at a time, one retrain per chunk (its learning
rate, epochs and batch size), with plain fine-tuning and with EWC at each
--lambdas, and prints accuracy and log loss on A before and after and on
B: the mean over --bench-seeds seeds, then each seed's best λ. --bench-fisher measures the penalty with another
Fisher estimate than the learner's diagonal one; --bench-joint adds
continuing on A and B together as a reference. It needs no mesh.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func runLearn(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh learn", flag.ContinueOnError)
	var bench forgettingFlags
	bench.register(fs)
	var lf learnFlags
	lf.register(fs, "")
	target := fs.String("target", "127.0.0.1:50051", "host:port of the mesh's gRPC server (ExperimentService), plaintext")
	apiKey := fs.String("api-key", "", "API key of a researcher or admin, when the mesh requires one (prefer "+envName("api-key")+")")
	replay := fs.String("replay", "", "learn once from the outcomes of this data (bundled, eustock, ttrc or a CSV file) and exit")
	kafka := fs.String("kafka-brokers", "", "comma-separated Kafka brokers to consume decisions and bars from")
	timeout := fs.Duration("timeout", 30*time.Minute, "with --replay: time limit of the whole command")
	metricsAddr := fs.String("metrics-addr", "127.0.0.1:9464", "with --kafka-brokers: serve the learner's metrics (OpenMetrics) at http://<addr>/metrics; empty: none")
	if err := parseFlags(fs, args, io.Discard); err != nil {
		if errors.Is(err, errHelp) {
			learnUsage(stdout, fs)
		}
		return err
	}
	if fs.NArg() > 0 {
		return usagef("learn takes no arguments, got %q (see 'quantmesh learn -h')", fs.Args())
	}
	if bench.run {
		return runForgetting(ctx, &bench, stdout, stderr)
	}
	cfg, err := lf.config("")
	if err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(*target); err != nil {
		return usagef("invalid --target %q: want host:port", *target)
	}
	if *metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
			return usagef("invalid --metrics-addr %q: want host:port", *metricsAddr)
		}
	}
	if (*replay == "") == (*kafka == "") {
		return usagef("learn needs one source of outcomes: --replay <data> or --kafka-brokers <brokers> (with the in-process bus run 'quantmesh up --learn')")
	}
	var brokers []string
	for _, b := range strings.Split(*kafka, ",") {
		if b = strings.TrimSpace(b); b != "" {
			if _, _, err := net.SplitHostPort(b); err != nil {
				return usagef("invalid --kafka-brokers entry %q: want host:port", b)
			}
			brokers = append(brokers, b)
		}
	}
	var outcomes []learner.Outcome
	if *replay != "" {
		series, err := training.Load(*replay)
		if err != nil {
			return usagef("invalid --replay: %s", strings.TrimPrefix(err.Error(), "--data: "))
		}
		if outcomes, err = learner.ReplaySeries(series, cfg.Horizon, cfg.LabelThreshold); err != nil {
			return fmt.Errorf("replay %s: %w", *replay, err)
		}
	}
	conn, err := dialMesh(*target, *apiKey)
	if err != nil {
		return err
	}
	defer conn.Close()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "quantmesh-learner", Version: versionString()})
	if err != nil {
		return err
	}
	defer func() { _ = tel.Shutdown(context.WithoutCancel(ctx)) }()
	l, err := learner.New(cfg, experimentv1.NewExperimentServiceClient(conn), log, tel.Meter("quantmesh/learner"))
	if err != nil {
		return err
	}
	if *replay == "" {
		if *metricsAddr != "" {
			stop, err := serveMetrics(*metricsAddr, tel.MetricsHandler(), stdout, log)
			if err != nil {
				return err
			}
			defer stop()
		}
		k, err := bus.NewKafka(bus.KafkaConfig{Brokers: brokers, ClientID: "quantmesh-learner", Logger: log})
		if err != nil {
			return err
		}
		defer k.Close()
		go l.Run(ctx)
		return l.Consume(ctx, bus.WithTracing(k, bus.Tracing{
			TracerProvider: tel.TracerProvider, Propagator: tel.Propagator, System: bus.SystemKafka,
		}))
	}
	if err := l.Add(outcomes...); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "learn %s@%s from %s: %d outcomes, the newest %d in the replay buffer\n", cfg.Model, cfg.Alias, *replay, len(outcomes), l.Replay().Len())
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, err := l.Retrain(ctx)
	if err != nil {
		return err
	}
	if !rep.Published {
		fmt.Fprintf(stdout, "candidate from version %d (learned %d outcomes) rejected, %s@%s stays at version %d: %s\n", rep.From, rep.Train, cfg.Model, cfg.Alias, rep.From, rep.Reason)
		return nil
	}
	fmt.Fprintf(stdout, "version %d published from version %d (run %s), learned %d outcomes: %s@%s now points to it; accuracy on %d held-out outcomes %.3f (was %.3f), on %d samples of the previous evaluation set %.3f (was %.3f); degradation %.1f%%\n",
		rep.Version, rep.From, rep.RunID, rep.Train, cfg.Model, cfg.Alias, rep.HoldOut, rep.CandHoldOut, rep.PrevHoldOut, rep.EvalSamples, rep.CandEval, rep.PrevEval, 100*rep.Degradation)
	return nil
}

// serveMetrics serves h at http://addr/metrics until stop is called, and
// prints the address it listens on (addr may have port 0).
func serveMetrics(addr string, h http.Handler, stdout io.Writer, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	fmt.Fprintf(stdout, "learner metrics at http://%s/metrics\n", ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
