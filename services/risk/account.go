package risk

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

// sign is +1 for buys and -1 for sells.
type sign int8

const (
	buy  sign = 1
	sell sign = -1
)

func sideSign(s riskv1.OrderSide) sign {
	if s == riskv1.OrderSide_ORDER_SIDE_SELL {
		return sell
	}
	return buy
}

func (s sign) side() riskv1.OrderSide {
	if s == sell {
		return riskv1.OrderSide_ORDER_SIDE_SELL
	}
	return riskv1.OrderSide_ORDER_SIDE_BUY
}

// reservation is the exposure an approved order holds.
type reservation struct {
	id            string
	accountID     string
	clientOrderID string
	symbol        string
	side          sign
	orderType     riskv1.OrderType
	orderQty      float64
	filledQty     float64
	price         float64
	state         riskv1.ReservationState
	created       time.Time
	expires       time.Time
	closed        time.Time
	closeReason   string // why it was released, when a caller said
}

func (r *reservation) isOpen() bool { return r.state == riskv1.ReservationState_RESERVATION_STATE_OPEN }

// remaining is the unfilled quantity (whatever the state).
func (r *reservation) remaining() float64 { return r.orderQty - r.filledQty }

// reserved is the quantity still held: the remainder while open, else 0.
func (r *reservation) reserved() float64 {
	if !r.isOpen() {
		return 0
	}
	return r.remaining()
}

// position is an account's holding in one symbol plus the aggregates of its
// open reservations.
type position struct {
	symbol   string
	qty      float64 // signed
	avgPrice float64
	realized float64
	updated  time.Time

	resBuyQty, resSellQty           float64
	resBuyNotional, resSellNotional float64
}

// value is the signed market value at the reference price px (the average
// price when px is 0).
func (p *position) value(px float64) float64 {
	if px <= 0 {
		px = p.avgPrice
	}
	return p.qty * px
}

// worstNotional is the worst-case |value| counting open reservations that
// add exposure, plus an extra buy or sell notional.
func (p *position) worstNotional(px, extraBuy, extraSell float64) float64 {
	v := p.value(px)
	return math.Max(math.Abs(v+p.resBuyNotional+extraBuy), math.Abs(v-p.resSellNotional-extraSell))
}

// worstQty is the worst-case |quantity| counting open reservations, plus an
// extra buy or sell quantity.
func (p *position) worstQty(extraBuy, extraSell float64) float64 {
	return math.Max(math.Abs(p.qty+p.resBuyQty+extraBuy), math.Abs(p.qty-p.resSellQty-extraSell))
}

func (p *position) empty() bool {
	return p.qty == 0 && p.resBuyQty == 0 && p.resSellQty == 0
}

// hold adds (or with -1 removes) qty of reservation r to the aggregates.
func (p *position) hold(r *reservation, qty float64, dir float64) {
	if r.side == buy {
		p.resBuyQty += dir * qty
		p.resBuyNotional += dir * qty * r.price
	} else {
		p.resSellQty += dir * qty
		p.resSellNotional += dir * qty * r.price
	}
	// Floating-point residue must not leave phantom exposure behind.
	if p.resBuyQty < 1e-12 {
		p.resBuyQty, p.resBuyNotional = 0, 0
	}
	if p.resSellQty < 1e-12 {
		p.resSellQty, p.resSellNotional = 0, 0
	}
}

// applyFill moves the position by a fill of signed quantity at price and
// returns the realised P&L of the closed part (before fees).
func (p *position) applyFill(s sign, qty, price float64) float64 {
	d := float64(s) * qty
	realized := 0.0
	switch {
	case p.qty == 0 || (p.qty > 0) == (d > 0):
		// Opening or adding: weighted average price.
		total := p.qty + d
		p.avgPrice = (p.avgPrice*math.Abs(p.qty) + price*math.Abs(d)) / math.Abs(total)
		p.qty = total
	default:
		// Reducing, closing or flipping.
		closing := math.Min(math.Abs(d), math.Abs(p.qty))
		if p.qty > 0 {
			realized = (price - p.avgPrice) * closing
		} else {
			realized = (p.avgPrice - price) * closing
		}
		p.qty += d
		switch {
		case math.Abs(p.qty) < 1e-12:
			p.qty, p.avgPrice = 0, 0
		case (p.qty > 0) == (d > 0):
			// Flipped through zero: the rest opens at the fill price.
			p.avgPrice = price
		}
	}
	p.realized += realized
	return realized
}

