package risk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// The store contract, run on SQLite and PostgreSQL.

func runStoreContract(t *testing.T, fn func(t *testing.T, db *store.DB, st *SQLStore)) {
	t.Helper()
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		fn(t, db, openContractStore(t, db))
	})
}

func openContractStore(t *testing.T, db *store.DB) *SQLStore {
	t.Helper()
	st, err := NewSQLStore(context.Background(), db, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func commitUnit(t *testing.T, st Store, u *unit) {
	t.Helper()
	if err := <-st.Submit(u); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func loadAll(t *testing.T, st Store, cutoff time.Time) *snapshot {
	t.Helper()
	snap, err := st.Load(context.Background(), cutoff)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return snap
}

// storeT is a store timestamp: stored as microseconds, read back in UTC.
func storeT(d time.Duration) time.Time { return ruleStart.Add(d).Truncate(time.Microsecond) }

// snapshotOpts compare snapshots whatever the row order.
var snapshotOpts = []cmp.Option{
	cmp.AllowUnexported(snapshot{}, accountRow{}, positionRow{}, reservation{}, fillRow{}, priceRow{}),
	protocmp.Transform(),
	cmpopts.EquateEmpty(),
	cmpopts.SortSlices(func(a, b accountRow) bool { return a.id < b.id }),
	cmpopts.SortSlices(func(a, b positionRow) bool { return a.accountID+"/"+a.symbol < b.accountID+"/"+b.symbol }),
	cmpopts.SortSlices(func(a, b reservation) bool { return a.id < b.id }),
	cmpopts.SortSlices(func(a, b fillRow) bool { return a.accountID+"/"+a.fillID < b.accountID+"/"+b.fillID }),
	cmpopts.SortSlices(func(a, b priceRow) bool { return a.symbol < b.symbol }),
}

func sampleAccount(id string, cash float64) accountRow {
	return accountRow{
		id: id, full: true, created: storeT(-time.Hour),
		limits: &riskv1.Limits{
			AccountId: id, RestrictedSymbols: []string{"GME"}, MaxOrderQuantity: proto.Float64(5),
			DuplicateWindow: durationpb.New(time.Minute), OrderBurst: proto.Int32(3), MaxOrdersPerSecond: proto.Float64(2),
			Revision: 4, UpdateTime: timestamppb.New(storeT(-time.Minute)), UpdatedByPrincipal: "root",
		},
		kill: &riskv1.KillSwitchState{
			AccountId: id, Tripped: true, Cause: riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_DAILY_LOSS, TripReason: "loss",
			TrippedByPrincipal: systemPrincipal, TripTime: timestamppb.New(storeT(0)), Revision: 7,
		},
		cash: cash, dayStart: storeT(-14 * time.Hour), dayEquity: cash + 100, highWater: cash + 250.5,
	}
}

func sampleReservation(id, account string, state riskv1.ReservationState, created time.Time) reservation {
	r := reservation{
		id: id, accountID: account, clientOrderID: "c-" + id, symbol: aapl, side: sell,
		orderType: riskv1.OrderType_ORDER_TYPE_LIMIT, orderQty: 10, filledQty: 2.5, price: 101.25,
		state: state, created: created, expires: created.Add(time.Minute),
	}
	if state != riskv1.ReservationState_RESERVATION_STATE_OPEN {
		r.closed = created.Add(30 * time.Second)
	}
	return r
}

func TestSQLStoreRoundTrip(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		ctx := context.Background()
		a1, a2 := sampleAccount("a1", 1000.25), sampleAccount("a2", -3)
		a2.kill = &riskv1.KillSwitchState{AccountId: "a2"}
		a2.limits = &riskv1.Limits{AccountId: "a2"}
		market := sampleReservation("r3", "a2", riskv1.ReservationState_RESERVATION_STATE_OPEN, storeT(0))
		market.side, market.orderType = buy, riskv1.OrderType_ORDER_TYPE_MARKET
		want := &snapshot{
			accounts: []accountRow{a1, a2},
			positions: []positionRow{
				{accountID: "a1", symbol: aapl, qty: 10, avgPrice: 100.5, realized: -5.25, updated: storeT(-time.Second)},
				{accountID: "a1", symbol: msft, qty: -3, avgPrice: 250, realized: 0, updated: storeT(0)},
				{accountID: "a2", symbol: aapl, qty: 0, avgPrice: 0, realized: 12, updated: storeT(0)},
			},
			reservations: []reservation{
				sampleReservation("r1", "a1", riskv1.ReservationState_RESERVATION_STATE_OPEN, storeT(-time.Minute)),
				sampleReservation("r2", "a1", riskv1.ReservationState_RESERVATION_STATE_FILLED, storeT(-time.Minute)),
				market,
			},
			fills: []fillRow{
				{accountID: "a1", fillID: "f1", reservationID: "r2", quantity: 2.5, price: 101, fee: 0.5, at: storeT(-30 * time.Second)},
			},
			prices: []priceRow{{symbol: aapl, price: 100.125, at: storeT(0)}, {symbol: msft, price: 250, at: storeT(-time.Hour)}},
		}
		u := &unit{
			accounts: want.accounts, positions: want.positions, reservations: want.reservations, fills: want.fills, prices: want.prices,
			events: []*riskv1.RiskEvent{
				{Type: riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, AccountId: "a1", EventTime: timestamppb.New(storeT(0)),
					Detail: &riskv1.RiskEvent_KillSwitch{KillSwitch: a1.kill}},
			},
		}
		commitUnit(t, st, u)
		want.lastSequence = 1
		if diff := cmp.Diff(want, loadAll(t, st, storeT(-time.Hour)), snapshotOpts...); diff != "" {
			t.Errorf("load after commit (-written +loaded):\n%s", diff)
		}

		// Anchors only: limits and kill switch stay as they were.
		anchors := accountRow{id: "a1", cash: 2000, dayStart: storeT(10 * time.Hour), dayEquity: 2100, highWater: 2200.5}
		// Updates: a reservation fills, a position moves, a price rises.
		r1 := want.reservations[0]
		r1.filledQty, r1.state, r1.closed = 10, riskv1.ReservationState_RESERVATION_STATE_FILLED, storeT(time.Second)
		pos := want.positions[0]
		pos.qty, pos.avgPrice, pos.realized, pos.updated = 17.5, 100.75, -6, storeT(time.Second)
		px := priceRow{symbol: aapl, price: 99, at: storeT(time.Second)}
		commitUnit(t, st, &unit{accounts: []accountRow{anchors}, reservations: []reservationRow{r1}, positions: []positionRow{pos}, prices: []priceRow{px}})

		a1.cash, a1.dayStart, a1.dayEquity, a1.highWater = anchors.cash, anchors.dayStart, anchors.dayEquity, anchors.highWater
		want.accounts[0] = a1
		want.reservations[0] = r1
		want.positions[0] = pos
		want.prices[0] = px
		if diff := cmp.Diff(want, loadAll(t, st, storeT(-time.Hour)), snapshotOpts...); diff != "" {
			t.Errorf("load after updates (-want +loaded):\n%s", diff)
		}

		// A full row replaces limits and kill switch.
		a1.limits = &riskv1.Limits{AccountId: "a1", MaxLeverage: proto.Float64(2), Revision: 5}
		a1.kill = &riskv1.KillSwitchState{AccountId: "a1", Revision: 8, ResetReason: "ok"}
		commitUnit(t, st, &unit{accounts: []accountRow{a1}})
		want.accounts[0] = a1
		if diff := cmp.Diff(want, loadAll(t, st, storeT(-time.Hour)), snapshotOpts...); diff != "" {
			t.Errorf("load after a full account row (-want +loaded):\n%s", diff)
		}

		// Lookups of any age.
		got, err := st.Reservation(ctx, "a1", "r2")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(&want.reservations[1], got, snapshotOpts...); diff != "" {
			t.Errorf("reservation lookup (-want +got):\n%s", diff)
		}
		if _, err := st.Reservation(ctx, "a2", "r2"); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("another account's reservation: %v, want NotFound", err)
		}
		if _, err := st.Reservation(ctx, "a1", "nope"); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("unknown reservation: %v, want NotFound", err)
		}
		f, err := st.Fill(ctx, "a1", "f1")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(&want.fills[0], f, snapshotOpts...); diff != "" {
			t.Errorf("fill lookup (-want +got):\n%s", diff)
		}
		if _, err := st.Fill(ctx, "a2", "f1"); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("another account's fill: %v, want NotFound", err)
		}
	})
}

