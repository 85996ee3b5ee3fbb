package risk

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

// RiskService through real gRPC and REST on loopback, on both backends.

type srvHarness struct {
	client riskv1.RiskServiceClient
	base   string // http://host:port: REST and /metrics
	sql    *SQLStore
	eng    *Engine
	stop   func() // stops the server and closes the store; idempotent
}

// startRiskServer serves RiskService on db; keys, when set, turn
// authentication on.
func startRiskServer(t *testing.T, db *store.DB, keys auth.Keys) *srvHarness {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := NewSQLStore(ctx, db, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	eng, err := NewEngine(ctx, DefaultConfig(), st, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	tel := telemetry.Noop()
	svc, err := New(eng, log, tel.Meter("quantmesh/risk"))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	srv, err := server.New(ctx, server.Options{
		Config:    server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second},
		Services:  []server.Registration{svc.Registration()},
		Telemetry: tel,
		Logger:    log,
		Keys:      keys,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCTarget(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			conn.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			_ = st.Close() // after the server stopped: nothing writes any more
		})
	}
	t.Cleanup(stop)
	return &srvHarness{client: riskv1.NewRiskServiceClient(conn), base: "http://" + srv.HTTPAddr(), sql: st, eng: eng, stop: stop}
}

func runRiskServer(t *testing.T, keys auth.Keys, fn func(t *testing.T, h *srvHarness)) {
	t.Helper()
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		fn(t, startRiskServer(t, db, keys))
	})
}

// create makes an account with every limit of l.
func (h *srvHarness) create(t *testing.T, ctx context.Context, id string, cash float64, l *riskv1.Limits) {
	t.Helper()
	if l == nil {
		l = &riskv1.Limits{}
	}
	l = proto.Clone(l).(*riskv1.Limits)
	l.AccountId = id
	if _, err := h.client.SetLimits(ctx, &riskv1.SetLimitsRequest{
		Limits: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}, CashBalance: proto.Float64(cash),
	}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
}

func (h *srvHarness) check(t *testing.T, ctx context.Context, o *riskv1.Order) *riskv1.OrderCheckResult {
	t.Helper()
	resp, err := h.client.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: o})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return resp.GetResult()
}

// rest sends a JSON request and decodes the JSON answer.
func (h *srvHarness) rest(t *testing.T, method, path, body string, header ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, h.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: decode: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func limitOrderFor(account, cid, symbol string, side riskv1.OrderSide, qty, px float64) *riskv1.Order {
	return &riskv1.Order{AccountId: account, ClientOrderId: cid, Symbol: symbol, Side: side, Type: riskv1.OrderType_ORDER_TYPE_LIMIT, Quantity: qty, LimitPrice: px}
}

// badField reports what is wrong with err unless it is InvalidArgument
// with a BadRequest violation naming field.
func badField(err error, field string) string {
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		return fmt.Sprintf("code %v (%s), want InvalidArgument", st.Code(), st.Message())
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return ""
				}
			}
			return fmt.Sprintf("violations %v do not name %q", br.GetFieldViolations(), field)
		}
	}
	return fmt.Sprintf("no BadRequest detail in %v", st.Details())
}

