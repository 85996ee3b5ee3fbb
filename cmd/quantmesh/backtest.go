package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/quantmesh/quantmesh/internal/training"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

func backtestUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: quantmesh backtest --data <csv|eustock|ttrc> [--column C] [--policy hrl|naive|proportional|equal|all] [--json] [flags]

Backtests allocation policies walk-forward: the regime model (and the HRL
policy, trained here with gorgonia) is fitted on the first --train-fraction
of the range and only the rest is evaluated.

With --column, one price column is evaluated (HRL is also trained on the
same training rows of the other columns unless --pool=false). Without it,
a file of several columns is evaluated as a whole: each column allocated
on its own, with its own regime model, by one HRL policy trained on the
training rows of every column, and a portfolio putting equal capital behind
each column, rebalanced every bar.

Prints a table of churn rate, max disruption, Sharpe, total return, max
drawdown and turnover cost, policies side by side (for a whole file, the
portfolio's, then each column's), or with --json one JSON object per policy
per line (for a whole file, the portfolio's metrics with each column's under
"per_column"). Runs offline: no mesh is needed.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

type backtestFlags struct {
	data, column, policy, strategies string
	asJSON, pool                     bool
	trainFraction, costBps           float64
	folds, periods                   int
	start, end                       int
	hrl                              hrl.Config
}

