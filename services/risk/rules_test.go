package risk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// Engine-level tests: the Server's handlers called in process, on the real
// SQLStore over SQLite, with the engine's clock in the test's hands.

// stepClock is a clock the test moves by hand; the engine reads it through
// Engine.now.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *stepClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// ruleStart is where every harness clock starts: a Wednesday afternoon.
var ruleStart = time.Date(2030, 3, 6, 14, 0, 0, 0, time.UTC)

// ruleAccount is the harness's default account.
const ruleAccount = "acct-1"

// ruleHarness is an engine on a fresh SQLite database, its store and the
// Server's handlers, with a hand-driven clock.
type ruleHarness struct {
	t     *testing.T
	ctx   context.Context
	clock *stepClock
	sql   *SQLStore
	store Store // sql, or the wrapper the test asked for
	eng   *Engine
	svc   *Server
	acct  string
	ids   int // client order id counter
}

func newRuleHarness(t *testing.T) *ruleHarness {
	t.Helper()
	return newRuleHarnessWith(t, DefaultConfig(), nil)
}

// newRuleHarnessWith builds a harness with cfg; wrap, when set, puts a fake
// in front of the SQL store.
func newRuleHarnessWith(t *testing.T, cfg Config, wrap func(Store) Store) *ruleHarness {
	t.Helper()
	return newRuleHarnessOn(t, ruleDB(t), cfg, wrap)
}

// newRuleHarnessOn is newRuleHarnessWith on db, a migrated database of
// either backend.
func newRuleHarnessOn(t *testing.T, db *store.DB, cfg Config, wrap func(Store) Store) *ruleHarness {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	sq, err := NewSQLStore(ctx, db, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	var st Store = sq
	if wrap != nil {
		st = wrap(sq)
	}
	eng, err := NewEngine(ctx, cfg, st, log)
	if err != nil {
		t.Fatal(err)
	}
	clock := &stepClock{t: ruleStart}
	eng.now = clock.now
	svc, err := New(eng, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &ruleHarness{t: t, ctx: ctx, clock: clock, sql: sq, store: st, eng: eng, svc: svc, acct: ruleAccount}
}

// ruleTemplate is a migrated SQLite database file, built once: each
// harness starts from a copy, which is much cheaper than migrating.
var ruleTemplate struct {
	once sync.Once
	data []byte
	err  error
}

// ruleDB opens a fresh migrated SQLite database in t's temporary directory.
func ruleDB(t *testing.T) *store.DB {
	t.Helper()
	ctx := context.Background()
	ruleTemplate.once.Do(func() {
		dir, err := os.MkdirTemp("", "risk-template-")
		if err != nil {
			ruleTemplate.err = err
			return
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "template.db")
		db, err := store.Open(ctx, store.Config{URL: path})
		if err != nil {
			ruleTemplate.err = err
			return
		}
		_, err = db.Migrate(ctx, Migrations())
		if err == nil {
			// Fold the write-ahead log into the file: the copy is one file.
			_, err = db.Exec(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
		}
		if cerr := db.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			ruleTemplate.data, err = os.ReadFile(path)
		}
		ruleTemplate.err = err
	})
	if ruleTemplate.err != nil {
		t.Fatalf("sqlite template: %v", ruleTemplate.err)
	}
	path := filepath.Join(t.TempDir(), "test.db")
	if err := os.WriteFile(path, ruleTemplate.data, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, store.Config{URL: path})
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// create makes account id with cash and every limit of l (mask "*").
func (h *ruleHarness) create(id string, cash float64, l *riskv1.Limits) {
	h.t.Helper()
	if l == nil {
		l = &riskv1.Limits{}
	}
	l = proto.Clone(l).(*riskv1.Limits)
	l.AccountId = id
	resp, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: proto.Float64(cash), Reason: "test setup",
	})
	if err != nil {
		h.t.Fatalf("create %s: %v", id, err)
	}
	if !resp.GetCreated() {
		h.t.Fatalf("create %s: not created", id)
	}
}

// setLimits changes the named limits of the default account.
func (h *ruleHarness) setLimits(l *riskv1.Limits, paths ...string) *riskv1.Limits {
	h.t.Helper()
	l = proto.Clone(l).(*riskv1.Limits)
	l.AccountId = h.acct
	resp, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{Limits: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
	if err != nil {
		h.t.Fatalf("set limits %v: %v", paths, err)
	}
	return resp.GetLimits()
}

// order builds an order of the default account with a fresh client order
// id; px 0 makes a market order.
func (h *ruleHarness) order(side riskv1.OrderSide, symbol string, qty, px float64) *riskv1.Order {
	h.ids++
	typ := riskv1.OrderType_ORDER_TYPE_LIMIT
	if px == 0 {
		typ = riskv1.OrderType_ORDER_TYPE_MARKET
	}
	return &riskv1.Order{
		AccountId: h.acct, ClientOrderId: fmt.Sprintf("c-%d", h.ids), Symbol: symbol,
		Side: side, Type: typ, Quantity: qty, LimitPrice: px,
	}
}

func (h *ruleHarness) buy(symbol string, qty, px float64) *riskv1.Order {
	return h.order(riskv1.OrderSide_ORDER_SIDE_BUY, symbol, qty, px)
}

func (h *ruleHarness) sell(symbol string, qty, px float64) *riskv1.Order {
	return h.order(riskv1.OrderSide_ORDER_SIDE_SELL, symbol, qty, px)
}

func (h *ruleHarness) check(o *riskv1.Order) *riskv1.OrderCheckResult {
	h.t.Helper()
	resp, err := h.svc.CheckOrder(h.ctx, &riskv1.CheckOrderRequest{Order: o})
	if err != nil {
		h.t.Fatalf("check %v: %v", o, err)
	}
	return resp.GetResult()
}

// approve checks o and fails the test unless it is approved.
func (h *ruleHarness) approve(o *riskv1.Order) *riskv1.Reservation {
	h.t.Helper()
	res := h.check(o)
	if res.GetDecision() != riskv1.Decision_DECISION_APPROVED {
		h.t.Fatalf("order %s %v %s %g@%g rejected: %v", o.GetClientOrderId(), o.GetSide(), o.GetSymbol(), o.GetQuantity(), o.GetLimitPrice(), res.GetViolations())
	}
	return res.GetReservation()
}

func (h *ruleHarness) applyFill(f *riskv1.Fill) (*riskv1.ApplyFillResponse, error) {
	return h.svc.ApplyFill(h.ctx, &riskv1.ApplyFillRequest{AccountId: h.acct, Fill: f})
}

// fill applies a fill and fails the test on an error.
func (h *ruleHarness) fill(fillID, reservationID string, qty, px, fee float64) *riskv1.ApplyFillResponse {
	h.t.Helper()
	resp, err := h.applyFill(&riskv1.Fill{FillId: fillID, ReservationId: reservationID, Quantity: qty, Price: px, Fee: fee})
	if err != nil {
		h.t.Fatalf("fill %s: %v", fillID, err)
	}
	return resp
}

// buyFilled approves a buy of qty at px and fills it completely at px.
func (h *ruleHarness) buyFilled(symbol string, qty, px float64) {
	h.t.Helper()
	r := h.approve(h.buy(symbol, qty, px))
	h.fill("f-"+r.GetReservationId(), r.GetReservationId(), qty, px, 0)
}

// sellFilled approves a sell of qty at px and fills it completely at px.
func (h *ruleHarness) sellFilled(symbol string, qty, px float64) {
	h.t.Helper()
	r := h.approve(h.sell(symbol, qty, px))
	h.fill("f-"+r.GetReservationId(), r.GetReservationId(), qty, px, 0)
}

func (h *ruleHarness) release(reservationID string) (*riskv1.ReleaseReservationResponse, error) {
	return h.svc.ReleaseReservation(h.ctx, &riskv1.ReleaseReservationRequest{AccountId: h.acct, ReservationId: reservationID})
}

// price sets reference prices, stamped with the harness clock.
func (h *ruleHarness) price(symbol string, px float64) {
	h.t.Helper()
	if _, err := h.svc.UpdatePrices(h.ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{
		{Symbol: symbol, Price: px, PriceTime: timestamppb.New(h.clock.now())},
	}}); err != nil {
		h.t.Fatalf("price %s %g: %v", symbol, px, err)
	}
}

func (h *ruleHarness) portfolio() *riskv1.Portfolio {
	h.t.Helper()
	resp, err := h.svc.GetPortfolio(h.ctx, &riskv1.GetPortfolioRequest{AccountId: h.acct})
	if err != nil {
		h.t.Fatalf("portfolio: %v", err)
	}
	return resp.GetPortfolio()
}

func (h *ruleHarness) trip(reason string) *riskv1.TriggerKillSwitchResponse {
	h.t.Helper()
	resp, err := h.svc.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: h.acct, Reason: reason})
	if err != nil {
		h.t.Fatalf("trip: %v", err)
	}
	return resp
}

func (h *ruleHarness) reset(reason string, rev uint64) (*riskv1.ResetKillSwitchResponse, error) {
	return h.svc.ResetKillSwitch(h.ctx, &riskv1.ResetKillSwitchRequest{AccountId: h.acct, Reason: reason, ExpectedRevision: rev})
}

