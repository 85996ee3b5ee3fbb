package risk

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// The race tests hammer the real engine on the SQL store (SQLite): many
// goroutines check orders for accounts whose max_position_quantity fits
// exactly n quantity-1 buys. Checks of one account are serialised and an
// approval's reservation counts against every later check, so exactly n
// are approved, whatever the interleaving; run them under -race.

const (
	raceGoroutines = 64
	raceOrders     = 1000 // per goroutine
	racePrice      = 100.0
)

// raceEngine opens an engine and its server on db.
func raceEngine(t *testing.T, db *store.DB) (*Engine, *Server, *SQLStore) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := NewSQLStore(ctx, db, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	eng, err := NewEngine(ctx, DefaultConfig(), st, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(eng, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	return eng, srv, st
}

// raceAccount creates an account that fits exactly n quantity-1 buys of
// AAA; its reservations outlive the test.
func raceAccount(t *testing.T, srv *Server, id string, n int) {
	t.Helper()
	limit, cash := float64(n), 1e9
	if _, err := srv.SetLimits(context.Background(), &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{
			AccountId:           id,
			MaxPositionQuantity: &limit,
			ReservationTtl:      durationpb.New(24 * time.Hour),
		},
		UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"max_position_quantity", "reservation_ttl"}},
		CashBalance: &cash,
	}); err != nil {
		t.Fatal(err)
	}
}

func racePrices(t *testing.T, srv *Server) {
	t.Helper()
	if _, err := srv.UpdatePrices(context.Background(), &riskv1.UpdatePricesRequest{
		Prices: []*riskv1.PriceUpdate{{Symbol: "AAA", Price: racePrice}},
	}); err != nil {
		t.Fatal(err)
	}
}

// raceHammer runs raceGoroutines goroutines, each checking raceOrders
// quantity-1 buys for the account account(g, i) names, all released at
// once; it returns the approvals per account. Every rejection must be
// exactly POSITION_QUANTITY observed at n+1. With srv set, one goroutine in
// 32 goes through the Server's handler (validation, metrics, and a
// rejection event written to the store for every rejection, which is what
// makes it slow); the others call Engine.Check.
func raceHammer(t *testing.T, eng *Engine, srv *Server, account func(g, i int) string, limits map[string]int) map[string]int {
	t.Helper()
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		mu       sync.Mutex
		approved = map[string]int{}
		bad      atomic.Int64
	)
	for g := range raceGoroutines {
		wg.Go(func() {
			<-start
			mine := map[string]int{}
			var res checkResult
			for i := range raceOrders {
				o := order{
					accountID:     account(g, i),
					clientOrderID: "g" + strconv.Itoa(g) + "-" + strconv.Itoa(i),
					symbol:        "AAA",
					side:          buy,
					orderType:     riskv1.OrderType_ORDER_TYPE_MARKET,
					quantity:      1,
				}
				if srv != nil && g%32 == 1 {
					resp, err := srv.CheckOrder(context.Background(), &riskv1.CheckOrderRequest{Order: o.toProto()})
					if err != nil {
						t.Errorf("CheckOrder: %v", err)
						return
					}
					res = checkResult{approved: resp.GetResult().GetDecision() == riskv1.Decision_DECISION_APPROVED}
					for _, v := range resp.GetResult().GetViolations() {
						res.add(v.GetRule(), v.GetLimit(), v.GetObserved(), v.GetSymbol())
					}
				} else if err := eng.Check(context.Background(), &o, &res); err != nil {
					t.Errorf("Check: %v", err)
					return
				}
				if res.approved {
					mine[o.accountID]++
					continue
				}
				n := float64(limits[o.accountID])
				v := res.violations[0]
				if res.n != 1 || v.rule != riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY || v.limit != n || v.observed != n+1 {
					if bad.Add(1) <= 3 {
						t.Errorf("%s: rejected with %v, want only POSITION_QUANTITY observed %v", o.accountID, res.violations[:res.n], n+1)
					}
				}
			}
			mu.Lock()
			for id, k := range mine {
				approved[id] += k
			}
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return approved
}

// raceReserved asserts that the portfolio of account holds exactly n open
// quantity-1 buy reservations.
func raceReserved(t *testing.T, srv *Server, id string, n int) {
	t.Helper()
	resp, err := srv.GetPortfolio(context.Background(), &riskv1.GetPortfolioRequest{AccountId: id})
	if err != nil {
		t.Fatal(err)
	}
	pf := resp.GetPortfolio()
	var buyQty float64
	for _, p := range pf.GetPositions() {
		buyQty += p.GetReservedBuyQuantity()
		if p.GetQuantity() != 0 || p.GetReservedSellQuantity() != 0 {
			t.Errorf("%s: position %v, want only reserved buys", id, p)
		}
	}
	if len(pf.GetReservations()) != n || buyQty != float64(n) || pf.GetReservedExposure() != float64(n)*racePrice {
		t.Errorf("%s: %d open reservations, %v reserved, exposure %v; want %d, %d, %v",
			id, len(pf.GetReservations()), buyQty, pf.GetReservedExposure(), n, n, float64(n)*racePrice)
	}
}

func TestRaceOneAccountApprovesExactlyN(t *testing.T) {
	t.Parallel()
	const n = 137
	db := storetest.SQLite(t, Migrations())
	eng, srv, st := raceEngine(t, db)
	racePrices(t, srv)
	raceAccount(t, srv, "hot", n)

	approved := raceHammer(t, eng, srv, func(int, int) string { return "hot" }, map[string]int{"hot": n})
	if approved["hot"] != n {
		t.Errorf("%d of %d orders approved, want exactly %d", approved["hot"], raceGoroutines*raceOrders, n)
	}
	raceReserved(t, srv, "hot", n)

	// Every approval was durable before it was answered: a new engine on
	// the same database sees the same n reservations.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	_, srv2, _ := raceEngine(t, db)
	raceReserved(t, srv2, "hot", n)
}

func TestRaceManyAccountsEachApprovesExactlyItsN(t *testing.T) {
	t.Parallel()
	const accounts = 8
	db := storetest.SQLite(t, Migrations())
	eng, srv, _ := raceEngine(t, db)
	racePrices(t, srv)
	limits := map[string]int{}
	ids := make([]string, accounts)
	for k := range ids {
		ids[k] = fmt.Sprintf("acct-%d", k)
		limits[ids[k]] = 20 + 13*k
		raceAccount(t, srv, ids[k], limits[ids[k]])
	}

	// Each goroutine walks the accounts from its own offset, so every
	// account is contended by many goroutines at once.
	approved := raceHammer(t, eng, nil, func(g, i int) string { return ids[(g+i)%accounts] }, limits)
	for _, id := range ids {
		if approved[id] != limits[id] {
			t.Errorf("%s: %d approved, want exactly %d", id, approved[id], limits[id])
		}
		raceReserved(t, srv, id, limits[id])
	}
}
