package risk

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// flakyStore is a Store in front of the real one that fails writes of
// chosen accounts, and reads, on demand, the way a database that cannot be
// reached fails: with an Unavailable error.
type flakyStore struct {
	Store

	mu          sync.Mutex
	writesDown  map[string]bool // account id → its writes fail
	readsDown   bool
	failedUnits int
}

func newFlakyStore(inner Store) *flakyStore {
	return &flakyStore{Store: inner, writesDown: map[string]bool{}}
}

var errInjected = errors.New("injected failure: database unreachable")

func (s *flakyStore) failWrites(account string, down bool) {
	s.mu.Lock()
	s.writesDown[account] = down
	s.mu.Unlock()
}

func (s *flakyStore) failReads(down bool) {
	s.mu.Lock()
	s.readsDown = down
	s.mu.Unlock()
}

// writeFails reports whether u touches an account whose writes fail.
func (s *flakyStore) writeFails(u *unit) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	down := func(id string) bool { return s.writesDown[id] }
	fail := false
	for _, a := range u.accounts {
		fail = fail || down(a.id)
	}
	for _, p := range u.positions {
		fail = fail || down(p.accountID)
	}
	for _, r := range u.reservations {
		fail = fail || down(r.accountID)
	}
	for _, f := range u.fills {
		fail = fail || down(f.accountID)
	}
	for _, ev := range u.events {
		fail = fail || down(ev.GetAccountId())
	}
	if fail {
		s.failedUnits++
	}
	return fail
}

func (s *flakyStore) readErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readsDown {
		return apierr.Unavailable("database", errInjected)
	}
	return nil
}

func (s *flakyStore) Submit(u *unit) <-chan error {
	if s.writeFails(u) {
		done := make(chan error, 1)
		done <- apierr.Unavailable("database", errInjected)
		return done
	}
	return s.Store.Submit(u)
}

func (s *flakyStore) SubmitAsync(u *unit, onFail func(error)) {
	if s.writeFails(u) {
		onFail(apierr.Unavailable("database", errInjected))
		return
	}
	s.Store.SubmitAsync(u, onFail)
}

func (s *flakyStore) Load(ctx context.Context, cutoff time.Time) (*snapshot, error) {
	if err := s.readErr(); err != nil {
		return nil, err
	}
	return s.Store.Load(ctx, cutoff)
}

func (s *flakyStore) LoadAccount(ctx context.Context, id string, cutoff time.Time) (*snapshot, error) {
	if err := s.readErr(); err != nil {
		return nil, err
	}
	return s.Store.LoadAccount(ctx, id, cutoff)
}

func (s *flakyStore) Reservation(ctx context.Context, accountID, id string) (*reservation, error) {
	if err := s.readErr(); err != nil {
		return nil, err
	}
	return s.Store.Reservation(ctx, accountID, id)
}

func (s *flakyStore) Fill(ctx context.Context, accountID, fillID string) (*fillRow, error) {
	if err := s.readErr(); err != nil {
		return nil, err
	}
	return s.Store.Fill(ctx, accountID, fillID)
}

// newFlakyHarness is a rule harness whose store can be told to fail.
func newFlakyHarness(t *testing.T) (*ruleHarness, *flakyStore) {
	t.Helper()
	var fs *flakyStore
	h := newRuleHarnessWith(t, DefaultConfig(), func(inner Store) Store {
		fs = newFlakyStore(inner)
		return fs
	})
	return h, fs
}

// wantFailClosed checks that res is a fail-closed rejection saying why.
func wantFailClosed(t *testing.T, what string, res *riskv1.OrderCheckResult, why string) {
	t.Helper()
	wantDecision(t, what, res, []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_FAIL_CLOSED, 0, 0, "")})
	if v := res.GetViolations(); len(v) == 1 && !strings.Contains(v[0].GetMessage(), why) {
		t.Errorf("%s: message %q does not say %q", what, v[0].GetMessage(), why)
	}
}

// durableOpen returns the open reservations the store holds for the
// harness account, by id.
func durableOpen(t *testing.T, h *ruleHarness) map[string]float64 {
	t.Helper()
	snap, err := h.sql.LoadAccount(h.ctx, h.acct, h.clock.now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, r := range snap.reservations {
		if r.isOpen() {
			out[r.id] = r.reserved()
		}
	}
	return out
}

// visibleOpen returns the open reservations GetPortfolio shows, by id.
func visibleOpen(t *testing.T, h *ruleHarness) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range h.portfolio().GetReservations() {
		out[r.GetReservationId()] = r.GetReservedQuantity()
	}
	return out
}

