package risk

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// Benchmarks of the check path. Run them with
//
//	go test -run '^$' -bench . -benchtime 2s ./services/risk/
//
// BenchmarkCheckPath reports ns/op and allocs/op of one in-memory check
// with every rule enabled, and p50-ns, p99-ns from per-check timings (the
// issue's goal: p99 ≤ 10 µs and at most 2 allocations per check).
// BenchmarkCheckEngine is Engine.Check on a store that commits at once;
// BenchmarkCheckDurable is Engine.Check on SQLite from many goroutines, so
// that group commit shows.

// benchSymbols are the symbols of the benchmark account: it holds a
// position and two open reservations in each.
var benchSymbols = func() []string {
	s := make([]string, 20)
	for i := range s {
		s[i] = fmt.Sprintf("SYM%02d", i)
	}
	return s
}()

// benchLimits sets every limit, generously: every rule is evaluated and
// the benchmark's orders pass them all.
func benchLimits() *riskv1.Limits {
	f := func(v float64) *float64 { return &v }
	burst := int32(1_000_000)
	restricted := make([]string, 100)
	for i := range restricted {
		restricted[i] = fmt.Sprintf("BANNED%03d", i)
	}
	return &riskv1.Limits{
		RestrictedSymbols:       restricted,
		MaxOrderQuantity:        f(1_000),
		MaxOrderNotional:        f(1e7),
		PriceCollarPercent:      f(10),
		DuplicateWindow:         durationpb.New(time.Hour),
		MaxOrdersPerSecond:      f(1e9),
		OrderBurst:              &burst,
		MaxPositionQuantity:     f(1e9),
		MaxPositionNotional:     f(1e12),
		MaxGrossExposure:        f(1e13),
		MaxLeverage:             f(1_000),
		MaxConcentrationPercent: f(1e6),
		MaxDailyLoss:            f(1e9),
		MaxDrawdownPercent:      f(99),
		ReservationTtl:          durationpb.New(time.Hour),
	}
}

// benchOrders returns n orders over the benchmark symbols, buys and sells,
// market and limit (within 1% of the reference), with distinct client
// order ids.
func benchOrders(account string, n int, prices map[string]float64) []order {
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([]order, n)
	for i := range out {
		sym := benchSymbols[rng.IntN(len(benchSymbols))]
		o := order{
			accountID:     account,
			clientOrderID: account + "-" + strconv.Itoa(i),
			symbol:        sym,
			side:          buy,
			orderType:     riskv1.OrderType_ORDER_TYPE_MARKET,
			quantity:      float64(1 + rng.IntN(10)),
		}
		if rng.IntN(2) == 0 {
			o.side = sell
		}
		if rng.IntN(2) == 0 {
			o.orderType = riskv1.OrderType_ORDER_TYPE_LIMIT
			o.limitPrice = prices[sym] * (0.99 + 0.02*rng.Float64())
		}
		out[i] = o
	}
	return out
}

// benchAccount returns an engine (on a store that commits at once) with
// one account holding a position and two open reservations in each of the
// 20 benchmark symbols, every limit set, and reference prices.
func benchAccount(b *testing.B) (*Engine, *account, map[string]float64) {
	b.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng, err := NewEngine(ctx, DefaultConfig(), &propStore{}, log)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(eng, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	l := benchLimits()
	l.AccountId = "bench"
	cash := 1e8
	if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{Limits: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: &cash}); err != nil {
		b.Fatal(err)
	}
	prices := map[string]float64{}
	var updates []*riskv1.PriceUpdate
	for i, sym := range benchSymbols {
		prices[sym] = float64(50 + 10*i)
		updates = append(updates, &riskv1.PriceUpdate{Symbol: sym, Price: prices[sym]})
	}
	if _, err := srv.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: updates}); err != nil {
		b.Fatal(err)
	}
	for i, sym := range benchSymbols {
		for k, side := range []riskv1.OrderSide{riskv1.OrderSide_ORDER_SIDE_BUY, riskv1.OrderSide_ORDER_SIDE_SELL, riskv1.OrderSide_ORDER_SIDE_BUY} {
			resp, err := srv.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: &riskv1.Order{
				AccountId: "bench", ClientOrderId: fmt.Sprintf("seed-%d-%d", i, k), Symbol: sym, Side: side,
				Type: riskv1.OrderType_ORDER_TYPE_MARKET, Quantity: float64(10 + i),
			}})
			if err != nil || resp.GetResult().GetDecision() != riskv1.Decision_DECISION_APPROVED {
				b.Fatalf("seed order: %v %v", resp, err)
			}
			if k == 0 { // the first buy fills: a position
				if _, err := srv.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "bench", Fill: &riskv1.Fill{
					FillId: fmt.Sprintf("seed-%d", i), ReservationId: resp.GetResult().GetReservation().GetReservationId(),
					Quantity: float64(10 + i), Price: prices[sym],
				}}); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	a := eng.account("bench")
	if len(a.positions) != len(benchSymbols) || len(a.open) != 2*len(benchSymbols) {
		b.Fatalf("seeded %d positions and %d open reservations", len(a.positions), len(a.open))
	}
	return eng, a, prices
}