// events returns every committed event. Rejection events are written
// asynchronously, so it waits (up to 5s) until the store has atLeast.
func (h *ruleHarness) events(atLeast int) []*riskv1.RiskEvent {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := h.sql.Events(h.ctx, 0, 10000)
		if err != nil {
			h.t.Fatal(err)
		}
		if len(evs) >= atLeast || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// eventsOf filters events by type.
func eventsOf(evs []*riskv1.RiskEvent, typ riskv1.RiskEventType) []*riskv1.RiskEvent {
	var out []*riskv1.RiskEvent
	for _, ev := range evs {
		if ev.GetType() == typ {
			out = append(out, ev)
		}
	}
	return out
}

// wantViol is an expected rule violation (its message is checked apart).
func wantViol(rule riskv1.RiskRule, limit, observed float64, symbol string) *riskv1.RuleViolation {
	return &riskv1.RuleViolation{Rule: rule, Limit: limit, Observed: observed, Symbol: symbol}
}

// violationOpts compares violations without their messages, with a
// tolerance for floating-point arithmetic in observed values.
var violationOpts = []cmp.Option{
	protocmp.Transform(),
	protocmp.IgnoreFields(&riskv1.RuleViolation{}, "message"),
	cmpopts.EquateApprox(1e-12, 1e-9),
}

// wantDecision checks that res is approved (want empty) or rejected with
// exactly want, in order.
func wantDecision(t *testing.T, what string, res *riskv1.OrderCheckResult, want []*riskv1.RuleViolation) {
	t.Helper()
	if len(want) == 0 {
		if res.GetDecision() != riskv1.Decision_DECISION_APPROVED || res.GetReservation().GetReservationId() == "" || len(res.GetViolations()) != 0 {
			t.Errorf("%s: want approved with a reservation, got %v %v", what, res.GetDecision(), res.GetViolations())
		}
		return
	}
	if res.GetDecision() != riskv1.Decision_DECISION_REJECTED || res.GetReservation() != nil {
		t.Errorf("%s: want rejected without a reservation, got %v reservation %v", what, res.GetDecision(), res.GetReservation())
	}
	if diff := cmp.Diff(want, res.GetViolations(), violationOpts...); diff != "" {
		t.Errorf("%s: violations (-want +got):\n%s", what, diff)
	}
	for _, v := range res.GetViolations() {
		if v.GetMessage() == "" {
			t.Errorf("%s: violation %v has no message", what, v.GetRule())
		}
	}
}

// wantCodeOf checks that err maps to code at the edge.
func wantCodeOf(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	st, _ := apierr.Status(err)
	if st.Code() != code {
		t.Errorf("%s: code %v (%v), want %v", what, st.Code(), err, code)
	}
}

const (
	aapl = "AAPL"
	msft = "MSFT"
)

func TestRuleAtUnderAndOverEveryLimit(t *testing.T) {
	t.Parallel()
	f := proto.Float64
	// Setups shared by the rows of one rule. Each row gets a fresh account.
	plain := func(l *riskv1.Limits) func(h *ruleHarness) {
		return func(h *ruleHarness) { h.create(h.acct, 100000, l) }
	}
	withPrice := func(l *riskv1.Limits, symbol string, px float64) func(h *ruleHarness) {
		return func(h *ruleHarness) {
			h.create(h.acct, 100000, l)
			h.price(symbol, px)
		}
	}
	killed := func(h *ruleHarness) {
		h.create(h.acct, 100000, nil)
		h.trip("test")
	}
	killedAndReset := func(h *ruleHarness) {
		killed(h)
		if _, err := h.reset("test over", 0); err != nil {
			h.t.Fatal(err)
		}
	}
	// An approved order with client order id "dup", then the clock moves.
	dupAfter := func(d time.Duration) func(h *ruleHarness) {
		return func(h *ruleHarness) {
			h.create(h.acct, 100000, &riskv1.Limits{DuplicateWindow: durationpb.New(10 * time.Second)})
			o := h.buy(aapl, 1, 100)
			o.ClientOrderId = "dup"
			h.approve(o)
			h.clock.advance(d)
		}
	}
	dupOrder := func(h *ruleHarness) *riskv1.Order {
		o := h.buy(aapl, 1, 100)
		o.ClientOrderId = "dup"
		return o
	}
	// Rate 2/s with a burst of 3: three checks take the burst, then the
	// clock moves.
	rateAfter := func(d time.Duration) func(h *ruleHarness) {
		return func(h *ruleHarness) {
			h.create(h.acct, 100000, &riskv1.Limits{MaxOrdersPerSecond: f(2), OrderBurst: proto.Int32(3)})
			for range 3 {
				h.approve(h.buy(aapl, 1, 100))
			}
			h.clock.advance(d)
		}
	}
	// Filled long 40 AAPL at 100, an open buy of 30 and an open sell of 20,
	// all at 100; the reference price is 125 when notional matters.
	book := func(l *riskv1.Limits, ref float64) func(h *ruleHarness) {
		return func(h *ruleHarness) {
			h.create(h.acct, 100000, l)
			if ref > 0 {
				h.price(aapl, ref)
			}
			h.buyFilled(aapl, 40, 100)
			h.approve(h.buy(aapl, 30, 100))
			h.approve(h.sell(aapl, 20, 100))
		}
	}
	// Long 50 AAPL (ref 100) and short 20 MSFT (ref 250) filled, plus an
	// open sell of 10 MSFT at 250: worst-case gross 5000 + 7500.
	gross := func(h *ruleHarness) {
		h.create(h.acct, 100000, &riskv1.Limits{MaxGrossExposure: f(20000)})
		h.price(aapl, 100)
		h.price(msft, 250)
		h.buyFilled(aapl, 50, 100)
		h.sellFilled(msft, 20, 250)
		h.approve(h.sell(msft, 10, 250))
	}
	// Long 100 AAPL bought at 100, now at 90: the day's loss is 1000.
	// max_daily_loss is set afterwards, so the check is what trips.
	lossWithLimit := func(limit float64) func(h *ruleHarness) {
		return func(h *ruleHarness) {
			h.create(h.acct, 100000, nil)
			h.price(aapl, 100)
			h.buyFilled(aapl, 100, 100)
			h.price(aapl, 90)
			h.setLimits(&riskv1.Limits{MaxDailyLoss: f(limit)}, "max_daily_loss")
		}
	}
	// Long 100 AAPL bought at 100; the price goes to 300 (high water
	// 120000) and back to 180 (equity 108000): a 10% drawdown.
	// max_drawdown_percent 100 records the high water without tripping.
	drawdownWithLimit := func(limit float64) func(h *ruleHarness) {
		return func(h *ruleHarness) {
			h.create(h.acct, 100000, &riskv1.Limits{MaxDrawdownPercent: f(100)})
			h.price(aapl, 100)
			h.buyFilled(aapl, 100, 100)
			h.price(aapl, 300)
			h.price(aapl, 180)
			h.setLimits(&riskv1.Limits{MaxDrawdownPercent: f(limit)}, "max_drawdown_percent")
		}
	}

	const (
		kill        = riskv1.RiskRule_RISK_RULE_KILL_SWITCH
		restricted  = riskv1.RiskRule_RISK_RULE_RESTRICTED_SYMBOL
		orderQty    = riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY
		orderNotl   = riskv1.RiskRule_RISK_RULE_MAX_ORDER_NOTIONAL
		collar      = riskv1.RiskRule_RISK_RULE_PRICE_COLLAR
		refMissing  = riskv1.RiskRule_RISK_RULE_REFERENCE_PRICE_MISSING
		duplicate   = riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID
		orderRate   = riskv1.RiskRule_RISK_RULE_ORDER_RATE
		posQty      = riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY
		posNotional = riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL
		grossExp    = riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE
		leverage    = riskv1.RiskRule_RISK_RULE_LEVERAGE
		concentr    = riskv1.RiskRule_RISK_RULE_CONCENTRATION
		dailyLoss   = riskv1.RiskRule_RISK_RULE_DAILY_LOSS
		drawdown    = riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN
	)
	inf := math.Inf(1)

	tests := []struct {
		name  string
		setup func(h *ruleHarness)
		order func(h *ruleHarness) *riskv1.Order
		want  []*riskv1.RuleViolation // empty: approved
		after func(t *testing.T, h *ruleHarness, res *riskv1.OrderCheckResult)
	}{
		{name: "kill switch/never tripped", setup: plain(nil),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) }},
		{name: "kill switch/tripped", setup: killed,
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(kill, 0, 1, "")}},
		{name: "kill switch/reset", setup: killedAndReset,
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) }},

		{name: "restricted symbol/restricted", setup: plain(&riskv1.Limits{RestrictedSymbols: []string{"GME", aapl}}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(restricted, 0, 0, aapl)}},
		{name: "restricted symbol/matched exactly, case-sensitive", setup: plain(&riskv1.Limits{RestrictedSymbols: []string{"GME", aapl}}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy("aapl", 1, 100) }},
		{name: "restricted symbol/a longer symbol is not restricted", setup: plain(&riskv1.Limits{RestrictedSymbols: []string{"GME", aapl}}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy("AAPL.O", 1, 100) }},

		{name: "max order quantity/at", setup: plain(&riskv1.Limits{MaxOrderQuantity: f(100)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 100, 10) }},
		{name: "max order quantity/under", setup: plain(&riskv1.Limits{MaxOrderQuantity: f(100)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 99.5, 10) }},
		{name: "max order quantity/over", setup: plain(&riskv1.Limits{MaxOrderQuantity: f(100)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 100.5, 10) },
			want:  []*riskv1.RuleViolation{wantViol(orderQty, 100, 100.5, aapl)}},
		{name: "max order quantity/zero is a real limit", setup: plain(&riskv1.Limits{MaxOrderQuantity: f(0)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 0.001, 10) },
			want:  []*riskv1.RuleViolation{wantViol(orderQty, 0, 0.001, aapl)}},

		{name: "max order notional/at", setup: plain(&riskv1.Limits{MaxOrderNotional: f(10000)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 100, 100) }},
		{name: "max order notional/under", setup: plain(&riskv1.Limits{MaxOrderNotional: f(10000)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 99.5, 100) }},
		{name: "max order notional/over", setup: plain(&riskv1.Limits{MaxOrderNotional: f(10000)}),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 100.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(orderNotl, 10000, 10050, aapl)}},
		{name: "max order notional/market order at the reference price, at", setup: withPrice(&riskv1.Limits{MaxOrderNotional: f(10000)}, aapl, 50),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 200, 0) }},
		{name: "max order notional/market order at the reference price, over", setup: withPrice(&riskv1.Limits{MaxOrderNotional: f(10000)}, aapl, 50),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 201, 0) },
			want:  []*riskv1.RuleViolation{wantViol(orderNotl, 10000, 10050, aapl)}},

		{name: "price collar/at, above", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 105) }},
		{name: "price collar/at, below", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 1, 95) }},
		{name: "price collar/under", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 104.5) }},
		{name: "price collar/over, above", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 105.5) },
			want:  []*riskv1.RuleViolation{wantViol(collar, 5, 5.5, aapl)}},
		{name: "price collar/over, below", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 1, 94.5) },
			want:  []*riskv1.RuleViolation{wantViol(collar, 5, 5.5, aapl)}},
		{name: "price collar/not applied to a market order", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 0) }},

		{name: "reference price missing/market order", setup: plain(nil),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 0) },
			want:  []*riskv1.RuleViolation{wantViol(refMissing, 0, 0, aapl)}},
		{name: "reference price missing/market order with a price", setup: withPrice(nil, aapl, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 3, 0) },
			after: func(t *testing.T, _ *ruleHarness, res *riskv1.OrderCheckResult) {
				// A market order is reserved at the reference price.
				if r := res.GetReservation(); r.GetPrice() != 100 || r.GetReservedNotional() != 300 || res.GetReferencePrice() != 100 ||
					r.GetType() != riskv1.OrderType_ORDER_TYPE_MARKET {
					t.Errorf("market reservation: %v, reference %g", r, res.GetReferencePrice())
				}
			}},
		{name: "reference price missing/limit order with a collar", setup: withPrice(&riskv1.Limits{PriceCollarPercent: f(5)}, msft, 100),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(refMissing, 0, 0, aapl)}},
		{name: "reference price missing/limit order without a collar", setup: plain(nil),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) }},

		{name: "duplicate client order id/at the window", setup: dupAfter(10 * time.Second), order: dupOrder},
		{name: "duplicate client order id/within the window", setup: dupAfter(9500 * time.Millisecond), order: dupOrder,
			want: []*riskv1.RuleViolation{wantViol(duplicate, 10, 9.5, "")},
			after: func(t *testing.T, h *ruleHarness, res *riskv1.OrderCheckResult) {
				first := h.portfolio().GetReservations()[0]
				if first.GetClientOrderId() != "dup" || res.GetExistingReservationId() != first.GetReservationId() {
					t.Errorf("existing_reservation_id %q, want the first approval's %q", res.GetExistingReservationId(), first.GetReservationId())
				}
			}},
		{name: "duplicate client order id/after the window", setup: dupAfter(10500 * time.Millisecond), order: dupOrder,
			after: func(t *testing.T, h *ruleHarness, res *riskv1.OrderCheckResult) {
				if res.GetExistingReservationId() != "" {
					t.Errorf("existing_reservation_id %q on an approval", res.GetExistingReservationId())
				}
			}},
		{name: "duplicate client order id/another id", setup: dupAfter(0),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) }},

		{name: "order rate/burst taken", setup: rateAfter(0),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(orderRate, 2, 0, "")}},
		{name: "order rate/half a token", setup: rateAfter(250 * time.Millisecond),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(orderRate, 2, 0.5, "")}},
		{name: "order rate/one token refilled", setup: rateAfter(500 * time.Millisecond),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) }},

		{name: "position quantity/buy at", setup: book(&riskv1.Limits{MaxPositionQuantity: f(100)}, 0),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 30, 100) }},
		{name: "position quantity/buy under", setup: book(&riskv1.Limits{MaxPositionQuantity: f(100)}, 0),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 29.5, 100) }},
		{name: "position quantity/buy over", setup: book(&riskv1.Limits{MaxPositionQuantity: f(100)}, 0),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 30.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(posQty, 100, 100.5, aapl)}},
		{name: "position quantity/sell at", setup: book(&riskv1.Limits{MaxPositionQuantity: f(100)}, 0),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 120, 100) }},
		{name: "position quantity/sell over", setup: book(&riskv1.Limits{MaxPositionQuantity: f(100)}, 0),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 120.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(posQty, 100, 100.5, aapl)}},

		{name: "position notional/buy at", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 20, 100) }},
		{name: "position notional/buy under", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 19.5, 100) }},
		{name: "position notional/buy over", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 20.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(posNotional, 10000, 10050, aapl)}},
		{name: "position notional/market buy at the reference price, at", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 16, 0) }},
		{name: "position notional/market buy at the reference price, over", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 16.5, 0) },
			want:  []*riskv1.RuleViolation{wantViol(posNotional, 10000, 10062.5, aapl)}},
		{name: "position notional/sell at", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 130, 100) }},
		{name: "position notional/sell over", setup: book(&riskv1.Limits{MaxPositionNotional: f(10000)}, 125),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 130.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(posNotional, 10000, 10050, aapl)}},

		{name: "gross exposure/at", setup: gross,
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 75, 100) }},
		{name: "gross exposure/under", setup: gross,
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 74.5, 100) }},
		{name: "gross exposure/over", setup: gross,
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 75.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(grossExp, 20000, 20050, "")}},

		{name: "leverage/at", setup: func(h *ruleHarness) { h.create(h.acct, 10000, &riskv1.Limits{MaxLeverage: f(2)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 200, 100) }},
		{name: "leverage/under", setup: func(h *ruleHarness) { h.create(h.acct, 10000, &riskv1.Limits{MaxLeverage: f(2)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 199.5, 100) }},
		{name: "leverage/over", setup: func(h *ruleHarness) { h.create(h.acct, 10000, &riskv1.Limits{MaxLeverage: f(2)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 200.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(leverage, 2, 2.005, "")}},
		{name: "leverage/no equity", setup: func(h *ruleHarness) { h.create(h.acct, 0, &riskv1.Limits{MaxLeverage: f(2)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(leverage, 2, inf, "")}},

		{name: "concentration/at", setup: func(h *ruleHarness) { h.create(h.acct, 40000, &riskv1.Limits{MaxConcentrationPercent: f(25)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 100, 100) }},
		{name: "concentration/under", setup: func(h *ruleHarness) { h.create(h.acct, 40000, &riskv1.Limits{MaxConcentrationPercent: f(25)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 99.5, 100) }},
		{name: "concentration/over", setup: func(h *ruleHarness) { h.create(h.acct, 40000, &riskv1.Limits{MaxConcentrationPercent: f(25)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 100.5, 100) },
			want:  []*riskv1.RuleViolation{wantViol(concentr, 25, 25.125, aapl)}},
		{name: "concentration/negative equity", setup: func(h *ruleHarness) { h.create(h.acct, -5, &riskv1.Limits{MaxConcentrationPercent: f(25)}) },
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 100) },
			want:  []*riskv1.RuleViolation{wantViol(concentr, 25, inf, aapl)}},

		{name: "daily loss/at", setup: lossWithLimit(1000),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 90) }},
		{name: "daily loss/under", setup: lossWithLimit(1000.5),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 90) }},
		{name: "daily loss/over", setup: lossWithLimit(999.5),
			order: func(h *ruleHarness) *riskv1.Order { return h.buy(aapl, 1, 90) },
			want:  []*riskv1.RuleViolation{wantViol(dailyLoss, 999.5, 1000, "")},
			after: func(t *testing.T, h *ruleHarness, _ *riskv1.OrderCheckResult) {
				wantAutoTrip(t, h, riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_DAILY_LOSS,
					wantViol(kill, 0, 1, ""), wantViol(dailyLoss, 999.5, 1000, ""))
			}},

		{name: "max drawdown/at", setup: drawdownWithLimit(10),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 1, 180) }},
		{name: "max drawdown/under", setup: drawdownWithLimit(10.5),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 1, 180) }},
		{name: "max drawdown/over", setup: drawdownWithLimit(9.5),
			order: func(h *ruleHarness) *riskv1.Order { return h.sell(aapl, 1, 180) },
			want:  []*riskv1.RuleViolation{wantViol(drawdown, 9.5, 10, "")},
			after: func(t *testing.T, h *ruleHarness, _ *riskv1.OrderCheckResult) {
				wantAutoTrip(t, h, riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MAX_DRAWDOWN,
					wantViol(kill, 0, 1, ""), wantViol(drawdown, 9.5, 10, ""))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newRuleHarness(t)
			tt.setup(h)
			res := h.check(tt.order(h))
			wantDecision(t, "check", res, tt.want)
			if tt.after != nil {
				tt.after(t, h, res)
			}
		})
	}
}

