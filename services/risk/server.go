// Package risk implements RiskService: pre-trade checks that no order can
// slip past. Every account's state lives in memory behind its own lock and
// is written through to the store before an answer that depends on it is
// given (group commit keeps that cheap). See Engine.
package risk

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Server implements riskv1.RiskServiceServer.
type Server struct {
	riskv1.UnimplementedRiskServiceServer

	engine  *Engine
	log     *slog.Logger
	metrics *metrics
}

var _ riskv1.RiskServiceServer = (*Server)(nil)

// New returns a server on engine, recording metrics with meter.
func New(engine *Engine, log *slog.Logger, meter metric.Meter) (*Server, error) {
	m, err := newMetrics(meter, engine)
	if err != nil {
		return nil, err
	}
	return &Server{engine: engine, log: log, metrics: m}, nil
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &riskv1.RiskService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return riskv1.RegisterRiskServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of RiskService: traders check orders and
// report fills; limits and kill switches are for admins only.
func Roles() auth.Policy {
	svc := riskv1.File_quantmesh_risk_v1_risk_proto.Services().ByName("RiskService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleTrader},
		map[string][]auth.Role{
			"SetLimits":         nil,
			"TriggerKillSwitch": nil,
			"ResetKillSwitch":   nil,
		})
}

func principal(ctx context.Context) string {
	if p, ok := auth.FromContext(ctx); ok {
		return p.Name
	}
	return auth.Anonymous.Name
}

// CheckOrder implements RiskServiceServer.
func (s *Server) CheckOrder(ctx context.Context, req *riskv1.CheckOrderRequest) (*riskv1.CheckOrderResponse, error) {
	start := time.Now()
	var v apierr.Violations
	var o order
	parseOrder(&v, "order", req.GetOrder(), &o)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var res checkResult
	if err := s.check(ctx, &o, &res, start); err != nil {
		return nil, err
	}
	return &riskv1.CheckOrderResponse{Result: res.toProto(&o)}, nil
}

func (s *Server) check(ctx context.Context, o *order, res *checkResult, start time.Time) error {
	if err := s.engine.Check(ctx, o, res); err != nil {
		return err
	}
	s.metrics.recordCheck(ctx, res, time.Since(start))
	if !res.approved {
		s.engine.recordRejection(o, res)
	}
	return nil
}

// CheckOrders implements RiskServiceServer.
func (s *Server) CheckOrders(ctx context.Context, req *riskv1.CheckOrdersRequest) (*riskv1.CheckOrdersResponse, error) {
	var v apierr.Violations
	n := len(req.GetOrders())
	switch {
	case n == 0:
		v.Add("orders", "at least one order is required")
	case n > maxBatch:
		v.Add("orders", "at most %d orders, got %d", maxBatch, n)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	orders := make([]order, n)
	for i, o := range req.GetOrders() {
		parseOrder(&v, "orders["+itoa(i)+"]", o, &orders[i])
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	// Every account must exist before anything is checked.
	for i := range orders {
		if s.engine.account(orders[i].accountID) == nil {
			v.Add("orders["+itoa(i)+"].account_id", "unknown account %q", orders[i].accountID)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	// Evaluate every order in turn (each sees the reservations of those
	// before it), then wait for all their writes at once.
	start := time.Now()
	results := make([]checkResult, n)
	waits := make([]func(), n)
	for i := range orders {
		wait, err := s.engine.startCheck(ctx, &orders[i], &results[i])
		if err != nil {
			// Nothing of a failed batch stands: the orders checked before
			// this one finish (their accounts must not stay in flight) and
			// their reservations are released.
			for j := range i {
				waits[j]()
				if results[j].approved {
					if _, rerr := s.engine.ReleaseWithReason(ctx, orders[j].accountID, results[j].reservation.id, "CheckOrders batch failed"); rerr != nil {
						s.log.Warn("risk: reservation of a failed batch not released; it expires", "reservation", results[j].reservation.id, "err", rerr)
					}
				}
			}
			return nil, err
		}
		waits[i] = wait
	}
	out := &riskv1.CheckOrdersResponse{Results: make([]*riskv1.OrderCheckResult, n)}
	for i := range orders {
		waits[i]()
		s.metrics.recordCheck(ctx, &results[i], time.Since(start))
		if !results[i].approved {
			s.engine.recordRejection(&orders[i], &results[i])
		}
		out.Results[i] = results[i].toProto(&orders[i])
	}
	return out, nil
}

// parseOrder validates o into dst, adding violations under prefix.
func parseOrder(v *apierr.Violations, prefix string, o *riskv1.Order, dst *order) {
	if o == nil {
		v.Add(prefix, "required")
		return
	}
	if msg := checkID(o.GetAccountId()); msg != "" {
		v.Add(prefix+".account_id", "%s", msg)
	}
	if msg := checkID(o.GetClientOrderId()); msg != "" {
		v.Add(prefix+".client_order_id", "%s", msg)
	}
	if msg := checkSymbol(o.GetSymbol()); msg != "" {
		v.Add(prefix+".symbol", "%s", msg)
	}
	switch o.GetSide() {
	case riskv1.OrderSide_ORDER_SIDE_BUY, riskv1.OrderSide_ORDER_SIDE_SELL:
	default:
		v.Add(prefix+".side", "must be ORDER_SIDE_BUY or ORDER_SIDE_SELL")
	}
	positive(v, prefix+".quantity", o.GetQuantity())
	switch o.GetType() {
	case riskv1.OrderType_ORDER_TYPE_LIMIT:
		positive(v, prefix+".limit_price", o.GetLimitPrice())
	case riskv1.OrderType_ORDER_TYPE_MARKET:
		if o.GetLimitPrice() != 0 {
			v.Add(prefix+".limit_price", "must be 0 for a market order, got %v", o.GetLimitPrice())
		}
	default:
		v.Add(prefix+".type", "must be ORDER_TYPE_MARKET or ORDER_TYPE_LIMIT")
	}
	*dst = order{
		accountID:     o.GetAccountId(),
		clientOrderID: o.GetClientOrderId(),
		symbol:        o.GetSymbol(),
		side:          sideSign(o.GetSide()),
		orderType:     o.GetType(),
		quantity:      o.GetQuantity(),
		limitPrice:    o.GetLimitPrice(),
	}
}

func finite(v *apierr.Violations, field string, x float64) bool {
	if !isFinite(x) {
		v.Add(field, "must be finite, got %v", x)
		return false
	}
	return true
}

func positive(v *apierr.Violations, field string, x float64) {
	if finite(v, field, x) && x <= 0 {
		v.Add(field, "must be greater than 0, got %v", x)
	}
}

func requireID(v *apierr.Violations, field, id string) {
	if msg := checkID(id); msg != "" {
		v.Add(field, "%s", msg)
	}
}

func checkText(v *apierr.Violations, field, text string, required bool, max int) {
	switch {
	case required && text == "":
		v.Add(field, "required")
	case len(text) > max:
		v.Add(field, "must be at most %d characters, got %d", max, len(text))
	default:
		if msg := checkPlain(text); msg != "" {
			v.Add(field, "%s", msg)
		}
	}
}

// ApplyFill implements RiskServiceServer.
func (s *Server) ApplyFill(ctx context.Context, req *riskv1.ApplyFillRequest) (*riskv1.ApplyFillResponse, error) {
	var v apierr.Violations
	requireID(&v, "account_id", req.GetAccountId())
	f := req.GetFill()
	if f == nil {
		v.Add("fill", "required")
		return nil, v.Err()
	}
	requireID(&v, "fill.fill_id", f.GetFillId())
	requireID(&v, "fill.reservation_id", f.GetReservationId())
	positive(&v, "fill.quantity", f.GetQuantity())
	positive(&v, "fill.price", f.GetPrice())
	if q, p := f.GetQuantity(), f.GetPrice(); isFinite(q) && isFinite(p) && q*p > maxFillAmount {
		v.Add("fill.price", "quantity × price must be at most %g, got %g", maxFillAmount, q*p)
	}
	if finite(&v, "fill.fee", f.GetFee()) {
		switch fee := f.GetFee(); {
		case fee < 0:
			v.Add("fill.fee", "must not be negative, got %v", fee)
		case fee > maxFillAmount:
			v.Add("fill.fee", "must be at most %g, got %g", maxFillAmount, fee)
		}
	}
	var at time.Time
	if t := f.GetFillTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			v.Add("fill.fill_time", "invalid timestamp: %v", err)
		}
		at = t.AsTime()
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	res, err := s.engine.ApplyFill(ctx, req.GetAccountId(), fillInput{
		fillID: f.GetFillId(), reservationID: f.GetReservationId(), quantity: f.GetQuantity(),
		price: f.GetPrice(), fee: f.GetFee(), at: at, releaseRemainder: f.GetReleaseRemainder(),
	})
	if err != nil {
		return nil, err
	}
	return &riskv1.ApplyFillResponse{
		Reservation: res.reservation.toProto(),
		Position:    res.position.toProto(res.refPrice),
		Cash:        res.cash,
		Duplicate:   res.duplicate,
		Late:        res.late,
		Breaches:    violationsToProto(res.breaches),
	}, nil
}

// ReleaseReservation implements RiskServiceServer.
func (s *Server) ReleaseReservation(ctx context.Context, req *riskv1.ReleaseReservationRequest) (*riskv1.ReleaseReservationResponse, error) {
	var v apierr.Violations
	requireID(&v, "account_id", req.GetAccountId())
	requireID(&v, "reservation_id", req.GetReservationId())
	checkText(&v, "reason", req.GetReason(), false, maxReasonLen)
	if err := v.Err(); err != nil {
		return nil, err
	}
	res, err := s.engine.ReleaseWithReason(ctx, req.GetAccountId(), req.GetReservationId(), req.GetReason())
	if err != nil {
		return nil, err
	}
	return &riskv1.ReleaseReservationResponse{
		Reservation:      res.reservation.toProto(),
		ReleasedQuantity: res.quantity,
		ReleasedNotional: res.notional,
	}, nil
}

// UpdatePrices implements RiskServiceServer.
func (s *Server) UpdatePrices(ctx context.Context, req *riskv1.UpdatePricesRequest) (*riskv1.UpdatePricesResponse, error) {
	var v apierr.Violations
	n := len(req.GetPrices())
	switch {
	case n == 0:
		v.Add("prices", "at least one price is required")
	case n > maxPriceBatch:
		v.Add("prices", "at most %d prices, got %d", maxPriceBatch, n)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	in := make([]priceInput, n)
	seen := make(map[string]int, n)
	latest := s.engine.now().Add(maxPriceLead)
	for i, p := range req.GetPrices() {
		field := "prices[" + itoa(i) + "]"
		if msg := checkSymbol(p.GetSymbol()); msg != "" {
			v.Add(field+".symbol", "%s", msg)
		} else if j, dup := seen[p.GetSymbol()]; dup {
			v.Add(field+".symbol", "%q is also prices[%d]; a symbol may appear once", p.GetSymbol(), j)
		}
		seen[p.GetSymbol()] = i
		positive(&v, field+".price", p.GetPrice())
		in[i] = priceInput{symbol: p.GetSymbol(), price: p.GetPrice()}
		if t := p.GetPriceTime(); t != nil {
			if err := t.CheckValid(); err != nil {
				v.Add(field+".price_time", "invalid timestamp: %v", err)
			} else if at := t.AsTime(); at.After(latest) {
				v.Add(field+".price_time", "must be at most %s ahead of the server's clock, got %s", maxPriceLead, at.Format(time.RFC3339Nano))
			}
			in[i].at = t.AsTime()
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	applied, stale, err := s.engine.UpdatePrices(ctx, in)
	if err != nil {
		return nil, err
	}
	return &riskv1.UpdatePricesResponse{Applied: int32(applied), Stale: int32(stale)}, nil
}

// GetPortfolio implements RiskServiceServer.
func (s *Server) GetPortfolio(ctx context.Context, req *riskv1.GetPortfolioRequest) (*riskv1.GetPortfolioResponse, error) {
	var v apierr.Violations
	requireID(&v, "account_id", req.GetAccountId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	p, err := s.engine.Portfolio(ctx, req.GetAccountId())
	if err != nil {
		return nil, err
	}
	return &riskv1.GetPortfolioResponse{Portfolio: p}, nil
}

// GetLimits implements RiskServiceServer.
func (s *Server) GetLimits(ctx context.Context, req *riskv1.GetLimitsRequest) (*riskv1.GetLimitsResponse, error) {
	var v apierr.Violations
	requireID(&v, "account_id", req.GetAccountId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	l, err := s.engine.Limits(req.GetAccountId())
	if err != nil {
		return nil, err
	}
	return &riskv1.GetLimitsResponse{Limits: l}, nil
}

// outputOnly are Limits fields SetLimits may not name.
var outputOnly = []string{"account_id", "revision", "update_time", "updated_by_principal"}

// SetLimits implements RiskServiceServer.
func (s *Server) SetLimits(ctx context.Context, req *riskv1.SetLimitsRequest) (*riskv1.SetLimitsResponse, error) {
	var v apierr.Violations
	l := req.GetLimits()
	if l == nil {
		v.Add("limits", "required")
		return nil, v.Err()
	}
	requireID(&v, "limits.account_id", l.GetAccountId())
	var paths []string
	mask := req.GetUpdateMask().GetPaths()
	if len(mask) == 0 {
		v.Add("update_mask", "required: name the limits to change, or \"*\" for all")
	}
	for _, p := range mask {
		switch {
		case p == "*":
			paths = limitPaths()
		case limitFields[p] != nil:
			if !slices.Contains(paths, p) {
				paths = append(paths, p)
			}
		case slices.Contains(outputOnly, p):
			v.Add("update_mask", "%q is output only", p)
		default:
			v.Add("update_mask", "unknown limit %q", p)
		}
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	validateLimits(&v, "limits.", l, paths)
	if l.OrderBurst != nil && l.MaxOrdersPerSecond == nil && slices.Contains(paths, "order_burst") {
		v.Add("limits.order_burst", "only with max_orders_per_second")
	}
	if c := req.CashBalance; c != nil {
		finite(&v, "cash_balance", *c)
	}
	checkText(&v, "reason", req.GetReason(), false, maxReasonLen)
	if err := v.Err(); err != nil {
		return nil, err
	}
	out, created, err := s.engine.SetLimits(ctx, setLimitsInput{
		accountID:        l.GetAccountId(),
		limits:           l,
		paths:            paths,
		expectedRevision: req.GetExpectedRevision(),
		cash:             req.CashBalance,
		reason:           req.GetReason(),
		principal:        principal(ctx),
	})
	if err != nil {
		return nil, err
	}
	return &riskv1.SetLimitsResponse{Limits: out, Created: created}, nil
}

// TriggerKillSwitch implements RiskServiceServer.
func (s *Server) TriggerKillSwitch(ctx context.Context, req *riskv1.TriggerKillSwitchRequest) (*riskv1.TriggerKillSwitchResponse, error) {
	in, err := killRequest(ctx, req.GetAccountId(), req.GetReason(), req.GetActor(), 0)
	if err != nil {
		return nil, err
	}
	k, already, err := s.engine.TriggerKillSwitch(ctx, in)
	if err != nil {
		return nil, err
	}
	return &riskv1.TriggerKillSwitchResponse{KillSwitch: k, AlreadyTripped: already}, nil
}

// ResetKillSwitch implements RiskServiceServer.
func (s *Server) ResetKillSwitch(ctx context.Context, req *riskv1.ResetKillSwitchRequest) (*riskv1.ResetKillSwitchResponse, error) {
	in, err := killRequest(ctx, req.GetAccountId(), req.GetReason(), req.GetActor(), req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	k, already, err := s.engine.ResetKillSwitch(ctx, in)
	if err != nil {
		return nil, err
	}
	return &riskv1.ResetKillSwitchResponse{KillSwitch: k, AlreadyReset: already}, nil
}

func killRequest(ctx context.Context, account, reason, actor string, rev uint64) (killInput, error) {
	var v apierr.Violations
	requireID(&v, "account_id", account)
	checkText(&v, "reason", reason, true, maxReasonLen)
	checkText(&v, "actor", actor, false, maxIDLen)
	return killInput{accountID: account, reason: reason, actor: actor, principal: principal(ctx), expectedRevision: rev}, v.Err()
}

// watchPage is how many stored events a resuming stream reads at a time.
const watchPage = 500

// WatchRiskEvents implements RiskServiceServer.
func (s *Server) WatchRiskEvents(req *riskv1.WatchRiskEventsRequest, stream grpc.ServerStreamingServer[riskv1.WatchRiskEventsResponse]) error {
	ctx := stream.Context()
	var v apierr.Violations
	if req.GetAccountId() != "" {
		requireID(&v, "account_id", req.GetAccountId())
	}
	types := map[riskv1.RiskEventType]bool{}
	for i, t := range req.GetTypes() {
		if _, known := riskv1.RiskEventType_name[int32(t)]; !known || t == riskv1.RiskEventType_RISK_EVENT_TYPE_UNSPECIFIED {
			v.Add("types["+itoa(i)+"]", "unknown event type %d", int32(t))
		}
		types[t] = true
	}
	if err := v.Err(); err != nil {
		return err
	}
	if req.GetAccountId() != "" && s.engine.account(req.GetAccountId()) == nil {
		return errUnknownAccount(req.GetAccountId())
	}
	match := func(ev *riskv1.RiskEvent) bool {
		return (req.GetAccountId() == "" || ev.GetAccountId() == req.GetAccountId()) && (len(types) == 0 || types[ev.GetType()])
	}
	b := s.engine.events
	after := req.GetAfterSequence()
	if after == 0 {
		last := b.Last()
		states, err := s.engine.KillSwitches(req.GetAccountId())
		if err != nil {
			return err
		}
		for _, k := range states {
			ev := &riskv1.RiskEvent{Sequence: last, Type: riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_STATE,
				AccountId: k.GetAccountId(), Detail: &riskv1.RiskEvent_KillSwitch{KillSwitch: k}}
			if err := stream.Send(&riskv1.WatchRiskEventsResponse{Event: ev, Snapshot: true}); err != nil {
				return err
			}
		}
		done := &riskv1.RiskEvent{Sequence: last, Type: riskv1.RiskEventType_RISK_EVENT_TYPE_SNAPSHOT_COMPLETE}
		if err := stream.Send(&riskv1.WatchRiskEventsResponse{Event: done, Snapshot: true}); err != nil {
			return err
		}
		after = last
	} else {
		if last := b.Last(); after > last {
			return status.Errorf(codes.OutOfRange, "after_sequence %d is beyond the latest event %d; start again from 0", after, last)
		}
		first, err := s.engine.store.FirstSequence(ctx)
		if err != nil {
			return err
		}
		if first > after+1 {
			return status.Errorf(codes.OutOfRange, "events after %d are no longer retained (oldest is %d); start again from 0", after, first)
		}
	}
	for {
		events, covered, _, wait := b.Since(after)
		if !covered {
			var err error
			if events, err = s.engine.store.Events(ctx, after, watchPage); err != nil {
				return err
			}
		}
		for _, ev := range events {
			after = ev.GetSequence()
			if !match(ev) {
				continue
			}
			if err := stream.Send(&riskv1.WatchRiskEventsResponse{Event: ev}); err != nil {
				return err
			}
		}
		if len(events) > 0 {
			continue
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
