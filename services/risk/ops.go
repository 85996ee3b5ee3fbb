package risk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// expire releases a's open reservations whose time has passed. a.mu is
// held.
//
// Expiry is not written: a stored reservation that is open with its expiry
// in the past is expired, and the engine reads it so (see normalize). That
// saves a write per expired order.
func (e *Engine) expire(a *account, now time.Time) {
	for _, r := range a.open {
		if !now.Before(r.expires) {
			a.closeReservation(r, riskv1.ReservationState_RESERVATION_STATE_EXPIRED, r.expires)
		}
	}
}

// normalize turns a stored reservation that is open past its expiry into
// the expired reservation it is.
func normalize(r *reservation, now time.Time) {
	if r.isOpen() && !now.Before(r.expires) {
		r.state = riskv1.ReservationState_RESERVATION_STATE_EXPIRED
		r.closed = r.expires
	}
}

// anchors is the money part of a's row.
func (a *account) anchors() accountRow {
	return accountRow{id: a.id, created: a.created, cash: a.cash, dayStart: a.dayStart, dayEquity: a.dayEquity, highWater: a.highWater}
}

// row is a's whole row.
func (a *account) row() accountRow {
	r := a.anchors()
	r.full = true
	r.limits = a.limits.toProto(a.id)
	r.kill = cloneKill(a.kill)
	return r
}

func cloneKill(k *riskv1.KillSwitchState) *riskv1.KillSwitchState {
	return proto.Clone(k).(*riskv1.KillSwitchState)
}

// trip trips a's kill switch.
func (a *account) trip(cause riskv1.KillSwitchCause, reason, principal, actor string, now time.Time) {
	k := a.kill
	k.Tripped = true
	k.Cause = cause
	k.TripReason = reason
	k.TrippedByPrincipal = principal
	k.TrippedByActor = actor
	k.TripTime = timestamppb.New(now)
	k.Revision++
}

func killEvent(t riskv1.RiskEventType, k *riskv1.KillSwitchState, now time.Time) *riskv1.RiskEvent {
	return &riskv1.RiskEvent{
		Type:      t,
		AccountId: k.GetAccountId(),
		EventTime: timestamppb.New(now),
		Detail:    &riskv1.RiskEvent_KillSwitch{KillSwitch: k},
	}
}

// lockAccount finds an account, locks it and makes its memory
// trustworthy; NotFound for an unknown account.
func (e *Engine) lockAccount(ctx context.Context, id string) (*account, error) {
	a := e.account(id)
	if a == nil {
		return nil, errUnknownAccount(id)
	}
	if err := e.lockReady(ctx, a); err != nil {
		return nil, err
	}
	return a, nil
}

// lockReady locks a and makes its memory trustworthy, or unlocks and
// returns Unavailable.
func (e *Engine) lockReady(ctx context.Context, a *account) error {
	a.mu.Lock()
	if err := e.ready(ctx, a); err != nil {
		a.mu.Unlock()
		return apierr.Unavailable("risk account state", err)
	}
	return nil
}

// fillInput is a validated fill.
type fillInput struct {
	fillID           string
	reservationID    string
	quantity         float64
	price            float64
	fee              float64
	at               time.Time // zero: now
	releaseRemainder bool
}

// fillResult is the account's state after a fill.
type fillResult struct {
	reservation reservation
	position    position
	refPrice    float64
	cash        float64
	duplicate   bool
	late        bool
	breaches    []violation
}