func TestSQLStoreLoadCutoff(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		cutoff := storeT(-24 * time.Hour)
		old := storeT(-48 * time.Hour)
		// Open and not yet expired at the cutoff: loaded whatever its age.
		openOld := sampleReservation("open-old", "a1", riskv1.ReservationState_RESERVATION_STATE_OPEN, old)
		openOld.expires = storeT(time.Hour)
		// Stored open but expired before the cutoff: expiry is implied by
		// the time, so it is not loaded.
		expiredOld := sampleReservation("expired-old", "a1", riskv1.ReservationState_RESERVATION_STATE_OPEN, old)
		expiredOld.expires = old.Add(time.Minute)
		closedOld := sampleReservation("closed-old", "a1", riskv1.ReservationState_RESERVATION_STATE_RELEASED, old)
		closedLate := sampleReservation("closed-late", "a1", riskv1.ReservationState_RESERVATION_STATE_EXPIRED, old)
		closedLate.closed = storeT(-time.Hour)
		recent := sampleReservation("recent", "a1", riskv1.ReservationState_RESERVATION_STATE_FILLED, storeT(-time.Hour))
		fillOld := fillRow{accountID: "a1", fillID: "old", reservationID: "closed-old", quantity: 1, price: 1, at: old}
		fillNew := fillRow{accountID: "a1", fillID: "new", reservationID: "recent", quantity: 1, price: 1, at: storeT(-time.Hour)}
		commitUnit(t, st, &unit{
			accounts:     []accountRow{sampleAccount("a1", 5)},
			reservations: []reservationRow{openOld, expiredOld, closedOld, closedLate, recent},
			fills:        []fillRow{fillOld, fillNew},
		})
		snap := loadAll(t, st, cutoff)
		var ids []string
		for _, r := range snap.reservations {
			ids = append(ids, r.id)
		}
		sort.Strings(ids)
		if diff := cmp.Diff([]string{"closed-late", "open-old", "recent"}, ids); diff != "" {
			t.Errorf("reservations loaded (-want +got):\n%s", diff)
		}
		if len(snap.fills) != 1 || snap.fills[0].fillID != "new" {
			t.Errorf("fills loaded: %+v, want only the one since the cutoff", snap.fills)
		}
		// Older ones are still there for lookups.
		if _, err := st.Reservation(context.Background(), "a1", "closed-old"); err != nil {
			t.Errorf("old reservation lookup: %v", err)
		}
		if _, err := st.Fill(context.Background(), "a1", "old"); err != nil {
			t.Errorf("old fill lookup: %v", err)
		}
	})
}