// wantAutoTrip checks that a P&L breach tripped the kill switch by itself,
// with an event, and that the next order is rejected with want.
func wantAutoTrip(t *testing.T, h *ruleHarness, cause riskv1.KillSwitchCause, want ...*riskv1.RuleViolation) {
	t.Helper()
	k := h.portfolio().GetKillSwitch()
	if !k.GetTripped() || k.GetCause() != cause || k.GetTrippedByPrincipal() != systemPrincipal || k.GetTripReason() == "" || k.GetTripTime() == nil {
		t.Errorf("kill switch after the breach: %v", k)
	}
	trips := eventsOf(h.events(0), riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED)
	if len(trips) != 1 || trips[0].GetKillSwitch().GetCause() != cause || trips[0].GetAccountId() != h.acct {
		t.Errorf("KILL_SWITCH_TRIPPED events: %v", trips)
	}
	wantDecision(t, "next order", h.check(h.buy(aapl, 1, 100)), want)
}

func TestRuleViolationsAllListedInRuleOrder(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	f := proto.Float64
	h.create(h.acct, 1000, &riskv1.Limits{
		RestrictedSymbols:       []string{aapl},
		MaxOrderQuantity:        f(10),
		MaxOrderNotional:        f(100),
		PriceCollarPercent:      f(5),
		DuplicateWindow:         durationpb.New(time.Minute),
		MaxOrdersPerSecond:      f(1),
		OrderBurst:              proto.Int32(1),
		MaxPositionQuantity:     f(5),
		MaxPositionNotional:     f(1000),
		MaxGrossExposure:        f(1000),
		MaxLeverage:             f(1),
		MaxConcentrationPercent: f(50),
	})
	h.price(aapl, 100)
	h.price(msft, 10)
	first := h.buy(msft, 1, 10) // takes the only token
	first.ClientOrderId = "same"
	h.approve(first)
	h.trip("stop everything")

	o := h.buy(aapl, 20, 200)
	o.ClientOrderId = "same"
	res := h.check(o)
	wantDecision(t, "order breaking every order rule", res, []*riskv1.RuleViolation{
		wantViol(riskv1.RiskRule_RISK_RULE_KILL_SWITCH, 0, 1, ""),
		wantViol(riskv1.RiskRule_RISK_RULE_RESTRICTED_SYMBOL, 0, 0, aapl),
		wantViol(riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY, 10, 20, aapl),
		wantViol(riskv1.RiskRule_RISK_RULE_MAX_ORDER_NOTIONAL, 100, 4000, aapl),
		wantViol(riskv1.RiskRule_RISK_RULE_PRICE_COLLAR, 5, 100, aapl),
		wantViol(riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID, 60, 0, ""),
		wantViol(riskv1.RiskRule_RISK_RULE_ORDER_RATE, 1, 0, ""),
		wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 5, 20, aapl),
		wantViol(riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL, 1000, 4000, aapl),
		wantViol(riskv1.RiskRule_RISK_RULE_GROSS_EXPOSURE, 1000, 4010, ""),
		wantViol(riskv1.RiskRule_RISK_RULE_LEVERAGE, 1, 4.01, ""),
		wantViol(riskv1.RiskRule_RISK_RULE_CONCENTRATION, 50, 400, aapl),
	})
	if res.GetReferencePrice() != 100 || res.GetExistingReservationId() == "" || !res.GetCheckTime().AsTime().Equal(ruleStart) {
		t.Errorf("result: reference %g, existing %q, check time %v", res.GetReferencePrice(), res.GetExistingReservationId(), res.GetCheckTime().AsTime())
	}
	for _, v := range res.GetViolations() {
		if v.GetRule() == riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY && !strings.Contains(v.GetMessage(), "max_order_quantity") {
			t.Errorf("message %q does not name the limit", v.GetMessage())
		}
	}
	// The rejection is recorded with every violation.
	evs := eventsOf(h.events(3), riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED)
	if len(evs) != 1 {
		t.Fatalf("rejection events: %v", evs)
	}
	if diff := cmp.Diff(res.GetViolations(), evs[0].GetRejection().GetViolations(), protocmp.Transform()); diff != "" {
		t.Errorf("event violations (-result +event):\n%s", diff)
	}
	if diff := cmp.Diff(o, evs[0].GetRejection().GetOrder(), protocmp.Transform()); diff != "" {
		t.Errorf("event order (-sent +event):\n%s", diff)
	}
}