// ApplyFill converts (part of) a reservation into a position.
func (e *Engine) ApplyFill(ctx context.Context, accountID string, f fillInput) (*fillResult, error) {
	a, err := e.lockAccount(ctx, accountID)
	if err != nil {
		return nil, err
	}
	now := e.now()
	if f.at.IsZero() {
		f.at = now
	}
	prev, seen := a.fills[f.fillID]
	if !seen {
		// Older fills are only in the store: a resent fill id must be
		// recognised whatever its age.
		switch old, err := e.store.Fill(ctx, a.id, f.fillID); {
		case err == nil:
			prev, seen = fillRecord{reservationID: old.reservationID, quantity: old.quantity, price: old.price, fee: old.fee, at: old.at}, true
		case !errors.Is(err, apierr.ErrNotFound):
			a.mu.Unlock()
			return nil, err
		}
	}
	if seen {
		res, err := e.duplicateFill(ctx, a, f, prev)
		// The fill may have been applied by a request whose write is still
		// in flight: answer once it is durable, or fail with it.
		wait := e.settle(ctx, a)
		a.mu.Unlock()
		if werr := wait(); werr != nil {
			return nil, apierr.Unavailable("risk store", werr)
		}
		return res, err
	}
	r, err := e.findReservation(ctx, a, f.reservationID)
	if err != nil {
		a.mu.Unlock()
		return nil, err
	}
	if rem := r.remaining(); f.quantity > rem+1e-9 {
		a.mu.Unlock()
		return nil, apierr.FailedPrecondition("FILL_EXCEEDS_RESERVATION",
			"fill quantity %g exceeds the unfilled quantity %g of reservation %s", f.quantity, rem, r.id)
	}

	var u unit
	e.expire(a, now)
	// A fill on a new trading day is measured against that day's anchors.
	e.pricesMu.RLock()
	a.rollDay(now, e.cfg.Location, e.prices)
	e.pricesMu.RUnlock()
	res := &fillResult{late: !r.isOpen()}
	pos := a.position(r.symbol)
	if r.isOpen() {
		pos.hold(r, math.Min(f.quantity, r.reserved()), -1)
	}
	r.filledQty += f.quantity
	if r.isOpen() {
		switch {
		case r.remaining() <= 1e-9:
			r.state = riskv1.ReservationState_RESERVATION_STATE_FILLED
			r.closed = now
			delete(a.open, r.id)
		case f.releaseRemainder:
			a.closeReservation(r, riskv1.ReservationState_RESERVATION_STATE_RELEASED, now)
		}
	}
	closed := pos.qty != 0 && (pos.qty > 0) != (r.side == buy)
	pnl := pos.applyFill(r.side, f.quantity, f.price) - f.fee
	pos.realized -= f.fee
	pos.updated = now
	a.cash -= float64(r.side)*f.quantity*f.price + f.fee
	a.fills[f.fillID] = fillRecord{reservationID: r.id, quantity: f.quantity, price: f.price, fee: f.fee, at: f.at}

	e.pricesMu.RLock()
	res.breaches = a.breaches(r.symbol, e.prices)
	var trip checkResult
	equity, _ := a.valuation(e.prices)
	res.refPrice = e.prices.get(r.symbol)
	e.pricesMu.RUnlock()
	e.checkPnL(a, equity, now, &trip)

	res.reservation = *r
	res.position = *pos
	res.cash = a.cash
	u.fills = append(u.fills, fillRow{accountID: a.id, fillID: f.fillID, reservationID: r.id, quantity: f.quantity, price: f.price, fee: f.fee, at: f.at})
	u.reservations = append(u.reservations, *r)
	u.positions = append(u.positions, positionRow{accountID: a.id, symbol: pos.symbol, qty: pos.qty, avgPrice: pos.avgPrice, realized: pos.realized, updated: now})
	if trip.trip != nil {
		u.accounts = append(u.accounts, a.row())
		u.events = append(u.events, killEvent(riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, trip.trip, now))
	} else {
		u.accounts = append(u.accounts, a.anchors())
	}
	if len(res.breaches) > 0 {
		u.events = append(u.events, breachEvent(a.id, f.fillID, r.id, res.breaches, now))
	}
	wait := e.commit(ctx, a, &u)
	a.mu.Unlock()
	if err := wait(); err != nil {
		return nil, apierr.Unavailable("risk store", err)
	}
	for _, b := range res.breaches {
		if e.obs.breach != nil {
			e.obs.breach(b.rule)
		}
	}
	if e.obs.fill != nil {
		e.obs.fill(r.side, pnl, closed)
	}
	return res, nil
}