func TestServerBadInputWritesNothing(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		ctx := context.Background()
		const acct = "acct-1"
		h.create(t, ctx, acct, 100000, &riskv1.Limits{MaxOrderQuantity: proto.Float64(1000)})
		if _, err := h.client.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: aapl, Price: 100}}}); err != nil {
			t.Fatal(err)
		}
		res := h.check(t, ctx, limitOrderFor(acct, "c0", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 10, 100))
		resID := res.GetReservation().GetReservationId()
		if resID == "" {
			t.Fatalf("setup order rejected: %v", res.GetViolations())
		}

		ok := func() *riskv1.Order {
			return limitOrderFor(acct, "c1", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 1, 100)
		}
		with := func(edit func(o *riskv1.Order)) *riskv1.Order {
			o := ok()
			edit(o)
			return o
		}
		checkOrder := func(o *riskv1.Order) func() error {
			return func() error {
				_, err := h.client.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: o})
				return err
			}
		}
		checkOrders := func(orders ...*riskv1.Order) func() error {
			return func() error {
				_, err := h.client.CheckOrders(ctx, &riskv1.CheckOrdersRequest{Orders: orders})
				return err
			}
		}
		fill := func(account string, f *riskv1.Fill) func() error {
			return func() error {
				_, err := h.client.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: account, Fill: f})
				return err
			}
		}
		okFill := func(edit func(f *riskv1.Fill)) *riskv1.Fill {
			f := &riskv1.Fill{FillId: "f1", ReservationId: resID, Quantity: 1, Price: 100}
			edit(f)
			return f
		}
		prices := func(ps ...*riskv1.PriceUpdate) func() error {
			return func() error {
				_, err := h.client.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: ps})
				return err
			}
		}
		setLimits := func(account string, l *riskv1.Limits, cash *float64, paths ...string) func() error {
			return func() error {
				if l != nil {
					l.AccountId = account
				}
				req := &riskv1.SetLimitsRequest{Limits: l, CashBalance: cash}
				if paths != nil {
					req.UpdateMask = &fieldmaskpb.FieldMask{Paths: paths}
				}
				_, err := h.client.SetLimits(ctx, req)
				return err
			}
		}
		watch := func(req *riskv1.WatchRiskEventsRequest) func() error {
			return func() error {
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				stream, err := h.client.WatchRiskEvents(ctx, req)
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			}
		}
		many := make([]*riskv1.Order, maxBatch+1)
		for i := range many {
			many[i] = limitOrderFor(acct, fmt.Sprintf("m%d", i), aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 1, 100)
		}
		manyPrices := make([]*riskv1.PriceUpdate, maxPriceBatch+1)
		for i := range manyPrices {
			manyPrices[i] = &riskv1.PriceUpdate{Symbol: fmt.Sprintf("S%d", i), Price: 1}
		}
		f := proto.Float64
		nan, inf := math.NaN(), math.Inf(1)
		long := strings.Repeat("x", 129)

		tests := []struct {
			name  string
			code  codes.Code
			field string // for InvalidArgument: the field the BadRequest names
			call  func() error
		}{
			{"order missing", codes.InvalidArgument, "order", checkOrder(nil)},
			{"empty account", codes.InvalidArgument, "order.account_id", checkOrder(with(func(o *riskv1.Order) { o.AccountId = "" }))},
			{"account id too long", codes.InvalidArgument, "order.account_id", checkOrder(with(func(o *riskv1.Order) { o.AccountId = long }))},
			{"unknown account", codes.InvalidArgument, "order.account_id", checkOrder(with(func(o *riskv1.Order) { o.AccountId = "nobody" }))},
			{"empty client order id", codes.InvalidArgument, "order.client_order_id", checkOrder(with(func(o *riskv1.Order) { o.ClientOrderId = "" }))},
			{"empty symbol", codes.InvalidArgument, "order.symbol", checkOrder(with(func(o *riskv1.Order) { o.Symbol = "" }))},
			{"symbol with a space", codes.InvalidArgument, "order.symbol", checkOrder(with(func(o *riskv1.Order) { o.Symbol = "AA PL" }))},
			{"unspecified side", codes.InvalidArgument, "order.side", checkOrder(with(func(o *riskv1.Order) { o.Side = riskv1.OrderSide_ORDER_SIDE_UNSPECIFIED }))},
			{"unknown side", codes.InvalidArgument, "order.side", checkOrder(with(func(o *riskv1.Order) { o.Side = 7 }))},
			{"unspecified type", codes.InvalidArgument, "order.type", checkOrder(with(func(o *riskv1.Order) { o.Type = riskv1.OrderType_ORDER_TYPE_UNSPECIFIED }))},
			{"zero quantity", codes.InvalidArgument, "order.quantity", checkOrder(with(func(o *riskv1.Order) { o.Quantity = 0 }))},
			{"negative quantity", codes.InvalidArgument, "order.quantity", checkOrder(with(func(o *riskv1.Order) { o.Quantity = -1 }))},
			{"NaN quantity", codes.InvalidArgument, "order.quantity", checkOrder(with(func(o *riskv1.Order) { o.Quantity = nan }))},
			{"infinite quantity", codes.InvalidArgument, "order.quantity", checkOrder(with(func(o *riskv1.Order) { o.Quantity = inf }))},
			{"limit order without a price", codes.InvalidArgument, "order.limit_price", checkOrder(with(func(o *riskv1.Order) { o.LimitPrice = 0 }))},
			{"negative limit price", codes.InvalidArgument, "order.limit_price", checkOrder(with(func(o *riskv1.Order) { o.LimitPrice = -1 }))},
			{"NaN limit price", codes.InvalidArgument, "order.limit_price", checkOrder(with(func(o *riskv1.Order) { o.LimitPrice = nan }))},
			{"infinite limit price", codes.InvalidArgument, "order.limit_price", checkOrder(with(func(o *riskv1.Order) { o.LimitPrice = -inf }))},
			{"limit price on a market order", codes.InvalidArgument, "order.limit_price", checkOrder(with(func(o *riskv1.Order) { o.Type = riskv1.OrderType_ORDER_TYPE_MARKET }))},

			{"empty batch", codes.InvalidArgument, "orders", checkOrders()},
			{"batch of 1001", codes.InvalidArgument, "orders", checkOrders(many...)},
			{"bad order in a batch", codes.InvalidArgument, "orders[2].quantity", checkOrders(ok(), ok(), with(func(o *riskv1.Order) { o.Quantity = nan }))},
			{"unknown account in a batch", codes.InvalidArgument, "orders[1].account_id", checkOrders(ok(), with(func(o *riskv1.Order) { o.AccountId = "nobody" }))},
			{"empty order in a batch", codes.InvalidArgument, "orders[1].symbol", checkOrders(ok(), &riskv1.Order{})},

			{"fill of an unknown account", codes.NotFound, "", fill("nobody", okFill(func(*riskv1.Fill) {}))},
			{"fill without account", codes.InvalidArgument, "account_id", fill("", okFill(func(*riskv1.Fill) {}))},
			{"fill missing", codes.InvalidArgument, "fill", fill(acct, nil)},
			{"fill without id", codes.InvalidArgument, "fill.fill_id", fill(acct, okFill(func(f *riskv1.Fill) { f.FillId = "" }))},
			{"fill without reservation", codes.InvalidArgument, "fill.reservation_id", fill(acct, okFill(func(f *riskv1.Fill) { f.ReservationId = "" }))},
			{"fill of zero", codes.InvalidArgument, "fill.quantity", fill(acct, okFill(func(f *riskv1.Fill) { f.Quantity = 0 }))},
			{"fill of NaN", codes.InvalidArgument, "fill.quantity", fill(acct, okFill(func(f *riskv1.Fill) { f.Quantity = nan }))},
			{"fill at NaN", codes.InvalidArgument, "fill.price", fill(acct, okFill(func(f *riskv1.Fill) { f.Price = nan }))},
			{"fill at -Inf", codes.InvalidArgument, "fill.price", fill(acct, okFill(func(f *riskv1.Fill) { f.Price = -inf }))},
			{"fill at zero", codes.InvalidArgument, "fill.price", fill(acct, okFill(func(f *riskv1.Fill) { f.Price = 0 }))},
			{"negative fee", codes.InvalidArgument, "fill.fee", fill(acct, okFill(func(f *riskv1.Fill) { f.Fee = -0.01 }))},
			{"infinite fee", codes.InvalidArgument, "fill.fee", fill(acct, okFill(func(f *riskv1.Fill) { f.Fee = inf }))},
			{"fill notional beyond the bound", codes.InvalidArgument, "fill.price", fill(acct, okFill(func(f *riskv1.Fill) { f.Price = 1e308 }))},
			{"fee beyond the bound", codes.InvalidArgument, "fill.fee", fill(acct, okFill(func(f *riskv1.Fill) { f.Fee = 1e16 }))},
			{"fill of an unknown reservation", codes.NotFound, "", fill(acct, okFill(func(f *riskv1.Fill) { f.ReservationId = "nope" }))},
			{"overfill", codes.FailedPrecondition, "", fill(acct, okFill(func(f *riskv1.Fill) { f.Quantity = 10.5 }))},

			{"release of an unknown account", codes.NotFound, "", func() error {
				_, err := h.client.ReleaseReservation(ctx, &riskv1.ReleaseReservationRequest{AccountId: "nobody", ReservationId: resID})
				return err
			}},
			{"release without reservation", codes.InvalidArgument, "reservation_id", func() error {
				_, err := h.client.ReleaseReservation(ctx, &riskv1.ReleaseReservationRequest{AccountId: acct})
				return err
			}},
			{"release of an unknown reservation", codes.NotFound, "", func() error {
				_, err := h.client.ReleaseReservation(ctx, &riskv1.ReleaseReservationRequest{AccountId: acct, ReservationId: "nope"})
				return err
			}},
			{"release with a long reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.ReleaseReservation(ctx, &riskv1.ReleaseReservationRequest{AccountId: acct, ReservationId: resID, Reason: strings.Repeat("r", 1001)})
				return err
			}},
			// PostgreSQL refuses a NUL byte in text: the write would fail on every retry.
			{"release with a NUL in the reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.ReleaseReservation(ctx, &riskv1.ReleaseReservationRequest{AccountId: acct, ReservationId: resID, Reason: "cancel\x00"})
				return err
			}},

			{"no prices", codes.InvalidArgument, "prices", prices()},
			{"10001 prices", codes.InvalidArgument, "prices", prices(manyPrices...)},
			{"repeated symbol", codes.InvalidArgument, "prices[1].symbol", prices(&riskv1.PriceUpdate{Symbol: aapl, Price: 200}, &riskv1.PriceUpdate{Symbol: aapl, Price: 201})},
			{"NaN price", codes.InvalidArgument, "prices[1].price", prices(&riskv1.PriceUpdate{Symbol: aapl, Price: 200}, &riskv1.PriceUpdate{Symbol: msft, Price: nan})},
			{"infinite price", codes.InvalidArgument, "prices[0].price", prices(&riskv1.PriceUpdate{Symbol: msft, Price: inf}, &riskv1.PriceUpdate{Symbol: aapl, Price: 200})},
			{"zero price", codes.InvalidArgument, "prices[0].price", prices(&riskv1.PriceUpdate{Symbol: msft, Price: 0})},
			{"price without symbol", codes.InvalidArgument, "prices[0].symbol", prices(&riskv1.PriceUpdate{Price: 1})},
			{"price stamped in the future", codes.InvalidArgument, "prices[1].price_time", prices(&riskv1.PriceUpdate{Symbol: aapl, Price: 200},
				&riskv1.PriceUpdate{Symbol: msft, Price: 1, PriceTime: timestamppb.New(time.Now().Add(time.Hour))})},

			{"portfolio of an unknown account", codes.NotFound, "", func() error {
				_, err := h.client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: "nobody"})
				return err
			}},
			{"portfolio without account", codes.InvalidArgument, "account_id", func() error {
				_, err := h.client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{})
				return err
			}},
			{"limits of an unknown account", codes.NotFound, "", func() error {
				_, err := h.client.GetLimits(ctx, &riskv1.GetLimitsRequest{AccountId: "nobody"})
				return err
			}},

			{"limits missing", codes.InvalidArgument, "limits", setLimits(acct, nil, nil, "max_order_quantity")},
			{"limits without account", codes.InvalidArgument, "limits.account_id", setLimits("", &riskv1.Limits{}, nil, "max_order_quantity")},
			{"empty mask", codes.InvalidArgument, "update_mask", setLimits(acct, &riskv1.Limits{MaxOrderQuantity: f(1)}, nil)},
			{"unknown mask path", codes.InvalidArgument, "update_mask", setLimits(acct, &riskv1.Limits{}, nil, "max_order_quantity", "max_fun")},
			{"output-only revision", codes.InvalidArgument, "update_mask", setLimits(acct, &riskv1.Limits{Revision: 9}, nil, "revision")},
			{"output-only update_time", codes.InvalidArgument, "update_mask", setLimits(acct, &riskv1.Limits{}, nil, "update_time")},
			{"output-only account_id", codes.InvalidArgument, "update_mask", setLimits(acct, &riskv1.Limits{}, nil, "account_id")},
			{"negative max order quantity", codes.InvalidArgument, "limits.max_order_quantity", setLimits(acct, &riskv1.Limits{MaxOrderQuantity: f(-1)}, nil, "max_order_quantity")},
			{"negative limit under *", codes.InvalidArgument, "limits.max_position_notional", setLimits(acct, &riskv1.Limits{MaxPositionNotional: f(-1)}, nil, "*")},
			{"NaN max leverage", codes.InvalidArgument, "limits.max_leverage", setLimits(acct, &riskv1.Limits{MaxLeverage: f(nan)}, nil, "max_leverage")},
			{"infinite gross exposure", codes.InvalidArgument, "limits.max_gross_exposure", setLimits(acct, &riskv1.Limits{MaxGrossExposure: f(inf)}, nil, "max_gross_exposure")},
			{"negative daily loss", codes.InvalidArgument, "limits.max_daily_loss", setLimits(acct, &riskv1.Limits{MaxDailyLoss: f(-5)}, nil, "max_daily_loss")},
			{"drawdown over 100", codes.InvalidArgument, "limits.max_drawdown_percent", setLimits(acct, &riskv1.Limits{MaxDrawdownPercent: f(100.5)}, nil, "max_drawdown_percent")},
			{"duplicate window under 1s", codes.InvalidArgument, "limits.duplicate_window", setLimits(acct, &riskv1.Limits{DuplicateWindow: durationpb.New(999 * time.Millisecond)}, nil, "duplicate_window")},
			{"duplicate window over 7 days", codes.InvalidArgument, "limits.duplicate_window", setLimits(acct, &riskv1.Limits{DuplicateWindow: durationpb.New(7*24*time.Hour + time.Second)}, nil, "duplicate_window")},
			{"order burst without rate", codes.InvalidArgument, "limits.order_burst", setLimits(acct, &riskv1.Limits{OrderBurst: proto.Int32(5)}, nil, "order_burst")},
			{"order burst of 0", codes.InvalidArgument, "limits.order_burst", setLimits(acct, &riskv1.Limits{MaxOrdersPerSecond: f(1), OrderBurst: proto.Int32(0)}, nil, "max_orders_per_second", "order_burst")},
			{"order burst over a million", codes.InvalidArgument, "limits.order_burst", setLimits(acct, &riskv1.Limits{MaxOrdersPerSecond: f(1), OrderBurst: proto.Int32(1_000_001)}, nil, "max_orders_per_second", "order_burst")},
			{"rate of 0", codes.InvalidArgument, "limits.max_orders_per_second", setLimits(acct, &riskv1.Limits{MaxOrdersPerSecond: f(0)}, nil, "max_orders_per_second")},
			{"reservation TTL over a day", codes.InvalidArgument, "limits.reservation_ttl", setLimits(acct, &riskv1.Limits{ReservationTtl: durationpb.New(25 * time.Hour)}, nil, "reservation_ttl")},
			{"empty restricted symbol", codes.InvalidArgument, "limits.restricted_symbols[1]", setLimits(acct, &riskv1.Limits{RestrictedSymbols: []string{"GME", ""}}, nil, "restricted_symbols")},
			{"NaN cash", codes.InvalidArgument, "cash_balance", setLimits(acct, &riskv1.Limits{}, f(nan), "max_order_quantity")},
			{"long reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.SetLimits(ctx, &riskv1.SetLimitsRequest{
					Limits: &riskv1.Limits{AccountId: acct}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity"}}, Reason: strings.Repeat("r", 1001),
				})
				return err
			}},
			{"reason with a control character", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.SetLimits(ctx, &riskv1.SetLimitsRequest{
					Limits: &riskv1.Limits{AccountId: acct}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity"}}, Reason: "raise\nlimits",
				})
				return err
			}},
			{"create without cash", codes.InvalidArgument, "cash_balance", setLimits("acct-new", &riskv1.Limits{MaxOrderQuantity: f(1)}, nil, "max_order_quantity")},
			{"create with a bad limit", codes.InvalidArgument, "limits.max_order_quantity", setLimits("acct-new", &riskv1.Limits{MaxOrderQuantity: f(-1)}, f(5), "max_order_quantity")},

			{"trip without reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: acct})
				return err
			}},
			{"trip with a long actor", codes.InvalidArgument, "actor", func() error {
				_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: acct, Reason: "x", Actor: long})
				return err
			}},
			{"trip with a NUL in the reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: acct, Reason: "halt\x00"})
				return err
			}},
			{"trip with a control character in the actor", codes.InvalidArgument, "actor", func() error {
				_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: acct, Reason: "x", Actor: "ops\x1b[31m"})
				return err
			}},
			{"trip without account", codes.InvalidArgument, "account_id", func() error {
				_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{Reason: "x"})
				return err
			}},
			{"trip of an unknown account", codes.NotFound, "", func() error {
				_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "nobody", Reason: "x"})
				return err
			}},
			{"reset without reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: acct})
				return err
			}},
			{"reset with a NUL in the reason", codes.InvalidArgument, "reason", func() error {
				_, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: acct, Reason: "ok\x00"})
				return err
			}},
			{"reset of an unknown account", codes.NotFound, "", func() error {
				_, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: "nobody", Reason: "x"})
				return err
			}},

			{"watch an unknown account", codes.NotFound, "", watch(&riskv1.WatchRiskEventsRequest{AccountId: "nobody"})},
			{"resume watching an unknown account", codes.NotFound, "", watch(&riskv1.WatchRiskEventsRequest{AccountId: "nobody", AfterSequence: 1})},
			{"watch an unspecified type", codes.InvalidArgument, "types[0]", watch(&riskv1.WatchRiskEventsRequest{Types: []riskv1.RiskEventType{0}})},
			{"watch an unknown type", codes.InvalidArgument, "types[1]", watch(&riskv1.WatchRiskEventsRequest{Types: []riskv1.RiskEventType{riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED, 99}})},
			{"watch beyond the latest event", codes.OutOfRange, "", watch(&riskv1.WatchRiskEventsRequest{AfterSequence: 1000})},
		}

		before, err := h.client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: acct})
		if err != nil {
			t.Fatal(err)
		}
		limitsBefore, err := h.client.GetLimits(ctx, &riskv1.GetLimitsRequest{AccountId: acct})
		if err != nil {
			t.Fatal(err)
		}
		eventsBefore, err := h.sql.Events(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		pricesBefore := loadAll(t, h.sql, time.Now()).prices

		for _, tt := range tests {
			err := tt.call()
			if got := status.Code(err); got != tt.code {
				t.Errorf("%s: code %v (%v), want %v", tt.name, got, err, tt.code)
				continue
			}
			if tt.code == codes.InvalidArgument {
				if msg := badField(err, tt.field); msg != "" {
					t.Errorf("%s: %s", tt.name, msg)
				}
			}
		}

		// Nothing above was written.
		after, err := h.client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: acct})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before.GetPortfolio(), after.GetPortfolio(), protocmp.Transform(), protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")); diff != "" {
			t.Errorf("portfolio changed (-before +after):\n%s", diff)
		}
		limitsAfter, err := h.client.GetLimits(ctx, &riskv1.GetLimitsRequest{AccountId: acct})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(limitsBefore, limitsAfter, protocmp.Transform()); diff != "" {
			t.Errorf("limits changed (-before +after):\n%s", diff)
		}
		eventsAfter, err := h.sql.Events(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(eventsBefore, eventsAfter, protocmp.Transform()); diff != "" {
			t.Errorf("events written (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(pricesBefore, loadAll(t, h.sql, time.Now()).prices, snapshotOpts...); diff != "" {
			t.Errorf("prices written (-before +after):\n%s", diff)
		}
		if _, err := h.client.GetLimits(ctx, &riskv1.GetLimitsRequest{AccountId: "acct-new"}); status.Code(err) != codes.NotFound {
			t.Errorf("an invalid SetLimits created an account: %v", err)
		}
		if _, err := h.sql.Fill(ctx, acct, "f1"); err == nil {
			t.Error("an invalid fill was stored")
		}
	})
}

