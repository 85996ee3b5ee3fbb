package learner

import (
	"bytes"
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/policy"
)

// TestForgetting runs a small forgetting benchmark (the two halves of the
// DAX series, a small network, few epochs) and checks what EWC must do:
// plain fine-tuning on B forgets some of A, EWC forgets less, and more
// so the larger λ. The full benchmark is `quantmesh learn
// --forgetting-benchmark`; its numbers are in the README.
func TestForgetting(t *testing.T) {
	t.Parallel()
	for _, fisher := range FisherEstimates {
		t.Run(fisher, func(t *testing.T) {
			t.Parallel()
			testForgetting(t, fisher)
		})
	}
}

func testForgetting(t *testing.T, fisher string) {
	A, B := daxHalves(t)
	train := policy.TrainConfig{Config: policy.Config{Hidden: []int{16}}, Epochs: 15, LearningRate: 1e-2, ClassWeights: true, Seed: 1}
	ft := policy.TrainConfig{Epochs: 15, LearningRate: 1e-2, ClassWeights: true, Seed: 2}
	res, err := Forgetting(context.Background(), ForgettingConfig{A: A, B: B, Train: train, FineTune: ft, Lambdas: []float64{3, 100}, Fisher: fisher, Joint: fisher == FisherKronecker})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res.WriteTable(&buf)
	t.Log("\n" + buf.String())
	if res.Plain.Drop <= 0 {
		t.Fatalf("plain fine-tuning did not forget A (drop %.3f): the benchmark measures nothing", res.Plain.Drop)
	}
	if res.Plain.B.Accuracy <= res.BBefore.Accuracy {
		t.Errorf("plain fine-tuning did not learn B: %.3f after, %.3f before", res.Plain.B.Accuracy, res.BBefore.Accuracy)
	}
	weak, strong := res.EWC[0], res.EWC[1]
	if !(weak.Drop < res.Plain.Drop && strong.Drop < weak.Drop) {
		t.Errorf("drop on A: plain %.3f, λ=3 %.3f, λ=100 %.3f; want EWC to forget less, more so the larger λ", res.Plain.Drop, weak.Drop, strong.Drop)
	}
	if j := res.Joint; (fisher == FisherKronecker) != (j != nil) {
		t.Errorf("joint reference %+v with Joint %v", j, fisher == FisherKronecker)
	} else if j != nil && (j.B.Accuracy <= res.BBefore.Accuracy || !strings.Contains(buf.String(), "continued on A and B together")) {
		t.Errorf("joint training did not learn B (%.3f, before %.3f) or is not in the table", j.B.Accuracy, res.BBefore.Accuracy)
	}
	if !strings.Contains(buf.String(), "ewc λ=100") || !strings.Contains(buf.String(), "EWC with the "+fisher+" Fisher") {
		t.Errorf("table lacks the λ=100 row:\n%s", buf.String())
	}
}