func TestFailClosedWhenTheReservationCannotBeWritten(t *testing.T) {
	t.Parallel()
	h, fs := newFlakyHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(100)})
	h.create("acct-2", 100000, nil)
	first := h.approve(h.buy(aapl, 60, 10))

	// The reservation cannot be written: rejected, never approved.
	fs.failWrites(h.acct, true)
	wantFailClosed(t, "check while writes fail", h.check(h.buy(aapl, 40, 10)), "could not be written")
	// A batch fails closed order by order as well.
	batch, err := h.svc.CheckOrders(h.ctx, &riskv1.CheckOrdersRequest{Orders: []*riskv1.Order{h.buy(aapl, 1, 10), h.buy(aapl, 1, 10)}})
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range batch.GetResults() {
		wantFailClosed(t, "batch order "+itoa(i), res, "")
	}
	// Other accounts are not affected.
	other := h.buy(aapl, 1, 10)
	other.AccountId = "acct-2"
	h.approve(other)

	// While the store cannot be read either, the account's checks keep
	// failing closed, and nothing else reads its untrusted memory.
	fs.failReads(true)
	for i := range 3 {
		wantFailClosed(t, "check while the store is down "+itoa(i), h.check(h.buy(aapl, 1, 10)), "account state cannot be read")
	}
	_, err = h.svc.GetPortfolio(h.ctx, &riskv1.GetPortfolioRequest{AccountId: h.acct})
	wantCodeOf(t, "portfolio while the store is down", err, codes.Unavailable)
	_, err = h.applyFill(&riskv1.Fill{FillId: "f1", ReservationId: first.GetReservationId(), Quantity: 1, Price: 10})
	wantCodeOf(t, "fill while the store is down", err, codes.Unavailable)
	_, err = h.release(first.GetReservationId())
	wantCodeOf(t, "release while the store is down", err, codes.Unavailable)

	// Recovery: the account is reloaded and its state is what was durable.
	fs.failReads(false)
	fs.failWrites(h.acct, false)
	if diff := cmp.Diff(durableOpen(t, h), visibleOpen(t, h)); diff != "" {
		t.Errorf("open reservations after recovery (-durable +shown):\n%s", diff)
	}
	if got := visibleOpen(t, h); len(got) != 1 || got[first.GetReservationId()] != 60 {
		t.Errorf("open reservations after recovery: %v, want only the first approval", got)
	}
	// The rejected orders hold nothing: exactly 40 more fit.
	h.approve(h.buy(aapl, 40, 10))
	wantDecision(t, "one more", h.check(h.buy(aapl, 1, 10)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 100, 101, aapl)})
	if diff := cmp.Diff(durableOpen(t, h), visibleOpen(t, h)); diff != "" {
		t.Errorf("open reservations (-durable +shown):\n%s", diff)
	}
}