func TestServerCheckOrdersValidatesBeforeChecking(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		ctx := context.Background()
		// One token, refilled once in a thousand seconds: a single check
		// of the batch would take it.
		h.create(t, ctx, "acct-1", 100000, &riskv1.Limits{MaxOrdersPerSecond: proto.Float64(0.001), OrderBurst: proto.Int32(1)})
		o := func(cid string) *riskv1.Order {
			return limitOrderFor("acct-1", cid, aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 1, 100)
		}
		bad := o("bad")
		bad.LimitPrice = math.NaN()
		unknown := o("unknown")
		unknown.AccountId = "nobody"
		for _, batch := range [][]*riskv1.Order{{o("a"), bad}, {o("b"), unknown}} {
			_, err := h.client.CheckOrders(ctx, &riskv1.CheckOrdersRequest{Orders: batch})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("invalid batch: %v", err)
			}
		}
		pf, err := h.client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: "acct-1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pf.GetPortfolio().GetReservations()) != 0 {
			t.Errorf("an invalid batch reserved: %v", pf.GetPortfolio().GetReservations())
		}
		// The token is still there: the valid orders were never checked.
		wantDecision(t, "first valid check", h.check(t, ctx, o("c")), nil)
		// Real time passes: the bucket has refilled a few microseconds' worth.
		second := h.check(t, ctx, o("d"))
		if v := second.GetViolations(); len(v) != 1 || v[0].GetRule() != riskv1.RiskRule_RISK_RULE_ORDER_RATE || v[0].GetLimit() != 0.001 || v[0].GetObserved() > 0.01 {
			t.Errorf("second valid check: %v, want only ORDER_RATE with an empty bucket", v)
		}
	})
}

