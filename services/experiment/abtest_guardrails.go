package experiment

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// guardrailInterval is the least time between two evaluations of one
// test's guardrails (each reads the test's aggregates).
const guardrailInterval = 2 * time.Second

// guardrails remembers when each test's guardrails were last evaluated.
type guardrails struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// due reports whether test id should be evaluated now, and marks it.
func (g *guardrails) due(id string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.last == nil {
		g.last = map[string]time.Time{}
	}
	if now.Sub(g.last[id]) < guardrailInterval {
		return false
	}
	g.last[id] = now
	return true
}

// breach says which guardrail of t its aggregates breach; "" when none (or
// when an arm has fewer than min_observations observations).
func breach(t *ABTest, st *ABStats) string {
	if t.MaxLatencyP95Ratio == 0 && t.MinAgreementRate == 0 {
		return ""
	}
	control, treatment := st.Control.Requests, st.Treatment.Requests
	ctlP95, trtP95 := st.Control.LatencyP95MS, st.Treatment.LatencyP95MS
	if t.Mode == modeShadow {
		control, treatment = st.Paired, st.Paired
		ctlP95, trtP95 = st.PairedControlP95MS, st.PairedTreatmentP95MS
	}
	if control < max(t.MinObservations, 1) || treatment < max(t.MinObservations, 1) {
		return ""
	}
	if r := t.MaxLatencyP95Ratio; r > 0 && ctlP95 > 0 && trtP95/ctlP95 > r {
		return fmt.Sprintf("treatment latency p95 %.3f ms is %.2fx control's %.3f ms (max_latency_p95_ratio %.2f)", trtP95, trtP95/ctlP95, ctlP95, r)
	}
	if a := t.MinAgreementRate; a > 0 && st.Paired > 0 {
		if rate := float64(st.Agreements) / float64(st.Paired); rate < a {
			return fmt.Sprintf("agreement rate %.4f is below min_agreement_rate %.4f", rate, a)
		}
	}
	return ""
}

// checkGuardrails evaluates the guardrails of the running tests among ids
// (at most once per guardrailInterval each) and pauses those breached.
// Failures are logged: observations are stored either way.
func (s *Server) checkGuardrails(ctx context.Context, ids map[string]bool) {
	for id := range ids {
		if !s.guard.due(id, s.now()) {
			continue
		}
		t, err := s.store.GetABTest(ctx, id)
		if err != nil || t.State != stateRunning || (t.MaxLatencyP95Ratio == 0 && t.MinAgreementRate == 0) {
			continue
		}
		st, err := s.store.ABStats(ctx, id, time.Time{}) // guardrails do not use the SRM units
		if err != nil {
			s.log.Warn("A/B guardrails not evaluated", "ab_test_id", id, "err", err)
			continue
		}
		why := breach(t, st)
		if why == "" {
			continue
		}
		_, err = s.abUpdate(ctx, id, func(t *ABTest) (*AliasMove, error) {
			if t.State != stateRunning {
				return nil, errNotRunning
			}
			t.State = statePaused
			return nil, nil
		})
		switch {
		case errors.Is(err, errNotRunning):
		case err != nil:
			s.log.Error("A/B guardrail breached but the test was not paused", "ab_test_id", id, "breach", why, "err", err)
		default:
			s.log.Warn("A/B guardrail breached: test paused", "ab_test_id", id, "breach", why)
		}
	}
}

var errNotRunning = apierr.FailedPrecondition("AB_TEST_NOT_RUNNING", "the test is no longer running")