// BenchmarkCheckPath measures the in-memory check: every rule evaluated
// ((*account).evaluate) and the reservation made (reserve, with a new
// reservation id), under the account's lock, as Engine.Check does before
// it hands the reservation to the store. Each approval is then released
// and forgotten (not timed per op, but in ns/op) so that the account's
// state stays the same. p50-ns and p99-ns come from per-check timings of
// evaluate plus reserve.
func BenchmarkCheckPath(b *testing.B) {
	eng, a, prices := benchAccount(b)
	orders := benchOrders("bench", 4096, prices)
	eng.pricesMu.RLock()
	px := eng.prices // read only from here on
	eng.pricesMu.RUnlock()
	ttl := eng.ttl(a)
	hist := hdrhistogram.New(1, int64(time.Second), 3)
	now := time.Now()
	var res checkResult
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		o := &orders[i%len(orders)]
		// The clock moves 1 µs per check: the order-rate bucket refills.
		now = now.Add(time.Microsecond)
		start := time.Now()
		a.mu.Lock()
		a.evaluate(o, now, px, &res)
		var r *reservation
		if res.approved {
			r = a.reserve(o, now, eng.newReservationID(), res.refPrice, ttl)
		}
		a.mu.Unlock()
		took := time.Since(start)
		if r == nil {
			b.Fatalf("order %+v rejected: %v", *o, res.violations[:res.n])
		}
		a.mu.Lock()
		a.closeReservation(r, riskv1.ReservationState_RESERVATION_STATE_RELEASED, now)
		delete(a.recent, r.id)
		delete(a.byClientOrder, r.clientOrderID)
		a.mu.Unlock()
		_ = hist.RecordValue(took.Nanoseconds())
	}
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-ns")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-ns")
}

// BenchmarkCheckEngine measures Engine.Check end to end on a store that
// commits at once: the check path plus expiry, the unit of writes and the
// commit handshake. Each approval is released through the engine, outside
// the timing of p99-ns.
func BenchmarkCheckEngine(b *testing.B) {
	eng, a, prices := benchAccount(b)
	orders := benchOrders("bench", 4096, prices)
	ctx := context.Background()
	hist := hdrhistogram.New(1, int64(time.Second), 3)
	var res checkResult
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		o := &orders[i%len(orders)]
		start := time.Now()
		if err := eng.Check(ctx, o, &res); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		if !res.approved {
			b.Fatalf("order %+v rejected: %v", *o, res.violations[:res.n])
		}
		if _, err := eng.Release(ctx, "bench", res.reservation.id); err != nil {
			b.Fatal(err)
		}
		a.mu.Lock()
		delete(a.recent, res.reservation.id)
		delete(a.byClientOrder, o.clientOrderID)
		a.mu.Unlock()
		_ = hist.RecordValue(took.Nanoseconds())
	}
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-ns")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-ns")
}

// BenchmarkCheckDurable measures Engine.Check on the SQL store over
// SQLite, from 16 goroutines per CPU over 64 accounts: every approval waits
// for its reservation to be durable, and concurrent approvals share a
// commit. Reservations live 1 s, so the accounts' state stays bounded.
// p50-us and p99-us are per-check latencies; approved is the share of
// approvals (it must be 1).
func BenchmarkCheckDurable(b *testing.B) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	db := storetest.SQLite(b, Migrations())
	st, err := NewSQLStore(ctx, db, log)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	eng, err := NewEngine(ctx, DefaultConfig(), st, log)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(eng, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	const accounts = 64
	prices := map[string]float64{}
	var updates []*riskv1.PriceUpdate
	for i, sym := range benchSymbols {
		prices[sym] = float64(50 + 10*i)
		updates = append(updates, &riskv1.PriceUpdate{Symbol: sym, Price: prices[sym]})
	}
	if _, err := srv.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: updates}); err != nil {
		b.Fatal(err)
	}
	var orders [][]order
	for k := range accounts {
		l := benchLimits()
		l.AccountId = "acct-" + strconv.Itoa(k)
		l.ReservationTtl = durationpb.New(time.Second)
		cash := 1e8
		if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{Limits: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: &cash}); err != nil {
			b.Fatal(err)
		}
		orders = append(orders, benchOrders(l.AccountId, 4096, prices))
	}

	var (
		mu                 sync.Mutex
		hist               = hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
		approved, rejected int64
		next               int
	)
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		worker := next
		next++
		mu.Unlock()
		local := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
		var res checkResult
		var ok, no int64
		for i := 0; pb.Next(); i++ {
			acct := orders[(worker+i)%accounts]
			o := acct[(worker*7919+i)%len(acct)]
			// Distinct client order ids across workers and laps.
			o.clientOrderID = o.clientOrderID + "-" + strconv.Itoa(worker) + "-" + strconv.Itoa(i)
			start := time.Now()
			if err := eng.Check(ctx, &o, &res); err != nil {
				b.Error(err)
				return
			}
			_ = local.RecordValue(time.Since(start).Microseconds())
			if res.approved {
				ok++
			} else {
				no++
			}
		}
		mu.Lock()
		hist.Merge(local)
		approved += ok
		rejected += no
		mu.Unlock()
	})
	b.StopTimer()
	if rejected > 0 {
		b.Errorf("%d of %d checks rejected", rejected, approved+rejected)
	}
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-us")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-us")
	b.ReportMetric(float64(approved)/float64(max(1, approved+rejected)), "approved")
}
