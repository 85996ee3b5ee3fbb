package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

// TestRiskSurvivesSIGKILL starts RiskService alone, builds up state
// (limits, prices, an approval, a partial fill, a tripped kill switch),
// kills the process with SIGKILL (no graceful stop, nothing flushed on the
// way out) and starts it again on the same database: everything that was
// acknowledged is there, the open reservation still counts against the
// limits, and the event log resumes where a client left it.
func TestRiskSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	for name, dbArgs := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--services", "risk", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
				"--data-dir", t.TempDir(), "--log-level", "warn"}, dbArgs(t)...)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			p := startProc(t, nil, args...)
			client := riskv1.NewRiskServiceClient(p.conn(t))
			const acct = "e2e-desk"
			maxQty, cash := 15.0, 100_000.0
			set, err := client.SetLimits(ctx, &riskv1.SetLimitsRequest{
				Limits: &riskv1.Limits{
					AccountId:           acct,
					MaxPositionQuantity: &maxQty,
					ReservationTtl:      durationpb.New(time.Hour),
				},
				UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"max_position_quantity", "reservation_ttl"}},
				CashBalance: &cash,
				Reason:      "e2e",
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: "AAA", Price: 50}}}); err != nil {
				t.Fatal(err)
			}
			// Approve a buy of 10 and fill 4 of it at 49.
			res := checkRisk(ctx, t, client, acct, "buy-10", 10)
			if res.GetDecision() != riskv1.Decision_DECISION_APPROVED {
				t.Fatalf("buy 10: %v", res)
			}
			resID := res.GetReservation().GetReservationId()
			if _, err := client.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: acct, Fill: &riskv1.Fill{
				FillId: "fill-1", ReservationId: resID, Quantity: 4, Price: 49, Fee: 1,
			}}); err != nil {
				t.Fatal(err)
			}
			if _, err := client.TriggerKillSwitch(ctx, &riskv1.TriggerKillSwitchRequest{AccountId: acct, Reason: "e2e drill", Actor: "on-call"}); err != nil {
				t.Fatal(err)
			}
			before := riskState(ctx, t, client, acct)
			events := watchRisk(ctx, t, client, 0, 3) // snapshot (state, complete), then nothing new yet
			if len(events) < 2 || events[len(events)-1].GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_SNAPSHOT_COMPLETE {
				t.Fatalf("snapshot %v", events)
			}
			last := events[len(events)-1].GetSequence() // LIMITS_CHANGED, then KILL_SWITCH_TRIPPED
			logBefore := watchRisk(ctx, t, client, 1, int(last)-1)
			if len(logBefore) != int(last)-1 || logBefore[len(logBefore)-1].GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_KILL_SWITCH_TRIPPED {
				t.Fatalf("events after 1 (last %d): %v, want up to the trip", last, logBefore)
			}

			// No graceful stop.
			if err := p.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-p.done

			p2 := startProc(t, nil, args...)
			client = riskv1.NewRiskServiceClient(p2.conn(t))
			after := riskState(ctx, t, client, acct)
			if diff := cmp.Diff(before.portfolio, after.portfolio, protocmp.Transform(), microsecondTimes,
				protocmp.IgnoreFields(&riskv1.Portfolio{}, "as_of_time")); diff != "" {
				t.Errorf("portfolio after SIGKILL and restart (-before +after):\n%s", diff)
			}
			// Spelled out: the position, cash, the open remainder, the switch.
			pf := after.portfolio
			if len(pf.GetPositions()) != 1 || pf.GetPositions()[0].GetQuantity() != 4 || pf.GetCash() != cash-4*49-1 ||
				len(pf.GetReservations()) != 1 || pf.GetReservations()[0].GetReservationId() != resID ||
				pf.GetReservations()[0].GetReservedQuantity() != 6 || pf.GetReservations()[0].GetFilledQuantity() != 4 ||
				!pf.GetKillSwitch().GetTripped() || pf.GetKillSwitch().GetTripReason() != "e2e drill" {
				t.Errorf("portfolio after restart: %v", pf)
			}
			if diff := cmp.Diff(set.GetLimits(), after.limits, protocmp.Transform()); diff != "" {
				t.Errorf("limits after restart (-set +now):\n%s", diff)
			}
			// The event log is intact: resuming from 1 gives the same events.
			if diff := cmp.Diff(logBefore, watchRisk(ctx, t, client, 1, len(logBefore)), protocmp.Transform()); diff != "" {
				t.Errorf("event log after restart (-before +after):\n%s", diff)
			}

			// The kill switch still rejects, and the reservation still
			// counts: 4 filled + 6 reserved + 6 = 16 > 15.
			res = checkRisk(ctx, t, client, acct, "buy-6", 6)
			if got := ruleSet(res); !slices.Equal(got, []riskv1.RiskRule{riskv1.RiskRule_RISK_RULE_KILL_SWITCH, riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY}) ||
				res.GetViolations()[1].GetObserved() != 16 {
				t.Errorf("buy 6 after restart: %v, want KILL_SWITCH and POSITION_QUANTITY observed 16", res)
			}
			// A client resuming after the last event it had sees exactly the
			// new rejection, with the next sequence.
			resumed := watchRisk(ctx, t, client, last, 1)
			if len(resumed) != 1 || resumed[0].GetType() != riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED ||
				resumed[0].GetSequence() != last+1 || resumed[0].GetRejection().GetOrder().GetClientOrderId() != "buy-6" {
				t.Errorf("resumed after %d: %v", last, resumed)
			}
			if _, err := client.ResetKillSwitch(ctx, &riskv1.ResetKillSwitchRequest{AccountId: acct, Reason: "drill over"}); err != nil {
				t.Fatal(err)
			}
			if res := checkRisk(ctx, t, client, acct, "buy-5", 5); res.GetDecision() != riskv1.Decision_DECISION_APPROVED {
				t.Errorf("buy 5 (4 + 6 + 5 = 15, at the limit): %v", res)
			}
			if res := checkRisk(ctx, t, client, acct, "buy-1", 1); !slices.Equal(ruleSet(res), []riskv1.RiskRule{riskv1.RiskRule_RISK_RULE_POSITION_QUANTITY}) {
				t.Errorf("buy 1 more: %v, want POSITION_QUANTITY", res)
			}
			// The reservation approved before the crash can still be filled.
			fill, err := client.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: acct, Fill: &riskv1.Fill{
				FillId: "fill-2", ReservationId: resID, Quantity: 6, Price: 50,
			}})
			if err != nil || fill.GetReservation().GetState() != riskv1.ReservationState_RESERVATION_STATE_FILLED ||
				fill.GetPosition().GetQuantity() != 10 || len(fill.GetBreaches()) != 0 || fill.GetLate() {
				t.Errorf("fill of the rest after restart: %v %v", fill, err)
			}
			p2.stop(t)
		})
	}
}