func TestServerAdminRole(t *testing.T) {
	const traderKey, adminKey = "trader-key-0123456789", "admin-key-0123456789"
	keys, err := auth.ParseKeys(traderKey + ":trader:desk," + adminKey + ":admin:root")
	if err != nil {
		t.Fatal(err)
	}
	runRiskServer(t, keys, func(t *testing.T, h *srvHarness) {
		as := func(key string) context.Context {
			return metadata.AppendToOutgoingContext(context.Background(), "x-api-key", key)
		}
		trader, admin := as(traderKey), as(adminKey)
		setLimits := func(ctx context.Context) (*riskv1.SetLimitsResponse, error) {
			return h.client.SetLimits(ctx, &riskv1.SetLimitsRequest{
				Limits:      &riskv1.Limits{AccountId: "acct-1", MaxOrderQuantity: proto.Float64(100)},
				UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity"}},
				CashBalance: proto.Float64(1000),
			})
		}
		trip := func(ctx context.Context) error {
			_, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "acct-1", Reason: "stop"})
			return err
		}
		reset := func(ctx context.Context) error {
			_, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: "acct-1", Reason: "go"})
			return err
		}

		if _, err := setLimits(context.Background()); status.Code(err) != codes.Unauthenticated {
			t.Errorf("SetLimits without credentials: %v, want Unauthenticated", err)
		}
		if _, err := setLimits(trader); status.Code(err) != codes.PermissionDenied {
			t.Errorf("SetLimits by a trader: %v, want PermissionDenied", err)
		}
		if _, err := h.client.GetLimits(admin, &riskv1.GetLimitsRequest{AccountId: "acct-1"}); status.Code(err) != codes.NotFound {
			t.Errorf("a denied SetLimits created the account: %v", err)
		}
		created, err := setLimits(admin)
		if err != nil {
			t.Fatalf("SetLimits by the admin: %v", err)
		}
		if created.GetLimits().GetUpdatedByPrincipal() != "root" {
			t.Errorf("updated_by_principal %q, want root", created.GetLimits().GetUpdatedByPrincipal())
		}

		if err := trip(trader); status.Code(err) != codes.PermissionDenied {
			t.Errorf("TriggerKillSwitch by a trader: %v, want PermissionDenied", err)
		}
		if err := trip(admin); err != nil {
			t.Fatalf("TriggerKillSwitch by the admin: %v", err)
		}
		pf, err := h.client.GetPortfolio(trader, &riskv1.GetPortfolioRequest{AccountId: "acct-1"})
		if err != nil {
			t.Fatalf("GetPortfolio by a trader: %v", err)
		}
		if k := pf.GetPortfolio().GetKillSwitch(); !k.GetTripped() || k.GetTrippedByPrincipal() != "root" {
			t.Errorf("kill switch: %v", k)
		}
		if err := reset(trader); status.Code(err) != codes.PermissionDenied {
			t.Errorf("ResetKillSwitch by a trader: %v, want PermissionDenied", err)
		}
		if err := reset(admin); err != nil {
			t.Fatalf("ResetKillSwitch by the admin: %v", err)
		}

		// Traders check orders and report fills.
		res := h.check(t, trader, limitOrderFor("acct-1", "c1", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 10, 10))
		wantDecision(t, "CheckOrder by a trader", res, nil)
		if _, err := h.client.ApplyFill(trader, &riskv1.ApplyFillRequest{AccountId: "acct-1", Fill: &riskv1.Fill{
			FillId: "f1", ReservationId: res.GetReservation().GetReservationId(), Quantity: 10, Price: 10,
		}}); err != nil {
			t.Errorf("ApplyFill by a trader: %v", err)
		}
		if _, err := h.client.UpdatePrices(trader, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: aapl, Price: 10}}}); err != nil {
			t.Errorf("UpdatePrices by a trader: %v", err)
		}

		// The same over REST.
		code, _ := h.rest(t, http.MethodPost, "/v1/accounts/acct-1/killSwitch:trigger", `{"reason":"x"}`, "X-Api-Key", traderKey)
		if code != http.StatusForbidden {
			t.Errorf("REST trigger by a trader: %d, want 403", code)
		}
		code, _ = h.rest(t, http.MethodPatch, "/v1/accounts/acct-1/limits", `{"limits":{"maxOrderQuantity":1},"updateMask":"maxOrderQuantity"}`, "Authorization", "Bearer "+traderKey)
		if code != http.StatusForbidden {
			t.Errorf("REST SetLimits by a trader: %d, want 403", code)
		}
		l, err := h.client.GetLimits(trader, &riskv1.GetLimitsRequest{AccountId: "acct-1"})
		if err != nil || l.GetLimits().GetMaxOrderQuantity() != 100 || l.GetLimits().GetRevision() != 1 {
			t.Errorf("limits after denied changes: %v, %v", l.GetLimits(), err)
		}
	})
}

