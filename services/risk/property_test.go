package risk

// Property tests of the risk engine (pgregory.net/rapid).
//
// Each run drives one engine through the Server's handlers, in process, on a
// store that commits at once, with a random interleaving of orders (alone,
// in CheckOrders batches, and sized to land exactly on
// max_position_quantity), fills (partial and whole, at the reservation
// price and at others, late ones too), releases, TTL expiry (the engine's
// clock is the test's; it also jumps to just before, onto and just after
// expiries and duplicate windows), price moves, limit changes and kill
// switch flips, over a few accounts and symbols, and checks after every
// step:
//
//   - The model: positions, cash and the set of open reservations that
//     GetPortfolio shows equal what the test's own bookkeeping of its
//     approvals, fills, releases and the clock says (so TTL expiry and fill
//     accounting are checked too), and each position's reservation
//     aggregates equal the sum of its open reservations.
//   - The oracle (TestPropertyDecisionsMatchOracle): before every check the
//     test evaluates the order with propExpected, a deliberately plain
//     re-implementation of the rules written from the RiskRule comments in
//     risk.proto, on the state GetPortfolio and GetLimits show plus the
//     prices the test set. The engine must approve exactly when the oracle
//     finds no broken rule, and a rejection must list exactly the rules the
//     oracle finds broken, with the same limits and observed values, and is
//     recorded as one ORDER_REJECTED event. A CheckOrders batch decides as
//     that many CheckOrder calls would. A daily loss or drawdown breach
//     leaves the kill switch tripped. After every fill, the breaches the fill reports must be exactly the limits
//     the filled position is beyond, and the breach counter
//     (quantmesh_risk_limit_breaches_total) must equal their number.
//   - The invariant (TestPropertyApprovedExposureStaysWithinLimits): with
//     limits fixed, no sequence of approved orders and their fills leaves a
//     position beyond a limit, and the breach counter stays 0.
//
// What the invariant can promise, and why it is stated as it is:
//
//   - Quantity is price-free. With max_position_quantity fixed, the filled
//     position plus every open reservation in the worst direction never
//     exceeds it, whatever prices do, at whatever price fills come, and
//     however limit orders are priced, as long as fills are of open
//     reservations. The "prices move" run checks exactly that.
//   - Notional, gross exposure, leverage and concentration are values: the
//     contract values an order at its limit price (market orders at the
//     reference), a reservation at that price, and a filled position at the
//     reference price. The check can only promise the limit at the values of
//     check time. So the "exact" run holds prices fixed, prices every order
//     at the reference (market orders, or limit orders at the reference),
//     fills at the reservation price and charges no fees (so equity does
//     not move); then filled and reserved exposure together never pass any
//     limit, and the counter stays 0. When a price moves after approval,
//     when a limit order is priced away from the reference (a marketable
//     sell limit far below it reserves less notional than the filled
//     position is worth: TestSellLimitBelowReferenceBreachIsCounted), when
//     a fill comes at another price, or when fees lower equity, a filled
//     position can end beyond a value limit: the engine cannot prevent it,
//     it must report it, and the oracle run checks that every such fill is
//     reported and counted, and no other.
//   - Limits that tighten between approval and fill: "new limits apply to
//     the next check; existing positions and reservations are not undone",
//     so a fill of an earlier approval can leave a position beyond the new
//     limit. It is a breach and is counted (checked by the oracle run); the
//     invariant run keeps limits fixed.
//   - A late fill (of a reservation already released or expired) is still
//     applied, and the room it held may have been given to another order,
//     so it can breach any limit, quantity included. Only the oracle run
//     sends late fills.
//   - The order-rate token bucket keeps its tokens when limits change (the
//     engine's stated intent: changing a limit must not refill it); it is
//     full when max_orders_per_second is first set.
//
// Quantities are multiples of 0.25 and prices, cash and limits whole
// numbers, so sums and products are exact in float64 and a value at its
// limit is really at it. Values that involve a division or an average entry
// price are compared with a relative tolerance of 1e-9: within it either
// decision is accepted for that rule.

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"pgregory.net/rapid"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

var (
	propAccountIDs = []string{"acct-a", "acct-b", "acct-c"}
	propSymbols    = []string{"AAA", "BBB", "CCC", "DDD"}
	propSides      = []riskv1.OrderSide{riskv1.OrderSide_ORDER_SIDE_BUY, riskv1.OrderSide_ORDER_SIDE_SELL}
	// propStart is the test clock's start: a morning, so that the runs
	// (at most a few hours of simulated time) never cross midnight.
	propStart = time.Date(2030, 1, 2, 9, 0, 0, 0, time.UTC)
)

// propStore is a Store that commits at once, in memory. The property tests
// are about the engine's decisions; durability is covered by race_test.go,
// the SQL store tests and the restart test.
type propStore struct {
	mu     sync.Mutex
	seq    uint64
	hook   func([]*riskv1.RiskEvent)
	events []*riskv1.RiskEvent // every event committed
}

var _ Store = (*propStore)(nil)

func (s *propStore) Load(context.Context, time.Time) (*snapshot, error) { return &snapshot{}, nil }
func (s *propStore) LoadAccount(context.Context, string, time.Time) (*snapshot, error) {
	return &snapshot{}, nil
}
func (s *propStore) Reservation(_ context.Context, _, id string) (*reservation, error) {
	return nil, apierr.NotFound("reservation", id)
}
func (s *propStore) Fill(_ context.Context, _, id string) (*fillRow, error) {
	return nil, apierr.NotFound("fill", id)
}
func (s *propStore) Submit(u *unit) <-chan error {
	s.commit(u)
	done := make(chan error, 1)
	done <- nil
	return done
}
func (s *propStore) SubmitAsync(u *unit, _ func(error)) { s.commit(u) }
func (s *propStore) OnCommit(fn func([]*riskv1.RiskEvent)) {
	s.mu.Lock()
	s.hook = fn
	s.mu.Unlock()
}
func (s *propStore) Events(context.Context, uint64, int) ([]*riskv1.RiskEvent, error) {
	return nil, nil
}
func (s *propStore) FirstSequence(context.Context) (uint64, error)         { return 0, nil }
func (s *propStore) PruneEvents(context.Context, time.Time) (int64, error) { return 0, nil }
func (s *propStore) PruneClosed(context.Context, time.Time, int) (int64, int64, error) {
	return 0, 0, nil
}
func (s *propStore) Close() error { return nil }

// since returns the events committed after the first n.
func (s *propStore) since(n int) []*riskv1.RiskEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events[n:])
}

func (s *propStore) commit(u *unit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range u.events {
		s.seq++
		ev.Sequence = s.seq
		s.events = append(s.events, ev)
	}
	if s.hook != nil && len(u.events) > 0 {
		s.hook(u.events)
	}
}

// propRepeats is how many rapid state-machine sequences (about 30 steps
// each by default) one run chains, so that positions grow to their limits
// and reservations expire within a run.
const propRepeats = 2

// propMode selects what a run may do.
type propMode int

const (
	// propOracle: everything, including late fills, fills at any price,
	// fees, price moves, limit changes and kill switches.
	propOracle propMode = iota
	// propExact: limits and prices fixed, orders priced at the reference,
	// fills of open reservations at the reservation price, no fees.
	propExact
	// propPricesMove: limits fixed; prices move, limit orders at any
	// price, fills of open reservations at any price, fees.
	propPricesMove
)

// propRes is the test's bookkeeping of one approved reservation.
type propRes struct {
	id, account, symbol string
	side                riskv1.OrderSide
	price, qty, filled  float64
	expires             time.Time
	closed              bool // released, or filled completely
}

// open says whether the contract keeps r open at now.
func (r *propRes) open(now time.Time) bool {
	return !r.closed && r.filled < r.qty && now.Before(r.expires)
}

func (r *propRes) String() string { return r.id }

