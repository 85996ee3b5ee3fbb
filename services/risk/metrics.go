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
type metrics struct {
	checks     metric.Int64Counter
	violations metric.Int64Counter
	duration   metric.Float64Histogram
	breaches   metric.Int64Counter
	dropped    metric.Int64Counter

	approved, rejected metric.AddOption
	ruleOpts           map[riskv1.RiskRule]metric.AddOption
}

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
	// Zero-valued series exist from the start, so alerts and dashboards see
	// 0 rather than no data.
	m.breaches.Add(context.Background(), 0)
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
	e.obs.breach = func(rule riskv1.RiskRule) { m.breaches.Add(context.Background(), 1, m.ruleOpts[rule]) }
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