// eventStream reads a WatchRiskEvents stream in the background.
type eventStream struct {
	ch   chan *riskv1.WatchRiskEventsResponse
	errc chan error
}

func (h *srvHarness) watch(t *testing.T, req *riskv1.WatchRiskEventsRequest) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := h.client.WatchRiskEvents(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	s := &eventStream{ch: make(chan *riskv1.WatchRiskEventsResponse, 100), errc: make(chan error, 1)}
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				s.errc <- err
				return
			}
			s.ch <- msg
		}
	}()
	return s
}

func (s *eventStream) next(t *testing.T) *riskv1.WatchRiskEventsResponse {
	t.Helper()
	select {
	case msg := <-s.ch:
		return msg
	case err := <-s.errc:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return nil
}

// take reads n messages.
func (s *eventStream) take(t *testing.T, n int) []*riskv1.WatchRiskEventsResponse {
	t.Helper()
	out := make([]*riskv1.WatchRiskEventsResponse, n)
	for i := range out {
		out[i] = s.next(t)
	}
	return out
}

// nextIs checks that the stream's next message is the live event want
// with sequence seq: nothing else came first.
func (s *eventStream) nextIs(t *testing.T, what string, want riskv1.RiskEventType, seq uint64) {
	t.Helper()
	msg := s.next(t)
	if msg.GetEvent().GetType() != want || msg.GetEvent().GetSequence() != seq || msg.GetSnapshot() {
		t.Errorf("%s: got %v seq %d snapshot %v, want %v seq %d", what, msg.GetEvent().GetType(), msg.GetEvent().GetSequence(), msg.GetSnapshot(), want, seq)
	}
}

func TestServerWatchRiskEvents(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		ctx := context.Background()
		h.create(t, ctx, "acct-a", 100000, nil)                                                                                           // 1
		h.create(t, ctx, "acct-b", 100000, nil)                                                                                           // 2
		if _, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "acct-a", Reason: "stop"}); err != nil { // 3
			t.Fatal(err)
		}

		all := h.watch(t, &riskv1.WatchRiskEventsRequest{})
		onlyB := h.watch(t, &riskv1.WatchRiskEventsRequest{AccountId: "acct-b", Types: []riskv1.RiskEventType{
			riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED, riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED,
		}})

		// Snapshots: the kill switch of every account in scope, then
		// SNAPSHOT_COMPLETE, all at the latest sequence.
		snap := all.take(t, 3)
		states := map[string]bool{}
		for _, msg := range snap[:2] {
			ev := msg.GetEvent()
			if !msg.GetSnapshot() || ev.GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_STATE || ev.GetSequence() != 3 || ev.GetKillSwitch().GetAccountId() != ev.GetAccountId() {
				t.Errorf("snapshot message: %v", msg)
			}
			states[ev.GetAccountId()] = ev.GetKillSwitch().GetTripped()
		}
		if diff := cmp.Diff(map[string]bool{"acct-a": true, "acct-b": false}, states); diff != "" {
			t.Errorf("snapshot states (-want +got):\n%s", diff)
		}
		if done := snap[2]; !done.GetSnapshot() || done.GetEvent().GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_SNAPSHOT_COMPLETE || done.GetEvent().GetSequence() != 3 {
			t.Errorf("snapshot end: %v", done)
		}
		snapB := onlyB.take(t, 2)
		if ev := snapB[0].GetEvent(); ev.GetAccountId() != "acct-b" || ev.GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_STATE || !snapB[0].GetSnapshot() {
			t.Errorf("filtered snapshot: %v", snapB[0])
		}
		if snapB[1].GetEvent().GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_SNAPSHOT_COMPLETE {
			t.Errorf("filtered snapshot end: %v", snapB[1])
		}

		// Live events.
		rejected := h.check(t, ctx, limitOrderFor("acct-a", "c1", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 1, 10)) // 4
		wantDecision(t, "order of a killed account", rejected, []*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_KILL_SWITCH, 0, 1, "")})
		if _, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: "acct-a", Reason: "ok"}); err != nil { // 5
			t.Fatal(err)
		}
		if _, err := h.client.SetLimits(ctx, &riskv1.SetLimitsRequest{ // 6
			Limits:     &riskv1.Limits{AccountId: "acct-b", MaxPositionNotional: proto.Float64(10000), MaxDailyLoss: proto.Float64(5000)},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_position_notional", "max_daily_loss"}},
		}); err != nil {
			t.Fatal(err)
		}
		// A fill at a worse price than reserved leaves the position beyond
		// its notional limit (no reference price: valued at 101).
		ok := h.check(t, ctx, limitOrderFor("acct-b", "c2", "ZZZ", riskv1.OrderSide_ORDER_SIDE_BUY, 100, 100))
		wantDecision(t, "order at the limit", ok, nil)
		filled, err := h.client.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "acct-b", Fill: &riskv1.Fill{ // 7
			FillId: "f1", ReservationId: ok.GetReservation().GetReservationId(), Quantity: 100, Price: 101,
		}})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_NOTIONAL, 10000, 10100, "ZZZ")}, filled.GetBreaches(), violationOpts...); diff != "" {
			t.Errorf("breaches (-want +got):\n%s", diff)
		}
		// The price halves: a loss of 5100 trips acct-b's switch by itself.
		if _, err := h.client.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: "ZZZ", Price: 50}}}); err != nil { // 8
			t.Fatal(err)
		}

		live := all.take(t, 5)
		wantTypes := []riskv1.RiskEventType{
			riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED,
			riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET,
			riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED,
			riskv1.RiskEventType_RISK_EVENT_TYPE_LIMIT_BREACHED,
			riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED,
		}
		for i, msg := range live {
			ev := msg.GetEvent()
			if ev.GetType() != wantTypes[i] || ev.GetSequence() != uint64(4+i) || msg.GetSnapshot() || ev.GetEventTime() == nil {
				t.Errorf("live event %d: %v seq %d snapshot %v, want %v seq %d", i, ev.GetType(), ev.GetSequence(), msg.GetSnapshot(), wantTypes[i], 4+i)
			}
		}
		if diff := cmp.Diff(rejected.GetViolations(), live[0].GetEvent().GetRejection().GetViolations(), protocmp.Transform()); diff != "" {
			t.Errorf("rejection event (-result +event):\n%s", diff)
		}
		if b := live[3].GetEvent().GetBreach(); b.GetFillId() != "f1" || b.GetReservationId() != ok.GetReservation().GetReservationId() || len(b.GetViolations()) != 1 {
			t.Errorf("breach event: %v", b)
		}
		if k := live[4].GetEvent().GetKillSwitch(); k.GetAccountId() != "acct-b" || !k.GetTripped() || k.GetCause() != riskv1.KillSwitchCause_KILL_SWITCH_CAUSE_DAILY_LOSS {
			t.Errorf("automatic trip event: %v", k)
		}
		if ch := live[2].GetEvent().GetLimitsChange(); ch.GetLimits().GetMaxDailyLoss() != 5000 || len(ch.GetChangedFields()) != 2 {
			t.Errorf("limits change event: %v", ch)
		}
		// The filtered stream got exactly its account's matching events.
		onlyB.nextIs(t, "filtered 1", riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED, 6)
		onlyB.nextIs(t, "filtered 2", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, 8)

		// Resuming after 5 gets exactly 6, 7, 8, no snapshot, then live.
		resumed := h.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 5})
		got := resumed.take(t, 3)
		if diff := cmp.Diff(live[2:], got, protocmp.Transform()); diff != "" {
			t.Errorf("resumed stream (-live +resumed):\n%s", diff)
		}
		// Resuming from the snapshot's sequence gets everything since.
		fromSnap := h.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 3, Types: []riskv1.RiskEventType{riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED}})
		fromSnap.nextIs(t, "resumed from the snapshot", riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED, 4)

		if _, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: "acct-b", Reason: "ok"}); err != nil { // 9
			t.Fatal(err)
		}
		resumed.nextIs(t, "live after resuming", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET, 9)
		all.nextIs(t, "live", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET, 9)
		if _, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "acct-b", Reason: "again"}); err != nil { // 10
			t.Fatal(err)
		}
		// The filtered stream skipped the reset and sees the next trip.
		onlyB.nextIs(t, "filtered 3", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, 10)

		// Resuming at the latest sequence is valid; beyond it is not.
		at := h.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 10})
		beyond := h.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 11})
		select {
		case err := <-beyond.errc:
			if status.Code(err) != codes.OutOfRange {
				t.Errorf("after_sequence beyond the latest: %v, want OutOfRange", err)
			}
		case msg := <-beyond.ch:
			t.Errorf("after_sequence beyond the latest sent %v", msg)
		case <-time.After(10 * time.Second):
			t.Error("after_sequence beyond the latest: no answer")
		}
		h.create(t, ctx, "acct-c", 1, nil) // 11
		at.nextIs(t, "resumed at the latest", riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED, 11)
	})
}

