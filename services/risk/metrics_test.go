package risk

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/telemetry/telemetrytest"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

// TestFillAndEquityMetrics applies a known sequence of fills and checks the
// fill counters, the realised P&L histogram and the equity gauges against
// values worked out by hand, and against GetPortfolio.
func TestFillAndEquityMetrics(t *testing.T) {
	t.Parallel()
	_, srv, reader, _ := newPropServer(t)
	ctx := context.Background()
	got := telemetrytest.Points(t, reader)
	if got["quantmesh.risk.equity"] != 0 || got["quantmesh.risk.accounts"] != 0 || got["quantmesh.risk.fills{side=buy}"] != 0 || got["quantmesh.risk.fills{side=sell}"] != 0 {
		t.Fatalf("before any account: %v", got)
	}
	price := func(p float64) {
		t.Helper()
		if _, err := srv.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: "XYZ", Price: p}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, acct := range []string{"b-acct", "a-acct"} {
		cash := 10000.0
		if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{Limits: &riskv1.Limits{AccountId: acct},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: &cash}); err != nil {
			t.Fatal(err)
		}
	}
	price(100)
	n := 0
	trade := func(side riskv1.OrderSide, qty, px, fee float64) {
		t.Helper()
		n++
		res, err := srv.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: &riskv1.Order{AccountId: "b-acct", ClientOrderId: fmt.Sprintf("o-%d", n), Symbol: "XYZ",
			Side: side, Type: riskv1.OrderType_ORDER_TYPE_MARKET, Quantity: qty}})
		if err != nil || res.GetResult().GetDecision() != riskv1.Decision_DECISION_APPROVED {
			t.Fatalf("CheckOrder %d: %v, %v", n, res, err)
		}
		f := &riskv1.Fill{FillId: fmt.Sprintf("f-%d", n), ReservationId: res.GetResult().GetReservation().GetReservationId(), Quantity: qty, Price: px, Fee: fee}
		if _, err := srv.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "b-acct", Fill: f}); err != nil {
			t.Fatalf("ApplyFill %d: %v", n, err)
		}
		// A resent fill is acknowledged, not counted again.
		if _, err := srv.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "b-acct", Fill: f}); err != nil {
			t.Fatalf("ApplyFill %d again: %v", n, err)
		}
	}
	buy, sell := riskv1.OrderSide_ORDER_SIDE_BUY, riskv1.OrderSide_ORDER_SIDE_SELL
	trade(buy, 10, 100, 1) // opens 10 at 100: P&L -1 (the fee); cash 8999
	price(110)
	trade(sell, 4, 110, 1) // closes 4: (110-100)*4 - 1 = 39; cash 9438, 6 left
	price(120)
	trade(sell, 10, 120, 0) // closes 6 and reverses: (120-100)*6 = 120; cash 10638, -4 at 120
	price(125)
	// b-acct: 10638 - 4*125 = 10138; a-acct: 10000 untouched.
	got = telemetrytest.Points(t, reader)
	want := map[string]float64{
		"quantmesh.risk.fills{side=buy}":                                1,
		"quantmesh.risk.fills{side=sell}":                               2,
		"quantmesh.risk.fill.realized_pnl_count{effect=open}":           1,
		"quantmesh.risk.fill.realized_pnl_sum{effect=open}":             -1,
		"quantmesh.risk.fill.realized_pnl_count{effect=close}":          2,
		"quantmesh.risk.fill.realized_pnl_sum{effect=close}":            159,
		"quantmesh.risk.fill.realized_pnl_bucket{effect=close,le=10}":   0,
		"quantmesh.risk.fill.realized_pnl_bucket{effect=close,le=100}":  1,
		"quantmesh.risk.fill.realized_pnl_bucket{effect=close,le=1000}": 2,
		"quantmesh.risk.fill.realized_pnl_bucket{effect=open,le=-1}":    1,
		"quantmesh.risk.account.equity{account=b-acct}":                 10138,
		"quantmesh.risk.account.equity{account=a-acct}":                 10000,
		"quantmesh.risk.equity":                                         20138,
		"quantmesh.risk.accounts":                                       2,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || math.Abs(g-v) > 1e-9 {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	pf, err := srv.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: "b-acct"})
	if err != nil {
		t.Fatal(err)
	}
	if e := pf.GetPortfolio().GetEquity(); math.Abs(e-got["quantmesh.risk.account.equity{account=b-acct}"]) > 1e-9 {
		t.Errorf("GetPortfolio equity %v, gauge %v", e, got["quantmesh.risk.account.equity{account=b-acct}"])
	}
}

// TestAccountEquitySeriesBounded checks that only the first
// maxAccountSeries accounts get a series of their own, and that the total
// still counts every account.
func TestAccountEquitySeriesBounded(t *testing.T) {
	t.Parallel()
	_, srv, reader, _ := newPropServer(t)
	ctx := context.Background()
	const accounts = maxAccountSeries + 5
	for i := range accounts {
		cash := float64(i + 1)
		if _, err := srv.SetLimits(ctx, &riskv1.SetLimitsRequest{Limits: &riskv1.Limits{AccountId: fmt.Sprintf("acct-%03d", i)},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: &cash}); err != nil {
			t.Fatal(err)
		}
	}
	got := telemetrytest.Points(t, reader)
	series := 0
	for k := range got {
		if strings.HasPrefix(k, "quantmesh.risk.account.equity{") {
			series++
		}
	}
	if series != maxAccountSeries {
		t.Errorf("%d per-account equity series for %d accounts, want %d", series, accounts, maxAccountSeries)
	}
	if _, ok := got[fmt.Sprintf("quantmesh.risk.account.equity{account=acct-%03d}", maxAccountSeries-1)]; !ok {
		t.Errorf("account %d of %d (in id order) has no series", maxAccountSeries, accounts)
	}
	if _, ok := got[fmt.Sprintf("quantmesh.risk.account.equity{account=acct-%03d}", maxAccountSeries)]; ok {
		t.Errorf("account %d (in id order) has a series beyond the cap", maxAccountSeries+1)
	}
	if want := float64(accounts*(accounts+1)) / 2; got["quantmesh.risk.equity"] != want || got["quantmesh.risk.accounts"] != accounts {
		t.Errorf("total equity %v over %v accounts, want %v over %d", got["quantmesh.risk.equity"], got["quantmesh.risk.accounts"], want, accounts)
	}
}
