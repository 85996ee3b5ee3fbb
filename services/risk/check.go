package risk

import (
	"context"
	"fmt"
	"math"
	"time"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// order is a validated order.
type order struct {
	accountID     string
	clientOrderID string
	symbol        string
	side          sign
	orderType     riskv1.OrderType
	quantity      float64
	limitPrice    float64
}

// violation is one broken rule.
type violation struct {
	rule     riskv1.RiskRule
	limit    float64
	observed float64
	symbol   string
	note     string // extra text for the message (fail closed)
}

// checkResult is the outcome of a check. It is filled in place, so the hot
// path allocates nothing but the reservation.
type checkResult struct {
	approved    bool
	n           int
	violations  [maxViolations]violation
	reservation reservation // approved: the reservation as created
	refPrice    float64
	existingID  string // duplicate: the earlier approval's reservation
	at          time.Time
	// trip is set when this check tripped the kill switch (daily loss or
	// drawdown).
	trip *riskv1.KillSwitchState
}

func (r *checkResult) add(rule riskv1.RiskRule, limit, observed float64, symbol string) {
	if r.n < len(r.violations) {
		r.violations[r.n] = violation{rule: rule, limit: limit, observed: observed, symbol: symbol}
		r.n++
	}
}

func (r *checkResult) failClosed(why string) {
	r.approved = false
	r.existingID = ""
	r.n = 0
	r.violations[0] = violation{rule: riskv1.RiskRule_RISK_RULE_FAIL_CLOSED, note: why}
	r.n = 1
}

// Check evaluates o against every rule of its account and, when it passes,
// reserves its exposure durably. An unknown account is InvalidArgument. A
// state that cannot be read or a reservation that cannot be written
// rejects the order (fail closed); it never approves.
func (e *Engine) Check(ctx context.Context, o *order, res *checkResult) error {
	wait, err := e.startCheck(ctx, o, res)
	if err != nil {
		return err
	}
	wait()
	return nil
}

// startCheck evaluates o and submits its writes; the returned function
// waits until they are durable and turns the answer into a fail-closed
// rejection if they are not. Checks started one after another see each
// other's reservations at once, so a batch waits for all its writes
// together.
func (e *Engine) startCheck(ctx context.Context, o *order, res *checkResult) (func(), error) {
	a := e.account(o.accountID)
	if a == nil {
		return nil, apierr.Invalid("order.account_id", "unknown account %q", o.accountID)
	}
	a.mu.Lock()
	if err := e.ready(ctx, a); err != nil {
		a.mu.Unlock()
		res.at = e.now()
		res.failClosed(err.Error())
		return func() {}, nil
	}
	now := e.now()
	var u unit
	e.expire(a, now)
	e.pricesMu.RLock()
	hw := a.highWater
	rolled := a.rollDay(now, e.cfg.Location, e.prices)
	a.evaluate(o, now, e.prices, res)
	e.pricesMu.RUnlock()
	if rolled || (a.highWater != hw && a.limits.MaxDrawdownPercent.set) {
		// A new day's anchors, or a high-water mark the check raised that
		// a drawdown limit measures from (after a restart too); without
		// such a limit nothing reads it, and the check need not wait.
		u.accounts = append(u.accounts, a.anchors())
	}
	if res.trip != nil {
		u.accounts = append(u.accounts, a.row())
		u.events = append(u.events, killEvent(riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, res.trip, now))
	}
	if res.approved {
		r := a.reserve(o, now, e.newReservationID(), res.refPrice, e.ttl(a))
		res.reservation = *r
		u.reservations = append(u.reservations, *r)
	}
	var wait func() error
	if u.empty() && res.existingID != "" {
		// A duplicate names the earlier approval's reservation, whose
		// write may still be in flight: answer once it is durable.
		wait = e.settle(ctx, a)
	} else {
		wait = e.commit(ctx, a, &u)
	}
	a.mu.Unlock()
	return func() {
		if err := wait(); err != nil && (res.approved || res.existingID != "") {
			// The reservation is not durable: reject. The account is stale
			// now and is reloaded from the store before its next check.
			res.failClosed(fmt.Sprintf("the reservation could not be written: %v", err))
		}
	}, nil
}

func (e *Engine) ttl(a *account) time.Duration {
	if a.limits.ReservationTTL > 0 {
		return a.limits.ReservationTTL
	}
	return e.cfg.ReservationTTL
}

// evaluate applies every rule to o. It takes an order-rate token, raises
// the high-water mark and trips the kill switch on a daily loss or
// drawdown breach; it reserves nothing. a.mu and the price lock are held.
func (a *account) evaluate(o *order, now time.Time, px priceView, res *checkResult) {
	l := &a.limits
	res.at = now
	res.n = 0
	res.trip = nil
	res.existingID = ""

	// The throttle counts every check, approved or not.
	if a.limiter != nil {
		tokens := a.limiter.TokensAt(now)
		if !a.limiter.AllowN(now, 1) {
			res.add(riskv1.RiskRule_RISK_RULE_ORDER_RATE, l.MaxOrdersPerSecond.v, tokens, "")
		}
	}
	if a.kill.GetTripped() {
		res.add(riskv1.RiskRule_RISK_RULE_KILL_SWITCH, 0, 1, "")
	}
	if a.limits.restricted(o.symbol) {
		res.add(riskv1.RiskRule_RISK_RULE_RESTRICTED_SYMBOL, 0, 0, o.symbol)
	}
	if l.MaxOrderQuantity.exceeded(o.quantity) {
		res.add(riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY, l.MaxOrderQuantity.v, o.quantity, o.symbol)
	}

	ref := px.get(o.symbol)
	res.refPrice = ref
	price := o.limitPrice
	if o.orderType == riskv1.OrderType_ORDER_TYPE_MARKET {
		price = ref
	}
	if ref == 0 && (o.orderType == riskv1.OrderType_ORDER_TYPE_MARKET || l.PriceCollarPercent.set) {
		res.add(riskv1.RiskRule_RISK_RULE_REFERENCE_PRICE_MISSING, 0, 0, o.symbol)
	}
	if ref > 0 && o.orderType == riskv1.OrderType_ORDER_TYPE_LIMIT && l.PriceCollarPercent.set {
		dev := math.Abs(o.limitPrice-ref) / ref * 100
		if l.PriceCollarPercent.exceeded(dev) {
			res.add(riskv1.RiskRule_RISK_RULE_PRICE_COLLAR, l.PriceCollarPercent.v, dev, o.symbol)
		}
	}
	if l.DuplicateWindow > 0 {
		if prev := a.byClientOrder[o.clientOrderID]; prev != nil {
			age := now.Sub(prev.created)
			if age < l.DuplicateWindow {
				res.add(riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID, l.DuplicateWindow.Seconds(), age.Seconds(), "")
				res.existingID = prev.id
			}
		}
	}

	// Account-wide P&L rules; a breach trips the kill switch by itself.
	equity, _ := a.valuation(px)
	if !isFinite(equity) || !isFinite(a.dayEquity) || !isFinite(a.highWater) {
		// Every comparison with NaN is false and infinities break the
		// ratios: the P&L, leverage and concentration rules would pass
		// whatever the order.
		res.failClosed(fmt.Sprintf("account equity %v (day start %v, high water %v) is not finite, so its P&L, leverage and concentration rules cannot be evaluated",
			equity, a.dayEquity, a.highWater))
		return
	}
	if equity > a.highWater {
		a.highWater = equity
	}
	if loss := a.dayEquity - equity; l.MaxDailyLoss.exceeded(loss) {
		res.add(riskv1.RiskRule_RISK_RULE_DAILY_LOSS, l.MaxDailyLoss.v, loss, "")
		a.autoTrip(riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_DAILY_LOSS, l.MaxDailyLoss.v, loss, now, res)
	}
	if dd := drawdown(a.highWater, equity); l.MaxDrawdownPercent.exceeded(dd) {
		res.add(riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN, l.MaxDrawdownPercent.v, dd, "")
		a.autoTrip(riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MAX_DRAWDOWN, l.MaxDrawdownPercent.v, dd, now, res)
	}

	// Quantity rules need no price.
	if l.MaxPositionQuantity.set {
		var extraBuyQty, extraSellQty float64
		if o.side == buy {
			extraBuyQty = o.quantity
		} else {
			extraSellQty = o.quantity
		}
		var q float64
		if cur := a.positions[o.symbol]; cur != nil {
			q = cur.worstQty(extraBuyQty, extraSellQty)
		} else {
			q = o.quantity
		}
		if l.MaxPositionQuantity.exceeded(q) {
			res.add(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, l.MaxPositionQuantity.v, q, o.symbol)
		}
	}

	if price > 0 {
		notional := o.quantity * price
		if l.MaxOrderNotional.exceeded(notional) {
			res.add(riskv1.RiskRule_RISK_RULE_MAX_ORDER_NOTIONAL, l.MaxOrderNotional.v, notional, o.symbol)
		}
		var extraBuy, extraSell float64
		if o.side == buy {
			extraBuy = notional
		} else {
			extraSell = notional
		}
		var p position
		if cur := a.positions[o.symbol]; cur != nil {
			p = *cur
		}
		symNotional := p.worstNotional(ref, extraBuy, extraSell)
		if l.MaxPositionNotional.exceeded(symNotional) {
			res.add(riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL, l.MaxPositionNotional.v, symNotional, o.symbol)
		}
		if l.MaxGrossExposure.set || l.MaxLeverage.set {
			gross := symNotional
			for sym, other := range a.positions {
				if sym != o.symbol {
					gross += other.worstNotional(px.get(sym), 0, 0)
				}
			}
			if l.MaxGrossExposure.exceeded(gross) {
				res.add(riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE, l.MaxGrossExposure.v, gross, "")
			}
			if lev := ratio(gross, equity); l.MaxLeverage.exceeded(lev) {
				res.add(riskv1.RiskRule_RISK_RULE_LEVERAGE, l.MaxLeverage.v, lev, "")
			}
		}
		if conc := ratio(symNotional, equity) * 100; l.MaxConcentrationPct.exceeded(conc) {
			res.add(riskv1.RiskRule_RISK_RULE_CONCENTRATION, l.MaxConcentrationPct.v, conc, o.symbol)
		}
	}
	res.approved = res.n == 0
	sortViolations(res)
}

func isFinite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// ratio is x / equity, +Inf when equity is not positive and x is.
func ratio(x, equity float64) float64 {
	if equity <= 0 {
		if x > 0 {
			return math.Inf(1)
		}
		return 0
	}
	return x / equity
}

func drawdown(highWater, equity float64) float64 {
	if highWater <= 0 || equity >= highWater {
		return 0
	}
	return (highWater - equity) / highWater * 100
}

// sortViolations orders violations by rule (insertion sort: at most 16).
func sortViolations(res *checkResult) {
	v := res.violations[:res.n]
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j].rule < v[j-1].rule; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}