func TestServerWatchRiskEventsOverREST(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.create(t, ctx, "acct-a", 100, nil)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/v1/riskEvents:watch?accountId=acct-a", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("watch over REST: %d", resp.StatusCode)
		}
		lines := bufio.NewScanner(resp.Body)
		var types []string
		for len(types) < 2 && lines.Scan() {
			var msg struct {
				Result struct {
					Event struct {
						Type      string `json:"type"`
						AccountID string `json:"accountId"`
					} `json:"event"`
					Snapshot bool `json:"snapshot"`
				} `json:"result"`
			}
			if err := json.Unmarshal(lines.Bytes(), &msg); err != nil {
				t.Fatalf("stream line %q: %v", lines.Text(), err)
			}
			if !msg.Result.Snapshot {
				t.Errorf("snapshot line without snapshot: %s", lines.Text())
			}
			types = append(types, msg.Result.Event.Type)
		}
		if diff := cmp.Diff([]string{"RISK_EVENT_TYPE_KILL_SWITCH_STATE", "RISK_EVENT_TYPE_SNAPSHOT_COMPLETE"}, types); diff != "" {
			t.Errorf("REST stream (-want +got):\n%s", diff)
		}
	})
}

func TestServerRESTRoutes(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		// PATCH limits creates the account.
		code, body := h.rest(t, http.MethodPatch, "/v1/accounts/rest-1/limits",
			`{"limits":{"maxOrderQuantity":100,"maxPositionQuantity":150},"updateMask":"maxOrderQuantity,maxPositionQuantity","cashBalance":100000,"reason":"rest"}`)
		if code != http.StatusOK || body["created"] != true {
			t.Fatalf("patch limits: %d %v", code, body)
		}
		if l, _ := body["limits"].(map[string]any); l["accountId"] != "rest-1" || l["maxOrderQuantity"] != 100.0 || l["maxPositionQuantity"] != 150.0 {
			t.Errorf("patched limits: %v", body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/accounts/rest-1/limits", "")
		if code != http.StatusOK || body["maxOrderQuantity"] != 100.0 || body["revision"] != "1" {
			t.Errorf("get limits: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/prices:batchUpdate", `{"prices":[{"symbol":"AAPL","price":100}]}`)
		if code != http.StatusOK || body["applied"] != 1.0 {
			t.Errorf("update prices: %d %v", code, body)
		}
		// CheckOrder answers with the result itself.
		code, body = h.rest(t, http.MethodPost, "/v1/orders:check",
			`{"order":{"accountId":"rest-1","clientOrderId":"r1","symbol":"AAPL","side":"ORDER_SIDE_BUY","type":"ORDER_TYPE_LIMIT","quantity":100,"limitPrice":100}}`)
		if code != http.StatusOK || body["decision"] != "DECISION_APPROVED" || body["referencePrice"] != 100.0 {
			t.Fatalf("check: %d %v", code, body)
		}
		res, _ := body["reservation"].(map[string]any)
		resID, _ := res["reservationId"].(string)
		if resID == "" || res["reservedQuantity"] != 100.0 || res["state"] != "RESERVATION_STATE_OPEN" {
			t.Fatalf("reservation: %v", body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/orders:batchCheck",
			`{"orders":[{"accountId":"rest-1","clientOrderId":"r2","symbol":"AAPL","side":"ORDER_SIDE_BUY","type":"ORDER_TYPE_MARKET","quantity":101}]}`)
		results, _ := body["results"].([]any)
		if code != http.StatusOK || len(results) != 1 {
			t.Fatalf("batch check: %d %v", code, body)
		}
		if r, _ := results[0].(map[string]any); r["decision"] != "DECISION_REJECTED" || !strings.Contains(fmt.Sprint(r["violations"]), "RISK_RULE_MAX_ORDER_QUANTITY") ||
			!strings.Contains(fmt.Sprint(r["violations"]), "RISK_RULE_POSITION_QUANTITY") {
			t.Errorf("rejected batch order: %v", r)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/accounts/rest-1/fills", `{"fill":{"fillId":"f1","reservationId":"`+resID+`","quantity":40,"price":100}}`)
		if pos, _ := body["position"].(map[string]any); code != http.StatusOK || pos["quantity"] != 40.0 || body["cash"] != 96000.0 {
			t.Errorf("fill: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/accounts/rest-1/reservations/"+resID+":release", `{"reason":"cancelled"}`)
		if r, _ := body["reservation"].(map[string]any); code != http.StatusOK || body["releasedQuantity"] != 60.0 || r["state"] != "RESERVATION_STATE_RELEASED" {
			t.Errorf("release: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodGet, "/v1/accounts/rest-1/portfolio", "")
		if ps, _ := body["positions"].([]any); code != http.StatusOK || len(ps) != 1 || body["cash"] != 96000.0 || body["accountId"] != "rest-1" {
			t.Errorf("portfolio: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/accounts/rest-1/killSwitch:trigger", `{"reason":"rest stop","actor":"ops"}`)
		if k, _ := body["killSwitch"].(map[string]any); code != http.StatusOK || k["tripped"] != true || k["trippedByActor"] != "ops" {
			t.Errorf("trigger: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/accounts/rest-1/killSwitch:reset", `{"reason":"rest go","expectedRevision":"1"}`)
		if k, _ := body["killSwitch"].(map[string]any); code != http.StatusOK || k["tripped"] == true || k["resetReason"] != "rest go" {
			t.Errorf("reset: %d %v", code, body)
		}
		// Errors keep their codes and field details over REST.
		code, body = h.rest(t, http.MethodPost, "/v1/orders:check",
			`{"order":{"accountId":"rest-1","clientOrderId":"r3","symbol":"AAPL","side":"ORDER_SIDE_BUY","type":"ORDER_TYPE_LIMIT","quantity":0,"limitPrice":100}}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "order.quantity") {
			t.Errorf("bad check: %d %v", code, body)
		}
		code, body = h.rest(t, http.MethodPost, "/v1/orders:check",
			`{"order":{"accountId":"nobody","clientOrderId":"r3","symbol":"AAPL","side":"ORDER_SIDE_BUY","type":"ORDER_TYPE_LIMIT","quantity":1,"limitPrice":100}}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "order.account_id") {
			t.Errorf("check of an unknown account: %d %v", code, body)
		}
		// protojson spells NaN as a string: refused over REST too.
		code, body = h.rest(t, http.MethodPost, "/v1/orders:check",
			`{"order":{"accountId":"rest-1","clientOrderId":"r4","symbol":"AAPL","side":"ORDER_SIDE_BUY","type":"ORDER_TYPE_LIMIT","quantity":1,"limitPrice":"NaN"}}`)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["details"]), "order.limit_price") {
			t.Errorf("NaN over REST: %d %v", code, body)
		}
		if code, _ = h.rest(t, http.MethodGet, "/v1/accounts/nobody/portfolio", ""); code != http.StatusNotFound {
			t.Errorf("unknown portfolio: %d, want 404", code)
		}
		code, _ = h.rest(t, http.MethodPatch, "/v1/accounts/rest-2/limits", `{"limits":{"maxOrderQuantity":1},"updateMask":"maxOrderQuantity"}`)
		if code != http.StatusBadRequest {
			t.Errorf("create without cash over REST: %d, want 400", code)
		}
	})
}

// scrapeRisk reads the server's /metrics.
func scrapeRisk(t *testing.T, h *srvHarness) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(h.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// metricValue returns the value of the series of family name whose labels
// include labels, and whether there is one.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	fam := fams[name]
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func TestServerMetrics(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		ctx := context.Background()
		want := func(fams map[string]*dto.MetricFamily, v float64, name string, labels ...string) {
			t.Helper()
			got, ok := metricValue(fams, name, labels...)
			if !ok {
				t.Errorf("%s%v missing", name, labels)
			} else if got != v {
				t.Errorf("%s%v = %g, want %g", name, labels, got, v)
			}
		}
		// Alerts see 0 from the start, not "no data".
		start := scrapeRisk(t, h)
		want(start, 0, "quantmesh_risk_limit_breaches_total")
		want(start, 0, "quantmesh_risk_kill_switches_active")

		h.create(t, ctx, "acct-1", 100000, &riskv1.Limits{MaxOrderQuantity: proto.Float64(10), MaxPositionNotional: proto.Float64(1000)})
		order := func(cid string, qty float64) *riskv1.OrderCheckResult {
			return h.check(t, ctx, limitOrderFor("acct-1", cid, aapl, riskv1.OrderSide_ORDER_SIDE_BUY, qty, 10))
		}
		first := order("c1", 1)
		order("c2", 1)
		order("c3", 11) // max order quantity
		if _, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "acct-1", Reason: "x"}); err != nil {
			t.Fatal(err)
		}
		order("c4", 1) // kill switch
		fams := scrapeRisk(t, h)
		want(fams, 2, "quantmesh_risk_checks_total", "decision", "approved")
		want(fams, 2, "quantmesh_risk_checks_total", "decision", "rejected")
		want(fams, 1, "quantmesh_risk_rule_violations_total", "rule", "max_order_quantity")
		want(fams, 1, "quantmesh_risk_rule_violations_total", "rule", "kill_switch")
		want(fams, 4, "quantmesh_risk_check_duration_seconds")
		want(fams, 1, "quantmesh_risk_kill_switches_active")
		want(fams, 0, "quantmesh_risk_limit_breaches_total")
		if fam := fams["quantmesh_risk_check_duration_seconds"]; fam.GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("check duration is a %v, want a histogram", fam.GetType())
		}

		// A fill beyond a limit is counted, by rule.
		if _, err := h.client.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "acct-1", Fill: &riskv1.Fill{
			FillId: "f1", ReservationId: first.GetReservation().GetReservationId(), Quantity: 1, Price: 1001,
		}}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: "acct-1", Reason: "y"}); err != nil {
			t.Fatal(err)
		}
		fams = scrapeRisk(t, h)
		want(fams, 1, "quantmesh_risk_limit_breaches_total", "rule", "position_notional")
		want(fams, 0, "quantmesh_risk_kill_switches_active")
	})
}

