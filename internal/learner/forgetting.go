package learner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// Regime is a labelled data set of one market regime, split in time into a
// training part and a held-out part.
type Regime struct {
	Name   string
	TrainX [][]float64
	TrainY []policy.Action
	TestX  [][]float64
	TestY  []policy.Action
}

// BuildRegime labels the series as `quantmesh train` does (pkg/features
// vectors, forward-return labels) and holds out the last holdOut of each
// series.
func BuildRegime(name string, series []marketdata.Series, horizon int, threshold, holdOut float64) (*Regime, error) {
	ds, err := training.Build(series, horizon, threshold, holdOut)
	if err != nil {
		return nil, fmt.Errorf("regime %s: %w", name, err)
	}
	return &Regime{Name: name, TrainX: ds.TrainX, TrainY: ds.TrainY, TestX: ds.TestX, TestY: ds.TestY}, nil
}

// Score is a network's performance on one labelled set.
type Score struct {
	Accuracy float64 `json:"accuracy"`
	LogLoss  float64 `json:"log_loss"`
}

func score(n *policy.Network, X [][]float64, y []policy.Action) Score {
	l, a := policy.Evaluate(n, X, y)
	return Score{Accuracy: a, LogLoss: l}
}

// ForgettingConfig configures the forgetting benchmark: train on regime A,
// then continue on regime B with plain fine-tuning and with EWC at each
// Lambda, all with the same seed, epochs and learning rate.
type ForgettingConfig struct {
	// A and B are the two regimes.
	A, B *Regime
	// Train configures the network and the training on A (Inputs from the data).
	Train policy.TrainConfig
	// FineTune configures the continuation on B (its Start and EWC are set
	// by the benchmark).
	FineTune policy.TrainConfig
	// Lambdas is the EWC strength sweep.
	Lambdas []float64
	// Fisher is the EWC penalty's estimate of the Fisher information:
	// FisherDiagonal (the default when empty, what the learner uses),
	// FisherEmpirical or FisherKronecker.
	Fisher string
	// Retrains is how many consecutive retrains the continuation on B is
	// (1 when 0), each FineTune's, as the learner's retrains follow each
	// other on a lasting regime: each starts from and is anchored at the
	// previous one, and the diagonal Fisher is updated online with Gamma.
	// More than one needs a diagonal Fisher.
	Retrains int
	// Gamma is the online Fisher's decay between retrains (the learner's).
	Gamma float64
	// Chunk, when positive, streams B's training part to the learner in
	// time order, Chunk outcomes at a time, one retrain per chunk trained
	// on that chunk only (the learner trains each outcome once), each
	// anchored at the one before with the Fisher updated online on the
	// chunk it learned. Retrains must then be 0 or 1.
	Chunk int
	// Seeds is how many seeds to run (at least 1): the i-th run trains with
	// Train.Seed+i and FineTune.Seed+i, and the result is their mean (see
	// ForgettingResult.Seeds).
	Seeds int
	// Joint adds a reference that is not continual learning: the A-trained
	// network continued on A's and B's training parts together, with
	// FineTune's settings (so more steps: the epochs cover both). It shows
	// whether the network has room for both regimes.
	Joint bool
}

// Fisher estimates of the forgetting benchmark's EWC penalty.
const (
	// FisherDiagonal is the diagonal Fisher (policy.ComputeFisher): one
	// weight per parameter, the learner's penalty.
	FisherDiagonal = "diagonal"
	// FisherEmpirical is the empirical diagonal Fisher
	// (policy.ComputeEmpiricalFisher): squared gradients at A's labels
	// instead of the expectation over the network's own predictions.
	FisherEmpirical = "empirical"
	// FisherKronecker is the Kronecker-factored Fisher
	// (policy.ComputeKroneckerFisher): per layer, the correlations between
	// the layer's weights too.
	FisherKronecker = "kronecker"
)

// FisherEstimates lists the estimates ForgettingConfig.Fisher takes.
var FisherEstimates = []string{FisherDiagonal, FisherEmpirical, FisherKronecker}

// DefaultLambdas is the λ sweep of the forgetting benchmark.
var DefaultLambdas = []float64{1, 3, 10, 30, 100}