// propAccount is the test's bookkeeping of one account.
type propAccount struct {
	id        string
	qty       map[string]float64
	cash      float64
	approvals map[string]propApproval // latest approval by client_order_id
	// Order-rate token bucket, when max_orders_per_second is set.
	rate, burst, tokens float64
	last                time.Time
}

type propApproval struct {
	at            time.Time
	reservationID string
}

// refill brings the token bucket to now.
func (a *propAccount) refill(now time.Time) {
	if a.rate == 0 {
		return
	}
	a.tokens = math.Min(a.burst, a.tokens+now.Sub(a.last).Seconds()*a.rate)
	a.last = now
}

// setBucket follows a SetLimits: a limit newly set installs a full
// bucket, a changed one keeps the tokens the bucket holds now (changing a
// limit must not refill it), and no limit removes it.
func (a *propAccount) setBucket(l *riskv1.Limits, now time.Time) {
	if l.MaxOrdersPerSecond == nil {
		a.rate = 0
		return
	}
	rate := *l.MaxOrdersPerSecond
	burst := math.Max(1, math.Ceil(rate))
	if l.OrderBurst != nil {
		burst = float64(*l.OrderBurst)
	}
	if a.rate == 0 {
		a.rate, a.burst, a.tokens, a.last = rate, burst, burst, now
		return
	}
	a.refill(now)
	a.rate, a.burst = rate, burst
}

// propHarness is one run: an engine, its server and the test's model.
type propHarness struct {
	mode     propMode
	ctx      context.Context
	eng      *Engine
	srv      *Server
	reader   *sdkmetric.ManualReader
	store    *propStore
	events   int // events of store already looked at
	now      time.Time
	prices   map[string]float64
	ids      []string
	accounts map[string]*propAccount
	res      []*propRes // every approval, in order
	nextID   int
	breaches int // violations reported by fills
	stats    *propStats
}

// propStats counts what the runs of one property exercised.
type propStats struct {
	mu                           sync.Mutex
	approved, rejected, fills    int
	late, breachFills, ambiguous int
	atLimit                      int // steps that ended with a position at max_position_quantity
	rules                        map[riskv1.RiskRule]int
}

func (s *propStats) log(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("approved %d, rejected %d, fills %d (late %d, with breaches %d), steps ending at max_position_quantity %d, ambiguous comparisons %d, rules seen %v",
		s.approved, s.rejected, s.fills, s.late, s.breachFills, s.atLimit, s.ambiguous, s.rules)
	if s.approved == 0 || s.rejected == 0 {
		t.Errorf("the generator is degenerate: %d approved, %d rejected", s.approved, s.rejected)
	}
}

// propFataler is what the helpers need of *testing.T and *rapid.T.
type propFataler interface{ Fatal(args ...any) }

// newPropServer returns an engine on a propStore and its server, with the
// risk metrics going to a manual reader.
func newPropServer(tb propFataler) (*Engine, *Server, *sdkmetric.ManualReader, *propStore) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st := &propStore{}
	eng, err := NewEngine(context.Background(), DefaultConfig(), st, log)
	if err != nil {
		tb.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	srv, err := New(eng, log, sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"))
	if err != nil {
		tb.Fatal(err)
	}
	return eng, srv, reader, st
}

// propBreachCounter reads quantmesh.risk.limit.breaches.
func propBreachCounter(tb propFataler, reader *sdkmetric.ManualReader) int64 {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "quantmesh.risk.limit.breaches" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				n += dp.Value
			}
		}
	}
	return n
}

func newPropHarness(t *rapid.T, mode propMode, stats *propStats) *propHarness {
	ctx := context.Background()
	eng, srv, reader, st := newPropServer(t)
	h := &propHarness{
		mode: mode, ctx: ctx, eng: eng, srv: srv, reader: reader, store: st, now: propStart,
		prices: map[string]float64{}, accounts: map[string]*propAccount{}, stats: stats,
	}
	eng.now = func() time.Time { return h.now }

	// Prices: in the exact run every symbol has one; otherwise some lack
	// one, so market orders and collars meet a missing reference.
	var updates []*riskv1.PriceUpdate
	for _, sym := range propSymbols {
		if mode == propExact || rapid.IntRange(0, 3).Draw(t, "has price "+sym) > 0 {
			p := float64(rapid.IntRange(1, 200).Draw(t, "price "+sym))
			updates = append(updates, &riskv1.PriceUpdate{Symbol: sym, Price: p})
			h.prices[sym] = p
		}
	}
	if len(updates) > 0 {
		if _, err := srv.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: updates}); err != nil {
			t.Fatal(err)
		}
	}
	n := rapid.IntRange(1, len(propAccountIDs)).Draw(t, "accounts")
	h.ids = propAccountIDs[:n]
	for _, id := range h.ids {
		// Mostly ample cash; in the oracle run sometimes little or none
		// (leverage and concentration then go to +Inf).
		var cash float64
		if mode == propOracle && rapid.IntRange(0, 4).Draw(t, "poor "+id) == 0 {
			cash = float64(rapid.IntRange(0, 1000).Draw(t, "cash "+id))
		} else {
			cash = float64(rapid.IntRange(5000, 50000).Draw(t, "cash "+id))
		}
		l := h.drawLimits(t, id)
		h.accounts[id] = &propAccount{id: id, qty: map[string]float64{}, cash: cash, approvals: map[string]propApproval{}}
		h.setLimits(t, l, []string{"*"}, &cash)
	}
	return h
}

// drawLimits draws an account's limits. Every limit may be unset in the
// oracle run; the invariant runs always set the position limits.
func (h *propHarness) drawLimits(t *rapid.T, id string) *riskv1.Limits {
	l := &riskv1.Limits{AccountId: id}
	always := h.mode != propOracle
	// Each limit is unset (oracle run only), tight (0 to tight) or
	// generous (tight to generous), so that both decisions are common.
	opt := func(name string, tight, generous int, scale float64, must bool) *float64 {
		if !must && rapid.Bool().Draw(t, name+" set") {
			return nil
		}
		var v float64
		if rapid.IntRange(0, 3).Draw(t, name+" generous") > 0 {
			v = float64(rapid.IntRange(tight, generous).Draw(t, name))
		} else {
			v = float64(rapid.IntRange(0, tight).Draw(t, name))
		}
		v /= scale
		return &v
	}
	l.MaxOrderQuantity = opt("max_order_quantity", 5, 50, 1, false)
	l.MaxOrderNotional = opt("max_order_notional", 500, 10000, 1, false)
	l.PriceCollarPercent = opt("price_collar_percent", 10, 60, 1, false)
	l.MaxPositionQuantity = opt("max_position_quantity", 10, 100, 1, always)
	l.MaxPositionNotional = opt("max_position_notional", 1000, 20000, 1, always && h.mode == propExact)
	l.MaxGrossExposure = opt("max_gross_exposure", 2000, 60000, 1, always && h.mode == propExact)
	l.MaxLeverage = opt("max_leverage", 4, 40, 4, false)
	l.MaxConcentrationPercent = opt("max_concentration_percent", 50, 500, 1, false)
	if h.mode == propOracle {
		l.MaxDailyLoss = opt("max_daily_loss", 500, 20000, 1, false)
		l.MaxDrawdownPercent = opt("max_drawdown_percent", 10, 90, 1, false)
		l.MaxOrdersPerSecond = opt("max_orders_per_second", 2, 50, 1, false)
		if l.MaxOrdersPerSecond != nil && *l.MaxOrdersPerSecond == 0 {
			*l.MaxOrdersPerSecond = 1 // must be greater than 0
		}
		if l.MaxOrdersPerSecond != nil && rapid.Bool().Draw(t, "order_burst set") {
			b := int32(rapid.IntRange(1, 10).Draw(t, "order_burst"))
			l.OrderBurst = &b
		}
		if rapid.IntRange(0, 4).Draw(t, "restricted set") == 0 {
			l.RestrictedSymbols = []string{rapid.SampledFrom(propSymbols).Draw(t, "restricted")}
		}
	}
	if rapid.Bool().Draw(t, "duplicate_window set") {
		l.DuplicateWindow = durationpb.New(time.Duration(rapid.IntRange(1, 120).Draw(t, "duplicate_window")) * time.Second)
	}
	if rapid.Bool().Draw(t, "reservation_ttl set") {
		l.ReservationTtl = durationpb.New(time.Duration(rapid.IntRange(1, 120).Draw(t, "reservation_ttl")) * time.Second)
	}
	return l
}

