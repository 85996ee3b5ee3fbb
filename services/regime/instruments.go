package regime

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// instruments are RegimeService's metrics. Prometheus names:
//
//	quantmesh_regime_bars_ingested_total                   bars stored
//	quantmesh_regime_bars_forwarded_total{result}          bars IngestBars stored and put on market.bars (published) or could not (failed)
//	quantmesh_regime_states_total                          regime states computed and published
//	quantmesh_regime_ingest_commit_duration_seconds        time to commit one ingest message
//	quantmesh_regime_feature_cache_requests_total{result}  symbol feature windows found in memory (hit) or rebuilt from stored bars (miss)
//	quantmesh_regime_feature_cache_hit_ratio               hits / requests since start
//	quantmesh_regime_flips_total{kind}                     dominant-regime changes: raw (argmax) and smoothed
//	quantmesh_regime_probability{symbol,regime}            latest smoothed regime probabilities of the first maxSymbolSeries symbols
//	quantmesh_regime_symbols                               symbols with a regime state
type instruments struct {
	bars, states, flips metric.Int64Counter
	fwd                 metric.Int64Counter
	commit              metric.Float64Histogram
	cacheReq            metric.Int64Counter
	hits, requests      atomic.Int64
	hit, miss           metric.AddOption
	raw, smoothed       metric.AddOption
}

func newInstruments(meter metric.Meter) (*instruments, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	ins := &instruments{
		hit:      metric.WithAttributes(attribute.String("result", "hit")),
		miss:     metric.WithAttributes(attribute.String("result", "miss")),
		raw:      metric.WithAttributes(attribute.String("kind", "raw")),
		smoothed: metric.WithAttributes(attribute.String("kind", "smoothed")),
	}
	var err error
	if ins.bars, err = meter.Int64Counter("quantmesh.regime.bars.ingested", metric.WithDescription("Bars stored by RegimeService.")); err != nil {
		return nil, err
	}
	if ins.fwd, err = meter.Int64Counter("quantmesh.regime.bars.forwarded",
		metric.WithDescription("Bars IngestBars stored and put on the bus topic market.bars (published) or could not (failed).")); err != nil {
		return nil, err
	}
	if ins.states, err = meter.Int64Counter("quantmesh.regime.states", metric.WithDescription("Regime states computed and published.")); err != nil {
		return nil, err
	}
	if ins.flips, err = meter.Int64Counter("quantmesh.regime.flips", metric.WithDescription("Dominant-regime changes, raw (argmax) and smoothed.")); err != nil {
		return nil, err
	}
	if ins.commit, err = meter.Float64Histogram("quantmesh.regime.ingest.commit.duration", metric.WithUnit("s"),
		metric.WithDescription("Time to commit one ingest message (bars and states).")); err != nil {
		return nil, err
	}
	if ins.cacheReq, err = meter.Int64Counter("quantmesh.regime.feature_cache.requests",
		metric.WithDescription("Symbol feature windows looked up: found in memory (hit) or rebuilt from stored bars (miss).")); err != nil {
		return nil, err
	}
	ratio, err := meter.Float64ObservableGauge("quantmesh.regime.feature_cache.hit_ratio",
		metric.WithDescription("Share of symbol feature-window lookups served from memory since start."))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if n := ins.requests.Load(); n > 0 {
			o.ObserveFloat64(ratio, float64(ins.hits.Load())/float64(n))
		}
		return nil
	}, ratio); err != nil {
		return nil, err
	}
	ctx := context.Background()
	ins.flips.Add(ctx, 0, ins.raw)
	ins.flips.Add(ctx, 0, ins.smoothed)
	return ins, nil
}

// forwarded counts n bars forwarded to market.bars, or not.
func (ins *instruments) forwarded(ctx context.Context, n int, ok bool) {
	result := "published"
	if !ok {
		result = "failed"
	}
	ins.fwd.Add(ctx, int64(n), metric.WithAttributes(attribute.String("result", result)))
}

// maxSymbolSeries bounds quantmesh_regime_probability: only the first
// maxSymbolSeries symbols with a state, in name order, are exported.
const maxSymbolSeries = 100

// observeStates exports the latest regime state of each symbol e holds.
func (ins *instruments) observeStates(meter metric.Meter, e *Engine) error {
	if meter == nil {
		return nil
	}
	prob, err := meter.Float64ObservableGauge("quantmesh.regime.probability",
		metric.WithDescription("Smoothed probability of each regime (the index in the symbol's active model) in the symbol's latest state, the posterior its dominant regime is chosen from; for the first 100 symbols in name order."))
	if err != nil {
		return err
	}
	symbols, err := meter.Int64ObservableGauge("quantmesh.regime.symbols", metric.WithDescription("Symbols with a regime state."))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		states, _ := e.Snapshot(nil) // in symbol order
		o.ObserveInt64(symbols, int64(len(states)))
		for _, st := range states[:min(len(states), maxSymbolSeries)] {
			sym := attribute.String("symbol", st.GetSymbol())
			for k, p := range st.GetSmoothedProbabilities() {
				o.ObserveFloat64(prob, p, metric.WithAttributes(sym, attribute.String("regime", strconv.Itoa(k))))
			}
		}
		return nil
	}, prob, symbols)
	return err
}

func (ins *instruments) cache(ctx context.Context, hit bool) {
	ins.requests.Add(1)
	if hit {
		ins.hits.Add(1)
		ins.cacheReq.Add(ctx, 1, ins.hit)
		return
	}
	ins.cacheReq.Add(ctx, 1, ins.miss)
}

func (ins *instruments) ingested(ctx context.Context, bars, states int, took time.Duration) {
	ins.bars.Add(ctx, int64(bars))
	ins.states.Add(ctx, int64(states))
	ins.commit.Record(ctx, took.Seconds())
}