func TestServerRestartRestoresStateAndEvents(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		h := startRiskServer(t, db, auth.Keys{})
		h.create(t, ctx, "acct-a", 100000, &riskv1.Limits{MaxPositionQuantity: proto.Float64(100), DuplicateWindow: durationpb.New(time.Hour)}) // 1
		h.create(t, ctx, "acct-b", 5000, nil)                                                                                                   // 2
		if _, err := h.client.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: aapl, Price: 100}}}); err != nil {
			t.Fatal(err)
		}
		filled := h.check(t, ctx, limitOrderFor("acct-a", "c1", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 30, 100))
		open := h.check(t, ctx, limitOrderFor("acct-a", "c2", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 50, 100))
		wantDecision(t, "c1", filled, nil)
		wantDecision(t, "c2", open, nil)
		fill := &riskv1.ApplyFillRequest{AccountId: "acct-a", Fill: &riskv1.Fill{FillId: "f1", ReservationId: filled.GetReservation().GetReservationId(), Quantity: 30, Price: 99, Fee: 1}}
		if _, err := h.client.ApplyFill(ctx, fill); err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: "acct-b", Reason: "halt"}); err != nil { // 3
			t.Fatal(err)
		}
		if _, err := h.client.SetLimits(ctx, &riskv1.SetLimitsRequest{ // 4
			Limits: &riskv1.Limits{AccountId: "acct-b", MaxLeverage: proto.Float64(2)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_leverage"}},
		}); err != nil {
			t.Fatal(err)
		}
		portfolio := func(h *srvHarness, id string) *riskv1.Portfolio {
			t.Helper()
			resp, err := h.client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: id})
			if err != nil {
				t.Fatal(err)
			}
			return resp.GetPortfolio()
		}
		limits := func(h *srvHarness, id string) *riskv1.Limits {
			t.Helper()
			resp, err := h.client.GetLimits(ctx, &riskv1.GetLimitsRequest{AccountId: id})
			if err != nil {
				t.Fatal(err)
			}
			return resp.GetLimits()
		}
		beforeA, beforeB := portfolio(h, "acct-a"), portfolio(h, "acct-b")
		limitsA, limitsB := limits(h, "acct-a"), limits(h, "acct-b")
		h.stop()

		h2 := startRiskServer(t, db, auth.Keys{})
		// The store keeps times to the microsecond.
		micros := protocmp.FilterMessage(&timestamppb.Timestamp{}, cmp.Comparer(func(x, y protocmp.Message) bool {
			xs, _ := x["seconds"].(int64)
			ys, _ := y["seconds"].(int64)
			xn, _ := x["nanos"].(int32)
			yn, _ := y["nanos"].(int32)
			return xs == ys && xn/1000 == yn/1000
		}))
		ignore := protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")
		if diff := cmp.Diff(beforeA, portfolio(h2, "acct-a"), protocmp.Transform(), ignore, micros); diff != "" {
			t.Errorf("acct-a after restart (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(beforeB, portfolio(h2, "acct-b"), protocmp.Transform(), ignore, micros); diff != "" {
			t.Errorf("acct-b after restart (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(limitsA, limits(h2, "acct-a"), protocmp.Transform(), micros); diff != "" {
			t.Errorf("acct-a limits after restart (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(limitsB, limits(h2, "acct-b"), protocmp.Transform(), micros); diff != "" {
			t.Errorf("acct-b limits after restart (-before +after):\n%s", diff)
		}
		// The open reservation still counts, the approval is still a
		// duplicate and the fill is still applied once.
		wantDecision(t, "over the limit with the restored reservation", h2.check(t, ctx, limitOrderFor("acct-a", "c3", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 21, 100)),
			[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY, 100, 101, aapl)})
		dup := h2.check(t, ctx, limitOrderFor("acct-a", "c2", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 1, 100))
		if dup.GetExistingReservationId() != open.GetReservation().GetReservationId() {
			t.Errorf("duplicate after restart: %v existing %q", dup.GetViolations(), dup.GetExistingReservationId())
		}
		again, err := h2.client.ApplyFill(ctx, fill)
		if err != nil || !again.GetDuplicate() || again.GetPosition().GetQuantity() != 30 {
			t.Errorf("fill resent after restart: %v, %v", again, err)
		}
		wantDecision(t, "killed account after restart", h2.check(t, ctx, limitOrderFor("acct-b", "c1", aapl, riskv1.OrderSide_ORDER_SIDE_BUY, 1, 100)),
			[]*riskv1.RuleViolation{wantViol(riskv1.RiskRule_RISK_RULE_KILL_SWITCH, 0, 1, "")})

		// The new snapshot shows the restored switches; events from before
		// the restart are resumable from the store, then live ones follow.
		all := h2.watch(t, &riskv1.WatchRiskEventsRequest{Types: []riskv1.RiskEventType{riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET}})
		states := map[string]bool{}
		for _, msg := range all.take(t, 3) {
			if msg.GetEvent().GetType() == riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_STATE {
				states[msg.GetEvent().GetAccountId()] = msg.GetEvent().GetKillSwitch().GetTripped()
			}
		}
		if diff := cmp.Diff(map[string]bool{"acct-a": false, "acct-b": true}, states); diff != "" {
			t.Errorf("snapshot after restart (-want +got):\n%s", diff)
		}
		resumed := h2.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 2})
		resumed.nextIs(t, "stored trip", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED, 3)
		resumed.nextIs(t, "stored limits change", riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED, 4)
		// The three rejections since the restart: 5, 6 and 7.
		resumed.nextIs(t, "rejection", riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED, 5)
		resumed.nextIs(t, "rejection", riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED, 6)
		resumed.nextIs(t, "rejection", riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED, 7)
		if _, err := h2.client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: "acct-b", Reason: "go", ExpectedRevision: 1}); err != nil { // 8
			t.Fatal(err)
		}
		resumed.nextIs(t, "live after restart", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET, 8)
		all.nextIs(t, "live after restart", riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_RESET, 8)
	})
}

