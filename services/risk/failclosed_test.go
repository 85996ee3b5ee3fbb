package risk

import (
	"context"
	"errors"
	"fmt"
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

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
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

// failInserts makes the database refuse the rows of table that match cond
// (a condition on NEW, valid on both backends) until the returned function
// is called: a write the writer cannot commit, grouped or alone, as when
// PostgreSQL refuses a value.
func failInserts(t *testing.T, db *store.DB, table, cond string) (restore func()) {
	t.Helper()
	ctx := context.Background()
	create := []string{`CREATE TRIGGER risk_test_refuse BEFORE INSERT ON ` + table + ` WHEN ` + cond +
		` BEGIN SELECT RAISE(ABORT, 'injected failure: row refused'); END`}
	drop := `DROP TRIGGER risk_test_refuse`
	if db.Dialect() == store.Postgres {
		create = []string{
			`CREATE OR REPLACE FUNCTION risk_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN RAISE EXCEPTION 'injected failure: row refused'; END $$`,
			`CREATE TRIGGER risk_test_refuse BEFORE INSERT ON ` + table + ` FOR EACH ROW WHEN (` + cond + `) EXECUTE FUNCTION risk_test_refuse()`,
		}
		drop += ` ON ` + table
	}
	for _, q := range create {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatalf("refuse rows of %s: %v", table, err)
		}
	}
	return func() {
		t.Helper()
		if _, err := db.Exec(ctx, drop); err != nil {
			t.Fatalf("accept rows of %s again: %v", table, err)
		}
	}
}

// holdWriter keeps the store's writer busy until the returned function is
// called: it commits a unit with an event and blocks in the commit hook, so
// units submitted meanwhile queue behind it in order, as behind a slow
// commit, and are then committed together.
func holdWriter(t *testing.T, h *ruleHarness) (release func()) {
	t.Helper()
	entered, gate := make(chan struct{}), make(chan struct{})
	var hold, open sync.Once
	h.sql.OnCommit(func(evs []*riskv1.RiskEvent) {
		hold.Do(func() {
			close(entered)
			<-gate
		})
		h.eng.events.Publish(evs)
	})
	done := h.sql.Submit(&unit{events: []*riskv1.RiskEvent{rejectionEvent("holder", h.clock.now())}})
	<-entered
	release = func() {
		open.Do(func() {
			close(gate)
			if err := <-done; err != nil {
				t.Errorf("holding unit: %v", err)
			}
		})
	}
	t.Cleanup(release) // the store's Close waits for the writer
	return release
}

// async runs call in a goroutine; the channel receives its error.
func async(call func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- call() }()
	return ch
}

// waitUntil polls cond for up to 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// inflight is the number of writes of the harness account not yet
// finished.
func (h *ruleHarness) inflight() int {
	a := h.eng.account(h.acct)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inflight
}

func TestFailClosedFailedWriteFailsTheAccountsLaterWrites(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		h := newRuleHarnessOn(t, db, DefaultConfig(), nil)
		h.create(h.acct, 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(20)})
		r1 := h.approve(h.buy(aapl, 10, 10))
		r2 := h.approve(h.buy(aapl, 10, 10))
		fill := func(id string, r *riskv1.Reservation) func() error {
			return func() error {
				_, err := h.applyFill(&riskv1.Fill{FillId: id, ReservationId: r.GetReservationId(), Quantity: 10, Price: 10})
				return err
			}
		}

		// f1 cannot be written. f2 is queued behind it: its position and
		// cash rows, copied from memory, include f1. The group fails and
		// each unit is retried alone.
		restore := failInserts(t, db, "risk_fills", "NEW.fill_id = 'f1'")
		release := holdWriter(t, h)
		f1 := async(fill("f1", r1))
		waitUntil(t, "f1 is queued", func() bool { return h.inflight() == 1 })
		f2 := async(fill("f2", r2))
		waitUntil(t, "f2 is queued", func() bool { return h.inflight() == 2 })
		release()
		wantCodeOf(t, "f1", <-f1, codes.Unavailable)
		wantCodeOf(t, "f2, queued behind the failed f1", <-f2, codes.Unavailable)
		restore()

		// No stored row holds f1's effect.
		snap, err := h.sql.LoadAccount(h.ctx, h.acct, h.clock.now().Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range snap.positions {
			if p.qty != 0 {
				t.Errorf("stored position after both fills failed: %+v", p)
			}
		}
		if len(snap.accounts) != 1 || snap.accounts[0].cash != 100000 || len(snap.fills) != 0 {
			t.Errorf("stored account %+v and fills %+v after both fills failed, want cash 100000 and no fill", snap.accounts, snap.fills)
		}

		// Resent, each is applied once.
		for _, f := range []struct {
			id string
			r  *riskv1.Reservation
		}{{"f1", r1}, {"f2", r2}} {
			if err := fill(f.id, f.r)(); err != nil {
				t.Fatalf("%s resent: %v", f.id, err)
			}
		}
		pf := h.portfolio()
		if len(pf.GetPositions()) != 1 || pf.GetPositions()[0].GetQuantity() != 20 || pf.GetCash() != 100000-200 {
			t.Errorf("after resending both fills: positions %v, cash %g; want 20 AAPL and cash 99800", pf.GetPositions(), pf.GetCash())
		}
	})
}