func TestSQLStoreNewerPriceWins(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		steps := []struct {
			name string
			in   priceRow
			want priceRow
		}{
			{"first", priceRow{aapl, 100, storeT(time.Second)}, priceRow{aapl, 100, storeT(time.Second)}},
			{"older is ignored", priceRow{aapl, 90, storeT(0)}, priceRow{aapl, 100, storeT(time.Second)}},
			{"same time replaces", priceRow{aapl, 95, storeT(time.Second)}, priceRow{aapl, 95, storeT(time.Second)}},
			{"newer replaces", priceRow{aapl, 96, storeT(2 * time.Second)}, priceRow{aapl, 96, storeT(2 * time.Second)}},
		}
		for _, s := range steps {
			commitUnit(t, st, &unit{prices: []priceRow{s.in}})
			if diff := cmp.Diff([]priceRow{s.want}, loadAll(t, st, storeT(0)).prices, snapshotOpts...); diff != "" {
				t.Errorf("%s (-want +got):\n%s", s.name, diff)
			}
		}
	})
}

func rejectionEvent(account string, at time.Time) *riskv1.RiskEvent {
	return &riskv1.RiskEvent{
		Type: riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED, AccountId: account, EventTime: timestamppb.New(at),
		Detail: &riskv1.RiskEvent_Rejection{Rejection: &riskv1.OrderRejection{
			Order:      &riskv1.Order{AccountId: account, ClientOrderId: "c", Symbol: aapl, Side: riskv1.OrderSide_ORDER_SIDE_BUY, Type: riskv1.OrderType_ORDER_TYPE_MARKET, Quantity: 1},
			Violations: []*riskv1.RuleViolation{{Rule: riskv1.RiskRule_RISK_RULE_KILL_SWITCH, Observed: 1, Message: "kill switch is tripped"}},
		}},
	}
}