// ForgettingRun is one continuation on B: plain fine-tuning (Lambda 0) or EWC.
type ForgettingRun struct {
	Lambda float64 `json:"lambda"`
	// AAfter and ATestAfter score the network on A's training and held-out
	// parts after the continuation; B and BTest on B's.
	AAfter     Score `json:"a_after"`
	ATestAfter Score `json:"a_test_after"`
	B          Score `json:"b"`
	BTest      Score `json:"b_test"`
	// Drop is A's accuracy before minus after (training part);
	// RelativeDrop is Drop over the accuracy before (the degradation).
	Drop         float64 `json:"drop"`
	RelativeDrop float64 `json:"relative_drop"`
	// DropCut is 1 − Drop/plain Drop: the share of plain fine-tuning's
	// forgetting that EWC avoided (0 for the plain run).
	DropCut float64 `json:"drop_cut"`
	// BRatio is B's accuracy over plain fine-tuning's (training part).
	BRatio float64 `json:"b_ratio"`
	// MeetsGoals: DropCut ≥ 0.7 and BRatio ≥ 0.9.
	MeetsGoals bool `json:"meets_goals"`
}

// ForgettingResult is the benchmark's outcome.
type ForgettingResult struct {
	A, B        string `json:"-"`
	RegimeA     string `json:"regime_a"`
	RegimeB     string `json:"regime_b"`
	Fisher      string `json:"fisher"`
	SamplesA    int    `json:"samples_a"`
	SamplesB    int    `json:"samples_b"`
	ABefore     Score  `json:"a_before"`
	ATestBefore Score  `json:"a_test_before"`
	// BBefore and BTestBefore are the A-trained network on B's training
	// and held-out parts (before any continuation).
	BBefore     Score           `json:"b_before"`
	BTestBefore Score           `json:"b_test_before"`
	Plain       ForgettingRun   `json:"plain"`
	EWC         []ForgettingRun `json:"ewc"`
	// Best is the EWC run with the largest DropCut among those with
	// BRatio ≥ 0.9 (nil when none reaches it).
	Best *ForgettingRun `json:"best,omitempty"`
	// Joint is the reference of ForgettingConfig.Joint: accuracy on A's and
	// B's training parts after continuing on both together.
	Joint *JointScore `json:"joint,omitempty"`
	// Seeds holds each seed's result when the benchmark ran several. The
	// fields above are then their means: each score, drop and joint score
	// is the mean over the seeds, RelativeDrop the mean drop over the mean
	// accuracy on A before, DropCut one minus the mean drop over plain
	// fine-tuning's mean drop, and BRatio the mean accuracy on B over
	// plain fine-tuning's, so one seed's noise does not decide the goals.
	Seeds []*ForgettingResult `json:"seeds,omitempty"`
	// TrainSeeds are the seeds of the training on A, one per run.
	TrainSeeds []int64 `json:"train_seeds"`
	// Retrains is how many consecutive retrains the continuation on B was;
	// Chunk the outcomes each learned (0: each refit all of B).
	Retrains int `json:"retrains"`
	Chunk    int `json:"chunk"`
}

// JointScore is the joint-training reference of the forgetting benchmark.
type JointScore struct {
	A Score `json:"a"`
	B Score `json:"b"`
}

// Goals of issue 10.
const (
	GoalDropCut = 0.7
	GoalBRatio  = 0.9
)

// Forgetting runs the benchmark. It is deterministic for a given config.
func Forgetting(ctx context.Context, cfg ForgettingConfig) (*ForgettingResult, error) {
	switch {
	case cfg.A == nil || len(cfg.A.TrainX) == 0:
		return nil, errors.New("forgetting: regime A has no samples")
	case cfg.B == nil || len(cfg.B.TrainX) == 0:
		return nil, errors.New("forgetting: regime B has no samples")
	case len(cfg.Lambdas) == 0:
		return nil, errors.New("forgetting: lambdas: need at least one EWC λ")
	}
	if cfg.Fisher == "" {
		cfg.Fisher = FisherDiagonal
	}
	if !slices.Contains(FisherEstimates, cfg.Fisher) {
		return nil, fmt.Errorf("forgetting: fisher: want one of %s, got %q", strings.Join(FisherEstimates, ", "), cfg.Fisher)
	}
	for _, l := range cfg.Lambdas {
		if !(l > 0) || math.IsInf(l, 0) {
			return nil, fmt.Errorf("forgetting: lambdas: each λ must be finite and > 0, got %v", l)
		}
	}
	if (cfg.Retrains > 1 || cfg.Chunk > 0) && cfg.Fisher == FisherKronecker {
		return nil, errors.New("forgetting: retrains: chained retrains need a diagonal Fisher (K-FAC has no online update)")
	}
	if cfg.Retrains > 1 && cfg.Chunk > 0 {
		return nil, errors.New("forgetting: retrains: a continuation either learns B in chunks or refits all of it, not both")
	}
	if !(cfg.Gamma >= 0 && cfg.Gamma <= 1) {
		return nil, fmt.Errorf("forgetting: gamma: must be in [0, 1], got %v", cfg.Gamma)
	}
	if cfg.Seeds > 1 {
		var runs []*ForgettingResult
		for i := range cfg.Seeds {
			c := cfg
			c.Train.Seed += int64(i)
			c.FineTune.Seed += int64(i)
			r, err := forgetting(ctx, c)
			if err != nil {
				return nil, err
			}
			runs = append(runs, r)
		}
		return meanResult(runs), nil
	}
	return forgetting(ctx, cfg)
}