// autoTrip trips the kill switch for a P&L breach, once.
func (a *account) autoTrip(cause riskv1.KillSwitchCause, limit, observed float64, now time.Time, res *checkResult) {
	if a.kill.GetTripped() {
		return
	}
	rule := "max_daily_loss"
	if cause == riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MAX_DRAWDOWN {
		rule = "max_drawdown_percent"
	}
	a.trip(cause, fmt.Sprintf("%s breached: observed %g, limit %g", rule, observed, limit), systemPrincipal, "", now)
	res.trip = cloneKill(a.kill)
}

// reserve creates the reservation of an approved order.
func (a *account) reserve(o *order, now time.Time, id string, ref float64, ttl time.Duration) *reservation {
	price := o.limitPrice
	if o.orderType == riskv1.OrderType_ORDER_TYPE_MARKET {
		price = ref
	}
	r := &reservation{
		id:            id,
		accountID:     a.id,
		clientOrderID: o.clientOrderID,
		symbol:        o.symbol,
		side:          o.side,
		orderType:     o.orderType,
		orderQty:      o.quantity,
		price:         price,
		state:         riskv1.ReservationState_RESERVATION_STATE_OPEN,
		created:       now,
		expires:       now.Add(ttl),
	}
	a.addReservation(r)
	return r
}