func TestForgettingBadInput(t *testing.T) {
	t.Parallel()
	A := &Regime{Name: "a", TrainX: [][]float64{{1}}, TrainY: []policy.Action{0}}
	for _, tc := range []struct {
		cfg  ForgettingConfig
		want string
	}{
		{ForgettingConfig{B: A, Lambdas: []float64{1}}, "regime A has no samples"},
		{ForgettingConfig{A: A, B: &Regime{}, Lambdas: []float64{1}}, "regime B has no samples"},
		{ForgettingConfig{A: A, B: A}, "lambdas: need at least one"},
		{ForgettingConfig{A: A, B: A, Lambdas: []float64{-1}}, "lambdas: each λ must be finite and > 0, got -1"},
		{ForgettingConfig{A: A, B: A, Lambdas: []float64{1}, Fisher: "full"}, `fisher: want one of diagonal, empirical, kronecker, got "full"`},
	} {
		if _, err := Forgetting(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
	if _, err := LoadRegime("nasdaq", 5, 0.5, 0.2); err == nil || !strings.Contains(err.Error(), `unknown regime "nasdaq"`) {
		t.Errorf("unknown regime: %v", err)
	}
}

// With several seeds the benchmark reports their mean, and the goals are
// judged on the means; each seed's run is the single run with its seeds.
func TestForgettingSeedsMean(t *testing.T) {
	t.Parallel()
	A, B := daxHalves(t)
	cfg := ForgettingConfig{
		A: A, B: B, Lambdas: []float64{3, 100},
		Train:    policy.TrainConfig{Config: policy.Config{Hidden: []int{8}}, Epochs: 5, LearningRate: 1e-2, ClassWeights: true, Seed: 7},
		FineTune: policy.TrainConfig{Epochs: 5, LearningRate: 1e-2, ClassWeights: true, Seed: 8},
	}
	one, err := Forgetting(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Seeds = 2
	res, err := Forgetting(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Seeds) != 2 || len(res.TrainSeeds) != 2 || res.TrainSeeds[0] != 7 || res.TrainSeeds[1] != 8 {
		t.Fatalf("%d seed results, train seeds %v; want 2, [7 8]", len(res.Seeds), res.TrainSeeds)
	}
	if s := res.Seeds[0]; s.Plain != one.Plain || s.EWC[1] != one.EWC[1] {
		t.Errorf("the first seed's run differs from the single run with its seeds")
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-12 }
	s0, s1 := res.Seeds[0], res.Seeds[1]
	if !near(res.Plain.Drop, (s0.Plain.Drop+s1.Plain.Drop)/2) || !near(res.ABefore.Accuracy, (s0.ABefore.Accuracy+s1.ABefore.Accuracy)/2) {
		t.Errorf("plain drop %v, A before %v: not the means of the seeds'", res.Plain.Drop, res.ABefore.Accuracy)
	}
	for i, r := range res.EWC {
		drop := (s0.EWC[i].Drop + s1.EWC[i].Drop) / 2
		b := (s0.EWC[i].B.Accuracy + s1.EWC[i].B.Accuracy) / 2
		if !near(r.Drop, drop) || !near(r.B.Accuracy, b) || !near(r.DropCut, 1-drop/res.Plain.Drop) || !near(r.BRatio, b/res.Plain.B.Accuracy) {
			t.Errorf("λ=%g: drop %v, B %v, drop cut %v, B ratio %v; want the means %v and %v and the ratios of means", r.Lambda, r.Drop, r.B.Accuracy, r.DropCut, r.BRatio, drop, b)
		}
		if r.MeetsGoals != (r.DropCut >= GoalDropCut && r.BRatio >= GoalBRatio) {
			t.Errorf("λ=%g: meets goals %v with drop cut %v and B ratio %v", r.Lambda, r.MeetsGoals, r.DropCut, r.BRatio)
		}
	}
	var buf bytes.Buffer
	res.WriteTable(&buf)
	if !strings.Contains(buf.String(), "means over 2 seeds") || !strings.Contains(buf.String(), "seed 8 alone:") {
		t.Errorf("table:\n%s", buf.String())
	}
}

// A continuation of several retrains chains them as the learner does: the
// plain run is FineTune applied again from where the last one ended.
func TestForgettingRetrains(t *testing.T) {
	t.Parallel()
	A, B := daxHalves(t)
	train := policy.TrainConfig{Config: policy.Config{Hidden: []int{8}}, Epochs: 5, LearningRate: 1e-2, ClassWeights: true, Seed: 3}
	ft := policy.TrainConfig{Epochs: 2, LearningRate: 1e-2, ClassWeights: true, Seed: 4}
	cfg := ForgettingConfig{A: A, B: B, Train: train, FineTune: ft, Lambdas: []float64{10}, Retrains: 2, Gamma: 0.9}
	res, err := Forgetting(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n := continuation(t, train, ft, A, B, chunks(len(B.TrainX), 0, 2), 0, 0)
	if want := score(n, A.TrainX, A.TrainY); res.Retrains != 2 || res.Plain.AAfter != want {
		t.Errorf("plain after 2 retrains: %d retrains, A %+v; want 2 and %+v", res.Retrains, res.Plain.AAfter, want)
	}
	cfg.Retrains = 1
	one, err := Forgetting(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if one.EWC[0].AAfter == res.EWC[0].AAfter {
		t.Errorf("EWC after one retrain and after two score the same on A: %+v", one.EWC[0].AAfter)
	}
	for _, bad := range []ForgettingConfig{
		{A: A, B: B, Lambdas: []float64{1}, Retrains: 2, Fisher: FisherKronecker},
		{A: A, B: B, Lambdas: []float64{1}, Gamma: 1.5},
	} {
		if _, err := Forgetting(ctx, bad); err == nil {
			t.Errorf("retrains %d, fisher %q, gamma %v: no error", bad.Retrains, bad.Fisher, bad.Gamma)
		}
	}
}

// A streamed continuation learns B chunk by chunk, in time order: the
// plain run is FineTune applied to each chunk in turn.
func TestForgettingChunks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n, chunk, retrains int
		want               [][2]int
	}{
		{10, 0, 2, [][2]int{{0, 10}, {0, 10}}},
		{9, 4, 1, [][2]int{{0, 4}, {4, 9}}}, // the last one is under half a chunk
		{10, 4, 1, [][2]int{{0, 4}, {4, 8}, {8, 10}}},
		{12, 4, 1, [][2]int{{0, 4}, {4, 8}, {8, 12}}},
		{3, 4, 1, [][2]int{{0, 3}}},
		{12, 5, 1, [][2]int{{0, 5}, {5, 12}}}, // 2 left: under half of 5
		{13, 5, 1, [][2]int{{0, 5}, {5, 10}, {10, 13}}},
	} {
		if got := chunks(tc.n, tc.chunk, tc.retrains); !slices.Equal(got, tc.want) {
			t.Errorf("chunks(%d, %d, %d) = %v, want %v", tc.n, tc.chunk, tc.retrains, got, tc.want)
		}
	}

	A, B := daxHalves(t)
	train := policy.TrainConfig{Config: policy.Config{Hidden: []int{8}}, Epochs: 5, LearningRate: 1e-2, ClassWeights: true, Seed: 3}
	ft := policy.TrainConfig{Epochs: 2, BatchSize: 32, LearningRate: 1e-2, ClassWeights: true, Seed: 4}
	chunk := len(B.TrainX)/3 + 1
	cfg := ForgettingConfig{A: A, B: B, Train: train, FineTune: ft, Lambdas: []float64{10}, Chunk: chunk, Gamma: 0.9}
	res, err := Forgetting(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	parts := chunks(len(B.TrainX), chunk, 1)
	n := continuation(t, train, ft, A, B, parts, 0, 0)
	if want := score(n, A.TrainX, A.TrainY); len(parts) != 3 || res.Retrains != 3 || res.Chunk != chunk || res.Plain.AAfter != want {
		t.Errorf("plain over %d chunks: %d retrains of %d, A %+v; want 3 and %+v", len(parts), res.Retrains, res.Chunk, res.Plain.AAfter, want)
	}
	n = continuation(t, train, ft, A, B, parts, 10, 0.9)
	if want := score(n, A.TrainX, A.TrainY); res.EWC[0].AAfter != want {
		t.Errorf("EWC over the chunks: A %+v, want %+v", res.EWC[0].AAfter, want)
	}
	var buf bytes.Buffer
	res.WriteTable(&buf)
	if !strings.Contains(buf.String(), "3 retrains, each learning its chunk") {
		t.Errorf("table:\n%s", buf.String())
	}
	for _, bad := range []ForgettingConfig{
		{A: A, B: B, Lambdas: []float64{1}, Chunk: 100, Fisher: FisherKronecker},
		{A: A, B: B, Lambdas: []float64{1}, Chunk: 100, Retrains: 2},
	} {
		if _, err := Forgetting(ctx, bad); err == nil {
			t.Errorf("chunk %d, retrains %d, fisher %q: no error", bad.Chunk, bad.Retrains, bad.Fisher)
		}
	}
}

// continuation trains on A, then on B's parts in turn as the learner's
// retrains do, written out independently of Forgetting: each from and
// (with λ > 0) anchored at the one before, the diagonal Fisher A's to
// start with, then updated online on the part just learned.
func continuation(t *testing.T, train, ft policy.TrainConfig, A, B *Regime, parts [][2]int, lambda, gamma float64) *policy.Network {
	t.Helper()
	ctx := context.Background()
	n, _, err := policy.Train(ctx, train, A.TrainX, A.TrainY, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := policy.ComputeFisher(n, A.TrainX)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range parts {
		X, y := B.TrainX[p[0]:p[1]], B.TrainY[p[0]:p[1]]
		tc := ft
		tc.Start, tc.Seed = n, ft.Seed+int64(i)*retrainSeedStep
		if lambda > 0 {
			tc.EWC = &policy.EWC{Lambda: lambda, Anchor: n, Fisher: f}
		}
		if n, _, err = policy.Train(ctx, tc, X, y, nil); err != nil {
			t.Fatal(err)
		}
		fnew, err := policy.ComputeFisher(n, X)
		if err != nil {
			t.Fatal(err)
		}
		if f, err = f.Combine(gamma, fnew); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// daxHalves is the tests' pair of regimes: the two halves of the DAX
// series, labelled as `quantmesh train` labels them.
func daxHalves(t *testing.T) (A, B *Regime) {
	t.Helper()
	A, err := LoadRegime(RegimeDAXFirst, 5, 0.5, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	if B, err = LoadRegime(RegimeDAXSecond, 5, 0.5, 0.2); err != nil {
		t.Fatal(err)
	}
	return A, B
}