func TestRuleUnsetLimitIsNotChecked(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 0, nil)
	// No limit at all: a huge order, twice with the same client order id,
	// on an account without equity, is approved.
	o := h.buy(aapl, 1e9, 1e6)
	h.approve(o)
	again := proto.Clone(o).(*riskv1.Order)
	h.approve(again)

	// A limit cleared by naming it in the mask, unset, is no longer checked.
	h.setLimits(&riskv1.Limits{MaxOrderQuantity: proto.Float64(1)}, "max_order_quantity")
	wantDecision(t, "with the limit", h.check(h.buy(aapl, 2, 1)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY, 1, 2, aapl)})
	h.setLimits(&riskv1.Limits{}, "max_order_quantity")
	wantDecision(t, "after clearing it", h.check(h.buy(aapl, 2, 1)), nil)
}

func TestRuleOrderRateCountsEveryCheck(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	// Burst defaults to ceil(rate) = 3.
	h.create(h.acct, 100000, &riskv1.Limits{MaxOrdersPerSecond: proto.Float64(2.5), MaxOrderQuantity: proto.Float64(10)})
	// A check rejected for another rule still takes a token.
	wantDecision(t, "rejected check", h.check(h.buy(aapl, 11, 1)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY, 10, 11, aapl)})
	h.approve(h.buy(aapl, 1, 1))
	h.approve(h.buy(aapl, 1, 1))
	wantDecision(t, "fourth check", h.check(h.buy(aapl, 1, 1)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_ORDER_RATE, 2.5, 0, "")})
	// A throttled check takes nothing: 0.4 s later exactly one token is back.
	h.clock.advance(400 * time.Millisecond)
	h.approve(h.buy(aapl, 1, 1))
	// The bucket refills to its burst and no further.
	h.clock.advance(time.Hour)
	for i := range 3 {
		h.approve(h.buy(aapl, 1, float64(i+1)))
	}
	wantDecision(t, "after the refilled burst", h.check(h.buy(aapl, 1, 1)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_ORDER_RATE, 2.5, 0, "")})
}

func TestRuleOrderRateNotRefilledByOtherLimitChanges(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxOrdersPerSecond: proto.Float64(1), OrderBurst: proto.Int32(2)})
	h.approve(h.buy(aapl, 1, 1))
	h.approve(h.buy(aapl, 1, 1))
	// Changing another limit does not hand out a fresh burst.
	h.setLimits(&riskv1.Limits{MaxLeverage: proto.Float64(5)}, "max_leverage")
	wantDecision(t, "after an unrelated limit change", h.check(h.buy(aapl, 1, 1)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_ORDER_RATE, 1, 0, "")})
}

func TestRuleDuplicateOnlyCountsApprovals(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{DuplicateWindow: durationpb.New(time.Minute), MaxOrderQuantity: proto.Float64(10)})
	o := h.buy(aapl, 11, 1)
	o.ClientOrderId = "x"
	wantDecision(t, "rejected", h.check(o), []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_MAX_ORDER_QUANTITY, 10, 11, aapl)})
	o.Quantity = 5
	first := h.approve(o) // a rejection does not make the id a duplicate
	// A released approval is still an approval within the window.
	if _, err := h.release(first.GetReservationId()); err != nil {
		t.Fatal(err)
	}
	h.clock.advance(30 * time.Second)
	res := h.check(o)
	wantDecision(t, "resent", res, []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_DUPLICATE_CLIENT_ORDER_ID, 60, 30, "")})
	if res.GetExistingReservationId() != first.GetReservationId() {
		t.Errorf("existing_reservation_id %q, want %q", res.GetExistingReservationId(), first.GetReservationId())
	}
}

func TestRuleBatchCountsEarlierApprovals(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(10)})
	h.create("acct-2", 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(10)})
	other := h.buy(aapl, 6, 1)
	other.AccountId = "acct-2"
	resp, err := h.svc.CheckOrders(h.ctx, &riskv1.CheckOrdersRequest{Orders: []*riskv1.Order{
		h.buy(aapl, 6, 1), other, h.buy(aapl, 6, 1), h.buy(aapl, 4, 1),
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetResults()
	if len(r) != 4 {
		t.Fatalf("%d results", len(r))
	}
	wantDecision(t, "first", r[0], nil)
	wantDecision(t, "other account", r[1], nil)
	wantDecision(t, "second of the account", r[2], []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 10, 12, aapl)})
	wantDecision(t, "fits exactly", r[3], nil)
	if r[1].GetAccountId() != "acct-2" || r[2].GetClientOrderId() == r[0].GetClientOrderId() {
		t.Errorf("results do not echo their orders: %v", r)
	}
}

func TestRulePnLBreachFromPricesTripsByItself(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		limits *riskv1.Limits
		moves  []float64 // AAPL prices after buying 100 at 100
		cause  riskv1.KillSwitchCause
		want   *riskv1.RuleViolation
	}{
		{"daily loss", &riskv1.Limits{MaxDailyLoss: proto.Float64(1000)}, []float64{90, 89.5},
			riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_DAILY_LOSS, wantViol(riskv1.RiskRule_RISK_RULE_DAILY_LOSS, 1000, 1050, "")},
		{"max drawdown", &riskv1.Limits{MaxDrawdownPercent: proto.Float64(10)}, []float64{300, 180, 179},
			riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MAX_DRAWDOWN, wantViol(riskv1.RiskRule_RISK_RULE_MAX_DRAWDOWN, 10, 12100.0/120000*100, "")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newRuleHarness(t)
			h.create(h.acct, 100000, tt.limits)
			h.price(aapl, 100)
			h.buyFilled(aapl, 100, 100)
			for i, px := range tt.moves {
				h.price(aapl, px)
				tripped := h.portfolio().GetKillSwitch().GetTripped()
				if last := i == len(tt.moves)-1; tripped != last {
					t.Fatalf("after price %g: tripped %v, want %v", px, tripped, last)
				}
			}
			// The price update alone tripped the switch and said so.
			wantAutoTrip(t, h, tt.cause, wantViol(riskv1.RiskRule_RISK_RULE_KILL_SWITCH, 0, 1, ""), tt.want)

			// A reset does not move the anchors: the next check trips again.
			k := h.portfolio().GetKillSwitch()
			reset, err := h.reset("operator looked", k.GetRevision())
			if err != nil {
				t.Fatal(err)
			}
			if reset.GetKillSwitch().GetTripped() || reset.GetKillSwitch().GetCause() != tt.cause {
				t.Errorf("after reset: %v", reset.GetKillSwitch())
			}
			wantDecision(t, "first check after the reset", h.check(h.buy(aapl, 1, 100)), []*riskv1.RuleViolation{tt.want})
			k2 := h.portfolio().GetKillSwitch()
			if !k2.GetTripped() || k2.GetRevision() != k.GetRevision()+2 {
				t.Errorf("not tripped again: %v", k2)
			}
			if n := len(eventsOf(h.events(0), riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED)); n != 2 {
				t.Errorf("%d KILL_SWITCH_TRIPPED events, want 2", n)
			}
		})
	}
}