func runBacktest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh backtest", flag.ContinueOnError)
	var f backtestFlags
	f.hrl = hrl.DefaultConfig()
	fs.StringVar(&f.data, "data", "", "prices: a CSV file (Date,Open,High,Low,Close[,Volume], or a day column and one close column per instrument) or a bundled set: eustock, ttrc")
	fs.StringVar(&f.column, "column", "", "price column of a multi-column file to evaluate alone; every column as one portfolio when empty")
	fs.StringVar(&f.policy, "policy", "all", "hrl, naive, proportional, equal, or all")
	fs.StringVar(&f.strategies, "strategies", "", "comma-separated strategies to allocate across; all when empty ("+strings.Join(strategy.Names(), ", ")+")")
	fs.BoolVar(&f.asJSON, "json", false, "print one JSON object per policy instead of a table")
	fs.BoolVar(&f.pool, "pool", true, "with --column, also train HRL on the same training rows of every other column of --data (evaluation stays on --column); --pool=false trains on --column only")
	fs.Float64Var(&f.trainFraction, "train-fraction", 0.7, "share of the range in the first training window, in (0, 1)")
	fs.IntVar(&f.folds, "folds", 1, "test segments after the first training window (expanding-window refits), 1 to 20")
	fs.IntVar(&f.start, "start", 0, "first row of the range, from 0")
	fs.IntVar(&f.end, "end", 0, "first row after the range; 0 means the end of the data")
	fs.Float64Var(&f.costBps, "switching-cost-bps", 10, "trading cost in basis points of the net exposure traded each bar (HRL training charges it per unit of churn), 0 to 10000")
	fs.IntVar(&f.periods, "periods-per-year", 252, "bars per year for annualising")
	fs.IntVar(&f.hrl.Epochs, "epochs", f.hrl.Epochs, "HRL training epochs")
	fs.Float64Var(&f.hrl.LearningRate, "learning-rate", f.hrl.LearningRate, "HRL Adam learning rate")
	fs.IntVar(&f.hrl.NumOptions, "options", f.hrl.NumOptions, "HRL options")
	fs.Float64Var(&f.hrl.BlendRate, "blend-rate", f.hrl.BlendRate, "HRL blending rate toward the target weights, in (0, 1]")
	fs.Int64Var(&f.hrl.Seed, "seed", f.hrl.Seed, "seed of the regime fit and the HRL training")
	if err := parseFlags(fs, args, io.Discard); err != nil {
		if errors.Is(err, errHelp) {
			backtestUsage(stdout, fs)
		}
		return err
	}
	if fs.NArg() > 0 {
		return usagef("backtest takes no arguments, got %q (see 'quantmesh backtest -h')", fs.Args())
	}
	policies, err := parsePolicies(f.policy)
	if err != nil {
		return err
	}
	var names []string
	if f.strategies != "" {
		names = strings.Split(f.strategies, ",")
	}
	strats, err := strategy.ByName(names)
	if err != nil {
		return usagef("invalid --strategies %q: %v", f.strategies, err)
	}
	f.hrl.SwitchingCostBps = f.costBps
	if err := f.hrl.Validate(); err != nil {
		return usagef("%v", err)
	}
	switch {
	case !(f.costBps >= 0 && f.costBps <= 10000):
		return usagef("invalid --switching-cost-bps %v: want 0 to 10000", f.costBps)
	case f.periods < 1 || f.periods > 1000000:
		return usagef("invalid --periods-per-year %d: want 1 to 1000000", f.periods)
	case f.folds < 1 || f.folds > 20:
		return usagef("invalid --folds %d: want 1 to 20", f.folds)
	}
	first, others, err := loadColumns(f.data, f.column)
	if err != nil {
		return usagef("%v", err)
	}
	rows := len(first.Bars)
	end := f.end
	if end == 0 {
		end = rows
	}
	switch {
	case f.start < 0:
		return usagef("invalid --start %d: must not be negative", f.start)
	case end > rows:
		return usagef("invalid --end %d: the data has %d rows", end, rows)
	case end <= f.start:
		return usagef("empty range: --end %d is not after --start %d", end, f.start)
	}
	// Without --column a file of several columns is one portfolio, and HRL
	// trains on all of them. With it, pooling is on by default; asked for
	// explicitly, it needs another column. The other columns follow the
	// first in alphabetical order, as RunBacktest's every_column orders
	// them, so that both train the same HRL policy.
	poolSet := false
	fs.Visit(func(fl *flag.Flag) { poolSet = poolSet || fl.Name == "pool" })
	portfolio := f.column == "" && len(others) > 0
	series := []marketdata.Series{first}
	switch {
	case portfolio && !f.pool:
		return usagef("--pool=false trains HRL on the evaluated column alone: name it with --column")
	case portfolio || f.pool && (poolSet || slices.Contains(policies, backtest.HRL)):
		if len(others) == 0 && poolSet {
			return usagef("--pool: %s has no other column", f.data)
		}
		series = append(series, others...)
	}
	var columns []string
	var pool [][]float64
	for i, s := range series {
		if len(s.Bars) != rows {
			return usagef("column %s has %d rows, %s has %d: a backtest of several columns needs them aligned row by row", s.Symbol, len(s.Bars), series[0].Symbol, rows)
		}
		columns = append(columns, s.Symbol)
		if i > 0 {
			pool = append(pool, s.Closes()[f.start:end])
		}
	}
	closes := series[0].Closes()[f.start:end]
	stratNames := make([]string, len(strats))
	for i, s := range strats {
		stratNames[i] = s.Name
	}
	cfg := backtest.Config{
		Closes: closes, Strategies: strats, Policies: policies, TrainFraction: f.trainFraction, Folds: f.folds,
		SwitchingCostBps: f.costBps, PeriodsPerYear: f.periods, Seed: f.hrl.Seed, Pool: pool,
	}
	if slices.Contains(policies, backtest.HRL) {
		fold := 0
		cfg.TrainHRL = backtest.HRLTrainer(f.hrl, stratNames, func(s hrl.EpochStats) {
			if s.Epoch == 1 {
				fold++
			}
			if s.Epoch%50 == 0 || s.Epoch == f.hrl.Epochs {
				fmt.Fprintf(stderr, "hrl fold %d epoch %d/%d  objective %.6f\n", fold, s.Epoch, f.hrl.Epochs, s.Objective)
			}
		})
	}
	began := time.Now()
	var res *backtest.Portfolio
	if portfolio {
		res, err = backtest.RunPortfolio(ctx, cfg)
	} else {
		var rep *backtest.Report
		if rep, err = backtest.Run(ctx, cfg); err == nil {
			res = &backtest.Portfolio{Series: []*backtest.Report{rep}}
		}
	}
	if errors.Is(err, backtest.ErrInvalid) {
		return usagef("%v", err)
	}
	if err != nil {
		return err
	}
	took := time.Since(began)
	fold0 := res.Series[0].Folds[0]
	hrlCols := columns
	if !slices.Contains(policies, backtest.HRL) {
		hrlCols = nil
	}
	trainRows, testRows := [2]int{f.start, f.start + fold0.TrainEnd}, [2]int{f.start + fold0.TrainEnd, f.start + len(closes)}
	evaluated := columns
	if !portfolio {
		evaluated = columns[:1]
	}
	if f.asJSON {
		metrics := func(m backtest.Metrics) map[string]any {
			weights := map[string]float64{}
			for i, w := range m.MeanWeights {
				weights[stratNames[i]] = w
			}
			return map[string]any{
				"bars_evaluated": m.Bars, "churn_rate": m.ChurnRate, "max_disruption": m.MaxDisruption, "sharpe": m.Sharpe,
				"total_return": m.TotalReturn, "max_drawdown": m.MaxDrawdown, "turnover_cost": m.TurnoverCost,
				"annualized_volatility": m.AnnualizedVolatility, "mean_weights": weights,
			}
		}
		enc := json.NewEncoder(stdout)
		for pi, pk := range policies {
			var obj map[string]any
			if portfolio {
				obj = metrics(res.Combined[pi].Metrics)
				per := map[string]any{}
				for s, col := range evaluated {
					per[col] = metrics(res.Series[s].Results[pi].Metrics)
				}
				obj["columns"], obj["per_column"] = evaluated, per
			} else {
				obj = metrics(res.Series[0].Results[pi].Metrics)
				obj["column"] = evaluated[0]
			}
			for k, v := range map[string]any{
				"policy": pk.String(), "data": f.data, "train_rows": trainRows, "test_rows": testRows,
				"switching_cost_bps": f.costBps, "periods_per_year": f.periods, "hrl_trained_on_columns": hrlCols,
			} {
				obj[k] = v
			}
			if err := enc.Encode(obj); err != nil {
				return err
			}
		}
		return nil
	}
	fmt.Fprintf(stdout, "backtest %s, %s: rows %d-%d, trained on %d-%d, evaluated %d-%d (%d bars, %d fold(s)), switching cost %g bps, %s\n",
		f.data, describeColumns(evaluated), trainRows[0], testRows[1], trainRows[0], trainRows[1], testRows[0], testRows[1],
		res.Series[0].Results[0].Metrics.Bars, len(res.Series[0].Folds), f.costBps, took.Round(time.Millisecond))
	if len(hrlCols) > 1 {
		fmt.Fprintf(stdout, "hrl trained once per fold on the training rows of %s\n", strings.Join(hrlCols, ", "))
	}
	table := func(title string, results []backtest.Result) error {
		if title != "" {
			fmt.Fprintf(stdout, "\n%s\n", title)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "policy\tchurn rate\tmax disruption\tSharpe\ttotal return\tmax drawdown\tturnover cost\t")
		for _, r := range results {
			m := r.Metrics
			fmt.Fprintf(tw, "%s\t%.2f%%\t%.3f\t%.3f\t%.2f%%\t%.2f%%\t%.4f\t\n", r.Policy, 100*m.ChurnRate, m.MaxDisruption, m.Sharpe, 100*m.TotalReturn, 100*m.MaxDrawdown, m.TurnoverCost)
		}
		return tw.Flush()
	}
	if !portfolio {
		return table("", res.Series[0].Results)
	}
	if err := table("portfolio: equal capital in each column, rebalanced every bar", res.Combined); err != nil {
		return err
	}
	for s, col := range evaluated {
		if err := table("column "+col, res.Series[s].Results); err != nil {
			return err
		}
	}
	return nil
}

