package risk

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

// metrics are the risk service's instruments. Prometheus names:
//
//	quantmesh_risk_checks_total{decision}            orders checked
//	quantmesh_risk_rule_violations_total{rule}       rules broken by rejected orders
//	quantmesh_risk_check_duration_seconds            check latency, validation to answer
//	quantmesh_risk_limit_breaches_total{rule}        fills that left a position beyond a limit (must stay 0)
//	quantmesh_risk_kill_switches_active              accounts whose kill switch is tripped
//	quantmesh_risk_reservations_open                 open reservations
//	quantmesh_risk_events_dropped_total              rejection events not recorded (queue full or store down)
//	quantmesh_risk_fills_total{side}                 fills applied
//	quantmesh_risk_fill_realized_pnl{effect}         realised P&L of each fill (closing fills: P&L per trade)
//	quantmesh_risk_equity                            equity of every account together
//	quantmesh_risk_account_equity{account}           equity of each of the first maxAccountSeries accounts by id
//	quantmesh_risk_accounts                          accounts
type metrics struct {
	checks     metric.Int64Counter
	violations metric.Int64Counter
	duration   metric.Float64Histogram
	breaches   metric.Int64Counter
	dropped    metric.Int64Counter
	fills      metric.Int64Counter
	pnl        metric.Float64Histogram

	approved, rejected metric.AddOption
	ruleOpts           map[riskv1.RiskRule]metric.AddOption
	bought, sold       metric.AddOption
	opening, closing   metric.RecordOption
}

// maxAccountSeries bounds quantmesh_risk_account_equity: accounts beyond the
// first maxAccountSeries in id order count only in quantmesh_risk_equity.
const maxAccountSeries = 50

// pnlBuckets are the boundaries of the realised P&L histogram, in the
// account's currency: symmetric decades around 0.
var pnlBuckets = []float64{-1e6, -1e5, -1e4, -1e3, -100, -10, -1, 0, 1, 10, 100, 1e3, 1e4, 1e5, 1e6}

