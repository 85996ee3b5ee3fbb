package risk

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// PruneClosed deletes reservations closed, or expired, before the cutoff
// with their fills, oldest first and at most limit at a time; open ones,
// ones closed since, and their fills stay.
func TestSQLStorePruneClosed(t *testing.T) {
	runStoreContract(t, func(t *testing.T, _ *store.DB, st *SQLStore) {
		ctx := context.Background()
		cutoff := storeT(-24 * time.Hour)
		old := storeT(-48 * time.Hour)
		closedOld := sampleReservation("closed-old", "a1", riskv1.ReservationState_RESERVATION_STATE_FILLED, old)
		expiredOld := sampleReservation("expired-old", "a1", riskv1.ReservationState_RESERVATION_STATE_OPEN, old.Add(time.Second))
		openOld := sampleReservation("open-old", "a1", riskv1.ReservationState_RESERVATION_STATE_OPEN, old)
		openOld.expires = storeT(time.Hour)
		closedLate := sampleReservation("closed-late", "a1", riskv1.ReservationState_RESERVATION_STATE_RELEASED, old)
		closedLate.closed = storeT(-time.Hour)
		recent := sampleReservation("recent", "a1", riskv1.ReservationState_RESERVATION_STATE_FILLED, storeT(-time.Hour))
		fill := func(id, reservation string) fillRow {
			return fillRow{accountID: "a1", fillID: id, reservationID: reservation, quantity: 1, price: 1, at: old}
		}
		commitUnit(t, st, &unit{
			accounts:     []accountRow{sampleAccount("a1", 5)},
			reservations: []reservationRow{closedOld, expiredOld, openOld, closedLate, recent},
			fills:        []fillRow{fill("f1", "closed-old"), fill("f2", "closed-old"), fill("f3", "expired-old"), fill("f4", "closed-late"), fill("f5", "recent")},
		})
		r, f, err := st.PruneClosed(ctx, cutoff, 1)
		if err != nil || r != 1 || f != 2 {
			t.Fatalf("first batch of 1: %d reservations, %d fills, %v; want the oldest, closed-old, and its 2 fills", r, f, err)
		}
		r, f, err = st.PruneClosed(ctx, cutoff, 10)
		if err != nil || r != 1 || f != 1 {
			t.Fatalf("second batch: %d reservations, %d fills, %v; want expired-old and its fill", r, f, err)
		}
		if r, f, err = st.PruneClosed(ctx, cutoff, 10); err != nil || r != 0 || f != 0 {
			t.Fatalf("third batch: %d reservations, %d fills, %v; want nothing left to prune", r, f, err)
		}
		var kept []string
		for _, id := range []string{"closed-old", "expired-old", "open-old", "closed-late", "recent"} {
			switch _, err := st.Reservation(ctx, "a1", id); {
			case err == nil:
				kept = append(kept, id)
			case !errors.Is(err, apierr.ErrNotFound):
				t.Fatal(err)
			}
		}
		sort.Strings(kept)
		if want := []string{"closed-late", "open-old", "recent"}; len(kept) != 3 || kept[0] != want[0] || kept[1] != want[1] || kept[2] != want[2] {
			t.Errorf("reservations kept: %v, want %v", kept, want)
		}
		for id, want := range map[string]bool{"f1": false, "f2": false, "f3": false, "f4": true, "f5": true} {
			_, err := st.Fill(ctx, "a1", id)
			if got := err == nil; got != want || (err != nil && !errors.Is(err, apierr.ErrNotFound)) {
				t.Errorf("fill %s kept: %v (%v), want %v", id, got, err, want)
			}
		}
	})
}

// The engine forgets a reservation closed more than Retention ago only with
// its fills: a resent fill of it is refused as naming an unknown
// reservation, never applied twice, while a recent fill is still recognised.
func TestEnginePruneClosed(t *testing.T) {
	t.Parallel()
	h := newRuleHarness(t)
	h.create(h.acct, 100000, nil)
	old := h.approve(h.buy("AAPL", 10, 100))
	h.fill("f-old", old.GetReservationId(), 10, 100, 0)
	expired := h.approve(h.buy("AAPL", 5, 100)) // never filled
	h.clock.advance(h.eng.cfg.Retention + time.Hour)
	h.eng.sweep(h.ctx) // expires the open one and drops old fills from memory
	recent := h.approve(h.buy("AAPL", 1, 100))
	h.fill("f-recent", recent.GetReservationId(), 1, 100, 0)

	h.eng.pruneClosed(h.ctx)
	for _, id := range []string{old.GetReservationId(), expired.GetReservationId()} {
		if _, err := h.sql.Reservation(h.ctx, h.acct, id); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("reservation %s after pruning: %v, want NotFound", id, err)
		}
	}
	if _, err := h.sql.Fill(h.ctx, h.acct, "f-old"); !errors.Is(err, apierr.ErrNotFound) {
		t.Errorf("fill f-old after pruning: %v, want NotFound", err)
	}
	_, err := h.applyFill(&riskv1.Fill{FillId: "f-old", ReservationId: old.GetReservationId(), Quantity: 10, Price: 100})
	wantCodeOf(t, "a fill resent after its reservation was pruned", err, codes.NotFound)
	if again := h.fill("f-recent", recent.GetReservationId(), 1, 100, 0); !again.GetDuplicate() {
		t.Errorf("the recent fill resent: %v, want a duplicate", again)
	}
	if pos := h.portfolio().GetPositions(); len(pos) != 1 || pos[0].GetQuantity() != 11 {
		t.Errorf("positions %v, want 11 AAPL (each fill applied once)", pos)
	}
}

// Retention must cover the longest duplicate window the engine loads.
func TestConfigRetention(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cfg.Retention = loadWindow - time.Second
	if err := cfg.Validate(); err == nil {
		t.Errorf("retention %s below %s accepted", cfg.Retention, loadWindow)
	}
}