func TestFailClosedWritesOfFillsReleasesAndAdminCalls(t *testing.T) {
	t.Parallel()
	h, fs := newFlakyHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxOrderQuantity: proto.Float64(50)})
	r := h.approve(h.buy(aapl, 10, 10))
	before := h.portfolio()
	ignoreAsOf := protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")

	fs.failWrites(h.acct, true)
	_, err := h.applyFill(&riskv1.Fill{FillId: "f1", ReservationId: r.GetReservationId(), Quantity: 4, Price: 10})
	wantCodeOf(t, "fill not written", err, codes.Unavailable)
	_, err = h.release(r.GetReservationId())
	wantCodeOf(t, "release not written", err, codes.Unavailable)
	_, err = h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{AccountId: h.acct, MaxOrderQuantity: proto.Float64(1)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity"}},
	})
	wantCodeOf(t, "limits not written", err, codes.Unavailable)
	// An account whose creation cannot be written does not exist.
	fs.failWrites("acct-new", true)
	_, err = h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{AccountId: "acct-new"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: proto.Float64(1),
	})
	wantCodeOf(t, "creation not written", err, codes.Unavailable)

	fs.failWrites(h.acct, false)
	fs.failWrites("acct-new", false)
	// Nothing that failed is visible: limits and portfolio are what was
	// durable.
	l, err := h.svc.GetLimits(h.ctx, &riskv1.GetLimitsRequest{AccountId: h.acct})
	if err != nil {
		t.Fatal(err)
	}
	if l.GetLimits().GetMaxOrderQuantity() != 50 || l.GetLimits().GetRevision() != 1 {
		t.Errorf("limits after a failed SetLimits: %v, want the durable ones (max_order_quantity 50, revision 1)", l.GetLimits())
	}
	if diff := cmp.Diff(before, h.portfolio(), protocmp.Transform(), ignoreAsOf); diff != "" {
		t.Errorf("portfolio after failed writes (-durable +shown):\n%s", diff)
	}
	_, err = h.svc.GetLimits(h.ctx, &riskv1.GetLimitsRequest{AccountId: "acct-new"})
	wantCodeOf(t, "account whose creation failed", err, codes.NotFound)
	o := h.buy(aapl, 1, 10)
	o.AccountId = "acct-new"
	_, err = h.svc.CheckOrder(h.ctx, &riskv1.CheckOrderRequest{Order: o})
	wantCodeOf(t, "check on an account whose creation failed", err, codes.InvalidArgument)

	// The fill that was refused can be sent again and is applied once.
	resp := h.fill("f1", r.GetReservationId(), 4, 10, 0)
	if resp.GetDuplicate() || resp.GetPosition().GetQuantity() != 4 || resp.GetReservation().GetReservedQuantity() != 6 {
		t.Errorf("fill resent after recovery: %v", resp)
	}

	// A trip that cannot be written did not happen, for every reader: the
	// kill switch states are what WatchRiskEvents' snapshot and the active
	// kill switch gauge report.
	fs.failWrites(h.acct, true)
	_, err = h.svc.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: h.acct, Reason: "x"})
	wantCodeOf(t, "kill switch not written", err, codes.Unavailable)
	fs.failWrites(h.acct, false)
	if ks, err := h.eng.KillSwitches(h.acct); err != nil || len(ks) != 1 || ks[0].GetTripped() {
		t.Errorf("kill switch states after a failed trip: %v, %v; want the durable state (not tripped)", ks, err)
	}
	if k := h.portfolio().GetKillSwitch(); k.GetTripped() {
		t.Errorf("kill switch after a failed trip: %v", k)
	}
	wantDecision(t, "check after a failed trip", h.check(h.buy(aapl, 1, 10)), nil)
	if n := len(eventsOf(h.events(0), riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED)); n != 0 {
		t.Errorf("%d KILL_SWITCH_TRIPPED events stored for a trip that failed", n)
	}
}

func TestFailClosedStateMatchesDurableAfterManyFailures(t *testing.T) {
	t.Parallel()
	h, fs := newFlakyHarness(t)
	h.create(h.acct, 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(20)})
	// Alternate good and failing writes; what the engine shows afterwards
	// must be exactly what the store holds.
	var approved []string
	for i := range 10 {
		fs.failWrites(h.acct, i%2 == 1)
		res := h.check(h.buy(aapl, 2, 10))
		switch {
		case i%2 == 0 && res.GetDecision() == riskv1.Decision_DECISION_APPROVED:
			approved = append(approved, res.GetReservation().GetReservationId())
		case i%2 == 1:
			wantFailClosed(t, "failing write "+itoa(i), res, "could not be written")
		default:
			t.Errorf("check %d: %v", i, res.GetViolations())
		}
	}
	fs.failWrites(h.acct, false)
	want := map[string]float64{}
	for _, id := range approved {
		want[id] = 2
	}
	if diff := cmp.Diff(want, visibleOpen(t, h), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("open reservations (-approved +shown):\n%s", diff)
	}
	if diff := cmp.Diff(durableOpen(t, h), visibleOpen(t, h)); diff != "" {
		t.Errorf("open reservations (-durable +shown):\n%s", diff)
	}
	// 5 × 2 are held: exactly 10 more fit.
	h.approve(h.buy(aapl, 10, 10))
	wantDecision(t, "beyond the limit", h.check(h.buy(aapl, 0.5, 10)),
		[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 20, 20.5, aapl)})
}