func TestFillPartialFullAndIdempotent(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	r := h.approve(h.buy(aapl, 100, 50))
	if r.GetState() != riskv1.ReservationState_RESERVATION_STATE_OPEN || r.GetReservedQuantity() != 100 || r.GetReservedNotional() != 5000 ||
		r.GetPrice() != 50 || !r.GetExpireTime().AsTime().Equal(ruleStart.Add(60*time.Second)) {
		t.Errorf("approved reservation: %v", r)
	}
	id := r.GetReservationId()

	h.clock.advance(time.Second)
	f1 := h.fill("f1", id, 30, 50, 1.5)
	if got := f1.GetReservation(); got.GetState() != riskv1.ReservationState_RESERVATION_STATE_OPEN || got.GetFilledQuantity() != 30 ||
		got.GetReservedQuantity() != 70 || got.GetReservedNotional() != 3500 || got.GetCloseTime() != nil {
		t.Errorf("after a partial fill: %v", got)
	}
	if p := f1.GetPosition(); p.GetQuantity() != 30 || p.GetAveragePrice() != 50 || p.GetReservedBuyQuantity() != 70 || p.GetRealizedPnl() != -1.5 {
		t.Errorf("position after a partial fill: %v", p)
	}
	if f1.GetCash() != 100000-1500-1.5 || f1.GetDuplicate() || f1.GetLate() || len(f1.GetBreaches()) != 0 {
		t.Errorf("partial fill response: %v", f1)
	}
	if pf := h.portfolio(); pf.GetReservedExposure() != 3500 || len(pf.GetReservations()) != 1 {
		t.Errorf("portfolio after a partial fill: reserved %g, %d reservations", pf.GetReservedExposure(), len(pf.GetReservations()))
	}

	f2 := h.fill("f2", id, 70, 49, 0)
	if got := f2.GetReservation(); got.GetState() != riskv1.ReservationState_RESERVATION_STATE_FILLED || got.GetReservedQuantity() != 0 ||
		got.GetReservedNotional() != 0 || !got.GetCloseTime().AsTime().Equal(h.clock.now()) {
		t.Errorf("after the last fill: %v", got)
	}
	if p := f2.GetPosition(); p.GetQuantity() != 100 || math.Abs(p.GetAveragePrice()-49.3) > 1e-9 || p.GetReservedBuyQuantity() != 0 {
		t.Errorf("position after the last fill: %v", p)
	}
	before := h.portfolio()
	if len(before.GetReservations()) != 0 || before.GetReservedExposure() != 0 {
		t.Errorf("a filled reservation is still open: %v", before.GetReservations())
	}

	// The same fill again is acknowledged and not applied.
	dup := h.fill("f2", id, 70, 49, 0)
	if !dup.GetDuplicate() || dup.GetCash() != f2.GetCash() || dup.GetPosition().GetQuantity() != 100 ||
		dup.GetReservation().GetState() != riskv1.ReservationState_RESERVATION_STATE_FILLED {
		t.Errorf("duplicate fill: %v", dup)
	}
	// The same id with other content is refused.
	_, err := h.applyFill(&riskv1.Fill{FillId: "f2", ReservationId: id, Quantity: 60, Price: 49})
	wantCodeOf(t, "fill id reused with other content", err, codes.AlreadyExists)
	if diff := cmp.Diff(before, h.portfolio(), protocmp.Transform(), protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")); diff != "" {
		t.Errorf("duplicates changed the portfolio (-before +after):\n%s", diff)
	}

	// A fill beyond the unfilled quantity writes nothing.
	r2 := h.approve(h.buy(aapl, 10, 50))
	before = h.portfolio()
	_, err = h.applyFill(&riskv1.Fill{FillId: "f3", ReservationId: r2.GetReservationId(), Quantity: 10.5, Price: 50})
	wantCodeOf(t, "overfill", err, codes.FailedPrecondition)
	if diff := cmp.Diff(before, h.portfolio(), protocmp.Transform(), protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")); diff != "" {
		t.Errorf("an overfill changed the portfolio (-before +after):\n%s", diff)
	}
	if _, err := h.sql.Fill(h.ctx, h.acct, "f3"); !errors.Is(err, apierr.ErrNotFound) {
		t.Errorf("overfill stored: %v", err)
	}
	// Once refused, the fill id is still free.
	if resp := h.fill("f3", r2.GetReservationId(), 10, 50, 0); resp.GetDuplicate() || resp.GetPosition().GetQuantity() != 110 {
		t.Errorf("fill after a refused overfill: %v", resp)
	}

	// Unknown reservations, and reservations of another account, are not found.
	_, err = h.applyFill(&riskv1.Fill{FillId: "f4", ReservationId: "nope", Quantity: 1, Price: 50})
	wantCodeOf(t, "unknown reservation", err, codes.NotFound)
	h.create("acct-2", 100000, nil)
	_, err = h.svc.ApplyFill(h.ctx, &riskv1.ApplyFillRequest{AccountId: "acct-2", Fill: &riskv1.Fill{FillId: "f5", ReservationId: r2.GetReservationId(), Quantity: 1, Price: 50}})
	wantCodeOf(t, "another account's reservation", err, codes.NotFound)
	_, err = h.svc.ApplyFill(h.ctx, &riskv1.ApplyFillRequest{AccountId: "nobody", Fill: &riskv1.Fill{FillId: "f6", ReservationId: r2.GetReservationId(), Quantity: 1, Price: 50}})
	wantCodeOf(t, "unknown account", err, codes.NotFound)
	// Fill ids are unique within an account: another account may reuse one.
	o := h.buy(aapl, 1, 50)
	o.AccountId = "acct-2"
	r3 := h.approve(o)
	other, err := h.svc.ApplyFill(h.ctx, &riskv1.ApplyFillRequest{AccountId: "acct-2", Fill: &riskv1.Fill{FillId: "f1", ReservationId: r3.GetReservationId(), Quantity: 1, Price: 50}})
	if err != nil || other.GetDuplicate() || other.GetPosition().GetQuantity() != 1 {
		t.Errorf("another account's fill f1: %v, %v", other, err)
	}
}

func TestFillReleaseRemainderAndLateFills(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{ReservationTtl: durationpb.New(5 * time.Second)})

	r := h.approve(h.buy(aapl, 10, 50))
	resp, err := h.applyFill(&riskv1.Fill{FillId: "f1", ReservationId: r.GetReservationId(), Quantity: 4, Price: 50, ReleaseRemainder: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetReservation(); got.GetState() != riskv1.ReservationState_RESERVATION_STATE_RELEASED || got.GetFilledQuantity() != 4 ||
		got.GetReservedQuantity() != 0 || got.GetCloseTime() == nil || resp.GetLate() {
		t.Errorf("fill with release_remainder: %v late=%v", got, resp.GetLate())
	}
	if pf := h.portfolio(); len(pf.GetReservations()) != 0 || pf.GetPositions()[0].GetReservedBuyQuantity() != 0 || pf.GetPositions()[0].GetQuantity() != 4 {
		t.Errorf("portfolio after release_remainder: %v", pf)
	}

	// A fill after the release is still applied, and flagged late.
	late := h.fill("f2", r.GetReservationId(), 6, 51, 0)
	if !late.GetLate() || late.GetPosition().GetQuantity() != 10 || late.GetReservation().GetState() != riskv1.ReservationState_RESERVATION_STATE_RELEASED ||
		late.GetReservation().GetFilledQuantity() != 10 {
		t.Errorf("late fill after release: %v", late)
	}
	// Even late, a fill cannot exceed the order.
	_, err = h.applyFill(&riskv1.Fill{FillId: "f3", ReservationId: r.GetReservationId(), Quantity: 0.5, Price: 50})
	wantCodeOf(t, "late overfill", err, codes.FailedPrecondition)

	// A fill after expiry is applied and flagged late.
	r2 := h.approve(h.sell(aapl, 10, 50))
	h.clock.advance(5 * time.Second)
	late = h.fill("f4", r2.GetReservationId(), 3, 50, 0)
	if !late.GetLate() || late.GetReservation().GetState() != riskv1.ReservationState_RESERVATION_STATE_EXPIRED || late.GetPosition().GetQuantity() != 7 {
		t.Errorf("late fill after expiry: %v", late)
	}
}

func TestFillPositionsAveragePriceAndPnL(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	steps := []struct {
		name         string
		side         riskv1.OrderSide
		qty, px, fee float64
		wantQty      float64
		wantAvg      float64
		wantRealized float64
		wantCash     float64
	}{
		{"open long", riskv1.OrderSide_ORDER_SIDE_BUY, 10, 100, 1, 10, 100, -1, 100000 - 1000 - 1},
		{"add to long", riskv1.OrderSide_ORDER_SIDE_BUY, 10, 110, 0, 20, 105, -1, 98999 - 1100},
		{"reduce long", riskv1.OrderSide_ORDER_SIDE_SELL, 5, 120, 0, 15, 105, -1 + 75, 97899 + 600},
		{"flip to short", riskv1.OrderSide_ORDER_SIDE_SELL, 25, 90, 0, -10, 90, 74 - 225, 98499 + 2250},
		{"cover short", riskv1.OrderSide_ORDER_SIDE_BUY, 10, 80, 2, 0, 0, -151 + 100 - 2, 100749 - 800 - 2},
	}
	for _, s := range steps {
		r := h.approve(h.order(s.side, aapl, s.qty, s.px))
		resp := h.fill("f-"+s.name, r.GetReservationId(), s.qty, s.px, s.fee)
		want := &riskv1.Position{
			Symbol: aapl, Quantity: s.wantQty, AveragePrice: s.wantAvg, MarketValue: s.wantQty * s.wantAvg,
			Notional: math.Abs(s.wantQty * s.wantAvg), RealizedPnl: s.wantRealized,
		}
		if diff := cmp.Diff(want, resp.GetPosition(), protocmp.Transform(), protocmp.IgnoreFields(&riskv1.Position{}, "update_time"), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
			t.Errorf("%s: position (-want +got):\n%s", s.name, diff)
		}
		if math.Abs(resp.GetCash()-s.wantCash) > 1e-9 {
			t.Errorf("%s: cash %g, want %g", s.name, resp.GetCash(), s.wantCash)
		}
	}
	// Flat: equity is cash, and the day's P&L is the realised P&L.
	pf := h.portfolio()
	if len(pf.GetPositions()) != 0 || math.Abs(pf.GetEquity()-99947) > 1e-9 || math.Abs(pf.GetDayPnl()+53) > 1e-9 {
		t.Errorf("flat portfolio: %v", pf)
	}

	// With a reference price a position is valued at it.
	r := h.approve(h.buy(msft, 10, 200))
	h.fill("m1", r.GetReservationId(), 10, 200, 0)
	h.price(msft, 210)
	pf = h.portfolio()
	want := &riskv1.Position{
		Symbol: msft, Quantity: 10, AveragePrice: 200, ReferencePrice: 210, MarketValue: 2100, Notional: 2100, UnrealizedPnl: 100,
	}
	if diff := cmp.Diff([]*riskv1.Position{want}, pf.GetPositions(), protocmp.Transform(), protocmp.IgnoreFields(&riskv1.Position{}, "update_time"), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("valued position (-want +got):\n%s", diff)
	}
	if math.Abs(pf.GetEquity()-(99947-2000+2100)) > 1e-9 || pf.GetGrossExposure() != 2100 || math.Abs(pf.GetLeverage()-2100/pf.GetEquity()) > 1e-12 {
		t.Errorf("portfolio: equity %g gross %g leverage %g", pf.GetEquity(), pf.GetGrossExposure(), pf.GetLeverage())
	}
	// The day's high was right after the profitable sale: 100000 - 1 + 75.
	if pf.GetHighWaterEquity() != 100074 || math.Abs(pf.GetDrawdownPercent()-27.0/100074*100) > 1e-9 || math.Abs(pf.GetDayPnl()-47) > 1e-9 {
		t.Errorf("portfolio: high water %g drawdown %g day pnl %g", pf.GetHighWaterEquity(), pf.GetDrawdownPercent(), pf.GetDayPnl())
	}
}

func TestPortfolioHighWaterNeverFalls(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil) // no P&L limits
	h.price(aapl, 100)
	h.buyFilled(aapl, 10, 100)
	h.price(aapl, 110)
	pf := h.portfolio()
	if pf.GetHighWaterEquity() != 100100 || pf.GetDrawdownPercent() != 0 {
		t.Errorf("at the high: high water %g drawdown %g", pf.GetHighWaterEquity(), pf.GetDrawdownPercent())
	}
	// "Highest equity seen since the start of the trading day": once
	// shown, the high cannot fall back.
	h.price(aapl, 100)
	pf = h.portfolio()
	if pf.GetHighWaterEquity() != 100100 || math.Abs(pf.GetDrawdownPercent()-100.0/100100*100) > 1e-9 {
		t.Errorf("after the drop: high water %g (want 100100) drawdown %g", pf.GetHighWaterEquity(), pf.GetDrawdownPercent())
	}
}

