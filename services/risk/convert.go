package risk

import (
	"fmt"
	"math"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (r *reservation) toProto() *riskv1.Reservation {
	return &riskv1.Reservation{
		ReservationId:    r.id,
		AccountId:        r.accountID,
		ClientOrderId:    r.clientOrderID,
		Symbol:           r.symbol,
		Side:             r.side.side(),
		Type:             r.orderType,
		OrderQuantity:    r.orderQty,
		FilledQuantity:   r.filledQty,
		ReservedQuantity: r.reserved(),
		Price:            r.price,
		ReservedNotional: r.reserved() * r.price,
		State:            r.state,
		CreateTime:       ts(r.created),
		ExpireTime:       ts(r.expires),
		CloseTime:        ts(r.closed),
	}
}

func (p *position) toProto(ref float64) *riskv1.Position {
	out := &riskv1.Position{
		Symbol:               p.symbol,
		Quantity:             p.qty,
		AveragePrice:         p.avgPrice,
		ReferencePrice:       ref,
		MarketValue:          p.value(ref),
		Notional:             math.Abs(p.value(ref)),
		RealizedPnl:          p.realized,
		ReservedBuyQuantity:  p.resBuyQty,
		ReservedSellQuantity: p.resSellQty,
		ReservedNotional:     p.resBuyNotional + p.resSellNotional,
		UpdateTime:           ts(p.updated),
	}
	if ref > 0 {
		out.UnrealizedPnl = (ref - p.avgPrice) * p.qty
	}
	return out
}

// portfolio renders a's state. a.mu and the price lock are held.
func (a *account) portfolio(px priceView, now time.Time) *riskv1.Portfolio {
	equity, gross := a.valuation(px)
	out := &riskv1.Portfolio{
		AccountId:       a.id,
		Cash:            a.cash,
		Equity:          equity,
		GrossExposure:   gross,
		Leverage:        ratio(gross, equity),
		DayStartEquity:  a.dayEquity,
		HighWaterEquity: math.Max(a.highWater, equity),
		DayPnl:          equity - a.dayEquity,
		DrawdownPercent: drawdown(math.Max(a.highWater, equity), equity),
		KillSwitch:      cloneKill(a.kill),
		DayStartTime:    ts(a.dayStart),
		AsOfTime:        timestamppb.New(now),
	}
	syms := make([]string, 0, len(a.positions))
	for s, p := range a.positions {
		if !p.empty() {
			syms = append(syms, s)
		}
	}
	sort.Strings(syms)
	for _, s := range syms {
		out.Positions = append(out.Positions, a.positions[s].toProto(px.get(s)))
	}
	open := make([]*reservation, 0, len(a.open))
	for _, r := range a.open {
		open = append(open, r)
		out.ReservedExposure += r.reserved() * r.price
	}
	sort.Slice(open, func(i, j int) bool {
		if !open[i].created.Equal(open[j].created) {
			return open[i].created.Before(open[j].created)
		}
		return open[i].id < open[j].id
	})
	for _, r := range open {
		out.Reservations = append(out.Reservations, r.toProto())
	}
	return out
}

var ruleNames = map[riskv1.RiskRule]string{
	riskv1.RiskRule_RISK_RULE_KILL_SWITCH:               "kill switch is tripped",
	riskv1.RiskRule_RISK_RULE_RESTRICTED_SYMBOL:         "symbol is restricted",
	riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY:        "order quantity %g exceeds max_order_quantity %g",
	riskv1.RiskRule_RISK_RULE_MAX_ORDER_NOTIONAL:        "order notional %g exceeds max_order_notional %g",
	riskv1.RiskRule_RISK_RULE_PRICE_COLLAR:              "limit price is %g%% from the reference price, beyond price_collar_percent %g",
	riskv1.RiskRule_RISK_RULE_REFERENCE_PRICE_MISSING:   "no reference price for the symbol",
	riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID: "client_order_id was approved %gs ago, within duplicate_window %gs",
	riskv1.RiskRule_RISK_RULE_ORDER_RATE:                "order rate throttled: %g tokens available, max_orders_per_second %g",
	riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY:         "projected position %g exceeds max_position_quantity %g",
	riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL:         "projected position notional %g exceeds max_position_notional %g",
	riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE:            "projected gross exposure %g exceeds max_gross_exposure %g",
	riskv1.RiskRule_RISK_RULE_LEVERAGE:                  "projected leverage %g exceeds max_leverage %g",
	riskv1.RiskRule_RISK_RULE_CONCENTRATION:             "projected concentration %g%% exceeds max_concentration_percent %g",
	riskv1.RiskRule_RISK_RULE_DAILY_LOSS:                "day's loss %g exceeds max_daily_loss %g",
	riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN:              "drawdown %g%% exceeds max_drawdown_percent %g",
	riskv1.RiskRule_RISK_RULE_FAIL_CLOSED:               "rejected because the risk state is unavailable",
}

func (v violation) message() string {
	format := ruleNames[v.rule]
	switch v.rule {
	case riskv1.RiskRule_RISK_RULE_KILL_SWITCH, riskv1.RiskRule_RISK_RULE_RESTRICTED_SYMBOL,
		riskv1.RiskRule_RISK_RULE_REFERENCE_PRICE_MISSING:
		if v.symbol != "" {
			return format + ": " + v.symbol
		}
		return format
	case riskv1.RiskRule_RISK_RULE_FAIL_CLOSED:
		if v.note != "" {
			return format + ": " + v.note
		}
		return format
	}
	msg := fmt.Sprintf(format, v.observed, v.limit)
	if v.symbol != "" {
		msg += " (" + v.symbol + ")"
	}
	return msg
}

func violationsToProto(vs []violation) []*riskv1.RuleViolation {
	out := make([]*riskv1.RuleViolation, len(vs))
	for i, v := range vs {
		out[i] = &riskv1.RuleViolation{Rule: v.rule, Limit: v.limit, Observed: v.observed, Message: v.message(), Symbol: v.symbol}
	}
	return out
}

// toProto renders a check's outcome for o.
func (r *checkResult) toProto(o *order) *riskv1.OrderCheckResult {
	out := &riskv1.OrderCheckResult{
		AccountId:             o.accountID,
		ClientOrderId:         o.clientOrderID,
		ReferencePrice:        r.refPrice,
		ExistingReservationId: r.existingID,
		CheckTime:             ts(r.at),
	}
	if r.approved {
		out.Decision = riskv1.Decision_DECISION_APPROVED
		out.Reservation = r.reservation.toProto()
	} else {
		out.Decision = riskv1.Decision_DECISION_REJECTED
		out.Violations = violationsToProto(r.violations[:r.n])
	}
	return out
}

func (o *order) toProto() *riskv1.Order {
	return &riskv1.Order{
		AccountId:     o.accountID,
		ClientOrderId: o.clientOrderID,
		Symbol:        o.symbol,
		Side:          o.side.side(),
		Type:          o.orderType,
		Quantity:      o.quantity,
		LimitPrice:    o.limitPrice,
	}
}