// duplicateFill answers a fill id applied before: the same content is
// acknowledged, different content is AlreadyExists. a.mu is held.
func (e *Engine) duplicateFill(ctx context.Context, a *account, f fillInput, prev fillRecord) (*fillResult, error) {
	if prev.reservationID != f.reservationID || prev.quantity != f.quantity || prev.price != f.price || prev.fee != f.fee {
		return nil, apierr.AlreadyExists("fill", f.fillID, "it was applied with different content")
	}
	r, err := e.findReservation(ctx, a, f.reservationID)
	if err != nil {
		return nil, err
	}
	res := &fillResult{duplicate: true, reservation: *r, cash: a.cash}
	if p := a.positions[r.symbol]; p != nil {
		res.position = *p
	} else {
		res.position = position{symbol: r.symbol}
	}
	e.pricesMu.RLock()
	res.refPrice = e.prices.get(r.symbol)
	e.pricesMu.RUnlock()
	return res, nil
}

// findReservation returns a reservation of a from memory, or from the
// store for an old one (kept in memory from then on). a.mu is held.
func (e *Engine) findReservation(ctx context.Context, a *account, id string) (*reservation, error) {
	if r := a.recent[id]; r != nil {
		return r, nil
	}
	r, err := e.store.Reservation(ctx, a.id, id)
	if err != nil {
		return nil, err
	}
	normalize(r, e.now())
	a.recent[r.id] = r
	return r, nil
}

// breaches lists the limits the filled position (without reservations) of
// symbol, and the account's filled exposure, are beyond.
func (a *account) breaches(symbol string, px priceView) []violation {
	l := &a.limits
	p := a.positions[symbol]
	if p == nil {
		return nil
	}
	var out []violation
	add := func(rule riskv1.RiskRule, limit, observed float64, sym string) {
		out = append(out, violation{rule: rule, limit: limit, observed: observed, symbol: sym})
	}
	if q := math.Abs(p.qty); l.MaxPositionQuantity.exceeded(q * (1 - 1e-9)) {
		add(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, l.MaxPositionQuantity.v, q, symbol)
	}
	n := math.Abs(p.value(px.get(symbol)))
	if l.MaxPositionNotional.exceeded(n * (1 - 1e-9)) {
		add(riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL, l.MaxPositionNotional.v, n, symbol)
	}
	equity, gross := a.valuation(px)
	if l.MaxGrossExposure.exceeded(gross * (1 - 1e-9)) {
		add(riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE, l.MaxGrossExposure.v, gross, "")
	}
	if lev := ratio(gross, equity); l.MaxLeverage.exceeded(lev * (1 - 1e-9)) {
		add(riskv1.RiskRule_RISK_RULE_LEVERAGE, l.MaxLeverage.v, lev, "")
	}
	if c := ratio(n, equity) * 100; l.MaxConcentrationPct.exceeded(c * (1 - 1e-9)) {
		add(riskv1.RiskRule_RISK_RULE_CONCENTRATION, l.MaxConcentrationPct.v, c, symbol)
	}
	return out
}

// checkPnL raises the high-water mark and trips the kill switch on a daily
// loss or drawdown breach. a.mu is held.
func (e *Engine) checkPnL(a *account, equity float64, now time.Time, res *checkResult) {
	if !isFinite(equity) {
		// Nothing can be measured (checks fail closed); an infinite mark
		// must not become the high-water mark.
		return
	}
	if equity > a.highWater {
		a.highWater = equity
	}
	l := &a.limits
	if loss := a.dayEquity - equity; l.MaxDailyLoss.exceeded(loss) {
		a.autoTrip(riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_DAILY_LOSS, l.MaxDailyLoss.v, loss, now, res)
	}
	if dd := drawdown(a.highWater, equity); l.MaxDrawdownPercent.exceeded(dd) {
		a.autoTrip(riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MAX_DRAWDOWN, l.MaxDrawdownPercent.v, dd, now, res)
	}
}