func TestSQLStoreEventSequences(t *testing.T) {
	runStoreContract(t, func(t *testing.T, db *store.DB, st *SQLStore) {
		ctx := context.Background()
		var mu sync.Mutex
		var hooked []*riskv1.RiskEvent
		st.OnCommit(func(evs []*riskv1.RiskEvent) {
			mu.Lock()
			hooked = append(hooked, evs...)
			mu.Unlock()
		})
		if first, err := st.FirstSequence(ctx); err != nil || first != 0 {
			t.Errorf("first sequence of an empty log: %d, %v", first, err)
		}
		if snap := loadAll(t, st, storeT(0)); snap.lastSequence != 0 {
			t.Errorf("last sequence of an empty log: %d", snap.lastSequence)
		}
		units := []*unit{
			{events: []*riskv1.RiskEvent{rejectionEvent("a", storeT(0)), rejectionEvent("b", storeT(0))}},
			{prices: []priceRow{{aapl, 1, storeT(0)}}},
			{events: []*riskv1.RiskEvent{rejectionEvent("c", storeT(0)), rejectionEvent("d", storeT(0)), rejectionEvent("e", storeT(0))}},
		}
		dones := make([]<-chan error, len(units))
		for i, u := range units {
			dones[i] = st.Submit(u)
		}
		var want []*riskv1.RiskEvent
		for i, done := range dones {
			if err := <-done; err != nil {
				t.Fatalf("unit %d: %v", i, err)
			}
			want = append(want, units[i].events...)
		}
		for i, ev := range want {
			if ev.GetSequence() != uint64(i+1) {
				t.Errorf("event %d of the units has sequence %d, want %d", i, ev.GetSequence(), i+1)
			}
		}
		all, err := st.Events(ctx, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, all, protocmp.Transform()); diff != "" {
			t.Errorf("events (-committed +read):\n%s", diff)
		}
		mu.Lock()
		if diff := cmp.Diff(want, hooked, protocmp.Transform()); diff != "" {
			t.Errorf("OnCommit events (-committed +hooked):\n%s", diff)
		}
		mu.Unlock()
		page, err := st.Events(ctx, 2, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) != 2 || page[0].GetSequence() != 3 || page[1].GetSequence() != 4 {
			t.Errorf("page after 2 of 2: %v", page)
		}
		if rest, err := st.Events(ctx, 5, 10); err != nil || len(rest) != 0 {
			t.Errorf("after the last event: %v, %v", rest, err)
		}
		if first, err := st.FirstSequence(ctx); err != nil || first != 1 {
			t.Errorf("first sequence: %d, %v", first, err)
		}
		if snap := loadAll(t, st, storeT(0)); snap.lastSequence != 5 {
			t.Errorf("last sequence: %d, want 5", snap.lastSequence)
		}

		// A new store on the same database continues the sequence.
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		st2 := openContractStore(t, db)
		ev := rejectionEvent("f", storeT(0))
		commitUnit(t, st2, &unit{events: []*riskv1.RiskEvent{ev}})
		if ev.GetSequence() != 6 {
			t.Errorf("sequence after reopening: %d, want 6", ev.GetSequence())
		}
	})
}