func (h *propHarness) setLimits(t *rapid.T, l *riskv1.Limits, paths []string, cash *float64) {
	if _, err := h.srv.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}, CashBalance: cash,
	}); err != nil {
		t.Fatalf("SetLimits(%v, %v): %v", l, paths, err)
	}
	a := h.accounts[l.GetAccountId()]
	if cash != nil {
		a.cash = *cash
	}
	a.setBucket(h.limits(t, a.id), h.now)
}

func (h *propHarness) portfolio(t *rapid.T, id string) *riskv1.Portfolio {
	resp, err := h.srv.GetPortfolio(h.ctx, &riskv1.GetPortfolioRequest{AccountId: id})
	if err != nil {
		t.Fatalf("GetPortfolio(%s): %v", id, err)
	}
	return resp.GetPortfolio()
}

func (h *propHarness) limits(t *rapid.T, id string) *riskv1.Limits {
	resp, err := h.srv.GetLimits(h.ctx, &riskv1.GetLimitsRequest{AccountId: id})
	if err != nil {
		t.Fatalf("GetLimits(%s): %v", id, err)
	}
	return resp.GetLimits()
}

func (h *propHarness) breachCounter(t *rapid.T) int64 { return propBreachCounter(t, h.reader) }

// actions returns the actions of the run's mode.
func (h *propHarness) actions() map[string]func(*rapid.T) {
	acts := map[string]func(*rapid.T){
		"":        h.check,
		"order":   h.order,
		"order2":  h.order, // orders are the point: twice the weight
		"room":    h.orderAtRoom,
		"batch":   h.batch,
		"fill":    h.fill,
		"fill2":   h.fill,
		"release": h.release,
		"advance": h.advance,
		"edge":    h.edge,
	}
	if h.mode != propExact {
		acts["price"] = h.price
	}
	if h.mode == propOracle {
		acts["limits"] = h.changeLimits
		acts["kill"] = h.kill
	}
	return acts
}

// order checks a random order against the oracle.
func (h *propHarness) order(t *rapid.T) { h.checkOrder(t, h.drawOrder(t)) }

// drawOrder draws an order of the run's mode.
func (h *propHarness) drawOrder(t *rapid.T) *riskv1.Order {
	id := rapid.SampledFrom(h.ids).Draw(t, "account")
	sym := rapid.SampledFrom(propSymbols).Draw(t, "symbol")
	o := &riskv1.Order{
		AccountId: id,
		Symbol:    sym,
		Side:      rapid.SampledFrom(propSides).Draw(t, "side"),
		Quantity:  float64(rapid.IntRange(1, 40).Draw(t, "quarters")) / 4,
		Type:      riskv1.OrderType_ORDER_TYPE_LIMIT,
	}
	ref := h.prices[sym]
	switch {
	case rapid.IntRange(0, 2).Draw(t, "market") == 0:
		o.Type = riskv1.OrderType_ORDER_TYPE_MARKET
	case h.mode == propExact:
		o.LimitPrice = ref
	case ref > 0 && rapid.IntRange(0, 3).Draw(t, "near reference") > 0:
		off := max(1, int(ref)/3)
		o.LimitPrice = max(1, ref+float64(rapid.IntRange(-off, off).Draw(t, "offset")))
	default:
		o.LimitPrice = float64(rapid.IntRange(1, 300).Draw(t, "limit price"))
	}
	if rapid.IntRange(0, 3).Draw(t, "reuse client order id") == 0 {
		o.ClientOrderId = "dup-" + strconv.Itoa(rapid.IntRange(0, 2).Draw(t, "dup"))
	} else {
		h.nextID++
		o.ClientOrderId = "o-" + strconv.Itoa(h.nextID)
	}
	return o
}

// batch checks 2 to 4 orders with one CheckOrders call, which must decide
// each exactly as that many CheckOrder calls would: the oracle sees the
// approvals earlier in the batch as open reservations.
func (h *propHarness) batch(t *rapid.T) {
	orders := make([]*riskv1.Order, rapid.IntRange(2, 4).Draw(t, "batch size"))
	pfs := map[string]*riskv1.Portfolio{}
	ls := map[string]*riskv1.Limits{}
	for i := range orders {
		orders[i] = h.drawOrder(t)
		id := orders[i].GetAccountId()
		if pfs[id] == nil {
			pfs[id], ls[id] = h.portfolio(t, id), h.limits(t, id)
			h.accounts[id].refill(h.now)
		}
	}
	resp, err := h.srv.CheckOrders(h.ctx, &riskv1.CheckOrdersRequest{Orders: orders})
	if err != nil {
		t.Fatalf("CheckOrders(%v): %v", orders, err)
	}
	if len(resp.GetResults()) != len(orders) {
		t.Fatalf("CheckOrders: %d results for %d orders", len(resp.GetResults()), len(orders))
	}
	for i, o := range orders {
		id := o.GetAccountId()
		want := propExpected(o, pfs[id], ls[id], h.prices, h.accounts[id], h.now)
		got := resp.GetResults()[i]
		h.verify(t, fmt.Sprintf("CheckOrders[%d](%v)", i, o), o, ls[id], want, got)
		if got.GetDecision() == riskv1.Decision_DECISION_APPROVED {
			pfs[id].Reservations = append(pfs[id].Reservations, got.GetReservation())
		}
		for _, v := range got.GetViolations() {
			if v.GetRule() == riskv1.RiskRule_RISK_RULE_DAILY_LOSS || v.GetRule() == riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN {
				pfs[id].KillSwitch.Tripped = true // the breach tripped it for the next order
			}
		}
	}
	h.noMoreRejections(t)
}

// nextRejection consumes the store's events up to the next
// ORDER_REJECTED and returns it (nil when there is none).
func (h *propHarness) nextRejection() *riskv1.RiskEvent {
	for _, ev := range h.store.since(h.events) {
		h.events++
		if ev.GetType() == riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED {
			return ev
		}
	}
	return nil
}

// noMoreRejections asserts that every ORDER_REJECTED event belongs to a
// rejection already verified.
func (h *propHarness) noMoreRejections(t *rapid.T) {
	if ev := h.nextRejection(); ev != nil {
		t.Fatalf("rejection event %v without a rejection", ev)
	}
}

// orderAtRoom orders exactly the quantity max_position_quantity still
// leaves in one direction, or a quarter more: the boundary, where a value
// equal to its limit passes.
func (h *propHarness) orderAtRoom(t *rapid.T) {
	id := rapid.SampledFrom(h.ids).Draw(t, "account")
	sym := rapid.SampledFrom(propSymbols).Draw(t, "symbol")
	side := rapid.SampledFrom(propSides).Draw(t, "side")
	l := h.limits(t, id)
	if l.MaxPositionQuantity == nil {
		t.Skip("no max_position_quantity")
	}
	syms, _ := propState(h.portfolio(t, id), h.prices)
	s := syms[sym]
	if s == nil {
		s = &propSym{}
	}
	room := *l.MaxPositionQuantity - (s.qty + s.buyQty)
	if side == riskv1.OrderSide_ORDER_SIDE_SELL {
		room = *l.MaxPositionQuantity + (s.qty - s.sellQty)
	}
	if rapid.IntRange(0, 3).Draw(t, "a quarter more") == 0 {
		room += 0.25
	}
	if room <= 0 {
		t.Skip("no room")
	}
	h.nextID++
	o := &riskv1.Order{AccountId: id, ClientOrderId: "o-" + strconv.Itoa(h.nextID), Symbol: sym, Side: side,
		Quantity: room, Type: riskv1.OrderType_ORDER_TYPE_MARKET}
	if ref := h.prices[sym]; ref > 0 && rapid.Bool().Draw(t, "limit at reference") {
		o.Type, o.LimitPrice = riskv1.OrderType_ORDER_TYPE_LIMIT, ref
	}
	h.checkOrder(t, o)
}

