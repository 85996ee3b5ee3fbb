package metacontroller

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// Request limits.
const (
	maxInlineBars = 100000
	maxFolds      = 20
	maxPeriods    = 1000000
)

// dataset is a request's price series, cut to its range.
type dataset struct {
	// name identifies the rows for the walk-forward check: "eustock/DAX"
	// or "inline/<symbol>".
	name string
	// datasetID is the bundled dataset's id and column the column; both
	// empty for inline bars.
	datasetID, column string
	closes            []float64
	// pool holds the same rows of the bundled dataset's other columns
	// (those with as many rows), named by poolNames: HRL is also trained
	// on their training rows.
	pool      [][]float64
	poolNames []string
	times     []time.Time // nil without timestamps
	// start is the row of closes[0] in the whole series.
	start int
}

// trainedOn reports whether policy p was trained on a row of ds from
// firstTest on: an evaluated row, or a later one (a policy that has seen
// the future of the rows it is judged on). A row of a bundled dataset is the same day in every column,
// so a version trained on rows of one column ("eustock/DAX") or of every
// column (it names the dataset, "eustock") has seen those days of every
// column of that dataset.
func (ds *dataset) trainedOn(p *hrl.Policy, firstTest int) bool {
	same := p.TrainDataset == ds.name
	if ds.datasetID != "" {
		same = same || p.TrainDataset == ds.datasetID || strings.HasPrefix(p.TrainDataset, ds.datasetID+"/")
	}
	return same && p.TrainEnd > firstTest
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

func validSymbol(sym string) bool {
	if n := len(sym); n < 1 || n > 64 {
		return false
	}
	for _, r := range sym {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// readDataset validates ds (field is its name in the request) and returns
// the rows it selects.
func readDataset(field string, ds *metacontrollerv1.Dataset) (*dataset, error) {
	if ds == nil {
		return nil, apierr.Invalid(field, "required")
	}
	out := &dataset{}
	switch src := ds.GetSource().(type) {
	case *metacontrollerv1.Dataset_Bundled:
		b := src.Bundled
		series, err := marketdata.Bundled(b.GetDatasetId())
		if err != nil {
			return nil, apierr.Invalid(field+".bundled.dataset_id", "unknown dataset %q (bundled: %s, %s)", truncate(b.GetDatasetId()), marketdata.EuStock, marketdata.TTRC)
		}
		var names []string
		found := false
		for _, s := range series {
			names = append(names, s.Symbol)
			if s.Symbol == b.GetColumn() {
				out.closes = s.Closes()
				found = true
			}
		}
		if !found {
			return nil, apierr.Invalid(field+".bundled.column", "unknown column %q of %s (have %s)", truncate(b.GetColumn()), b.GetDatasetId(), strings.Join(names, ", "))
		}
		out.name = b.GetDatasetId() + "/" + b.GetColumn()
		out.datasetID, out.column = b.GetDatasetId(), b.GetColumn()
		for _, s := range series {
			if s.Symbol != b.GetColumn() && len(s.Bars) == len(out.closes) {
				out.pool = append(out.pool, s.Closes())
				out.poolNames = append(out.poolNames, s.Symbol)
			}
		}
		// Bundled series of closes number their days: no timestamps.
		if b.GetDatasetId() == marketdata.TTRC {
			for _, s := range series {
				if s.Symbol == b.GetColumn() {
					for _, bar := range s.Bars {
						out.times = append(out.times, bar.Time)
					}
				}
			}
		}
	case *metacontrollerv1.Dataset_InlineBars:
		ib := src.InlineBars
		f := field + ".inline_bars"
		var v apierr.Violations
		if !validSymbol(ib.GetSymbol()) {
			v.Add(f+".symbol", "must be 1 to 64 characters of ASCII letters, digits, '.', '_' and '-'")
		}
		if n := len(ib.GetBars()); n < 2 || n > maxInlineBars {
			v.Add(f+".bars", "2 to %d bars, got %d", maxInlineBars, n)
		}
		if err := v.Err(); err != nil {
			return nil, err
		}
		withTime := ib.GetBars()[0].GetTime() != nil
		for i, b := range ib.GetBars() {
			bf := fmt.Sprintf("%s.bars[%d]", f, i)
			for _, p := range []float64{b.GetOpen(), b.GetHigh(), b.GetLow(), b.GetClose()} {
				if !(p > 0) || !finite(p) {
					return nil, apierr.Invalid(bf, "prices must be finite and positive")
				}
			}
			if b.GetLow() > math.Min(b.GetOpen(), b.GetClose()) || b.GetHigh() < math.Max(b.GetOpen(), b.GetClose()) {
				return nil, apierr.Invalid(bf, "low must be <= min(open, close) and high >= max(open, close)")
			}
			if b.Volume != nil && (!(b.GetVolume() >= 0) || !finite(b.GetVolume())) {
				return nil, apierr.Invalid(bf+".volume", "must be finite and >= 0")
			}
			if (b.GetTime() != nil) != withTime {
				return nil, apierr.Invalid(bf+".time", "either every bar has a time or none has")
			}
			if withTime {
				t := b.GetTime().AsTime()
				if i > 0 && !t.After(out.times[i-1]) {
					return nil, apierr.Invalid(bf+".time", "must be after the previous bar's")
				}
				out.times = append(out.times, t)
			}
			out.closes = append(out.closes, b.GetClose())
		}
		out.name = "inline/" + ib.GetSymbol()
	default:
		return nil, apierr.Invalid(field, "a source is required: bundled or inline_bars")
	}
	rows := len(out.closes)
	start, end := 0, rows
	switch r := ds.GetRange().(type) {
	case *metacontrollerv1.Dataset_IndexRange:
		start, end = int(r.IndexRange.GetStart()), int(r.IndexRange.GetEnd())
		if end == 0 {
			end = rows
		}
		switch {
		case start < 0:
			return nil, apierr.Invalid(field+".index_range.start", "must not be negative, got %d", start)
		case start >= rows:
			return nil, apierr.Invalid(field+".index_range.start", "the data has %d rows, got %d", rows, start)
		case end > rows:
			return nil, apierr.Invalid(field+".index_range.end", "the data has %d rows, got %d", rows, end)
		case end <= start:
			return nil, apierr.Invalid(field+".index_range.end", "empty range: must be greater than start %d, got %d", start, end)
		}
	case *metacontrollerv1.Dataset_TimeRange:
		if out.times == nil {
			return nil, apierr.Invalid(field+".time_range", "the series has no timestamps; use index_range")
		}
		tr := r.TimeRange
		start, end = 0, rows
		if tr.GetStartTime() != nil {
			st := tr.GetStartTime().AsTime()
			start, _ = slices.BinarySearchFunc(out.times, st, func(a, b time.Time) int { return a.Compare(b) })
		}
		if tr.GetEndTime() != nil {
			et := tr.GetEndTime().AsTime()
			end, _ = slices.BinarySearchFunc(out.times, et, func(a, b time.Time) int { return a.Compare(b) })
		}
		if end <= start {
			return nil, apierr.Invalid(field+".time_range", "no bars in the range (the data covers %s to %s)",
				out.times[0].Format(time.RFC3339), out.times[rows-1].Format(time.RFC3339))
		}
	}
	out.closes = out.closes[start:end]
	for i, p := range out.pool {
		out.pool[i] = p[start:end]
	}
	if out.times != nil {
		out.times = out.times[start:end]
	}
	out.start = start
	return out, nil
}

// strategiesFrom resolves the request's strategy names.
func strategiesFrom(field string, names []string) ([]strategy.Strategy, error) {
	strats, err := strategy.ByName(names)
	if err != nil {
		return nil, apierr.Invalid(field, "%v (have %s)", err, strings.Join(strategy.Names(), ", "))
	}
	if len(strats) < 2 {
		return nil, apierr.Invalid(field, "at least 2 strategies, got %d", len(strats))
	}
	return strats, nil
}

// hrlConfig applies the request's hyperparameters over the defaults.
func hrlConfig(field string, c *metacontrollerv1.HrlConfig, costBps *float64) (hrl.Config, error) {
	cfg := hrl.DefaultConfig()
	if c == nil {
		c = &metacontrollerv1.HrlConfig{}
	}
	if c.NumOptions != nil {
		cfg.NumOptions = int(c.GetNumOptions())
	}
	if c.LearningRate != nil {
		cfg.LearningRate = c.GetLearningRate()
	}
	if c.Epochs != nil {
		cfg.Epochs = int(c.GetEpochs())
	}
	if c.SwitchingCostBps != nil {
		cfg.SwitchingCostBps = c.GetSwitchingCostBps()
	} else if costBps != nil {
		cfg.SwitchingCostBps = *costBps
	}
	if c.BlendRate != nil {
		cfg.BlendRate = c.GetBlendRate()
	}
	if c.Discount != nil {
		cfg.Discount = c.GetDiscount()
	}
	if c.TerminationRegularization != nil {
		cfg.TerminationRegularization = c.GetTerminationRegularization()
	}
	if c.EntropyCoefficient != nil {
		cfg.EntropyCoefficient = c.GetEntropyCoefficient()
	}
	if c.HiddenUnits != nil {
		cfg.HiddenUnits = int(c.GetHiddenUnits())
	}
	if c.Seed != nil {
		cfg.Seed = c.GetSeed()
	} else {
		cfg.Seed = time.Now().UnixNano()
	}
	if err := cfg.Validate(); err != nil {
		var fe *hrl.FieldError
		if errors.As(err, &fe) {
			return cfg, apierr.Invalid(field+"."+fe.Field, "%s", fe.Reason)
		}
		return cfg, apierr.Invalid(field, "%v", err)
	}
	return cfg, nil
}

func hrlConfigToProto(c hrl.Config) *metacontrollerv1.HrlConfig {
	return &metacontrollerv1.HrlConfig{
		NumOptions: proto.Int32(int32(c.NumOptions)), LearningRate: proto.Float64(c.LearningRate), Epochs: proto.Int32(int32(c.Epochs)),
		SwitchingCostBps: proto.Float64(c.SwitchingCostBps), BlendRate: proto.Float64(c.BlendRate), Discount: proto.Float64(c.Discount),
		TerminationRegularization: proto.Float64(c.TerminationRegularization), EntropyCoefficient: proto.Float64(c.EntropyCoefficient),
		HiddenUnits: proto.Int32(int32(c.HiddenUnits)), Seed: proto.Int64(c.Seed),
	}
}

func metricsToProto(pk backtest.PolicyKind, m backtest.Metrics, names []string) *metacontrollerv1.PolicyMetrics {
	out := &metacontrollerv1.PolicyMetrics{
		Policy: metacontrollerv1.PolicyKind(pk), BarsEvaluated: int64(m.Bars), ChurnRate: m.ChurnRate, MaxDisruption: m.MaxDisruption,
		Sharpe: m.Sharpe, TotalReturn: m.TotalReturn, MaxDrawdown: m.MaxDrawdown, TurnoverCost: m.TurnoverCost,
		AnnualizedVolatility: m.AnnualizedVolatility, MeanWeights: map[string]float64{},
	}
	for i, w := range m.MeanWeights {
		out.MeanWeights[names[i]] = w
	}
	return out
}

// RunBacktest implements MetaControllerServiceServer.
func (s *Server) RunBacktest(ctx context.Context, req *metacontrollerv1.RunBacktestRequest) (*metacontrollerv1.RunBacktestResponse, error) {
	began := time.Now()
	ds, err := readDataset("dataset", req.GetDataset())
	if err != nil {
		return nil, err
	}
	if req.GetEveryColumn() && len(ds.pool) == 0 {
		return nil, apierr.Invalid("every_column", "needs a bundled dataset with several columns of as many rows; %s has no other", ds.name)
	}
	strats, err := strategiesFrom("strategies", req.GetStrategies())
	if err != nil {
		return nil, err
	}
	names := make([]string, len(strats))
	for i, st := range strats {
		names[i] = st.Name
	}
	var policies []backtest.PolicyKind
	for i, p := range req.GetPolicies() {
		pk := backtest.PolicyKind(p)
		if !slices.Contains(backtest.AllPolicies, pk) {
			return nil, apierr.Invalid(fmt.Sprintf("policies[%d]", i), "unknown policy %d", int32(p))
		}
		if slices.Contains(policies, pk) {
			return nil, apierr.Invalid(fmt.Sprintf("policies[%d]", i), "%s appears twice", p)
		}
		policies = append(policies, pk)
	}
	if len(policies) == 0 {
		policies = backtest.AllPolicies
	}
	frac, folds := 0.7, 1
	if wf := req.GetWalkForward(); wf != nil {
		if wf.TrainFraction != nil {
			frac = wf.GetTrainFraction()
			if !(frac > 0 && frac < 1) {
				return nil, apierr.Invalid("walk_forward.train_fraction", "must be in (0, 1), got %v", frac)
			}
		}
		if wf.Folds != nil {
			folds = int(wf.GetFolds())
			if folds < 1 || folds > maxFolds {
				return nil, apierr.Invalid("walk_forward.folds", "must be 1 to %d, got %d", maxFolds, folds)
			}
		}
	}
	cost := 10.0
	if req.SwitchingCostBps != nil {
		cost = req.GetSwitchingCostBps()
		if !(cost >= 0 && cost <= 10000) {
			return nil, apierr.Invalid("switching_cost_bps", "must be 0 to 10000, got %v", cost)
		}
	}
	periods := 252
	if req.PeriodsPerYear != nil {
		periods = int(req.GetPeriodsPerYear())
		if periods < 1 || periods > maxPeriods {
			return nil, apierr.Invalid("periods_per_year", "must be 1 to %d, got %d", maxPeriods, periods)
		}
	}
	hc, err := hrlConfig("hrl", req.GetHrl(), &cost)
	if err != nil {
		return nil, err
	}
	splits, err := backtest.Splits(len(ds.closes), frac, folds)
	if err != nil {
		return nil, apierr.Invalid("dataset", "%v", err)
	}
	cfg := backtest.Config{
		Closes: ds.closes, Strategies: strats, Policies: policies, TrainFraction: frac, Folds: folds,
		SwitchingCostBps: cost, PeriodsPerYear: periods, Seed: hc.Seed, Series: req.GetIncludeSeries(),
	}
	if id := req.GetRegimeModelId(); id != "" {
		// One stored model for every fold: it must predate the first
		// evaluated row.
		if cfg.Regime, err = s.storedRegimeModel(ctx, "regime_model_id", id, ds, ds.start+splits[0][0]); err != nil {
			return nil, err
		}
	}
	var fixed *metacontrollerv1.PolicyModel
	if slices.Contains(policies, backtest.HRL) {
		if req.GetHrlModel() != nil {
			p, pm, err := s.resolvePolicy(ctx, "hrl_model", req.GetHrlModel())
			if err != nil {
				return nil, err
			}
			if !slices.Equal(p.Strategies, names) {
				return nil, apierr.Invalid("hrl_model", "version %d was trained on strategies %v, the backtest allocates across %v", pm.GetVersion(), p.Strategies, names)
			}
			// Walk-forward: the version must not have been trained on an
			// evaluated row or a later one.
			firstTest := ds.start + splits[0][0]
			if ds.trainedOn(p, firstTest) {
				return nil, apierr.Invalid("hrl_model", "version %d was trained on rows %d-%d of %s, not all before the rows this backtest evaluates (from row %d)", pm.GetVersion(), p.TrainStart, p.TrainEnd, p.TrainDataset, firstTest)
			}
			cfg.HRLPolicy = backtest.HRLPolicy(p)
			fixed = pm
		} else {
			cfg.TrainHRL = backtest.HRLTrainer(hc, names, nil)
			cfg.Pool = ds.pool
		}
	}
	if cfg.TrainHRL != nil {
		// Training HRL per fold is a training like TrainPolicy's: it takes
		// one of the same MaxTrainings slots.
		release, err := s.acquireTraining()
		if err != nil {
			return nil, err
		}
		defer release()
	}
	var res *backtest.Portfolio
	if req.GetEveryColumn() {
		cfg.Pool = ds.pool
		res, err = backtest.RunPortfolio(ctx, cfg)
	} else {
		var rep *backtest.Report
		if rep, err = backtest.Run(ctx, cfg); err == nil {
			res = &backtest.Portfolio{Series: []*backtest.Report{rep}}
		}
	}
	switch {
	case errors.Is(err, backtest.ErrInvalid):
		return nil, apierr.Invalid("dataset", "%v", err)
	case err != nil:
		return nil, err
	}
	rep := res.Series[0]
	resp := &metacontrollerv1.RunBacktestResponse{Strategies: names, SwitchingCostBps: cost, PeriodsPerYear: int32(periods), Seed: hc.Seed}
	if cfg.TrainHRL != nil {
		resp.Hrl = hrlConfigToProto(hc)
	}
	for _, f := range rep.Folds {
		fold := &metacontrollerv1.Fold{
			Train:         &metacontrollerv1.IndexRange{Start: int64(ds.start), End: int64(ds.start + f.TrainEnd)},
			Test:          &metacontrollerv1.IndexRange{Start: int64(ds.start + f.TrainEnd), End: int64(ds.start + f.TestEnd)},
			RegimeModelId: req.GetRegimeModelId(),
		}
		if slices.Contains(policies, backtest.HRL) {
			fold.HrlModel = &metacontrollerv1.PolicyModel{ModelName: s.cfg.ModelName}
			if fixed != nil {
				fold.HrlModel = fixed
			}
		}
		resp.Folds = append(resp.Folds, fold)
	}
	results := func(rs []backtest.Result) []*metacontrollerv1.PolicyResult {
		var out []*metacontrollerv1.PolicyResult
		for _, r := range rs {
			pr := &metacontrollerv1.PolicyResult{Metrics: metricsToProto(r.Policy, r.Metrics, names)}
			for _, p := range r.Series {
				pt := &metacontrollerv1.BacktestPoint{Index: int64(ds.start + p.Index), Weights: p.Weights, NetReturn: p.NetReturn, Equity: p.Equity, Churn: p.Churn}
				if ds.times != nil {
					pt.Time = timestamppb.New(ds.times[p.Index])
				}
				pr.Series = append(pr.Series, pt)
			}
			out = append(out, pr)
		}
		return out
	}
	resp.Results = results(rep.Results)
	if req.GetEveryColumn() {
		cols := append([]string{ds.column}, ds.poolNames...)
		for i, r := range res.Series {
			resp.Columns = append(resp.Columns, &metacontrollerv1.ColumnResults{Column: cols[i], Results: results(r.Results)})
		}
		resp.Portfolio = results(res.Combined)
	}
	resp.Duration = durationpb.New(time.Since(began))
	return resp, nil
}