// retrainSeedStep separates the seeds of consecutive retrains.
const retrainSeedStep = 1000

// forgetting is one run of the benchmark, with cfg's seeds.
func forgetting(ctx context.Context, cfg ForgettingConfig) (*ForgettingResult, error) {
	base, _, err := policy.Train(ctx, cfg.Train, cfg.A.TrainX, cfg.A.TrainY, nil)
	if err != nil {
		return nil, fmt.Errorf("forgetting: train on %s: %w", cfg.A.Name, err)
	}
	// The penalty of a retrain anchored at n with the diagonal Fisher f
	// (nil with K-FAC, which is only computed on A).
	var ewc func(lambda float64, n *policy.Network, f *policy.Fisher) *policy.EWC
	var fisherA *policy.Fisher
	if cfg.Fisher == FisherKronecker {
		k, err := policy.ComputeKroneckerFisher(base, cfg.A.TrainX)
		if err != nil {
			return nil, fmt.Errorf("forgetting: Fisher on %s: %w", cfg.A.Name, err)
		}
		ewc = func(lambda float64, n *policy.Network, _ *policy.Fisher) *policy.EWC {
			return &policy.EWC{Lambda: lambda, Anchor: n, Kronecker: k}
		}
	} else {
		if cfg.Fisher == FisherEmpirical {
			fisherA, err = policy.ComputeEmpiricalFisher(base, cfg.A.TrainX, cfg.A.TrainY)
		} else {
			fisherA, err = policy.ComputeFisher(base, cfg.A.TrainX)
		}
		if err != nil {
			return nil, fmt.Errorf("forgetting: Fisher on %s: %w", cfg.A.Name, err)
		}
		ewc = func(lambda float64, n *policy.Network, f *policy.Fisher) *policy.EWC {
			return &policy.EWC{Lambda: lambda, Anchor: n, Fisher: f}
		}
	}
	// The retrains of each continuation: their ranges of B's training part.
	parts := chunks(len(cfg.B.TrainX), cfg.Chunk, max(cfg.Retrains, 1))
	res := &ForgettingResult{
		RegimeA: cfg.A.Name, RegimeB: cfg.B.Name, Fisher: cfg.Fisher, SamplesA: len(cfg.A.TrainX), SamplesB: len(cfg.B.TrainX),
		TrainSeeds:  []int64{cfg.Train.Seed},
		Retrains:    len(parts),
		Chunk:       cfg.Chunk,
		ABefore:     score(base, cfg.A.TrainX, cfg.A.TrainY),
		ATestBefore: score(base, cfg.A.TestX, cfg.A.TestY),
		BBefore:     score(base, cfg.B.TrainX, cfg.B.TrainY),
		BTestBefore: score(base, cfg.B.TestX, cfg.B.TestY),
	}
	run := func(lambda float64) (ForgettingRun, error) {
		// Retrain after retrain, as the learner does: each starts from and
		// is anchored at the one before, and the Fisher is updated
		// online, F ← γF + F_new, F_new on what the retrain learned.
		n, f := base, fisherA
		for i, p := range parts {
			X, y := cfg.B.TrainX[p[0]:p[1]], cfg.B.TrainY[p[0]:p[1]]
			tc := cfg.FineTune
			tc.Start, tc.Seed = n, tc.Seed+int64(i)*retrainSeedStep
			tc.BatchSize = min(tc.BatchSize, len(X))
			if lambda > 0 {
				tc.EWC = ewc(lambda, n, f)
			}
			var err error
			if n, _, err = policy.Train(ctx, tc, X, y, nil); err != nil {
				return ForgettingRun{}, fmt.Errorf("forgetting: continue on %s (λ %v, retrain %d): %w", cfg.B.Name, lambda, i+1, err)
			}
			if lambda > 0 && f != nil && i+1 < len(parts) {
				fnew, err := policy.ComputeFisher(n, thin(X, maxFisherSamples))
				if err == nil {
					f, err = f.Combine(cfg.Gamma, fnew)
				}
				if err != nil {
					return ForgettingRun{}, fmt.Errorf("forgetting: Fisher after retrain %d: %w", i+1, err)
				}
			}
		}
		r := ForgettingRun{
			Lambda: lambda,
			AAfter: score(n, cfg.A.TrainX, cfg.A.TrainY), ATestAfter: score(n, cfg.A.TestX, cfg.A.TestY),
			B: score(n, cfg.B.TrainX, cfg.B.TrainY), BTest: score(n, cfg.B.TestX, cfg.B.TestY),
		}
		r.Drop = res.ABefore.Accuracy - r.AAfter.Accuracy
		if res.ABefore.Accuracy > 0 {
			r.RelativeDrop = r.Drop / res.ABefore.Accuracy
		}
		return r, nil
	}
	if res.Plain, err = run(0); err != nil {
		return nil, err
	}
	for _, l := range cfg.Lambdas {
		r, err := run(l)
		if err != nil {
			return nil, err
		}
		res.EWC = append(res.EWC, r)
	}
	if cfg.Joint {
		tc := cfg.FineTune
		tc.Start = base
		X := append(slices.Clone(cfg.A.TrainX), cfg.B.TrainX...)
		y := append(slices.Clone(cfg.A.TrainY), cfg.B.TrainY...)
		n, _, err := policy.Train(ctx, tc, X, y, nil)
		if err != nil {
			return nil, fmt.Errorf("forgetting: continue on %s and %s together: %w", cfg.A.Name, cfg.B.Name, err)
		}
		res.Joint = &JointScore{A: score(n, cfg.A.TrainX, cfg.A.TrainY), B: score(n, cfg.B.TrainX, cfg.B.TrainY)}
	}
	res.compare()
	return res, nil
}