func TestFailClosedRepeatedRequestWaitsForTheWriteItRepeats(t *testing.T) {
	t.Parallel()
	order := func(h *ruleHarness) func() error {
		o := h.buy(aapl, 10, 10)
		o.ClientOrderId = "dup"
		return func() error {
			resp, err := h.svc.CheckOrder(h.ctx, &riskv1.CheckOrderRequest{Order: o})
			switch res := resp.GetResult(); {
			case err != nil:
				return err
			case res.GetDecision() == riskv1.Decision_DECISION_APPROVED || res.GetExistingReservationId() != "":
				return nil // approved, or acknowledged as approved before
			default:
				return fmt.Errorf("rejected: %v", res.GetViolations())
			}
		}
	}
	tests := []struct {
		name        string
		table, cond string // the rows the database refuses
		// setup prepares the account and returns the request; nil when it
		// is acknowledged.
		setup func(h *ruleHarness) func() error
	}{
		{"fill", "risk_fills", "NEW.fill_id = 'f1'", func(h *ruleHarness) func() error {
			h.create(h.acct, 100000, nil)
			r := h.approve(h.buy(aapl, 10, 10))
			return func() error {
				_, err := h.applyFill(&riskv1.Fill{FillId: "f1", ReservationId: r.GetReservationId(), Quantity: 10, Price: 10})
				return err
			}
		}},
		{"release", "risk_reservations", fmt.Sprintf("NEW.state = %d", riskv1.ReservationState_RESERVATION_STATE_RELEASED), func(h *ruleHarness) func() error {
			h.create(h.acct, 100000, nil)
			r := h.approve(h.buy(aapl, 10, 10))
			return func() error {
				_, err := h.release(r.GetReservationId())
				return err
			}
		}},
		{"kill switch trip", "risk_events", fmt.Sprintf("NEW.event_type = %d", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED), func(h *ruleHarness) func() error {
			h.create(h.acct, 100000, nil)
			return func() error {
				_, err := h.svc.TriggerKillSwitch(h.ctx, &riskv1.TriggerKillSwitchRequest{AccountId: h.acct, Reason: "halt"})
				return err
			}
		}},
		{"kill switch reset", "risk_events", fmt.Sprintf("NEW.event_type = %d", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET), func(h *ruleHarness) func() error {
			h.create(h.acct, 100000, nil)
			h.trip("halt")
			return func() error {
				_, err := h.reset("resume", 0)
				return err
			}
		}},
		{"order within the duplicate window", "risk_reservations", "NEW.client_order_id = 'dup'", func(h *ruleHarness) func() error {
			h.create(h.acct, 100000, &riskv1.Limits{DuplicateWindow: durationpb.New(time.Minute)})
			return order(h)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
				h := newRuleHarnessOn(t, db, DefaultConfig(), nil)
				send := tt.setup(h)

				// The first request's write is queued and will fail; the
				// same request is sent again meanwhile.
				restore := failInserts(t, db, tt.table, tt.cond)
				release := holdWriter(t, h)
				first := async(send)
				waitUntil(t, "the first request's write is queued", func() bool { return h.inflight() == 1 })
				again := async(send)
				waitUntil(t, "the request sent again waits or is answered", func() bool { return h.inflight() == 2 || len(again) > 0 })
				release()
				if err := <-first; err == nil {
					t.Error("first request acknowledged although its write failed")
				}
				if err := <-again; err == nil {
					t.Error("request sent again acknowledged although the write it repeats failed")
				}
				restore()

				// Nothing was done: sent once more, the request is applied.
				if err := send(); err != nil {
					t.Errorf("sent after the store recovered: %v", err)
				}
			})
		})
	}
}

