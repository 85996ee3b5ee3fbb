package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/training"
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
}

func (f *forgettingFlags) register(fs *flag.FlagSet) {
	train, ft := learner.DefaultForgettingTrain()
	fs.BoolVar(&f.run, "forgetting-benchmark", false, "run the forgetting benchmark (train on regime A, continue on B with and without EWC) and exit; needs no mesh")
	fs.BoolVar(&f.json, "json", false, "with --forgetting-benchmark: print the result as JSON")
	fs.StringVar(&f.regimeA, "regime-a", learner.RegimeIndices, "forgetting benchmark: regime A, a bundled regime: eustock, ttrc, dax-1 or dax-2")
	fs.StringVar(&f.regimeB, "regime-b", learner.RegimeStock, "forgetting benchmark: regime B (as --regime-a)")
	fs.StringVar(&f.lambdas, "lambdas", joinFloats(learner.DefaultLambdas), "forgetting benchmark: EWC λ values to sweep, comma-separated")
	fs.StringVar(&f.hidden, "bench-hidden", "64,32", "forgetting benchmark: hidden layer widths")
	fs.IntVar(&f.epochs, "bench-epochs", train.Epochs, "forgetting benchmark: epochs on regime A")
	fs.IntVar(&f.ftEpochs, "bench-fine-tune-epochs", ft.Epochs, "forgetting benchmark: epochs on regime B")
	fs.Float64Var(&f.lr, "bench-learning-rate", train.LearningRate, "forgetting benchmark: Adam learning rate of both phases")
	fs.Int64Var(&f.seed, "bench-seed", train.Seed, "forgetting benchmark: seed of the training on A (B uses seed+1)")
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
	case !(f.lr > 0) || math.IsInf(f.lr, 0):
		return usagef("invalid --bench-learning-rate %v: must be positive", f.lr)
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
	train.Hidden, train.Epochs, train.LearningRate, train.Seed = hidden, f.epochs, f.lr, f.seed
	ft.Epochs, ft.LearningRate, ft.Seed = f.ftEpochs, f.lr, f.seed+1
	fmt.Fprintf(stderr, "forgetting benchmark: %s then %s, %d+%d epochs, λ %s ...\n", f.regimeA, f.regimeB, f.epochs, f.ftEpochs, joinFloats(lambdas))
	start := time.Now()
	res, err := learner.Forgetting(ctx, learner.ForgettingConfig{A: A, B: B, Train: train, FineTune: ft, Lambdas: lambdas})
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

func learnUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: quantmesh learn --forgetting-benchmark [--json] [flags]

--forgetting-benchmark trains the policy network on regime A (bundled data),
continues on regime B with plain fine-tuning and with Elastic Weight
Consolidation at each --lambdas, same seed, epochs and learning rate, and
prints accuracy and log loss on A before and after and on B.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func runLearn(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh learn", flag.ContinueOnError)
	var bench forgettingFlags
	bench.register(fs)
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
	return usagef("learn: --forgetting-benchmark is the only mode so far (see 'quantmesh learn -h')")
}
