package backtest

import (
	"context"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// BenchmarkBacktest2000 is one backtest of all four policies over 2,000
// bars of the bundled ttrc series (70/30 walk-forward, one fold): strategy
// returns, the regime fit on the training window, the forward filter, and
// every policy run over every bar, HRL with a given (already trained)
// policy. The bound is 1 s.
func BenchmarkBacktest2000(b *testing.B) {
	series, err := marketdata.Bundled(marketdata.TTRC)
	if err != nil {
		b.Fatal(err)
	}
	closes := series[0].Closes()[:2000]
	cfg := Config{
		Closes: closes, Strategies: strategy.All(), Policies: AllPolicies,
		TrainFraction: 0.7, Folds: 1, SwitchingCostBps: 10, PeriodsPerYear: 252, Seed: 1,
	}
	// A policy to evaluate, trained briefly outside the timed loop.
	prep, err := Prepare(context.Background(), closes, 1400, cfg.Strategies, 1, DefaultSmoothing())
	if err != nil {
		b.Fatal(err)
	}
	states, next := prep.TrainingData(strategy.ReturnMatrix(cfg.Strategies, closes), 1400)
	hc := hrl.DefaultConfig()
	hc.Epochs = 1
	p, _, err := hrl.Train(context.Background(), hc, strategy.Names(), states, next, nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg.HRLPolicy = HRLPolicy(p)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Run(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
}