// checkOrder checks o against the oracle and records an approval.
func (h *propHarness) checkOrder(t *rapid.T, o *riskv1.Order) {
	id := o.GetAccountId()
	a := h.accounts[id]
	pf := h.portfolio(t, id)
	l := h.limits(t, id)
	a.refill(h.now)
	want := propExpected(o, pf, l, h.prices, a, h.now)

	resp, err := h.srv.CheckOrder(h.ctx, &riskv1.CheckOrderRequest{Order: o})
	if err != nil {
		t.Fatalf("CheckOrder(%v): %v", o, err)
	}
	h.verify(t, fmt.Sprintf("CheckOrder(%v)", o), o, l, want, resp.GetResult())
	h.noMoreRejections(t)
}

// verify compares the decision on o with the oracle's and records its
// effects in the model: the approval, the order-rate token.
func (h *propHarness) verify(t *rapid.T, what string, o *riskv1.Order, l *riskv1.Limits, want []propRule, got *riskv1.OrderCheckResult) {
	id, ref := o.GetAccountId(), h.prices[o.GetSymbol()]
	a := h.accounts[id]
	h.compare(t, what, want, got.GetViolations())

	// A rejection is recorded as an ORDER_REJECTED event naming the order
	// and its violations (h.rejections checks that approvals record none).
	if got.GetDecision() == riskv1.Decision_DECISION_REJECTED {
		ev := h.nextRejection()
		if ev.GetAccountId() != id || !proto.Equal(ev.GetRejection(), &riskv1.OrderRejection{Order: o, Violations: got.GetViolations()}) {
			t.Fatalf("%s: rejection event %v, want one with the order and %v", what, ev, got.GetViolations())
		}
	}
	if !got.GetCheckTime().AsTime().Equal(h.now) || got.GetReferencePrice() != ref {
		t.Fatalf("check_time %v reference_price %v, want %v %v", got.GetCheckTime().AsTime(), got.GetReferencePrice(), h.now, ref)
	}
	if !slices.ContainsFunc(got.GetViolations(), func(v *riskv1.RuleViolation) bool { return v.GetRule() == riskv1.RiskRule_RISK_RULE_ORDER_RATE }) {
		a.tokens-- // every check takes a token when one is available
	}

	h.stats.mu.Lock()
	for _, v := range got.GetViolations() {
		if h.stats.rules == nil {
			h.stats.rules = map[riskv1.RiskRule]int{}
		}
		h.stats.rules[v.GetRule()]++
	}
	h.stats.mu.Unlock()

	switch got.GetDecision() {
	case riskv1.Decision_DECISION_APPROVED:
		h.stats.mu.Lock()
		h.stats.approved++
		h.stats.mu.Unlock()
		if len(got.GetViolations()) != 0 || got.GetExistingReservationId() != "" {
			t.Fatalf("approval with violations or an existing reservation: %v", got)
		}
		h.approved(t, o, l, got.GetReservation())
	case riskv1.Decision_DECISION_REJECTED:
		h.stats.mu.Lock()
		h.stats.rejected++
		h.stats.mu.Unlock()
		if got.GetReservation() != nil {
			t.Fatalf("rejection with a reservation: %v", got)
		}
		wantExisting := ""
		if slices.ContainsFunc(got.GetViolations(), func(v *riskv1.RuleViolation) bool {
			return v.GetRule() == riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID
		}) {
			wantExisting = a.approvals[o.GetClientOrderId()].reservationID
		}
		if got.GetExistingReservationId() != wantExisting {
			t.Fatalf("existing_reservation_id %q, want %q", got.GetExistingReservationId(), wantExisting)
		}
	default:
		t.Fatalf("decision %v", got.GetDecision())
	}

	// A daily loss or drawdown breach trips the kill switch by itself.
	for _, w := range want {
		if !w.ambiguous && (w.rule == riskv1.RiskRule_RISK_RULE_DAILY_LOSS || w.rule == riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN) {
			if !h.portfolio(t, id).GetKillSwitch().GetTripped() {
				t.Fatalf("%v was broken but the kill switch is not tripped", w.rule)
			}
		}
	}
}

// approved checks the reservation of an approved order and records it.
func (h *propHarness) approved(t *rapid.T, o *riskv1.Order, l *riskv1.Limits, r *riskv1.Reservation) {
	price := o.GetLimitPrice()
	if o.GetType() == riskv1.OrderType_ORDER_TYPE_MARKET {
		price = h.prices[o.GetSymbol()]
	}
	ttl := 60 * time.Second
	if l.GetReservationTtl() != nil {
		ttl = l.GetReservationTtl().AsDuration()
	}
	if r.GetReservationId() == "" || r.GetAccountId() != o.GetAccountId() || r.GetClientOrderId() != o.GetClientOrderId() ||
		r.GetSymbol() != o.GetSymbol() || r.GetSide() != o.GetSide() || r.GetType() != o.GetType() ||
		r.GetOrderQuantity() != o.GetQuantity() || r.GetFilledQuantity() != 0 || r.GetReservedQuantity() != o.GetQuantity() ||
		r.GetPrice() != price || r.GetReservedNotional() != o.GetQuantity()*price ||
		r.GetState() != riskv1.ReservationState_RESERVATION_STATE_OPEN ||
		!r.GetCreateTime().AsTime().Equal(h.now) || !r.GetExpireTime().AsTime().Equal(h.now.Add(ttl)) {
		t.Fatalf("reservation %v of approved order %v (price %v, ttl %v, now %v)", r, o, price, ttl, h.now)
	}
	h.res = append(h.res, &propRes{
		id: r.GetReservationId(), account: o.GetAccountId(), symbol: o.GetSymbol(), side: o.GetSide(),
		price: price, qty: o.GetQuantity(), expires: h.now.Add(ttl),
	})
	h.accounts[o.GetAccountId()].approvals[o.GetClientOrderId()] = propApproval{at: h.now, reservationID: r.GetReservationId()}
}

