//go:build !race

package learner

import (
	"bytes"
	"context"
	"testing"

	"github.com/quantmesh/quantmesh/internal/training"
)

// TestForgettingGoal runs the forgetting benchmark as `quantmesh learn
// --forgetting-benchmark` does with its defaults, at the learner's default
// λ only: eustock, then ttrc streamed in chunks of the learner's new
// outcomes per retrain, five seeds. Issue 10's goal (EWC cuts plain
// fine-tuning's drop on A by ≥ 70% while keeping ≥ 90% of its accuracy on
// B) must hold on the five seeds' means and on each seed. About 25 s
// without the race detector, which makes gorgonia several times slower:
// CI runs it in its own step. README's table is this run's (λ = 100 row).
func TestForgettingGoal(t *testing.T) {
	d := training.DefaultConfig()
	A, err := LoadRegime(RegimeIndices, d.Horizon, d.Threshold, d.HoldOut)
	if err != nil {
		t.Fatal(err)
	}
	B, err := LoadRegime(RegimeStock, d.Horizon, d.Threshold, d.HoldOut)
	if err != nil {
		t.Fatal(err)
	}
	lc := DefaultConfig()
	train, ft := DefaultForgettingTrain()
	res, err := Forgetting(context.Background(), ForgettingConfig{A: A, B: B, Train: train, FineTune: ft,
		Lambdas: []float64{lc.Lambda}, Seeds: 5, Chunk: lc.MinNewOutcomes, Gamma: lc.Gamma})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res.WriteTable(&buf)
	t.Log("\n" + buf.String())
	if r := res.EWC[0]; !r.MeetsGoals {
		t.Errorf("means over 5 seeds, λ %g: drop cut %.1f%% at %.1f%% of plain's B; want ≥ 70%% at ≥ 90%%", r.Lambda, 100*r.DropCut, 100*r.BRatio)
	}
	for i, s := range res.Seeds {
		if r := s.EWC[0]; !r.MeetsGoals {
			t.Errorf("seed %d, λ %g: drop cut %.1f%% at %.1f%% of plain's B; want ≥ 70%% at ≥ 90%%", res.TrainSeeds[i], r.Lambda, 100*r.DropCut, 100*r.BRatio)
		}
	}
}