func TestServerWatchOutOfRangeAfterPrune(t *testing.T) {
	runRiskServer(t, auth.Keys{}, func(t *testing.T, h *srvHarness) {
		ctx := context.Background()
		for i := range 5 {
			h.create(t, ctx, fmt.Sprintf("acct-%d", i), 1, nil) // 1..5
		}
		// Everything is old: all but the newest event go.
		if n, err := h.sql.PruneEvents(ctx, time.Now().Add(time.Hour)); err != nil || n != 4 {
			t.Fatalf("prune: %d, %v", n, err)
		}
		gone := h.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 3})
		select {
		case err := <-gone.errc:
			if status.Code(err) != codes.OutOfRange {
				t.Errorf("resume after pruned events: %v, want OutOfRange", err)
			}
		case msg := <-gone.ch:
			t.Errorf("resume after pruned events sent %v", msg)
		case <-time.After(10 * time.Second):
			t.Error("resume after pruned events: no answer")
		}
		// After 4 nothing is missing: the stream goes on from 5.
		kept := h.watch(t, &riskv1.WatchRiskEventsRequest{AfterSequence: 4})
		kept.nextIs(t, "the retained event", riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED, 5)
		h.create(t, ctx, "acct-9", 1, nil) // 6
		kept.nextIs(t, "live", riskv1.RiskEventType_RISK_EVENT_TYPE_LIMITS_CHANGED, 6)
	})
}