// fill applies a fill to a reservation: an open one, or in the oracle run
// also one already released or expired (a late fill).
func (h *propHarness) fill(t *rapid.T) {
	var cands []*propRes
	for _, r := range h.res {
		if r.filled < r.qty && (h.mode == propOracle || r.open(h.now)) {
			cands = append(cands, r)
		}
	}
	if len(cands) == 0 {
		t.Skip("nothing to fill")
	}
	r := rapid.SampledFrom(cands).Draw(t, "reservation")
	q := r.qty - r.filled
	if rapid.Bool().Draw(t, "part") {
		q = float64(rapid.IntRange(1, int(q*4)).Draw(t, "fill quarters")) / 4
	}
	price, fee := r.price, 0.0
	if h.mode != propExact && rapid.Bool().Draw(t, "fill at another price") {
		price = float64(rapid.IntRange(1, 300).Draw(t, "fill price"))
	}
	if h.mode != propExact && rapid.IntRange(0, 3).Draw(t, "fee") == 0 {
		fee = float64(rapid.IntRange(1, 5).Draw(t, "fee amount"))
	}
	release := rapid.IntRange(0, 4).Draw(t, "release remainder") == 0
	wasOpen := r.open(h.now)
	h.nextID++
	fillID := "f-" + strconv.Itoa(h.nextID)

	resp, err := h.srv.ApplyFill(h.ctx, &riskv1.ApplyFillRequest{AccountId: r.account, Fill: &riskv1.Fill{
		FillId: fillID, ReservationId: r.id, Quantity: q, Price: price, Fee: fee, ReleaseRemainder: release,
	}})
	if err != nil {
		t.Fatalf("ApplyFill(%s, %v @ %v): %v", r.id, q, price, err)
	}
	a := h.accounts[r.account]
	s := 1.0
	if r.side == riskv1.OrderSide_ORDER_SIDE_SELL {
		s = -1
	}
	r.filled += q
	a.qty[r.symbol] += s * q
	a.cash -= s*q*price + fee
	if wasOpen && (r.filled == r.qty || release) {
		r.closed = true
	}
	if resp.GetLate() == wasOpen || resp.GetDuplicate() || resp.GetReservation().GetFilledQuantity() != r.filled ||
		resp.GetPosition().GetQuantity() != a.qty[r.symbol] || resp.GetCash() != a.cash {
		t.Fatalf("ApplyFill response %v; want late %v, filled %v, position %v, cash %v", resp, !wasOpen, r.filled, a.qty[r.symbol], a.cash)
	}

	// The fill must report exactly the limits the filled position is now
	// beyond, and each one is counted.
	want := propBreaches(h.portfolio(t, r.account), h.limits(t, r.account), h.prices, r.symbol)
	h.compare(t, fmt.Sprintf("breaches of fill %s (%v @ %v of %s)", fillID, q, price, r.id), want, resp.GetBreaches())
	h.breaches += len(resp.GetBreaches())
	h.stats.mu.Lock()
	h.stats.fills++
	if !wasOpen {
		h.stats.late++
	}
	if len(resp.GetBreaches()) > 0 {
		h.stats.breachFills++
	}
	h.stats.mu.Unlock()
	if h.mode == propExact && len(resp.GetBreaches()) > 0 {
		t.Fatalf("fill %v @ %v of %s with fixed limits and prices breached %v", q, price, r.id, resp.GetBreaches())
	}
	// Only fills count breaches: the counter equals what fills reported
	// (0 in the exact run).
	if n := h.breachCounter(t); n != int64(h.breaches) {
		t.Fatalf("quantmesh_risk_limit_breaches_total = %d, fills reported %d breaches", n, h.breaches)
	}
}

// release releases a reservation, open or not.
func (h *propHarness) release(t *rapid.T) {
	if len(h.res) == 0 {
		t.Skip("nothing to release")
	}
	r := rapid.SampledFrom(h.res).Draw(t, "reservation")
	wasOpen := r.open(h.now)
	resp, err := h.srv.ReleaseReservation(h.ctx, &riskv1.ReleaseReservationRequest{AccountId: r.account, ReservationId: r.id})
	if err != nil {
		t.Fatalf("ReleaseReservation(%s): %v", r.id, err)
	}
	want := 0.0
	if wasOpen {
		want = r.qty - r.filled
		r.closed = true
	}
	if resp.GetReleasedQuantity() != want || resp.GetReleasedNotional() != want*r.price {
		t.Fatalf("ReleaseReservation(%s) released %v (%v), want %v", r.id, resp.GetReleasedQuantity(), resp.GetReleasedNotional(), want)
	}
}

// advance moves the clock: tokens refill, reservations expire, duplicate
// windows pass.
func (h *propHarness) advance(t *rapid.T) {
	h.now = h.now.Add(time.Duration(rapid.IntRange(0, 90_000).Draw(t, "advance ms")) * time.Millisecond)
}

// edge moves the clock to just before, onto or just after an instant
// where something changes: a reservation's expiry or the end of a
// duplicate window.
func (h *propHarness) edge(t *rapid.T) {
	var edges []time.Time
	for _, r := range h.res {
		if r.open(h.now) {
			edges = append(edges, r.expires)
		}
	}
	for _, id := range h.ids {
		if w := h.limits(t, id).GetDuplicateWindow(); w != nil {
			for _, cid := range slices.Sorted(maps.Keys(h.accounts[id].approvals)) {
				edges = append(edges, h.accounts[id].approvals[cid].at.Add(w.AsDuration()))
			}
		}
	}
	edges = slices.DeleteFunc(edges, func(e time.Time) bool { return !e.After(h.now.Add(time.Millisecond)) })
	if len(edges) == 0 {
		t.Skip("no edge ahead")
	}
	e := edges[rapid.IntRange(0, len(edges)-1).Draw(t, "edge")]
	h.now = e.Add(time.Duration(rapid.IntRange(-1, 1).Draw(t, "edge offset ms")) * time.Millisecond)
}

// price moves a reference price.
func (h *propHarness) price(t *rapid.T) {
	sym := rapid.SampledFrom(propSymbols).Draw(t, "symbol")
	p := float64(rapid.IntRange(1, 300).Draw(t, "new price"))
	if _, err := h.srv.UpdatePrices(h.ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: sym, Price: p}}}); err != nil {
		t.Fatal(err)
	}
	h.prices[sym] = p
}

// changeLimits changes some of an account's limits, and maybe its cash.
func (h *propHarness) changeLimits(t *rapid.T) {
	id := rapid.SampledFrom(h.ids).Draw(t, "account")
	l := h.drawLimits(t, id)
	var paths []string
	for _, p := range limitPaths() {
		if rapid.IntRange(0, 2).Draw(t, "change "+p) == 0 {
			paths = append(paths, p)
		}
	}
	// order_burst may only be sent with max_orders_per_second.
	if slices.Contains(paths, "order_burst") && l.OrderBurst != nil && !slices.Contains(paths, "max_orders_per_second") {
		paths = append(paths, "max_orders_per_second")
	}
	var cash *float64
	if rapid.IntRange(0, 3).Draw(t, "change cash") == 0 {
		c := float64(rapid.IntRange(0, 20000).Draw(t, "cash"))
		cash = &c
	}
	if len(paths) == 0 {
		paths = []string{"reservation_ttl"}
	}
	h.setLimits(t, l, paths, cash)
}