func breachEvent(accountID, fillID, reservationID string, vs []violation, now time.Time) *riskv1.RiskEvent {
	return &riskv1.RiskEvent{
		Type:      riskv1.RiskEventType_RISK_EVENT_TYPE_LIMIT_BREACHED,
		AccountId: accountID,
		EventTime: timestamppb.New(now),
		Detail: &riskv1.RiskEvent_Breach{Breach: &riskv1.LimitBreach{
			FillId: fillID, ReservationId: reservationID, Violations: violationsToProto(vs),
		}},
	}
}

// releaseResult is a reservation after a release.
type releaseResult struct {
	reservation reservation
	quantity    float64
	notional    float64
}

// Release frees the unfilled remainder of a reservation. A reservation no
// longer open is returned unchanged.
func (e *Engine) Release(ctx context.Context, accountID, reservationID string) (*releaseResult, error) {
	return e.ReleaseWithReason(ctx, accountID, reservationID, "")
}

// ReleaseWithReason is Release, recording why (for example "cancelled by
// engine") with the reservation.
func (e *Engine) ReleaseWithReason(ctx context.Context, accountID, reservationID, reason string) (*releaseResult, error) {
	a, err := e.lockAccount(ctx, accountID)
	if err != nil {
		return nil, err
	}
	now := e.now()
	var u unit
	e.expire(a, now)
	r, err := e.findReservation(ctx, a, reservationID)
	if err != nil {
		a.mu.Unlock()
		return nil, err
	}
	res := &releaseResult{}
	if r.isOpen() {
		res.quantity = r.reserved()
		res.notional = res.quantity * r.price
		a.closeReservation(r, riskv1.ReservationState_RESERVATION_STATE_RELEASED, now)
		r.closeReason = reason
		u.reservations = append(u.reservations, *r)
	}
	res.reservation = *r
	var wait func() error
	if u.empty() {
		// No longer open: the write that closed it may still be in flight.
		wait = e.settle(ctx, a)
	} else {
		wait = e.commit(ctx, a, &u)
	}
	a.mu.Unlock()
	if err := wait(); err != nil {
		return nil, apierr.Unavailable("risk store", err)
	}
	return res, nil
}