func TestSQLStorePruneKeepsTheNewestEvent(t *testing.T) {
	runStoreContract(t, func(t *testing.T, db *store.DB, st *SQLStore) {
		ctx := context.Background()
		old := storeT(-10 * 24 * time.Hour)
		commitUnit(t, st, &unit{events: []*riskv1.RiskEvent{rejectionEvent("a", old), rejectionEvent("a", old), rejectionEvent("a", old)}})
		commitUnit(t, st, &unit{events: []*riskv1.RiskEvent{rejectionEvent("a", storeT(0))}})
		n, err := st.PruneEvents(ctx, storeT(-24*time.Hour))
		if err != nil || n != 3 {
			t.Fatalf("prune: %d, %v; want 3 deleted", n, err)
		}
		if first, err := st.FirstSequence(ctx); err != nil || first != 4 {
			t.Errorf("first sequence after prune: %d, %v; want 4", first, err)
		}
		// Everything is old: the newest event stays, so sequences keep
		// increasing across restarts.
		n, err = st.PruneEvents(ctx, storeT(time.Hour))
		if err != nil || n != 0 {
			t.Errorf("prune of the last event: %d, %v; want 0 deleted", n, err)
		}
		evs, err := st.Events(ctx, 0, 10)
		if err != nil || len(evs) != 1 || evs[0].GetSequence() != 4 {
			t.Errorf("events left: %v, %v", evs, err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		st2 := openContractStore(t, db)
		ev := rejectionEvent("b", storeT(0))
		commitUnit(t, st2, &unit{events: []*riskv1.RiskEvent{ev}})
		if ev.GetSequence() != 5 {
			t.Errorf("sequence after prune and restart: %d, want 5", ev.GetSequence())
		}
	})
}

func TestSQLStoreFailingUnitFailsAlone(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		ctx := context.Background()
		commitUnit(t, st, &unit{fills: []fillRow{{accountID: "a", fillID: "taken", reservationID: "r", quantity: 1, price: 1, at: storeT(0)}}})
		var mu sync.Mutex
		var hooked []*riskv1.RiskEvent
		commits := 0
		st.OnCommit(func(evs []*riskv1.RiskEvent) {
			mu.Lock()
			hooked = append(hooked, evs...)
			commits++
			mu.Unlock()
		})

		const n = 40
		bad := func(i int) bool { return i%7 == 3 }
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u := &unit{
					positions: []positionRow{{accountID: "a", symbol: fmt.Sprintf("S%02d", i), qty: float64(i), updated: storeT(0)}},
					events:    []*riskv1.RiskEvent{rejectionEvent(fmt.Sprintf("u%02d", i), storeT(0))},
				}
				if bad(i) {
					// The fill's primary key is taken: this unit cannot commit.
					u.fills = []fillRow{{accountID: "a", fillID: "taken", reservationID: "r2", quantity: 2, price: 2, at: storeT(0)}}
				}
				<-start
				errs[i] = <-st.Submit(u)
			}()
		}
		close(start)
		wg.Wait()

		wantSyms := map[string]bool{}
		wantAccounts := map[string]bool{}
		for i, err := range errs {
			switch {
			case bad(i) && err == nil:
				t.Errorf("unit %d with a duplicate fill committed", i)
			case !bad(i) && err != nil:
				t.Errorf("unit %d failed with the bad ones: %v", i, err)
			case !bad(i):
				wantSyms[fmt.Sprintf("S%02d", i)] = true
				wantAccounts[fmt.Sprintf("u%02d", i)] = true
			}
		}
		snap := loadAll(t, st, storeT(0))
		gotSyms := map[string]bool{}
		for _, p := range snap.positions {
			gotSyms[p.symbol] = true
		}
		if diff := cmp.Diff(wantSyms, gotSyms); diff != "" {
			t.Errorf("positions committed (-good units +stored):\n%s", diff)
		}
		if len(snap.fills) != 1 || snap.fills[0].reservationID != "r" {
			t.Errorf("fills: %+v, want only the first", snap.fills)
		}
		// The good units' events, numbered without gaps.
		evs, err := st.Events(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		gotAccounts := map[string]bool{}
		for i, ev := range evs {
			gotAccounts[ev.GetAccountId()] = true
			if ev.GetSequence() != uint64(i+1) {
				t.Errorf("event %d has sequence %d", i, ev.GetSequence())
			}
		}
		if diff := cmp.Diff(wantAccounts, gotAccounts); diff != "" {
			t.Errorf("events committed (-good units +stored):\n%s", diff)
		}
		mu.Lock()
		if diff := cmp.Diff(evs, hooked, protocmp.Transform()); diff != "" {
			t.Errorf("OnCommit saw other events than were committed (-stored +hooked):\n%s", diff)
		}
		t.Logf("%d good units committed in %d transactions", len(evs), commits)
		mu.Unlock()
		if snap.lastSequence != uint64(len(evs)) {
			t.Errorf("last sequence %d, %d events", snap.lastSequence, len(evs))
		}
	})
}

