//go:build !race

package backtest

import (
	"context"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// The goals of the allocation backtest on the held-out last 30% of
// eustock.csv, as `quantmesh backtest --data eustock --policy all` measures
// them (seed 1, the contract's HRL defaults): HRL churns less than 3% with
// a max disruption below 0.2, in the portfolio of the four indices and in
// each index, and the portfolio's Sharpe is at least the naive router's.
// It trains the full policy (about 40 s; without the race detector, which
// makes gorgonia several times slower: CI runs it in its own step).
func TestEuStockGoals(t *testing.T) {
	series, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	var closes []float64
	var pool [][]float64
	for _, s := range series {
		if s.Symbol == "DAX" {
			closes = s.Closes()
		} else {
			pool = append(pool, s.Closes())
		}
	}
	strats := strategy.All()
	var names []string
	for _, s := range strats {
		names = append(names, s.Name)
	}
	cfg := Config{
		Closes: closes, Pool: pool, Strategies: strats, Policies: []PolicyKind{HRL, NaiveRouter},
		TrainFraction: 0.7, Folds: 1, SwitchingCostBps: 10, PeriodsPerYear: 252, Seed: 1,
		TrainHRL: HRLTrainer(hrl.DefaultConfig(), names, nil),
	}
	res, err := RunPortfolio(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	check := func(where string, h, naive Metrics, sharpe bool) {
		t.Logf("%s: hrl churn %.2f%%, max disruption %.3f, Sharpe %.3f; naive Sharpe %.3f", where, 100*h.ChurnRate, h.MaxDisruption, h.Sharpe, naive.Sharpe)
		if h.Bars != 558 || h.ChurnRate >= 0.03 || h.MaxDisruption >= 0.2 {
			t.Errorf("%s: hrl over %d bars churns %.2f%% with max disruption %.3f, want < 3%% and < 0.2 over 558", where, h.Bars, 100*h.ChurnRate, h.MaxDisruption)
		}
		if sharpe && h.Sharpe < naive.Sharpe {
			t.Errorf("%s: hrl Sharpe %.3f below the naive router's %.3f", where, h.Sharpe, naive.Sharpe)
		}
	}
	check("portfolio", res.Combined[0].Metrics, res.Combined[1].Metrics, true)
	for i, rep := range res.Series {
		check("column "+[]string{"DAX", "CAC", "FTSE", "SMI"}[i], rep.Results[0].Metrics, rep.Results[1].Metrics, false)
	}
}