// sweep releases expired reservations of every account.
func (e *Engine) sweep(ctx context.Context) {
	accounts := e.allAccounts()
	now := e.now()
	for _, a := range accounts {
		a.mu.Lock()
		if a.stale {
			a.mu.Unlock()
			continue
		}
		var u unit
		e.expire(a, now)
		a.prune(now, keepRecent)
		wait := e.commit(ctx, a, &u)
		a.mu.Unlock()
		if err := wait(); err != nil {
			e.log.Warn("risk reservation expiry not written; will retry", "account", a.id, "error", err)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// Run releases expired reservations every SweepInterval and prunes old
// events, and reservations closed longer than Retention ago with their
// fills, hourly, until ctx is done.
func (e *Engine) Run(ctx context.Context) {
	sweep := time.NewTicker(e.cfg.SweepInterval)
	defer sweep.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			e.sweep(ctx)
		case <-prune.C:
			n, err := e.store.PruneEvents(ctx, e.now().Add(-e.cfg.EventRetention))
			if err != nil {
				e.log.Warn("risk event pruning failed", "error", err)
			} else if n > 0 {
				e.log.Info("risk events pruned", "deleted", n)
			}
			e.pruneClosed(ctx)
		}
	}
}

// pruneBatch is how many reservations one pruning transaction deletes.
const pruneBatch = 1000

// pruneClosed deletes the reservations closed more than Retention ago, and
// their fills, a batch per transaction. A fill is only forgotten with its
// reservation: a resent fill is then either recognised or refused because
// its reservation is unknown, never applied twice.
func (e *Engine) pruneClosed(ctx context.Context) {
	before := e.now().Add(-e.cfg.Retention)
	var reservations, fills int64
	for ctx.Err() == nil {
		r, f, err := e.store.PruneClosed(ctx, before, pruneBatch)
		reservations, fills = reservations+r, fills+f
		if err != nil {
			e.log.Warn("risk reservation pruning failed; will retry", "error", err)
			break
		}
		if r < pruneBatch {
			break
		}
	}
	if reservations > 0 {
		e.log.Info("risk reservations pruned", "reservations", reservations, "fills", fills, "closed_before", before)
	}
}

// priceInput is a validated price update.
type priceInput struct {
	symbol string
	price  float64
	at     time.Time // zero: now
}

// UpdatePrices sets reference prices; updates older than the stored ones
// are ignored. Accounts holding an updated symbol are checked for daily
// loss and drawdown breaches, which trip their kill switch.
func (e *Engine) UpdatePrices(ctx context.Context, in []priceInput) (applied, stale int, err error) {
	now := e.now()
	// A new trading day starts from yesterday's closing prices: roll every
	// account before today's first price moves them.
	e.rollAll(ctx, now)
	var u unit
	changed := make(map[string]bool, len(in))
	e.pricesMu.Lock()
	for _, p := range in {
		at := p.at
		if at.IsZero() {
			at = now
		}
		if cur, ok := e.prices[p.symbol]; ok && at.Before(cur.at) {
			stale++
			continue
		}
		e.prices[p.symbol] = priceEntry{price: p.price, at: at}
		u.prices = append(u.prices, priceRow{symbol: p.symbol, price: p.price, at: at})
		changed[p.symbol] = true
		applied++
	}
	e.pricesMu.Unlock()
	u.span = trace.SpanContextFromContext(ctx)
	if err := <-e.store.Submit(&u); err != nil {
		return 0, 0, apierr.Unavailable("risk store", err)
	}
	e.tripOnPrices(ctx, changed, now)
	return applied, stale, nil
}

// rollAll starts the new trading day of every account, once per day, with
// the prices in place before the day's first price update.
func (e *Engine) rollAll(ctx context.Context, now time.Time) {
	day := dayStart(now, e.cfg.Location)
	e.mu.Lock()
	if !e.rolled.Before(day) {
		e.mu.Unlock()
		return
	}
	e.rolled = day
	accounts := make([]*account, 0, len(e.accounts))
	for _, a := range e.accounts {
		accounts = append(accounts, a)
	}
	e.mu.Unlock()
	for _, a := range accounts {
		a.mu.Lock()
		var u unit
		e.pricesMu.RLock()
		if !a.stale && a.rollDay(now, e.cfg.Location, e.prices) {
			u.accounts = append(u.accounts, a.anchors())
		}
		e.pricesMu.RUnlock()
		wait := e.commit(ctx, a, &u)
		a.mu.Unlock()
		if err := wait(); err != nil {
			e.log.Warn("risk day rollover not written", "account", a.id, "error", err)
		}
	}
}

// tripOnPrices evaluates the P&L rules of accounts holding a changed symbol.
func (e *Engine) tripOnPrices(ctx context.Context, changed map[string]bool, now time.Time) {
	if len(changed) == 0 {
		return
	}
	accounts := e.allAccounts()
	for _, a := range accounts {
		a.mu.Lock()
		holds := false
		for sym, p := range a.positions {
			if p.qty != 0 && changed[sym] {
				holds = true
				break
			}
		}
		if !holds || a.stale || (!a.limits.MaxDailyLoss.set && !a.limits.MaxDrawdownPercent.set) {
			a.mu.Unlock()
			continue
		}
		e.pricesMu.RLock()
		equity, _ := a.valuation(e.prices)
		e.pricesMu.RUnlock()
		var res checkResult
		hw := a.highWater
		e.checkPnL(a, equity, now, &res)
		var u unit
		switch {
		case res.trip != nil:
			u.accounts = append(u.accounts, a.row())
			u.events = append(u.events, killEvent(riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, res.trip, now))
		case a.highWater != hw:
			u.accounts = append(u.accounts, a.anchors())
		}
		wait := e.commit(ctx, a, &u)
		a.mu.Unlock()
		if err := wait(); err != nil {
			e.log.Warn("risk kill switch trip not written", "account", a.id, "error", err)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// setLimitsInput is a validated SetLimits request.
type setLimitsInput struct {
	accountID        string
	limits           *riskv1.Limits
	paths            []string // expanded; empty only with cash
	expectedRevision uint64
	cash             *float64
	reason           string
	principal        string
}

// SetLimits changes an account's limits and cash, creating the account.
func (e *Engine) SetLimits(ctx context.Context, in setLimitsInput) (*riskv1.Limits, bool, error) {
	now := e.now()
	e.mu.Lock()
	a := e.accounts[in.accountID]
	created := a == nil
	if created {
		if in.cash == nil {
			e.mu.Unlock()
			return nil, false, apierr.Invalid("cash_balance", "required when SetLimits creates account %q", in.accountID)
		}
		a = newAccount(in.accountID, now)
		e.pricesMu.RLock()
		a.rollDay(now, e.cfg.Location, e.prices)
		e.pricesMu.RUnlock()
		e.accounts[in.accountID] = a
	}
	e.mu.Unlock()

	if err := e.lockReady(ctx, a); err != nil {
		return nil, false, err
	}
	if in.expectedRevision != 0 && in.expectedRevision != a.limits.Revision {
		// The revision read may be a change still being written (a retry
		// of it, say): answer only once it is durable, or fail with it.
		rev := a.limits.Revision
		wait := e.settle(ctx, a)
		a.mu.Unlock()
		if err := wait(); err != nil {
			return nil, false, apierr.Unavailable("risk store", err)
		}
		return nil, false, &apierr.Error{Kind: apierr.ErrAborted, Reason: "LIMITS_REVISION_MISMATCH",
			Message: fmt.Sprintf("limits of account %s are at revision %d, not %d", a.id, rev, in.expectedRevision)}
	}
	next := a.limits
	for _, p := range in.paths {
		limitFields[p](&next, in.limits)
	}
	next.index()
	next.Revision++
	next.UpdateTime = now
	next.UpdatedByPrincipal = in.principal
	a.limits = next
	a.setRate(e.now())
	if in.cash != nil {
		delta := *in.cash - a.cash
		a.cash = *in.cash
		a.dayEquity += delta
		a.highWater += delta
	}
	out := a.limits.toProto(a.id)
	var u unit
	u.accounts = append(u.accounts, a.row())
	u.events = append(u.events, &riskv1.RiskEvent{
		Type:      riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED,
		AccountId: a.id,
		EventTime: timestamppb.New(now),
		Detail: &riskv1.RiskEvent_LimitsChange{LimitsChange: &riskv1.LimitsChange{
			Limits: out, ChangedFields: in.paths, CashBalance: in.cash, Reason: in.reason, Created: created,
		}},
	})
	wait := e.commit(ctx, a, &u)
	a.mu.Unlock()
	if err := wait(); err != nil {
		if created {
			e.mu.Lock()
			delete(e.accounts, in.accountID)
			e.mu.Unlock()
		}
		return nil, false, apierr.Unavailable("risk store", err)
	}
	return proto.Clone(out).(*riskv1.Limits), created, nil
}

// Limits returns an account's limits.
func (e *Engine) Limits(accountID string) (*riskv1.Limits, error) {
	a := e.account(accountID)
	if a == nil {
		return nil, errUnknownAccount(accountID)
	}
	if err := e.lockReady(context.Background(), a); err != nil {
		return nil, err
	}
	defer a.mu.Unlock()
	return a.limits.toProto(a.id), nil
}

// killInput is a validated kill switch request.
type killInput struct {
	accountID        string
	reason           string
	actor            string
	principal        string
	expectedRevision uint64
}

// TriggerKillSwitch trips an account's kill switch.
func (e *Engine) TriggerKillSwitch(ctx context.Context, in killInput) (*riskv1.KillSwitchState, bool, error) {
	return e.setKill(ctx, in, true)
}

// ResetKillSwitch clears an account's kill switch.
func (e *Engine) ResetKillSwitch(ctx context.Context, in killInput) (*riskv1.KillSwitchState, bool, error) {
	return e.setKill(ctx, in, false)
}

func (e *Engine) setKill(ctx context.Context, in killInput, trip bool) (*riskv1.KillSwitchState, bool, error) {
	a := e.account(in.accountID)
	if a == nil {
		return nil, false, errUnknownAccount(in.accountID)
	}
	if err := e.lockReady(ctx, a); err != nil {
		return nil, false, err
	}
	if a.kill.GetTripped() == trip {
		k := cloneKill(a.kill)
		// A retried trip (or reset) finds the first one's change in memory
		// while its write may still be in flight: answer once it is
		// durable, or fail with it.
		wait := e.settle(ctx, a)
		a.mu.Unlock()
		if err := wait(); err != nil {
			return nil, false, apierr.Unavailable("risk store", err)
		}
		return k, true, nil
	}
	if !trip && in.expectedRevision != 0 && in.expectedRevision != a.kill.GetRevision() {
		rev := a.kill.GetRevision()
		a.mu.Unlock()
		return nil, false, &apierr.Error{Kind: apierr.ErrAborted, Reason: "KILL_SWITCH_REVISION_MISMATCH",
			Message: fmt.Sprintf("kill switch of account %s is at revision %d, not %d", in.accountID, rev, in.expectedRevision)}
	}
	now := e.now()
	eventType := riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED
	if trip {
		a.trip(riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MANUAL, in.reason, in.principal, in.actor, now)
	} else {
		k := a.kill
		k.Tripped = false
		k.ResetReason = in.reason
		k.ResetByPrincipal = in.principal
		k.ResetByActor = in.actor
		k.ResetTime = timestamppb.New(now)
		k.Revision++
		eventType = riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET
	}
	out := cloneKill(a.kill)
	var u unit
	u.accounts = append(u.accounts, a.row())
	u.events = append(u.events, killEvent(eventType, cloneKill(a.kill), now))
	wait := e.commit(ctx, a, &u)
	a.mu.Unlock()
	if err := wait(); err != nil {
		return nil, false, apierr.Unavailable("risk store", err)
	}
	return out, false, nil
}

// Portfolio returns an account's current state.
func (e *Engine) Portfolio(ctx context.Context, accountID string) (*riskv1.Portfolio, error) {
	a, err := e.lockAccount(ctx, accountID)
	if err != nil {
		return nil, err
	}
	now := e.now()
	var u unit
	e.expire(a, now)
	e.pricesMu.RLock()
	rolled := a.rollDay(now, e.cfg.Location, e.prices)
	// The high-water mark is the highest equity seen: seeing it here counts.
	if equity, _ := a.valuation(e.prices); equity > a.highWater && isFinite(equity) {
		a.highWater = equity
		rolled = true
	}
	if rolled {
		u.accounts = append(u.accounts, a.anchors())
	}
	out := a.portfolio(e.prices, now)
	e.pricesMu.RUnlock()
	wait := e.commit(ctx, a, &u)
	a.mu.Unlock()
	if err := wait(); err != nil {
		return nil, apierr.Unavailable("risk store", err)
	}
	return out, nil
}

// KillSwitches returns the kill switch state of every account, or of one.
func (e *Engine) KillSwitches(accountID string) ([]*riskv1.KillSwitchState, error) {
	ctx := context.Background()
	e.mu.RLock()
	var accounts []*account
	if accountID != "" {
		if a := e.accounts[accountID]; a != nil {
			accounts = append(accounts, a)
		}
	} else {
		for _, a := range e.accounts {
			accounts = append(accounts, a)
		}
	}
	e.mu.RUnlock()
	if accountID != "" && len(accounts) == 0 {
		return nil, errUnknownAccount(accountID)
	}
	out := make([]*riskv1.KillSwitchState, 0, len(accounts))
	for _, a := range accounts {
		// A stale account's memory may hold a change that never became
		// durable: reload it before it is shown.
		if err := e.lockReady(ctx, a); err != nil {
			return nil, err
		}
		out = append(out, cloneKill(a.kill))
		a.mu.Unlock()
	}
	return out, nil
}

// ActiveKillSwitches counts tripped switches.
func (e *Engine) ActiveKillSwitches() int {
	ks, _ := e.KillSwitches("")
	n := 0
	for _, k := range ks {
		if k.GetTripped() {
			n++
		}
	}
	return n
}