// kill trips or resets an account's kill switch.
func (h *propHarness) kill(t *rapid.T) {
	id := rapid.SampledFrom(h.ids).Draw(t, "account")
	var err error
	if rapid.IntRange(0, 3).Draw(t, "trip") == 0 {
		_, err = h.srv.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: id, Reason: "property test"})
	} else {
		_, err = h.srv.ResetKillSwitch(h.ctx, &riskv1.ResetKillSwitchRequest{AccountId: id, Reason: "property test"})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// check runs after every step: the portfolio agrees with the model, and in
// the invariant runs no position, filled or with its reservations, is
// beyond a limit.
func (h *propHarness) check(t *rapid.T) {
	for _, id := range h.ids {
		a := h.accounts[id]
		pf := h.portfolio(t, id)
		if pf.GetCash() != a.cash {
			t.Fatalf("%s: cash %v, model %v", id, pf.GetCash(), a.cash)
		}
		got := map[string]float64{}
		for _, p := range pf.GetPositions() {
			if p.GetQuantity() != 0 {
				got[p.GetSymbol()] = p.GetQuantity()
			}
			if p.GetReferencePrice() != h.prices[p.GetSymbol()] {
				t.Fatalf("%s %s: reference price %v, model %v", id, p.GetSymbol(), p.GetReferencePrice(), h.prices[p.GetSymbol()])
			}
		}
		for sym, q := range a.qty {
			if q != 0 && got[sym] != q {
				t.Fatalf("%s %s: position %v, model %v", id, sym, got[sym], q)
			}
			delete(got, sym)
		}
		if len(got) > 0 {
			t.Fatalf("%s: positions %v not in the model", id, got)
		}

		// Open reservations: exactly those the model keeps open at now.
		var want []string
		for _, r := range h.res {
			if r.account == id && r.open(h.now) {
				want = append(want, r.id)
			}
		}
		var open []string
		agg := map[string]*propSym{}
		for _, r := range pf.GetReservations() {
			open = append(open, r.GetReservationId())
			m := h.find(r.GetReservationId())
			if m == nil || r.GetReservedQuantity() != m.qty-m.filled || r.GetPrice() != m.price || r.GetSymbol() != m.symbol ||
				r.GetSide() != m.side || r.GetState() != riskv1.ReservationState_RESERVATION_STATE_OPEN {
				t.Fatalf("%s: open reservation %v, model %+v", id, r, m)
			}
			s := agg[r.GetSymbol()]
			if s == nil {
				s = &propSym{}
				agg[r.GetSymbol()] = s
			}
			s.addReservation(r)
		}
		slices.Sort(open)
		slices.Sort(want)
		if !slices.Equal(open, want) {
			t.Fatalf("%s at %v: open reservations %v, model %v", id, h.now, open, want)
		}
		// Each position's aggregates are the sums of its reservations.
		for _, p := range pf.GetPositions() {
			s := agg[p.GetSymbol()]
			if s == nil {
				s = &propSym{}
			}
			if !propClose(p.GetReservedBuyQuantity(), s.buyQty) || !propClose(p.GetReservedSellQuantity(), s.sellQty) ||
				!propClose(p.GetReservedNotional(), s.buyNotional+s.sellNotional) {
				t.Fatalf("%s %s: reserved buy %v sell %v notional %v; reservations sum to %v %v %v", id, p.GetSymbol(),
					p.GetReservedBuyQuantity(), p.GetReservedSellQuantity(), p.GetReservedNotional(), s.buyQty, s.sellQty, s.buyNotional+s.sellNotional)
			}
		}

		if h.mode != propOracle {
			h.checkWithinLimits(t, pf, h.limits(t, id))
		}
	}
}

// checkWithinLimits asserts the invariant of the fixed-limit runs on one
// portfolio: filled positions, and filled positions with every open
// reservation in the worst direction, are within the limits.
func (h *propHarness) checkWithinLimits(t *rapid.T, pf *riskv1.Portfolio, l *riskv1.Limits) {
	syms, equity := propState(pf, h.prices)
	var gross, worstGross float64
	for sym, s := range syms {
		filledQty, worstQty := math.Abs(s.qty), s.worstQty()
		if m := l.MaxPositionQuantity; m != nil && filledQty == *m && filledQty > 0 {
			h.stats.mu.Lock()
			h.stats.atLimit++
			h.stats.mu.Unlock()
		}
		if m := l.MaxPositionQuantity; m != nil && (filledQty > *m || worstQty > *m) {
			t.Fatalf("%s %s: position %v, worst case with reservations %v, beyond max_position_quantity %v", pf.GetAccountId(), sym, s.qty, worstQty, *m)
		}
		if h.mode != propExact {
			continue
		}
		filled, worst := math.Abs(s.value), s.worstNotional()
		gross += filled
		worstGross += worst
		if m := l.MaxPositionNotional; m != nil && (filled > *m || worst > *m) {
			t.Fatalf("%s %s: notional %v, worst case %v, beyond max_position_notional %v", pf.GetAccountId(), sym, filled, worst, *m)
		}
		if m := l.MaxConcentrationPercent; m != nil && (ratio(filled, equity)*100 > *m || ratio(worst, equity)*100 > *m) {
			t.Fatalf("%s %s: concentration %v%%, worst case %v%%, beyond max_concentration_percent %v", pf.GetAccountId(), sym,
				ratio(filled, equity)*100, ratio(worst, equity)*100, *m)
		}
	}
	if h.mode != propExact {
		return
	}
	if m := l.MaxGrossExposure; m != nil && (gross > *m || worstGross > *m) {
		t.Fatalf("%s: gross exposure %v, worst case %v, beyond max_gross_exposure %v", pf.GetAccountId(), gross, worstGross, *m)
	}
	if m := l.MaxLeverage; m != nil && (ratio(gross, equity) > *m || ratio(worstGross, equity) > *m) {
		t.Fatalf("%s: leverage %v, worst case %v, beyond max_leverage %v", pf.GetAccountId(), ratio(gross, equity), ratio(worstGross, equity), *m)
	}
}

func (h *propHarness) find(id string) *propRes {
	for _, r := range h.res {
		if r.id == id {
			return r
		}
	}
	return nil
}

// propRule is a rule the oracle finds broken, or within the tolerance of
// its limit (ambiguous: either decision is accepted).
type propRule struct {
	rule            riskv1.RiskRule
	limit, observed float64
	symbol          string
	ambiguous       bool
	// tol is the tolerance of observed; 0 means the relative 1e-9.
	tol float64
}

// propVerdict says whether observed is beyond limit: "broken", "ambiguous"
// (within a relative 1e-9 of it, when inexact), or "" (passes).
func propVerdict(observed, limit float64, exact bool) string {
	d := observed - limit
	switch {
	case math.IsInf(observed, 1) || d > propTol(observed, limit):
		return "broken"
	case exact && d > 0:
		return "broken"
	case exact:
		return ""
	case d >= -propTol(observed, limit):
		return "ambiguous"
	}
	return ""
}

func propTol(a, b float64) float64 { return 1e-9 * math.Max(1, math.Max(math.Abs(a), math.Abs(b))) }

func propClose(a, b float64) bool {
	return a == b || (math.IsInf(a, 0) && a == b) || math.Abs(a-b) <= propTol(a, b)
}

// propSym is one symbol's exposure: the filled position and the open
// reservations, as GetPortfolio shows them.
type propSym struct {
	qty, value                float64 // filled: signed quantity and market value
	buyQty, sellQty           float64 // open reservations, by side
	buyNotional, sellNotional float64
}

func (s *propSym) addReservation(r *riskv1.Reservation) {
	if r.GetSide() == riskv1.OrderSide_ORDER_SIDE_BUY {
		s.buyQty += r.GetReservedQuantity()
		s.buyNotional += r.GetReservedQuantity() * r.GetPrice()
	} else {
		s.sellQty += r.GetReservedQuantity()
		s.sellNotional += r.GetReservedQuantity() * r.GetPrice()
	}
}

// worstQty is the projected |position| in the worst case: every buy
// reservation filled and no sell, or the other way round.
func (s *propSym) worstQty() float64 {
	return math.Max(math.Abs(s.qty+s.buyQty), math.Abs(s.qty-s.sellQty))
}

// worstNotional is the projected position notional in the worst case.
func (s *propSym) worstNotional() float64 {
	return math.Max(math.Abs(s.value+s.buyNotional), math.Abs(s.value-s.sellNotional))
}

// propState builds every symbol's exposure and the equity from a
// portfolio: a position is valued at the reference price, or at its
// average price when the symbol has none; equity is cash plus the market
// values.
func propState(pf *riskv1.Portfolio, prices map[string]float64) (map[string]*propSym, float64) {
	syms := map[string]*propSym{}
	get := func(sym string) *propSym {
		s := syms[sym]
		if s == nil {
			s = &propSym{}
			syms[sym] = s
		}
		return s
	}
	equity := pf.GetCash()
	for _, p := range pf.GetPositions() {
		s := get(p.GetSymbol())
		s.qty = p.GetQuantity()
		px := prices[p.GetSymbol()]
		if px == 0 {
			px = p.GetAveragePrice()
		}
		s.value = s.qty * px
		equity += s.value
	}
	for _, r := range pf.GetReservations() {
		get(r.GetSymbol()).addReservation(r)
	}
	return syms, equity
}

// propExpected is the oracle: the rules of risk.proto applied to order o
// of an account whose state is pf (GetPortfolio), l (GetLimits), the
// reference prices, and the test's record of approvals and of the order
// rate bucket. It returns every rule broken or ambiguous.
func propExpected(o *riskv1.Order, pf *riskv1.Portfolio, l *riskv1.Limits, prices map[string]float64, a *propAccount, now time.Time) []propRule {
	var out []propRule
	sym := o.GetSymbol()
	add := func(rule riskv1.RiskRule, limit, observed float64, symbol, verdict string) {
		if verdict != "" {
			out = append(out, propRule{rule: rule, limit: limit, observed: observed, symbol: symbol, ambiguous: verdict == "ambiguous"})
		}
	}
	check := func(rule riskv1.RiskRule, limit *float64, observed float64, symbol string, exact bool) {
		if limit != nil {
			add(rule, *limit, observed, symbol, propVerdict(observed, *limit, exact))
		}
	}

	// KILL_SWITCH: the switch is tripped.
	if pf.GetKillSwitch().GetTripped() {
		add(riskv1.RiskRule_RISK_RULE_KILL_SWITCH, 0, 1, "", "broken")
	}
	// RESTRICTED_SYMBOL.
	if slices.Contains(l.GetRestrictedSymbols(), sym) {
		add(riskv1.RiskRule_RISK_RULE_RESTRICTED_SYMBOL, 0, 0, sym, "broken")
	}
	// MAX_ORDER_QUANTITY.
	check(riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY, l.MaxOrderQuantity, o.GetQuantity(), sym, true)

	// The order is valued at its limit price, a market order at the
	// reference price.
	ref := prices[sym]
	market := o.GetType() == riskv1.OrderType_ORDER_TYPE_MARKET
	price := o.GetLimitPrice()
	if market {
		price = ref
	}
	// REFERENCE_PRICE_MISSING: a market order, or a limit order under a
	// collar, without a reference price.
	if ref == 0 && (market || l.PriceCollarPercent != nil) {
		add(riskv1.RiskRule_RISK_RULE_REFERENCE_PRICE_MISSING, 0, 0, sym, "broken")
	}
	// PRICE_COLLAR: |limit - reference| / reference * 100.
	if !market && ref > 0 {
		check(riskv1.RiskRule_RISK_RULE_PRICE_COLLAR, l.PriceCollarPercent, math.Abs(o.GetLimitPrice()-ref)/ref*100, sym, false)
	}
	// DUPLICATE_CLIENT_ORDER_ID: approved within the window.
	if w := l.GetDuplicateWindow(); w != nil {
		if prev, ok := a.approvals[o.GetClientOrderId()]; ok && now.Sub(prev.at) < w.AsDuration() {
			add(riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID, w.AsDuration().Seconds(), now.Sub(prev.at).Seconds(), "", "broken")
		}
	}
	// ORDER_RATE: fewer than one token.
	if r := l.MaxOrdersPerSecond; r != nil {
		verdict := ""
		switch {
		case a.tokens < 1-1e-6:
			verdict = "broken"
		case a.tokens < 1+1e-6:
			verdict = "ambiguous"
		}
		if verdict != "" {
			out = append(out, propRule{rule: riskv1.RiskRule_RISK_RULE_ORDER_RATE, limit: *r, observed: a.tokens,
				ambiguous: verdict == "ambiguous", tol: 1e-6})
		}
	}

	syms, equity := propState(pf, prices)
	// DAILY_LOSS: day_start_equity - equity.
	check(riskv1.RiskRule_RISK_RULE_DAILY_LOSS, l.MaxDailyLoss, pf.GetDayStartEquity()-equity, "", false)
	// MAX_DRAWDOWN: from the day's high-water equity, which this equity
	// raises.
	hw := math.Max(pf.GetHighWaterEquity(), equity)
	dd := 0.0
	if hw > 0 && equity < hw {
		dd = (hw - equity) / hw * 100
	}
	check(riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN, l.MaxDrawdownPercent, dd, "", false)

	// Projected exposure: the order joins its symbol's reservations.
	s := syms[sym]
	if s == nil {
		s = &propSym{}
		syms[sym] = s
	}
	notional := o.GetQuantity() * price
	if o.GetSide() == riskv1.OrderSide_ORDER_SIDE_BUY {
		s.buyQty += o.GetQuantity()
		s.buyNotional += notional
	} else {
		s.sellQty += o.GetQuantity()
		s.sellNotional += notional
	}
	// POSITION_QUANTITY needs no price: a market order without a reference
	// price breaks it too when its quantity is beyond the limit.
	check(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, l.MaxPositionQuantity, s.worstQty(), sym, true)
	if price > 0 {
		check(riskv1.RiskRule_RISK_RULE_MAX_ORDER_NOTIONAL, l.MaxOrderNotional, notional, sym, true)
		symNotional := s.worstNotional()
		check(riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL, l.MaxPositionNotional, symNotional, sym, false)
		gross := 0.0
		for _, other := range syms {
			gross += other.worstNotional()
		}
		check(riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE, l.MaxGrossExposure, gross, "", false)
		check(riskv1.RiskRule_RISK_RULE_LEVERAGE, l.MaxLeverage, propRatio(gross, equity), "", false)
		check(riskv1.RiskRule_RISK_RULE_CONCENTRATION, l.MaxConcentrationPercent, propRatio(symNotional, equity)*100, sym, false)
	}
	return out
}

// propRatio is x / equity, +Inf when equity is 0 or negative (x > 0).
func propRatio(x, equity float64) float64 {
	if equity <= 0 {
		return math.Inf(1)
	}
	return x / equity
}

// propBreaches lists the limits the filled positions are beyond after a
// fill of symbol: its quantity, notional and concentration, and the
// account's gross exposure and leverage (reservations not counted).
func propBreaches(pf *riskv1.Portfolio, l *riskv1.Limits, prices map[string]float64, symbol string) []propRule {
	syms, equity := propState(pf, prices)
	s := syms[symbol]
	if s == nil {
		s = &propSym{}
	}
	var out []propRule
	check := func(rule riskv1.RiskRule, limit *float64, observed float64, sym string, exact bool) {
		if limit == nil {
			return
		}
		if v := propVerdict(observed, *limit, exact); v != "" {
			out = append(out, propRule{rule: rule, limit: *limit, observed: observed, symbol: sym, ambiguous: v == "ambiguous"})
		}
	}
	gross := 0.0
	for _, o := range syms {
		gross += math.Abs(o.value)
	}
	n := math.Abs(s.value)
	check(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, l.MaxPositionQuantity, math.Abs(s.qty), symbol, true)
	check(riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL, l.MaxPositionNotional, n, symbol, false)
	check(riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE, l.MaxGrossExposure, gross, "", false)
	lev := 0.0
	if gross > 0 {
		lev = propRatio(gross, equity)
	}
	check(riskv1.RiskRule_RISK_RULE_LEVERAGE, l.MaxLeverage, lev, "", false)
	conc := 0.0
	if n > 0 {
		conc = propRatio(n, equity) * 100
	}
	check(riskv1.RiskRule_RISK_RULE_CONCENTRATION, l.MaxConcentrationPercent, conc, symbol, false)
	return out
}

// compare asserts that got lists exactly the rules of want that are surely
// broken, perhaps some that are ambiguous, and nothing else; in RiskRule
// order, each with want's limit, observed value and symbol and a message.
func (h *propHarness) compare(t *rapid.T, what string, want []propRule, got []*riskv1.RuleViolation) {
	byRule := map[riskv1.RiskRule]propRule{}
	for _, w := range want {
		byRule[w.rule] = w
	}
	if !slices.IsSortedFunc(got, func(a, b *riskv1.RuleViolation) int { return cmp.Compare(a.GetRule(), b.GetRule()) }) {
		t.Fatalf("%s: violations not in RiskRule order: %v", what, got)
	}
	seen := map[riskv1.RiskRule]bool{}
	for _, v := range got {
		w, ok := byRule[v.GetRule()]
		if !ok {
			t.Fatalf("%s: %v reported (limit %v, observed %v) but the oracle finds it not broken; oracle: %+v; all: %v",
				what, v.GetRule(), v.GetLimit(), v.GetObserved(), want, got)
		}
		if seen[v.GetRule()] {
			t.Fatalf("%s: %v reported twice: %v", what, v.GetRule(), got)
		}
		seen[v.GetRule()] = true
		closeEnough := propClose(v.GetObserved(), w.observed)
		if w.tol > 0 {
			closeEnough = math.Abs(v.GetObserved()-w.observed) <= w.tol
		}
		if v.GetLimit() != w.limit || !closeEnough || v.GetSymbol() != w.symbol || v.GetMessage() == "" {
			t.Fatalf("%s: %v reported with limit %v observed %v symbol %q message %q; oracle: limit %v observed %v symbol %q",
				what, v.GetRule(), v.GetLimit(), v.GetObserved(), v.GetSymbol(), v.GetMessage(), w.limit, w.observed, w.symbol)
		}
	}
	for _, w := range want {
		if w.ambiguous {
			h.stats.mu.Lock()
			h.stats.ambiguous++
			h.stats.mu.Unlock()
			continue
		}
		if !seen[w.rule] {
			t.Fatalf("%s: the oracle finds %v broken (limit %v, observed %v) but it is not reported; reported: %v",
				what, w.rule, w.limit, w.observed, got)
		}
	}
}

// TestPropertyDecisionsMatchOracle: every decision agrees with the
// contract's rules, every rejection names exactly the rules really
// broken, and every fill reports (and counts) exactly the limits it left a
// position beyond.
func TestPropertyDecisionsMatchOracle(t *testing.T) {
	t.Parallel()
	stats := &propStats{}
	rapid.Check(t, func(t *rapid.T) {
		h := newPropHarness(t, propOracle, stats)
		for range propRepeats {
			t.Repeat(h.actions())
		}
	})
	stats.log(t)
}

// TestPropertyApprovedExposureStaysWithinLimits: with limits fixed, what
// approvals and their fills add up to never passes a limit (see the file
// comment for what "exact" and "prices move" may promise).
func TestPropertyApprovedExposureStaysWithinLimits(t *testing.T) {
	t.Parallel()
	for name, mode := range map[string]propMode{"exact": propExact, "prices move": propPricesMove} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			stats := &propStats{}
			rapid.Check(t, func(t *rapid.T) {
				h := newPropHarness(t, mode, stats)
				for range propRepeats {
					t.Repeat(h.actions())
				}
			})
			stats.log(t)
		})
	}
}