func TestPortfolioListsOpenReservationsOldestFirst(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	var want []string
	for i := range 12 {
		want = append(want, h.approve(h.buy(aapl, float64(i+1), 10)).GetReservationId())
		h.clock.advance(time.Second)
	}
	var got []string
	for _, r := range h.portfolio().GetReservations() {
		got = append(got, r.GetReservationId())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reservations (-oldest first +shown):\n%s", diff)
	}
	pos := h.portfolio().GetPositions()
	if len(pos) != 1 || pos[0].GetReservedBuyQuantity() != 78 || pos[0].GetReservedNotional() != 780 || pos[0].GetQuantity() != 0 {
		t.Errorf("position of reservations only: %v", pos)
	}
}

func TestReleaseReservation(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(10)})
	r := h.approve(h.buy(aapl, 10, 50))
	wantDecision(t, "while reserved", h.check(h.buy(aapl, 1, 50)), []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 10, 11, aapl)})

	h.clock.advance(time.Second)
	rel, err := h.release(r.GetReservationId())
	if err != nil {
		t.Fatal(err)
	}
	if got := rel.GetReservation(); got.GetState() != riskv1.ReservationState_RESERVATION_STATE_RELEASED || got.GetReservedQuantity() != 0 ||
		!got.GetCloseTime().AsTime().Equal(h.clock.now()) || rel.GetReleasedQuantity() != 10 || rel.GetReleasedNotional() != 500 {
		t.Errorf("release: %v", rel)
	}
	if pf := h.portfolio(); len(pf.GetReservations()) != 0 || len(pf.GetPositions()) != 0 || pf.GetReservedExposure() != 0 {
		t.Errorf("portfolio after release: %v", pf)
	}
	// Releasing again changes nothing.
	h.clock.advance(time.Second)
	again, err := h.release(r.GetReservationId())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rel.GetReservation(), again.GetReservation(), protocmp.Transform()); diff != "" || again.GetReleasedQuantity() != 0 || again.GetReleasedNotional() != 0 {
		t.Errorf("second release (-first +second):\n%s released %g %g", diff, again.GetReleasedQuantity(), again.GetReleasedNotional())
	}
	// The freed exposure can be used again.
	r2 := h.approve(h.buy(aapl, 10, 50))
	h.fill("f1", r2.GetReservationId(), 4, 50, 0)
	rel, err = h.release(r2.GetReservationId())
	if err != nil {
		t.Fatal(err)
	}
	if rel.GetReleasedQuantity() != 6 || rel.GetReleasedNotional() != 300 || rel.GetReservation().GetFilledQuantity() != 4 {
		t.Errorf("release of a partly filled reservation: %v", rel)
	}
	r3 := h.approve(h.buy(aapl, 6, 50))
	h.fill("f2", r3.GetReservationId(), 6, 50, 0)
	rel, err = h.release(r3.GetReservationId())
	if err != nil {
		t.Fatal(err)
	}
	if rel.GetReservation().GetState() != riskv1.ReservationState_RESERVATION_STATE_FILLED || rel.GetReleasedQuantity() != 0 {
		t.Errorf("release of a filled reservation: %v", rel)
	}
	// Stored as released.
	if stored, err := h.sql.Reservation(h.ctx, h.acct, r.GetReservationId()); err != nil || stored.state != riskv1.ReservationState_RESERVATION_STATE_RELEASED {
		t.Errorf("stored reservation: %+v, %v", stored, err)
	}
	_, err = h.release("nope")
	wantCodeOf(t, "unknown reservation", err, codes.NotFound)
	_, err = h.svc.ReleaseReservation(h.ctx, &riskv1.ReleaseReservationRequest{AccountId: "nobody", ReservationId: r.GetReservationId()})
	wantCodeOf(t, "unknown account", err, codes.NotFound)
}

func TestReservationTTLExpiry(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.ReservationTTL = 30 * time.Second
	h := newRuleHarnessWith(t, cfg, nil)
	h.create(h.acct, 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(10), ReservationTtl: durationpb.New(5 * time.Second)})
	r := h.approve(h.buy(aapl, 10, 50))
	if !r.GetExpireTime().AsTime().Equal(ruleStart.Add(5 * time.Second)) {
		t.Errorf("expire_time %v, want create + the account's TTL", r.GetExpireTime().AsTime())
	}
	h.clock.advance(5*time.Second - time.Millisecond)
	wantDecision(t, "just before expiry", h.check(h.buy(aapl, 1, 50)), []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 10, 11, aapl)})
	if n := len(h.portfolio().GetReservations()); n != 1 {
		t.Errorf("%d open reservations before expiry", n)
	}
	h.clock.advance(time.Millisecond)
	if pf := h.portfolio(); len(pf.GetReservations()) != 0 || pf.GetReservedExposure() != 0 {
		t.Errorf("expired reservation still open: %v", pf.GetReservations())
	}
	wantDecision(t, "at expiry", h.check(h.buy(aapl, 10, 50)), nil)
	rel, err := h.release(r.GetReservationId())
	if err != nil {
		t.Fatal(err)
	}
	if got := rel.GetReservation(); got.GetState() != riskv1.ReservationState_RESERVATION_STATE_EXPIRED || rel.GetReleasedQuantity() != 0 ||
		!got.GetCloseTime().AsTime().Equal(ruleStart.Add(5*time.Second)) {
		t.Errorf("release after expiry: %v", rel)
	}
	// Expiry is implied by the time, not written: the row stays open with
	// its expiry in the past, and the engine reads it as expired.
	if stored, err := h.sql.Reservation(h.ctx, h.acct, r.GetReservationId()); err != nil ||
		stored.state != riskv1.ReservationState_RESERVATION_STATE_OPEN || stored.expires.After(h.clock.now()) {
		t.Errorf("stored reservation: %+v, %v", stored, err)
	} else if normalize(stored, h.clock.now()); stored.state != riskv1.ReservationState_RESERVATION_STATE_EXPIRED {
		t.Errorf("normalized stored reservation: %+v", stored)
	}

	// Without a TTL in the limits, the configured default applies.
	h.create("acct-2", 100000, nil)
	o := h.buy(aapl, 1, 50)
	o.AccountId = "acct-2"
	r2 := h.approve(o)
	if got := r2.GetExpireTime().AsTime().Sub(r2.GetCreateTime().AsTime()); got != 30*time.Second {
		t.Errorf("default TTL %v, want 30s", got)
	}
	// A release right after the expiry time, before anything else looked
	// at the account, finds it expired.
	h.clock.advance(30 * time.Second)
	rel, err = h.svc.ReleaseReservation(h.ctx, &riskv1.ReleaseReservationRequest{AccountId: "acct-2", ReservationId: r2.GetReservationId()})
	if err != nil {
		t.Fatal(err)
	}
	if rel.GetReservation().GetState() != riskv1.ReservationState_RESERVATION_STATE_EXPIRED || rel.GetReleasedQuantity() != 0 {
		t.Errorf("release just after expiry: %v", rel)
	}
}