// A CheckOrders batch that fails part-way (an account gone between
// validation and its check) leaves nothing behind: the orders checked
// before it finish, so their account is not left in flight (it would fail
// closed for good after its next failed write), and their reservations are
// released.
func TestCheckOrdersFailedBatchLeavesNothing(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	h.create("ghost", 100000, nil)
	a := h.eng.account(h.acct)
	a.mu.Lock() // the batch validates, then waits here for its first order
	o1 := h.buy(aapl, 1, 10)
	o2 := h.buy(aapl, 1, 10)
	o2.AccountId = "ghost"
	resp := async(func() error {
		_, err := h.svc.CheckOrders(h.ctx, &riskv1.CheckOrdersRequest{Orders: []*riskv1.Order{o1, o2}})
		return err
	})
	time.Sleep(200 * time.Millisecond) // validation done
	h.eng.mu.Lock()
	delete(h.eng.accounts, "ghost") // as SetLimits does after a failed creating write
	h.eng.mu.Unlock()
	a.mu.Unlock()
	if err := <-resp; err == nil {
		t.Fatal("the batch succeeded without its second account")
	}
	if n := h.inflight(); n != 0 {
		t.Errorf("%d writes of %s in flight after the batch returned, want 0", n, h.acct)
	}
	pf, err := h.eng.Portfolio(h.ctx, h.acct)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range pf.GetReservations() {
		if r.GetState() == riskv1.ReservationState_RESERVATION_STATE_OPEN {
			t.Errorf("open reservation after a failed batch: %v", r)
		}
	}
}

// A check that raises the high-water mark of an account with a drawdown
// limit writes it: a price stored but not yet checked for trips (the
// window a check can land in) must not leave the mark in memory only,
// or drawdown after a restart is measured from a lower one.
func TestCheckWritesTheHighWaterMarkItRaises(t *testing.T) {
	t.Parallel()
	db := ruleDB(t)
	h := newRuleHarnessOn(t, db, DefaultConfig(), nil)
	h.create(h.acct, 100000, &riskv1.Limits{MaxDrawdownPercent: proto.Float64(99)})
	h.price(aapl, 100)
	r := h.approve(h.buy(aapl, 100, 100))
	h.fill("f1", r.GetReservationId(), 100, 100, 0)
	h.eng.pricesMu.Lock()
	h.eng.prices[aapl] = priceEntry{price: 150, at: h.clock.now()} // stored; its trip check has not run
	h.eng.pricesMu.Unlock()
	h.check(h.buy(aapl, 1, 150)) // equity 105,000: a new high
	_ = h.sql.Close()

	h2 := newRuleHarnessOn(t, db, DefaultConfig(), nil) // the same database, as after a restart
	a := h2.eng.account(h.acct)
	if a == nil {
		t.Fatal("account not reloaded")
	}
	if a.highWater != 105000 {
		t.Errorf("high-water mark after a restart %v, want 105000 (raised by the check)", a.highWater)
	}
}

// A SetLimits retry that finds its first attempt's revision in memory
// waits for that write: if it fails, so does the retry (Unavailable), rather
// than ABORTED on a revision that was never stored.
func TestSetLimitsRetryWaitsForTheRevisionItSees(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		h := newRuleHarnessOn(t, db, DefaultConfig(), nil)
		h.create(h.acct, 100000, nil)
		rev := h.eng.account(h.acct).limits.Revision
		send := func() error {
			_, err := h.svc.SetLimits(h.ctx, &riskv1.SetLimitsRequest{
				Limits:           &riskv1.Limits{AccountId: h.acct, MaxOrderQuantity: proto.Float64(5)},
				UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity"}},
				ExpectedRevision: rev,
			})
			return err
		}
		restore := failInserts(t, db, "risk_events", fmt.Sprintf("NEW.event_type = %d", riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED))
		release := holdWriter(t, h)
		first := async(send)
		waitUntil(t, "the first write queued", func() bool { return h.inflight() == 1 })
		again := async(send)
		release()
		wantCodeOf(t, "first attempt (its write failed)", <-first, codes.Unavailable)
		wantCodeOf(t, "retry (the revision it saw was never stored)", <-again, codes.Unavailable)
		restore()
		if err := send(); err != nil {
			t.Errorf("a retry once the store works: %v", err)
		}
	})
}