// TestMarketOrderWithoutReferenceListsPositionQuantity: a rejection lists
// every rule the order broke. A market order without a reference price has
// no notional, but its projected position needs no price: when it is
// beyond max_position_quantity, POSITION_QUANTITY is listed beside
// REFERENCE_PRICE_MISSING. (The property test's oracle finds the same.)
func TestMarketOrderWithoutReferenceListsPositionQuantity(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, srv, _, _ := newPropServer(t)
	limit, cash := 5.0, 10000.0
	if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{
		Limits:     &riskv1.Limits{AccountId: "acct", MaxPositionQuantity: &limit},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_position_quantity"}}, CashBalance: &cash,
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: &riskv1.Order{AccountId: "acct", ClientOrderId: "no-price",
		Symbol: "AAA", Side: riskv1.OrderSide_ORDER_SIDE_BUY, Type: riskv1.OrderType_ORDER_TYPE_MARKET, Quantity: 6}})
	if err != nil {
		t.Fatal(err)
	}
	var rules []riskv1.RiskRule
	for _, v := range resp.GetResult().GetViolations() {
		rules = append(rules, v.GetRule())
	}
	want := []riskv1.RiskRule{riskv1.RiskRule_RISK_RULE_REFERENCE_PRICE_MISSING, riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY}
	if !slices.Equal(rules, want) {
		t.Errorf("market buy of 6 without a reference price, max_position_quantity 5: rules %v, want %v", rules, want)
	}
}