func TestSQLStoreLoadAccount(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		ctx := context.Background()
		mk := func(id string) *unit {
			return &unit{
				accounts:     []accountRow{sampleAccount(id, 10)},
				positions:    []positionRow{{accountID: id, symbol: aapl, qty: 1, avgPrice: 2, updated: storeT(0)}},
				reservations: []reservationRow{sampleReservation("r-"+id, id, riskv1.ReservationState_RESERVATION_STATE_OPEN, storeT(0))},
				fills:        []fillRow{{accountID: id, fillID: "f", reservationID: "r-" + id, quantity: 1, price: 2, at: storeT(0)}},
				prices:       []priceRow{{symbol: "P" + id, price: 3, at: storeT(0)}},
				events:       []*riskv1.RiskEvent{rejectionEvent(id, storeT(0))},
			}
		}
		a, b := mk("a"), mk("b")
		commitUnit(t, st, a)
		commitUnit(t, st, b)
		got, err := st.LoadAccount(ctx, "a", storeT(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		want := &snapshot{
			accounts: a.accounts, positions: a.positions, reservations: a.reservations, fills: a.fills,
			prices: append(append([]priceRow{}, a.prices...), b.prices...), lastSequence: 2,
		}
		if diff := cmp.Diff(want, got, snapshotOpts...); diff != "" {
			t.Errorf("LoadAccount(a) (-want +got):\n%s", diff)
		}
		none, err := st.LoadAccount(ctx, "nobody", storeT(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if len(none.accounts)+len(none.positions)+len(none.reservations)+len(none.fills) != 0 {
			t.Errorf("LoadAccount of an unknown account: %+v", none)
		}
	})
}

func TestSQLStoreCloseDrainsQueuedUnits(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		const n = 100
		dones := make([]<-chan error, n)
		for i := range n {
			dones[i] = st.Submit(&unit{positions: []positionRow{{accountID: "a", symbol: fmt.Sprintf("S%03d", i), qty: 1, updated: storeT(0)}}})
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		for i, done := range dones {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("unit %d: %v", i, err)
				}
			default:
				t.Fatalf("unit %d submitted before Close was not finished when Close returned", i)
			}
		}
		if got := len(loadAll(t, st, storeT(0)).positions); got != n {
			t.Errorf("%d positions stored, want %d", got, n)
		}
		// After Close, units are refused, never lost silently.
		select {
		case err := <-st.Submit(&unit{prices: []priceRow{{aapl, 1, storeT(0)}}}):
			if err == nil {
				t.Error("a unit submitted after Close succeeded")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a unit submitted after Close never finished")
		}
		failed := make(chan error, 1)
		st.SubmitAsync(&unit{prices: []priceRow{{aapl, 1, storeT(0)}}}, func(err error) { failed <- err })
		select {
		case err := <-failed:
			if err == nil {
				t.Error("SubmitAsync after Close reported a nil failure")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("SubmitAsync after Close did not report the failure")
		}
	})
}

func TestSQLStoreFailedUnitFailsTheRestOfItsChain(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		taken := fillRow{accountID: "a", fillID: "taken", reservationID: "r", quantity: 1, price: 1, at: storeT(0)}
		commitUnit(t, st, &unit{fills: []fillRow{taken}})
		pos := func(account, symbol string) []positionRow {
			return []positionRow{{accountID: account, symbol: symbol, qty: 1, updated: storeT(0)}}
		}
		a, b := &writeChain{}, &writeChain{}
		bad := &unit{chain: a, positions: pos("a", "S1"), fills: []fillRow{taken}} // the fill's key is taken
		units := []*unit{
			bad,
			{chain: a, positions: pos("a", "S2")}, // copied from memory after bad: holds its effect
			{chain: a},                            // nothing to write: waits for the chain
			{chain: b, positions: pos("b", "S3")}, // another account
			{positions: pos("", "S4")},            // no account
		}
		wantOK := []bool{false, false, false, true, true}
		// Submitted together, they are committed as one group or more.
		dones := make([]<-chan error, len(units))
		for i, u := range units {
			dones[i] = st.Submit(u)
		}
		for i, done := range dones {
			if err := <-done; (err == nil) != wantOK[i] {
				t.Errorf("unit %d: %v, want success %v", i, err, wantOK[i])
			}
		}
		// Until the engine starts a new chain, the failed one stays failed.
		if err := <-st.Submit(&unit{chain: a, positions: pos("a", "S5")}); err == nil {
			t.Error("a unit of the failed chain committed")
		}
		commitUnit(t, st, &unit{chain: &writeChain{}, positions: pos("a", "S6")})
		var got []string
		for _, p := range loadAll(t, st, storeT(0)).positions {
			got = append(got, p.symbol)
		}
		sort.Strings(got)
		if diff := cmp.Diff([]string{"S3", "S4", "S6"}, got); diff != "" {
			t.Errorf("positions stored (-want +got):\n%s", diff)
		}
	})
}