// chunks are the [from, to) ranges of the retrains of a continuation on n
// samples: consecutive ranges of chunk samples (the last takes the rest
// when it would be under half a chunk), or else the whole range retrains
// times.
func chunks(n, chunk, retrains int) [][2]int {
	var out [][2]int
	if chunk <= 0 {
		for range retrains {
			out = append(out, [2]int{0, n})
		}
		return out
	}
	for from := 0; from < n; {
		to := min(from+chunk, n)
		if 2*(n-to) < chunk {
			to = n
		}
		out = append(out, [2]int{from, to})
		from = to
	}
	return out
}

// compare sets each EWC run's DropCut, BRatio and MeetsGoals against plain
// fine-tuning, and Best.
func (res *ForgettingResult) compare() {
	res.Plain.BRatio, res.Best = 1, nil
	for i := range res.EWC {
		r := &res.EWC[i]
		if res.Plain.Drop > 0 {
			r.DropCut = 1 - r.Drop/res.Plain.Drop
		}
		if res.Plain.B.Accuracy > 0 {
			r.BRatio = r.B.Accuracy / res.Plain.B.Accuracy
		}
		r.MeetsGoals = res.Plain.Drop > 0 && r.DropCut >= GoalDropCut && r.BRatio >= GoalBRatio
	}
	for i := range res.EWC {
		r := &res.EWC[i]
		if r.BRatio >= GoalBRatio && (res.Best == nil || r.DropCut > res.Best.DropCut) {
			res.Best = r
		}
	}
}