func TestSetLimits(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	f := proto.Float64

	// Creating needs a cash balance; without one nothing is created.
	_, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{AccountId: h.acct}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}},
	})
	wantCodeOf(t, "create without cash", err, codes.InvalidArgument)
	if _, err := h.svc.GetLimits(h.ctx, &riskv1.GetLimitsRequest{AccountId: h.acct}); err == nil {
		t.Fatal("account created without cash")
	}

	created, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits:      &riskv1.Limits{AccountId: h.acct, MaxOrderQuantity: f(100), MaxLeverage: f(3), RestrictedSymbols: []string{"B", "A", "B"}},
		UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity", "restricted_symbols"}},
		CashBalance: f(50000),
		Reason:      "onboarding",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &riskv1.Limits{
		AccountId: h.acct, MaxOrderQuantity: f(100), RestrictedSymbols: []string{"A", "B"},
		Revision: 1, UpdateTime: timestamppb.New(ruleStart), UpdatedByPrincipal: "anonymous",
	}
	if diff := cmp.Diff(want, created.GetLimits(), protocmp.Transform()); diff != "" || !created.GetCreated() {
		t.Errorf("created (created=%v) (-want +got):\n%s", created.GetCreated(), diff)
	}
	pf := h.portfolio()
	if pf.GetCash() != 50000 || pf.GetDayStartEquity() != 50000 || pf.GetHighWaterEquity() != 50000 ||
		!pf.GetDayStartTime().AsTime().Equal(time.Date(2030, 3, 6, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("new account: %v", pf)
	}

	// Only the masked fields change; a masked field left unset is cleared.
	h.clock.advance(time.Minute)
	got := h.setLimits(&riskv1.Limits{MaxLeverage: f(2), MaxOrderNotional: f(7)}, "max_leverage", "max_order_quantity")
	want = &riskv1.Limits{
		AccountId: h.acct, MaxLeverage: f(2), RestrictedSymbols: []string{"A", "B"},
		Revision: 2, UpdateTime: timestamppb.New(ruleStart.Add(time.Minute)), UpdatedByPrincipal: "anonymous",
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("masked update (-want +got):\n%s", diff)
	}

	// expected_revision guards the change.
	_, err = h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{AccountId: h.acct, MaxLeverage: f(9)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_leverage"}},
		ExpectedRevision: 1,
	})
	wantCodeOf(t, "stale expected_revision", err, codes.Aborted)
	if l, _ := h.svc.GetLimits(h.ctx, &riskv1.GetLimitsRequest{AccountId: h.acct}); l.GetLimits().GetMaxLeverage() != 2 || l.GetLimits().GetRevision() != 2 {
		t.Errorf("an aborted change was applied: %v", l.GetLimits())
	}
	resp, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{AccountId: h.acct, MaxLeverage: f(9)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}},
		ExpectedRevision: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	// "*" replaces every limit.
	want = &riskv1.Limits{AccountId: h.acct, MaxLeverage: f(9), Revision: 3, UpdateTime: timestamppb.New(ruleStart.Add(time.Minute)), UpdatedByPrincipal: "anonymous"}
	if diff := cmp.Diff(want, resp.GetLimits(), protocmp.Transform()); diff != "" || resp.GetCreated() {
		t.Errorf("\"*\" update (-want +got):\n%s", diff)
	}

	// A cash change is a transfer: the anchors move with it, the day's
	// P&L does not.
	h.price(aapl, 100)
	h.buyFilled(aapl, 10, 100)
	h.price(aapl, 90) // -100
	if _, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{AccountId: h.acct}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_order_notional"}},
		CashBalance: f(60000 - 1000), Reason: "funding",
	}); err != nil {
		t.Fatal(err)
	}
	pf = h.portfolio()
	if pf.GetCash() != 59000 || pf.GetDayStartEquity() != 60000 || pf.GetHighWaterEquity() != 60000 || pf.GetDayPnl() != -100 || pf.GetEquity() != 59900 {
		t.Errorf("after a cash transfer: cash %g day start %g high water %g day pnl %g equity %g",
			pf.GetCash(), pf.GetDayStartEquity(), pf.GetHighWaterEquity(), pf.GetDayPnl(), pf.GetEquity())
	}

	// Every change is an event with what it did.
	changes := eventsOf(h.events(0), riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED)
	if len(changes) != 4 {
		t.Fatalf("%d LIMITS_CHANGED events, want 4", len(changes))
	}
	first := changes[0].GetLimitsChange()
	if !first.GetCreated() || first.GetCashBalance() != 50000 || first.GetReason() != "onboarding" ||
		!cmp.Equal(first.GetChangedFields(), []string{"max_order_quantity", "restricted_symbols"}) {
		t.Errorf("creation event: %v", first)
	}
	if all := changes[2].GetLimitsChange().GetChangedFields(); len(all) != len(limitFields) {
		t.Errorf("\"*\" recorded as %v", all)
	}
	if last := changes[3].GetLimitsChange(); last.CashBalance == nil || last.GetCashBalance() != 59000 || last.GetCreated() {
		t.Errorf("cash event: %v", last)
	}
}

func TestKillSwitchTriggerAndReset(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	open := h.approve(h.buy(aapl, 5, 10))
	tripped, err := h.svc.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: h.acct, Reason: "fat finger", Actor: "on-call"})
	if err != nil {
		t.Fatal(err)
	}
	// Open reservations stay, and their fills are applied.
	if pf := h.portfolio(); len(pf.GetReservations()) != 1 {
		t.Errorf("reservations after the trip: %v", pf.GetReservations())
	}
	if resp := h.fill("f1", open.GetReservationId(), 5, 10, 0); resp.GetPosition().GetQuantity() != 5 {
		t.Errorf("fill while tripped: %v", resp)
	}
	want := &riskv1.KillSwitchState{
		AccountId: h.acct, Tripped: true, Cause: riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_MANUAL, TripReason: "fat finger",
		TrippedByPrincipal: "anonymous", TrippedByActor: "on-call", TripTime: timestamppb.New(ruleStart), Revision: 1,
	}
	if diff := cmp.Diff(want, tripped.GetKillSwitch(), protocmp.Transform()); diff != "" || tripped.GetAlreadyTripped() {
		t.Errorf("trip (-want +got):\n%s", diff)
	}
	// Tripping again changes nothing.
	h.clock.advance(time.Second)
	again, err := h.svc.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: h.acct, Reason: "again"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, again.GetKillSwitch(), protocmp.Transform()); diff != "" || !again.GetAlreadyTripped() {
		t.Errorf("second trip (already_tripped=%v) (-want +got):\n%s", again.GetAlreadyTripped(), diff)
	}
	// A reset that did not see the current revision is refused.
	_, err = h.reset("stale", 7)
	wantCodeOf(t, "reset with a stale revision", err, codes.Aborted)
	if !h.portfolio().GetKillSwitch().GetTripped() {
		t.Fatal("aborted reset cleared the switch")
	}
	reset, err := h.svc.ResetKillSwitch(h.ctx, &riskv1.ResetKillSwitchRequest{AccountId: h.acct, Reason: "fixed", Actor: "lead", ExpectedRevision: 1})
	if err != nil {
		t.Fatal(err)
	}
	wantReset := proto.Clone(want).(*riskv1.KillSwitchState)
	wantReset.Tripped = false
	wantReset.ResetReason, wantReset.ResetByPrincipal, wantReset.ResetByActor = "fixed", "anonymous", "lead"
	wantReset.ResetTime = timestamppb.New(ruleStart.Add(time.Second))
	wantReset.Revision = 2
	if diff := cmp.Diff(wantReset, reset.GetKillSwitch(), protocmp.Transform()); diff != "" || reset.GetAlreadyReset() {
		t.Errorf("reset (-want +got):\n%s", diff)
	}
	resetAgain, err := h.reset("again", 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantReset, resetAgain.GetKillSwitch(), protocmp.Transform()); diff != "" || !resetAgain.GetAlreadyReset() {
		t.Errorf("second reset (already_reset=%v) (-want +got):\n%s", resetAgain.GetAlreadyReset(), diff)
	}
	wantDecision(t, "after reset", h.check(h.buy(aapl, 1, 1)), nil)

	evs := h.events(0)
	var kinds []riskv1.RiskEventType
	for _, ev := range evs {
		kinds = append(kinds, ev.GetType())
	}
	wantKinds := []riskv1.RiskEventType{
		riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED,
		riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED,
		riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET,
	}
	if diff := cmp.Diff(wantKinds, kinds); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantReset, evs[2].GetKillSwitch(), protocmp.Transform()); diff != "" {
		t.Errorf("reset event (-want +got):\n%s", diff)
	}
	_, err = h.svc.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "nobody", Reason: "x"})
	wantCodeOf(t, "unknown account", err, codes.NotFound)
}