func TestSQLStoreRecoversFromATakenSequence(t *testing.T) {
	runStoreContract(t, func(t *testing.T, db *store.DB, st *SQLStore) {
		ctx := context.Background()
		commitUnit(t, st, &unit{events: []*riskv1.RiskEvent{rejectionEvent("a", storeT(0))}})
		// A commit that reported an error after the database committed it
		// leaves its events stored with sequences the writer gives out
		// again; here the event is stored behind the writer's back.
		ambiguous := rejectionEvent("a", storeT(0))
		ambiguous.Sequence = 2
		payload, err := proto.Marshal(ambiguous)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `INSERT INTO risk_events (sequence, account_id, event_type, event_time, payload) VALUES (2, 'a', $1, 0, $2)`,
			int64(ambiguous.GetType()), payload); err != nil {
			t.Fatal(err)
		}
		// The next event collides with it and fails; the writer then reads
		// the last stored sequence again, and later events are written.
		if err := <-st.Submit(&unit{events: []*riskv1.RiskEvent{rejectionEvent("b", storeT(0))}}); err == nil {
			t.Fatal("an event with a taken sequence committed")
		}
		for i := range 3 {
			ev := rejectionEvent("c", storeT(0))
			commitUnit(t, st, &unit{events: []*riskv1.RiskEvent{ev}})
			if ev.GetSequence() != uint64(3+i) {
				t.Errorf("event %d after the collision has sequence %d, want %d", i, ev.GetSequence(), 3+i)
			}
		}
		evs, err := st.Events(ctx, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 5 || evs[len(evs)-1].GetSequence() != 5 {
			t.Errorf("stored events: %v, want sequences 1 to 5", evs)
		}
	})
}