// microsecondTimes compares timestamps to the microsecond: the store keeps
// times in microseconds, so a time taken from the clock in memory comes
// back from the database without its nanoseconds.
var microsecondTimes = protocmp.FilterMessage(&timestamppb.Timestamp{}, cmp.Comparer(func(a, b protocmp.Message) bool {
	field := func(m protocmp.Message, name string) int64 {
		switch v := m[name].(type) {
		case int64:
			return v
		case int32:
			return int64(v)
		}
		return 0
	}
	return field(a, "seconds") == field(b, "seconds") && field(a, "nanos")/1000 == field(b, "nanos")/1000
}))

// riskSnapshot is what GetPortfolio and GetLimits show of one account.
type riskSnapshot struct {
	portfolio *riskv1.Portfolio
	limits    *riskv1.Limits
}

func riskState(ctx context.Context, t *testing.T, client riskv1.RiskServiceClient, acct string) riskSnapshot {
	t.Helper()
	pf, err := client.GetPortfolio(ctx, &riskv1.GetPortfolioRequest{AccountId: acct})
	if err != nil {
		t.Fatal(err)
	}
	l, err := client.GetLimits(ctx, &riskv1.GetLimitsRequest{AccountId: acct})
	if err != nil {
		t.Fatal(err)
	}
	return riskSnapshot{portfolio: pf.GetPortfolio(), limits: l.GetLimits()}
}

func checkRisk(ctx context.Context, t *testing.T, client riskv1.RiskServiceClient, acct, id string, qty float64) *riskv1.OrderCheckResult {
	t.Helper()
	resp, err := client.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: &riskv1.Order{
		AccountId: acct, ClientOrderId: id, Symbol: "AAA", Side: riskv1.OrderSide_ORDER_SIDE_BUY,
		Type: riskv1.OrderType_ORDER_TYPE_MARKET, Quantity: qty,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetResult()
}

func ruleSet(res *riskv1.OrderCheckResult) []riskv1.RiskRule {
	var out []riskv1.RiskRule
	for _, v := range res.GetViolations() {
		out = append(out, v.GetRule())
	}
	return out
}

// watchRisk subscribes to WatchRiskEvents after sequence after and returns
// the first n events (fewer if none arrive for a second).
func watchRisk(ctx context.Context, t *testing.T, client riskv1.RiskServiceClient, after uint64, n int) []*riskv1.RiskEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchRiskEvents(ctx, &riskv1.WatchRiskEventsRequest{AfterSequence: after})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *riskv1.RiskEvent)
	go func() {
		defer close(got)
		for {
			msg, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case got <- msg.GetEvent():
			case <-ctx.Done():
				return
			}
		}
	}()
	var out []*riskv1.RiskEvent
	for len(out) < n {
		select {
		case ev, ok := <-got:
			if !ok {
				return out
			}
			out = append(out, ev)
		case <-time.After(time.Second):
			return out
		}
	}
	return out
}