// meanResult is the mean of runs that differ only in their seeds.
func meanResult(runs []*ForgettingResult) *ForgettingResult {
	k := float64(len(runs))
	meanScore := func(get func(*ForgettingResult) Score) Score {
		var m Score
		for _, r := range runs {
			s := get(r)
			m.Accuracy += s.Accuracy / k
			m.LogLoss += s.LogLoss / k
		}
		return m
	}
	first := runs[0]
	res := &ForgettingResult{
		RegimeA: first.RegimeA, RegimeB: first.RegimeB, Fisher: first.Fisher, SamplesA: first.SamplesA, SamplesB: first.SamplesB, Retrains: first.Retrains, Chunk: first.Chunk,
		ABefore:     meanScore(func(r *ForgettingResult) Score { return r.ABefore }),
		ATestBefore: meanScore(func(r *ForgettingResult) Score { return r.ATestBefore }),
		BBefore:     meanScore(func(r *ForgettingResult) Score { return r.BBefore }),
		BTestBefore: meanScore(func(r *ForgettingResult) Score { return r.BTestBefore }),
		Seeds:       runs,
	}
	for _, r := range runs {
		res.TrainSeeds = append(res.TrainSeeds, r.TrainSeeds...)
	}
	meanRun := func(get func(*ForgettingResult) ForgettingRun) ForgettingRun {
		m := ForgettingRun{Lambda: get(first).Lambda}
		m.AAfter = meanScore(func(r *ForgettingResult) Score { return get(r).AAfter })
		m.ATestAfter = meanScore(func(r *ForgettingResult) Score { return get(r).ATestAfter })
		m.B = meanScore(func(r *ForgettingResult) Score { return get(r).B })
		m.BTest = meanScore(func(r *ForgettingResult) Score { return get(r).BTest })
		for _, r := range runs {
			m.Drop += get(r).Drop / k
		}
		if res.ABefore.Accuracy > 0 {
			m.RelativeDrop = m.Drop / res.ABefore.Accuracy
		}
		return m
	}
	res.Plain = meanRun(func(r *ForgettingResult) ForgettingRun { return r.Plain })
	for i := range first.EWC {
		res.EWC = append(res.EWC, meanRun(func(r *ForgettingResult) ForgettingRun { return r.EWC[i] }))
	}
	if first.Joint != nil {
		res.Joint = &JointScore{
			A: meanScore(func(r *ForgettingResult) Score { return r.Joint.A }),
			B: meanScore(func(r *ForgettingResult) Score { return r.Joint.B }),
		}
	}
	res.compare()
	return res
}

// Halves splits each series in two in time: the first half for regime A,
// the second for regime B.
func Halves(series []marketdata.Series) (first, second []marketdata.Series) {
	for _, s := range series {
		n := len(s.Bars) / 2
		first = append(first, marketdata.Series{Symbol: s.Symbol, Bars: slices.Clone(s.Bars[:n]), HasVolume: s.HasVolume})
		second = append(second, marketdata.Series{Symbol: s.Symbol, Bars: slices.Clone(s.Bars[n:]), HasVolume: s.HasVolume})
	}
	return first, second
}

// Bundled regimes of the benchmark.
const (
	// RegimeIndices is regime A by default: the four European indices
	// (DAX, SMI, CAC, FTSE) of the bundled eustock set, 1991-1998.
	RegimeIndices = "eustock"
	// RegimeStock is regime B by default: the single stock of the bundled
	// ttrc set, 1985-2006.
	RegimeStock = "ttrc"
	// RegimeDAXFirst and RegimeDAXSecond are the two halves of the DAX
	// series (1991-1994, 1995-1998).
	RegimeDAXFirst  = "dax-1"
	RegimeDAXSecond = "dax-2"
)

// LoadRegime builds a bundled regime by name (RegimeIndices, RegimeStock,
// RegimeDAXFirst, RegimeDAXSecond) with the labels of `quantmesh train`.
func LoadRegime(name string, horizon int, threshold, holdOut float64) (*Regime, error) {
	var series []marketdata.Series
	switch name {
	case RegimeIndices, RegimeStock:
		s, err := marketdata.Bundled(name)
		if err != nil {
			return nil, err
		}
		series = s
	case RegimeDAXFirst, RegimeDAXSecond:
		s, err := marketdata.Bundled(marketdata.EuStock)
		if err != nil {
			return nil, err
		}
		first, second := Halves(s[:1])
		series = first
		if name == RegimeDAXSecond {
			series = second
		}
	default:
		return nil, fmt.Errorf("unknown regime %q (want %s, %s, %s or %s)", name, RegimeIndices, RegimeStock, RegimeDAXFirst, RegimeDAXSecond)
	}
	return BuildRegime(name, series, horizon, threshold, holdOut)
}

// DefaultForgettingTrain is the training of both phases of the benchmark,
// the product's own: regime A is learned as `quantmesh train` trains the
// served policy (training.DefaultConfig: the serving network shape, Adam
// 1e-3, 30 epochs, batches of 64, class weights; without its validation
// split, so that every sample of A's training part is learned), and the
// continuation on B is one retrain of the online learner (DefaultConfig:
// Adam 1e-3, 5 epochs, batches of 32, class weights).
func DefaultForgettingTrain() (train, fineTune policy.TrainConfig) {
	train = training.DefaultConfig().Train
	train.ValidationFraction = 0
	l := DefaultConfig()
	fineTune = policy.TrainConfig{Epochs: l.Epochs, BatchSize: l.BatchSize, LearningRate: l.LearningRate, ClassWeights: true, Seed: train.Seed + 1}
	return train, fineTune
}