func describeColumns(cols []string) string {
	if len(cols) == 1 {
		return "column " + cols[0]
	}
	return "every column (" + strings.Join(cols, ", ") + ") as one portfolio"
}

func parsePolicies(s string) ([]backtest.PolicyKind, error) {
	if s == "all" || s == "" {
		return backtest.AllPolicies, nil
	}
	var out []backtest.PolicyKind
	for _, part := range strings.Split(s, ",") {
		k, ok := backtest.ParsePolicy(strings.TrimSpace(part))
		if !ok {
			return nil, usagef("invalid --policy %q: want hrl, naive, proportional, equal or all", part)
		}
		if slices.Contains(out, k) {
			return nil, usagef("invalid --policy %q: %s appears twice", s, k)
		}
		out = append(out, k)
	}
	return out, nil
}

// loadColumns reads --data and returns the named column (the file's first
// when column is empty) and the data's other columns, in alphabetical order.
func loadColumns(data, column string) (marketdata.Series, []marketdata.Series, error) {
	if data == training.Bundled {
		return marketdata.Series{}, nil, fmt.Errorf("--data %s is several data sets; name one: %s, %s, or a CSV file", data, marketdata.EuStock, marketdata.TTRC)
	}
	series, err := training.Load(data) // in symbol order
	if err != nil {
		return marketdata.Series{}, nil, err
	}
	if column == "" {
		var cols []string
		switch data {
		case marketdata.EuStock, marketdata.TTRC:
			cols, err = marketdata.BundledColumns(data)
		default:
			var fh *os.File
			if fh, err = os.Open(data); err == nil {
				cols, err = marketdata.Columns(fh)
				fh.Close()
			}
		}
		if err != nil {
			return marketdata.Series{}, nil, err
		}
		column = series[0].Symbol // a single-instrument file (Date,Open,...) names no columns
		if len(cols) > 0 {
			column = cols[0]
		}
	}
	var have []string
	var others []marketdata.Series
	found := -1
	for i, s := range series {
		have = append(have, s.Symbol)
		if s.Symbol == column {
			found = i
		} else {
			others = append(others, s)
		}
	}
	if found < 0 {
		return marketdata.Series{}, nil, fmt.Errorf("invalid --column %q: have %s", column, strings.Join(have, ", "))
	}
	return series[found], others, nil
}

// loadColumn reads --data and picks one column: the first when column is
// empty.
func loadColumn(data, column string) (marketdata.Series, string, error) {
	s, _, err := loadColumns(data, column)
	if err != nil {
		return marketdata.Series{}, "", err
	}
	return s, s.Symbol, nil
}