func newMetrics(meter metric.Meter, e *Engine) (*metrics, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	m := &metrics{ruleOpts: map[riskv1.RiskRule]metric.AddOption{}}
	var err error
	if m.checks, err = meter.Int64Counter("quantmesh.risk.checks", metric.WithDescription("Orders checked, by decision.")); err != nil {
		return nil, err
	}
	if m.violations, err = meter.Int64Counter("quantmesh.risk.rule.violations", metric.WithDescription("Rules broken by rejected orders, by rule.")); err != nil {
		return nil, err
	}
	if m.duration, err = meter.Float64Histogram("quantmesh.risk.check.duration", metric.WithUnit("s"),
		metric.WithDescription("Time to check one order, from validation to the answer (durable reservation included).")); err != nil {
		return nil, err
	}
	if m.breaches, err = meter.Int64Counter("quantmesh.risk.limit.breaches", metric.WithDescription("Fills that left a position beyond a limit, by rule. Must stay 0.")); err != nil {
		return nil, err
	}
	if m.dropped, err = meter.Int64Counter("quantmesh.risk.events.dropped", metric.WithDescription("Rejection events that could not be recorded.")); err != nil {
		return nil, err
	}
	if m.fills, err = meter.Int64Counter("quantmesh.risk.fills", metric.WithDescription("Fills applied (resent duplicates not counted again), by side.")); err != nil {
		return nil, err
	}
	if m.pnl, err = meter.Float64Histogram("quantmesh.risk.fill.realized_pnl",
		metric.WithDescription("Realised P&L of each fill applied, fee included, in the account's currency, by effect: close (the fill reduced, closed or reversed a position: its closed quantity times the move from the average entry price, less the fee, i.e. P&L per trade) or open (it opened or added to one: minus its fee)."),
		metric.WithExplicitBucketBoundaries(pnlBuckets...)); err != nil {
		return nil, err
	}
	m.bought = metric.WithAttributeSet(attribute.NewSet(attribute.String("side", "buy")))
	m.sold = metric.WithAttributeSet(attribute.NewSet(attribute.String("side", "sell")))
	m.opening = metric.WithAttributeSet(attribute.NewSet(attribute.String("effect", "open")))
	m.closing = metric.WithAttributeSet(attribute.NewSet(attribute.String("effect", "close")))
	// Zero-valued series exist from the start, so alerts and dashboards see
	// 0 rather than no data.
	m.breaches.Add(context.Background(), 0)
	m.fills.Add(context.Background(), 0, m.bought)
	m.fills.Add(context.Background(), 0, m.sold)
	m.approved = metric.WithAttributeSet(attribute.NewSet(attribute.String("decision", "approved")))
	m.rejected = metric.WithAttributeSet(attribute.NewSet(attribute.String("decision", "rejected")))
	for v := range riskv1.RiskRule_name {
		r := riskv1.RiskRule(v)
		name := strings.ToLower(strings.TrimPrefix(r.String(), "RISK_RULE_"))
		m.ruleOpts[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String("rule", name)))
	}
	kill, err := meter.Int64ObservableGauge("quantmesh.risk.kill_switches.active", metric.WithDescription("Accounts whose kill switch is tripped."))
	if err != nil {
		return nil, err
	}
	open, err := meter.Int64ObservableGauge("quantmesh.risk.reservations.open", metric.WithDescription("Open reservations."))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		k, r := e.counts()
		o.ObserveInt64(kill, int64(k))
		o.ObserveInt64(open, int64(r))
		return nil
	}, kill, open); err != nil {
		return nil, err
	}
	equity, err := meter.Float64ObservableGauge("quantmesh.risk.equity",
		metric.WithDescription("Equity of every account together: cash plus filled positions marked at the reference prices (a position without a reference price at its average price)."))
	if err != nil {
		return nil, err
	}
	accountEquity, err := meter.Float64ObservableGauge("quantmesh.risk.account.equity",
		metric.WithDescription("Equity of each account, as quantmesh_risk_equity counts it, for the first 50 accounts in id order; the others count only in the total."))
	if err != nil {
		return nil, err
	}
	accounts, err := meter.Int64ObservableGauge("quantmesh.risk.accounts", metric.WithDescription("Accounts RiskService holds."))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		total, each := e.equities(maxAccountSeries)
		o.ObserveFloat64(equity, total)
		for _, ae := range each.first {
			o.ObserveFloat64(accountEquity, ae.equity, metric.WithAttributeSet(attribute.NewSet(attribute.String("account", ae.id))))
		}
		o.ObserveInt64(accounts, int64(each.n))
		return nil
	}, equity, accountEquity, accounts); err != nil {
		return nil, err
	}
	e.obs.breach = func(rule riskv1.RiskRule) { m.breaches.Add(context.Background(), 1, m.ruleOpts[rule]) }
	e.obs.fill = func(s sign, pnl float64, closed bool) {
		ctx := context.Background()
		if s == sell {
			m.fills.Add(ctx, 1, m.sold)
		} else {
			m.fills.Add(ctx, 1, m.bought)
		}
		if closed {
			m.pnl.Record(ctx, pnl, m.closing)
		} else {
			m.pnl.Record(ctx, pnl, m.opening)
		}
	}
	e.obs.eventDrop = func() { m.dropped.Add(context.Background(), 1) }
	return m, nil
}

func (m *metrics) recordCheck(ctx context.Context, res *checkResult, took time.Duration) {
	m.duration.Record(ctx, took.Seconds())
	if res.approved {
		m.checks.Add(ctx, 1, m.approved)
		return
	}
	m.checks.Add(ctx, 1, m.rejected)
	for _, v := range res.violations[:res.n] {
		m.violations.Add(ctx, 1, m.ruleOpts[v.rule])
	}
}