// WriteTable prints the benchmark as a text table.
func (r *ForgettingResult) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "forgetting benchmark: regime A %s (%d training samples), then regime B %s (%d); EWC with the %s Fisher\n", r.RegimeA, r.SamplesA, r.RegimeB, r.SamplesB, r.Fisher)
	switch {
	case r.Chunk > 0:
		fmt.Fprintf(w, "B reaches the learner %d outcomes at a time: %d retrains, each learning its chunk, anchored at the one before, the Fisher updated online\n", r.Chunk, r.Retrains)
	case r.Retrains > 1:
		fmt.Fprintf(w, "the continuation on B is %d retrains in a row, each refitting all of B, anchored at the one before, the Fisher updated online\n", r.Retrains)
	}
	if len(r.Seeds) > 1 {
		fmt.Fprintf(w, "means over %d seeds (training on A with seeds %s); drop cut and B/plain from the means\n", len(r.Seeds), joinSeeds(r.TrainSeeds))
	}
	fmt.Fprintf(w, "after A: accuracy on A %.3f (log loss %.4f), held-out A %.3f (%.4f), on B %.3f (%.4f), held-out B %.3f (%.4f)\n",
		r.ABefore.Accuracy, r.ABefore.LogLoss, r.ATestBefore.Accuracy, r.ATestBefore.LogLoss, r.BBefore.Accuracy, r.BBefore.LogLoss,
		r.BTestBefore.Accuracy, r.BTestBefore.LogLoss)
	fmt.Fprintf(w, "%-10s %9s %9s %8s %8s %9s %8s %7s %7s %7s %6s\n", "run", "A acc", "A loss", "A drop", "A drop%", "drop cut", "B acc", "B/plain", "A' acc", "B' acc", "goals")
	row := func(name string, x ForgettingRun) {
		goals := "-"
		if x.Lambda > 0 {
			goals = "no"
			if x.MeetsGoals {
				goals = "yes"
			}
		}
		fmt.Fprintf(w, "%-10s %9.3f %9.4f %8.3f %7.1f%% %8.1f%% %8.3f %6.1f%% %7.3f %7.3f %6s\n", name, x.AAfter.Accuracy, x.AAfter.LogLoss, x.Drop,
			100*x.RelativeDrop, 100*x.DropCut, x.B.Accuracy, 100*x.BRatio, x.ATestAfter.Accuracy, x.BTest.Accuracy, goals)
	}
	row("plain", r.Plain)
	for _, x := range r.EWC {
		row(fmt.Sprintf("ewc λ=%g", x.Lambda), x)
	}
	fmt.Fprintf(w, "A, B: the regimes' training parts (what the network learned); A', B': their held-out parts.\n")
	fmt.Fprintf(w, "A drop%%: the drop relative to A's accuracy before (the degradation).\n")
	fmt.Fprintf(w, "goals: drop cut ≥ %.0f%% and B accuracy ≥ %.0f%% of plain fine-tuning's.\n", 100*GoalDropCut, 100*GoalBRatio)
	if r.Joint != nil {
		fmt.Fprintf(w, "reference, not continual: continued on A and B together, accuracy on A %.3f, on B %.3f\n", r.Joint.A.Accuracy, r.Joint.B.Accuracy)
	}
	r.writeBest(w, "")
	for i, s := range r.Seeds {
		s.writeBest(w, fmt.Sprintf("seed %d alone: ", r.TrainSeeds[i]))
	}
}

func (r *ForgettingResult) writeBest(w io.Writer, prefix string) {
	if r.Best == nil {
		fmt.Fprintf(w, "%sno λ keeps B ≥ %.0f%% of plain\n", prefix, 100*GoalBRatio)
		return
	}
	met := "goals not met"
	if r.Best.MeetsGoals {
		met = "goals met"
	}
	fmt.Fprintf(w, "%sbest λ with B ≥ %.0f%% of plain: %g, drop cut %.1f%% at %.1f%% of B (%s)\n", prefix, 100*GoalBRatio, r.Best.Lambda, 100*r.Best.DropCut, 100*r.Best.BRatio, met)
}

func joinSeeds(seeds []int64) string {
	out := make([]string, len(seeds))
	for i, s := range seeds {
		out[i] = strconv.FormatInt(s, 10)
	}
	return strings.Join(out, ", ")
}
