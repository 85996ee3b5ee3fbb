package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

func init() {
	Register(Spec{
		Name:    "risk",
		Summary: "CheckOrder for a random one of 1000 accounts, every rule enabled and generous",
		New:     func() Scenario { return &riskScenario{} },
	})
}

// Shape of the risk scenario's workload.
const (
	riskAccounts = 1000
	riskSymbols  = 50
	// riskTTL is the accounts' reservation_ttl: approvals expire quickly,
	// so each account's open reservations stay few and the check's cost
	// stays that of a steady state.
	riskTTL = 5 * time.Second
	// riskSetupWorkers bounds the concurrent SetLimits calls of Setup.
	riskSetupWorkers = 16
)

// riskScenario measures RiskService's hot path: one operation is one
// CheckOrder over gRPC, for a random account, symbol and side, a market
// order or a limit order within 1% of the reference price, of 1 to 10
// units.
//
// Setup creates riskAccounts accounts (named under a prefix unique to the
// run, so runs against one database never collide) with every limit set,
// so every rule is evaluated, and set so generously that orders pass: the
// reservations an account can accumulate in a 30-second run at any
// throughput this machine reaches stay far below its position, exposure,
// leverage and concentration limits, the order-rate bucket never empties,
// and client order ids are unique. Prices do not move, so the daily loss
// and drawdown rules pass. Reservations expire after riskTTL.
//
// approved and rejected count the decisions in the measured window; a
// rejection is not an error (the RPC worked) but should not happen:
// rejected_rules counts the rules of every rejection, warm-up included. Accounts are not deleted afterwards (the API has no
// delete): a PostgreSQL database or a running mesh keeps them.
type riskScenario struct {
	client  riskv1.RiskServiceClient
	prefix  string
	symbols []string
	prices  []float64
	rngs    []*rand.Rand // per worker

	mu    sync.Mutex
	rules map[string]int64 // rules of rejections, by name
}

// Name implements Scenario.
func (s *riskScenario) Name() string { return "risk" }

// Setup implements Scenario.
func (s *riskScenario) Setup(ctx context.Context, env Env) error {
	s.client = riskv1.NewRiskServiceClient(env.Conn)
	s.prefix = fmt.Sprintf("bench-%s-%08x-", time.Now().UTC().Format("20060102T150405"), rand.Uint32())
	s.rules = map[string]int64{}
	s.rngs = make([]*rand.Rand, env.Concurrency)
	for i := range s.rngs {
		s.rngs[i] = rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	}

	updates := make([]*riskv1.PriceUpdate, riskSymbols)
	for i := range updates {
		s.symbols = append(s.symbols, "BENCH"+strconv.Itoa(i))
		s.prices = append(s.prices, float64(20+10*i))
		updates[i] = &riskv1.PriceUpdate{Symbol: s.symbols[i], Price: s.prices[i]}
	}
	if _, err := s.client.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: updates}); err != nil {
		return fmt.Errorf("UpdatePrices: %w", err)
	}

	// Create the accounts, a few at a time.
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range riskSetupWorkers {
		wg.Go(func() {
			for k := range next {
				if err := s.createAccount(ctx, k); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
feed:
	for k := range riskAccounts {
		select {
		case next <- k:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("create %d accounts: %d failed, first: %w", riskAccounts, len(errs), errs[0])
	}
	return ctx.Err()
}

func (s *riskScenario) account(k int) string { return s.prefix + strconv.Itoa(k) }

// createAccount creates account k with generous limits and cash.
func (s *riskScenario) createAccount(ctx context.Context, k int) error {
	f := func(v float64) *float64 { return &v }
	burst := int32(100_000)
	cash := 1e9
	_, err := s.client.SetLimits(ctx, &riskv1.SetLimitsRequest{
		Limits: &riskv1.Limits{
			AccountId:               s.account(k),
			RestrictedSymbols:       []string{"BENCH-RESTRICTED"},
			MaxOrderQuantity:        f(1_000),
			MaxOrderNotional:        f(1e7),
			PriceCollarPercent:      f(10),
			DuplicateWindow:         durationpb.New(time.Minute),
			MaxOrdersPerSecond:      f(100_000),
			OrderBurst:              &burst,
			MaxPositionQuantity:     f(1e7),
			MaxPositionNotional:     f(1e9),
			MaxGrossExposure:        f(1e10),
			MaxLeverage:             f(10),
			MaxConcentrationPercent: f(100),
			MaxDailyLoss:            f(1e8),
			MaxDrawdownPercent:      f(50),
			ReservationTtl:          durationpb.New(riskTTL),
		},
		UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"*"}},
		CashBalance: &cash,
		Reason:      "quantmesh bench risk",
	})
	if err != nil {
		return fmt.Errorf("SetLimits %s: %w", s.account(k), err)
	}
	return nil
}

// Op implements Scenario.
func (s *riskScenario) Op(ctx context.Context, worker, i int) error {
	rng := s.rngs[worker]
	k := rng.IntN(len(s.symbols))
	o := &riskv1.Order{
		AccountId:     s.account(rng.IntN(riskAccounts)),
		ClientOrderId: "w" + strconv.Itoa(worker) + "-" + strconv.Itoa(i),
		Symbol:        s.symbols[k],
		Side:          riskv1.OrderSide_ORDER_SIDE_BUY,
		Type:          riskv1.OrderType_ORDER_TYPE_MARKET,
		Quantity:      float64(1 + rng.IntN(10)),
	}
	if rng.IntN(2) == 0 {
		o.Side = riskv1.OrderSide_ORDER_SIDE_SELL
	}
	if rng.IntN(2) == 0 {
		o.Type = riskv1.OrderType_ORDER_TYPE_LIMIT
		o.LimitPrice = s.prices[k] * (0.99 + 0.02*rng.Float64())
	}
	resp, err := s.client.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: o})
	if err != nil {
		return fmt.Errorf("CheckOrder: %w", err)
	}
	switch r := resp.GetResult(); r.GetDecision() {
	case riskv1.Decision_DECISION_APPROVED:
		if r.GetReservation().GetReservationId() == "" {
			return errors.New("CheckOrder approved without a reservation")
		}
		Count(ctx, "approved", 1)
		Count(ctx, "rejected", 0) // both counters appear in the report
	case riskv1.Decision_DECISION_REJECTED:
		Count(ctx, "approved", 0)
		Count(ctx, "rejected", 1)
		s.mu.Lock()
		for _, v := range r.GetViolations() {
			s.rules[strings.ToLower(strings.TrimPrefix(v.GetRule().String(), "RISK_RULE_"))]++
		}
		s.mu.Unlock()
	default:
		return fmt.Errorf("CheckOrder decision %v", r.GetDecision())
	}
	return nil
}

// Fields implements Scenario.
func (s *riskScenario) Fields() map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	rules := make(map[string]int64, len(s.rules))
	for name, n := range s.rules {
		rules[name] = n
	}
	return map[string]any{
		"op":             "CheckOrder",
		"accounts":       riskAccounts,
		"symbols":        len(s.symbols),
		"account_prefix": s.prefix,
		"rejected_rules": rules,
	}
}