func TestDayRolloverResetsAnchors(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.Location = time.FixedZone("UTC-5", -5*60*60)
	h := newRuleHarnessWith(t, cfg, nil)
	// 14:00 UTC is 09:00 local; the trading day began at 05:00 UTC.
	day1 := time.Date(2030, 3, 6, 5, 0, 0, 0, time.UTC)
	h.create(h.acct, 100000, &riskv1.Limits{MaxDailyLoss: proto.Float64(1000)})
	h.price(aapl, 100)
	h.buyFilled(aapl, 100, 100)
	h.price(aapl, 91) // -900: within the day's budget
	pf := h.portfolio()
	if !pf.GetDayStartTime().AsTime().Equal(day1) || pf.GetDayStartEquity() != 100000 || pf.GetDayPnl() != -900 {
		t.Fatalf("day 1: start %v equity %g pnl %g", pf.GetDayStartTime().AsTime(), pf.GetDayStartEquity(), pf.GetDayPnl())
	}
	// One second before local midnight: still day 1.
	h.clock.set(day1.Add(24*time.Hour - time.Second))
	if pf := h.portfolio(); !pf.GetDayStartTime().AsTime().Equal(day1) || pf.GetDayPnl() != -900 {
		t.Errorf("before midnight: start %v pnl %g", pf.GetDayStartTime().AsTime(), pf.GetDayPnl())
	}
	// Local midnight starts day 2 with the current equity as its anchors.
	h.clock.set(day1.Add(24 * time.Hour))
	pf = h.portfolio()
	if !pf.GetDayStartTime().AsTime().Equal(day1.Add(24*time.Hour)) || pf.GetDayStartEquity() != 99100 || pf.GetHighWaterEquity() != 99100 || pf.GetDayPnl() != 0 {
		t.Errorf("day 2: start %v equity %g high water %g pnl %g", pf.GetDayStartTime().AsTime(), pf.GetDayStartEquity(), pf.GetHighWaterEquity(), pf.GetDayPnl())
	}
	// Day 2 has its own loss budget: another -200 trips nothing.
	h.price(aapl, 89)
	if k := h.portfolio().GetKillSwitch(); k.GetTripped() {
		t.Errorf("day 2's loss of 200 tripped the switch: %v", k)
	}
	wantDecision(t, "day 2 check", h.check(h.buy(aapl, 1, 89)), nil)
}

func TestDayRolloverBeforeFirstEventOfTheDay(t *testing.T) {
	t.Parallel()
	// The first event of a new day is a price move or a fill, not a check:
	// it must be measured against the new day's anchors, not yesterday's.
	for _, tt := range []struct {
		name   string
		limits *riskv1.Limits
		day1   []float64 // AAPL prices on day 1 (long 100 bought at 100)
		day2   func(h *ruleHarness, pending string)
	}{
		// Day 1 loses 900 of a 1000 budget; day 2 opens 200 lower.
		{"daily loss, price", &riskv1.Limits{MaxDailyLoss: proto.Float64(1000)}, []float64{91},
			func(h *ruleHarness, _ string) { h.price(aapl, 89) }},
		// Day 1 peaks at 120000 and closes at 110000 (8.3% drawdown); day 2
		// opens at 107000 (10.8% below day 1's peak, 2.7% below day 2's).
		{"max drawdown, price", &riskv1.Limits{MaxDrawdownPercent: proto.Float64(10)}, []float64{300, 200},
			func(h *ruleHarness, _ string) { h.price(aapl, 170) }},
		// Day 1 loses 900 of a 1000 budget; day 2's first event is a fill
		// of yesterday's order costing 170 (fee 150, 20 below the price).
		{"daily loss, fill", &riskv1.Limits{MaxDailyLoss: proto.Float64(1000)}, []float64{91},
			func(h *ruleHarness, pending string) { h.fill("late-fill", pending, 10, 89, 150) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newRuleHarness(t)
			h.create(h.acct, 100000, tt.limits)
			h.price(aapl, 100)
			h.buyFilled(aapl, 100, 100)
			for _, px := range tt.day1 {
				h.price(aapl, px)
			}
			pending := h.approve(h.sell(aapl, 10, 80)).GetReservationId()
			if h.portfolio().GetKillSwitch().GetTripped() {
				t.Fatal("tripped on day 1")
			}
			// Just after midnight. (The pending order's reservation has
			// expired: its fill is late, and applied all the same.)
			h.clock.set(time.Date(2030, 3, 7, 0, 0, 1, 0, time.UTC))
			tt.day2(h, pending)
			if k := h.portfolio().GetKillSwitch(); k.GetTripped() {
				t.Errorf("day 2's first event tripped the switch against day 1's anchors: %s", k.GetTripReason())
			}
		})
	}
}

func TestUpdatePricesNewerWins(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(ruleStart.Add(d)) }
	update := func(px float64, when *timestamppb.Timestamp) *riskv1.UpdatePricesResponse {
		t.Helper()
		resp, err := h.svc.UpdatePrices(h.ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: aapl, Price: px, PriceTime: when}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	ref := func() float64 { return h.check(h.buy(aapl, 1, 0)).GetReferencePrice() }
	if r := update(100, at(time.Second)); r.GetApplied() != 1 || r.GetStale() != 0 {
		t.Errorf("first update: %v", r)
	}
	if r := update(90, at(0)); r.GetApplied() != 0 || r.GetStale() != 1 || ref() != 100 {
		t.Errorf("older update: %v, reference %g", r, ref())
	}
	if r := update(110, at(time.Second)); r.GetApplied() != 1 || ref() != 110 {
		t.Errorf("update at the same time: %v, reference %g", r, ref())
	}
	// Without a time, the server's clock stamps it.
	h.clock.advance(time.Minute)
	if r := update(120, nil); r.GetApplied() != 1 || ref() != 120 {
		t.Errorf("update without a time: %v, reference %g", r, ref())
	}
	if r := update(130, at(30*time.Second)); r.GetStale() != 1 || ref() != 120 {
		t.Errorf("update older than the clock-stamped one: %v, reference %g", r, ref())
	}
}

// wantBadField checks that err is InvalidArgument naming field.
func wantBadField(t *testing.T, what string, err error, field string) {
	t.Helper()
	st, _ := apierr.Status(err)
	if msg := badField(st.Err(), field); msg != "" {
		t.Errorf("%s: %s", what, msg)
	}
}

func TestUpdatePricesRefusesAFuturePriceTime(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{PriceCollarPercent: proto.Float64(5)})
	h.price(aapl, 10)
	update := func(px float64, at time.Time) (*riskv1.UpdatePricesResponse, error) {
		return h.svc.UpdatePrices(h.ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{
			{Symbol: msft, Price: 1}, {Symbol: aapl, Price: px, PriceTime: timestamppb.New(at)},
		}})
	}
	// Stamped ahead of the clock by more than the allowed skew, a price
	// would hold until then: every real update would be stale.
	for _, at := range []time.Time{h.clock.now().Add(maxPriceLead + time.Microsecond), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)} {
		_, err := update(11, at)
		wantBadField(t, "price_time "+at.Format(time.RFC3339Nano), err, "prices[1].price_time")
	}
	if ref := h.check(h.buy(aapl, 1, 0)).GetReferencePrice(); ref != 10 {
		t.Errorf("reference price after refused updates: %g, want 10", ref)
	}
	// Within the skew it is applied, and a later real price replaces it.
	if resp, err := update(11, h.clock.now().Add(maxPriceLead)); err != nil || resp.GetApplied() != 2 {
		t.Fatalf("update stamped %s ahead: %v, %v", maxPriceLead, resp, err)
	}
	h.clock.advance(maxPriceLead)
	h.price(aapl, 100)
	wantDecision(t, "buy at the real price", h.check(h.buy(aapl, 1, 100)), nil)
}

func TestFillAmountsAreBounded(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxDailyLoss: proto.Float64(1000), MaxDrawdownPercent: proto.Float64(10)})
	r := h.approve(h.buy("XYZ", 10, 10))
	before := h.portfolio()
	tests := []struct {
		name  string
		field string
		fill  *riskv1.Fill
	}{
		// Cash would be -Inf and equity NaN: every P&L limit would pass.
		{"price making the notional infinite", "fill.price", &riskv1.Fill{Quantity: 10, Price: 1e308}},
		{"notional beyond the bound", "fill.price", &riskv1.Fill{Quantity: 10, Price: maxFillAmount / 5}},
		{"fee beyond the bound", "fill.fee", &riskv1.Fill{Quantity: 1, Price: 10, Fee: maxFillAmount * 2}},
	}
	for _, tt := range tests {
		tt.fill.FillId, tt.fill.ReservationId = "f1", r.GetReservationId()
		_, err := h.applyFill(tt.fill)
		wantBadField(t, tt.name, err, tt.field)
	}
	if diff := cmp.Diff(before, h.portfolio(), protocmp.Transform(), protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")); diff != "" {
		t.Errorf("portfolio after refused fills (-before +after):\n%s", diff)
	}
	// At the bound the fill is applied.
	if resp := h.fill("f1", r.GetReservationId(), 10, maxFillAmount/10, 0); resp.GetCash() != 100000-maxFillAmount {
		t.Errorf("cash after a fill at the bound: %g", resp.GetCash())
	}
}

func TestCheckFailsClosedWhenEquityIsNotFinite(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxDailyLoss: proto.Float64(1000), MaxDrawdownPercent: proto.Float64(10), MaxLeverage: proto.Float64(2)})
	h.buyFilled(aapl, 10, 10)
	// The position is worth +Inf: compared with an infinite (or NaN)
	// equity, no P&L, leverage or concentration limit can be exceeded.
	h.clock.advance(time.Second)
	h.price(aapl, math.MaxFloat64)
	wantFailClosed(t, "check with infinite equity", h.check(h.buy(msft, 1, 10)), "not finite")
	if k := h.portfolio().GetKillSwitch(); k.GetTripped() {
		t.Errorf("kill switch tripped by an unmeasurable equity: %v", k)
	}
	// With a sane price the rules are evaluated again, against anchors the
	// infinite equity did not move.
	h.clock.advance(time.Second)
	h.price(aapl, 10)
	wantDecision(t, "check after a sane price", h.check(h.buy(msft, 1, 10)), nil)
	if hw := h.portfolio().GetHighWaterEquity(); hw != 100000 {
		t.Errorf("high-water equity %g, want 100000", hw)
	}
}