// TestOrderRateLimitChangeKeepsTokens: changing an account's limits must
// not refill its order-rate bucket, at the engine's clock. Two checks empty
// a bucket of 2; a new max_orders_per_second at the same instant leaves it
// empty, so the third check is throttled.
func TestOrderRateLimitChangeKeepsTokens(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	eng, srv, _, _ := newPropServer(t)
	now := propStart
	eng.now = func() time.Time { return now }
	setRate := func(r float64) {
		t.Helper()
		burst, cash := int32(2), 10000.0
		if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{
			Limits:     &riskv1.Limits{AccountId: "acct", MaxOrdersPerSecond: &r, OrderBurst: &burst},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_orders_per_second", "order_burst"}}, CashBalance: &cash,
		}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(id string) []*riskv1.RuleViolation {
		t.Helper()
		resp, err := srv.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: &riskv1.Order{AccountId: "acct", ClientOrderId: id,
			Symbol: "AAA", Side: riskv1.OrderSide_ORDER_SIDE_BUY, Type: riskv1.OrderType_ORDER_TYPE_LIMIT, Quantity: 1, LimitPrice: 10}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetResult().GetViolations()
	}
	setRate(1)
	if v1, v2 := check("1"), check("2"); len(v1)+len(v2) != 0 {
		t.Fatalf("a full bucket of 2 throttled: %v %v", v1, v2)
	}
	setRate(0.5)
	if v := check("3"); len(v) != 1 || v[0].GetRule() != riskv1.RiskRule_RISK_RULE_ORDER_RATE || v[0].GetObserved() != 0 {
		t.Errorf("third check at the same instant, after a rate change: %v, want ORDER_RATE with 0 tokens", v)
	}
	now = now.Add(2 * time.Second) // one token at 0.5/s
	if v := check("4"); len(v) != 0 {
		t.Errorf("after 2 s at 0.5/s: %v, want approved", v)
	}
}

// TestSellLimitBelowReferenceBreachIsCounted shows why the value
// invariant needs orders priced at the reference: a marketable sell limit
// far below the reference reserves its notional at the limit price (the
// contract's value of an order), while the filled position is worth the
// reference. The fill leaves the position beyond max_position_notional; the
// engine cannot prevent that (a price collar bounds it), so it must report
// and count it.
func TestSellLimitBelowReferenceBreachIsCounted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, srv, reader, _ := newPropServer(t)
	limit, cash := 600.0, 10000.0
	if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{
		Limits:     &riskv1.Limits{AccountId: "acct", MaxPositionNotional: &limit},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: &cash,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: "AAA", Price: 100}}}); err != nil {
		t.Fatal(err)
	}
	o := &riskv1.Order{AccountId: "acct", ClientOrderId: "below", Symbol: "AAA", Side: riskv1.OrderSide_ORDER_SIDE_SELL,
		Type: riskv1.OrderType_ORDER_TYPE_LIMIT, Quantity: 10, LimitPrice: 50}
	resp, err := srv.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: o})
	if err != nil || resp.GetResult().GetDecision() != riskv1.Decision_DECISION_APPROVED {
		t.Fatalf("sell 10 @ 50 (reference 100, max notional 600): %v %v, want approved (reserved notional 500)", resp, err)
	}
	fill, err := srv.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "acct", Fill: &riskv1.Fill{
		FillId: "f", ReservationId: resp.GetResult().GetReservation().GetReservationId(), Quantity: 10, Price: 50,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if b := fill.GetBreaches(); len(b) != 1 || b[0].GetRule() != riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL || b[0].GetObserved() != 1000 {
		t.Fatalf("breaches %v, want POSITION_NOTIONAL observed 1000", b)
	}
	if n := propBreachCounter(t, reader); n != 1 {
		t.Fatalf("breach counter %d, want 1", n)
	}
}