// account is the in-memory state of one account. Every field is guarded by
// mu; checks on one account are serialised by it.
type account struct {
	mu sync.Mutex

	id        string
	created   time.Time
	limits    Limits
	limiter   *rate.Limiter // nil when the rate is not limited
	cash      float64
	dayStart  time.Time
	dayEquity float64 // equity at the start of the trading day
	highWater float64
	kill      *riskv1.KillSwitchState

	positions map[string]*position
	open      map[string]*reservation // open reservations by id
	// recent holds reservations of any state kept for fills, releases and
	// duplicate detection: open ones and those closed in the last day.
	recent map[string]*reservation
	// byClientOrder maps a client order id to its latest approval.
	byClientOrder map[string]*reservation
	// fills applied recently, by fill id, for idempotency.
	fills map[string]fillRecord

	// stale is set when a write of this account failed: memory may differ
	// from the store, so checks fail closed until a reload succeeds.
	stale bool
	// inflight counts writes enqueued but not yet committed.
	inflight int
	// chain links the writes submitted since memory was last loaded from
	// the store; nil when none was.
	chain *writeChain
}

type fillRecord struct {
	reservationID string
	quantity      float64
	price         float64
	fee           float64
	at            time.Time
}

func newAccount(id string, created time.Time) *account {
	return &account{
		id:            id,
		created:       created,
		kill:          &riskv1.KillSwitchState{AccountId: id},
		positions:     map[string]*position{},
		open:          map[string]*reservation{},
		recent:        map[string]*reservation{},
		byClientOrder: map[string]*reservation{},
		fills:         map[string]fillRecord{},
	}
}

func (a *account) position(symbol string) *position {
	p := a.positions[symbol]
	if p == nil {
		p = &position{symbol: symbol}
		a.positions[symbol] = p
	}
	return p
}

// setRate installs the order-rate limiter for the current limits. An
// existing bucket keeps its tokens: changing any limit must not refill it.
func (a *account) setRate(now time.Time) {
	if !a.limits.MaxOrdersPerSecond.set {
		a.limiter = nil
		return
	}
	r, b := rate.Limit(a.limits.MaxOrdersPerSecond.v), a.limits.burst()
	if a.limiter == nil {
		a.limiter = rate.NewLimiter(r, b)
		return
	}
	if a.limiter.Limit() != r {
		a.limiter.SetLimitAt(now, r)
	}
	if a.limiter.Burst() != b {
		a.limiter.SetBurstAt(now, b)
	}
}

// addReservation registers r as open (or, when loading, in its state).
func (a *account) addReservation(r *reservation) {
	a.recent[r.id] = r
	if r.isOpen() {
		a.open[r.id] = r
		a.position(r.symbol).hold(r, r.reserved(), 1)
	}
	if prev := a.byClientOrder[r.clientOrderID]; prev == nil || !prev.created.After(r.created) {
		a.byClientOrder[r.clientOrderID] = r
	}
}

// closeReservation moves an open reservation to a final state.
func (a *account) closeReservation(r *reservation, state riskv1.ReservationState, at time.Time) {
	if !r.isOpen() {
		return
	}
	a.position(r.symbol).hold(r, r.reserved(), -1)
	r.state = state
	r.closed = at
	delete(a.open, r.id)
}

// valuation returns equity (cash plus market value) and gross exposure of
// the filled positions, at the reference prices in px.
func (a *account) valuation(px priceView) (equity, gross float64) {
	equity = a.cash
	for sym, p := range a.positions {
		if p.qty == 0 {
			continue
		}
		v := p.value(px.get(sym))
		equity += v
		gross += math.Abs(v)
	}
	return equity, gross
}

// rollDay starts a new trading day when now has passed into one.
func (a *account) rollDay(now time.Time, loc *time.Location, px priceView) bool {
	start := dayStart(now, loc)
	if !a.dayStart.Before(start) {
		return false
	}
	eq, _ := a.valuation(px)
	a.dayStart = start
	a.dayEquity = eq
	a.highWater = eq
	return true
}

func dayStart(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc)
}

// prune forgets closed reservations and fills older than keep, which
// are still in the store.
func (a *account) prune(now time.Time, keep time.Duration) {
	cutoff := now.Add(-keep)
	for id, r := range a.recent {
		if !r.isOpen() && r.closed.Before(cutoff) && r.created.Before(now.Add(-a.limits.DuplicateWindow)) {
			delete(a.recent, id)
			if a.byClientOrder[r.clientOrderID] == r {
				delete(a.byClientOrder, r.clientOrderID)
			}
		}
	}
	for id, f := range a.fills {
		if f.at.Before(cutoff) {
			delete(a.fills, id)
		}
	}
	for sym, p := range a.positions {
		if p.empty() && p.realized == 0 {
			delete(a.positions, sym)
		}
	}
}

// priceEntry is a symbol's reference price.
type priceEntry struct {
	price float64
	at    time.Time
}

// priceView is the reference price table, read under the engine's price
// lock.
type priceView map[string]priceEntry

// get returns the reference price of symbol, 0 when unknown.
func (v priceView) get(symbol string) float64 { return v[symbol].price }
