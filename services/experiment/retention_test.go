package experiment

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRetentionPlan(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 31, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	old := 100 * day
	// ck is a checkpoint logged age before now.
	ck := func(id, key string, value float64, age time.Duration) RetentionCandidate {
		return RetentionCandidate{Checkpoint: &Checkpoint{ID: id, MetricKey: key, MetricValue: value, CreateTime: now.Add(-age)}}
	}
	aliased := func(c RetentionCandidate) RetentionCandidate { c.Aliased = true; return c }
	production := func(c RetentionCandidate) RetentionCandidate { c.Production = true; return c }
	const (
		del  = KeepNone
		best = KeepBest
		rec  = KeepRecent
	)
	tests := []struct {
		name   string
		policy RetentionPolicy
		cands  []RetentionCandidate
		want   []KeepReason
	}{
		{
			name:   "best 2 by minimum",
			policy: RetentionPolicy{MetricKey: "val_loss", Goal: Minimize, KeepBest: 2},
			cands: []RetentionCandidate{
				ck("a", "val_loss", 0.5, old), ck("b", "val_loss", 0.1, old), ck("c", "val_loss", 0.3, old),
				ck("d", "val_loss", 0.9, old), ck("e", "val_loss", 0.2, old),
			},
			want: []KeepReason{del, best, del, del, best},
		},
		{
			name:   "best 2 by maximum",
			policy: RetentionPolicy{MetricKey: "sharpe", Goal: Maximize, KeepBest: 2},
			cands: []RetentionCandidate{
				ck("a", "sharpe", 0.5, old), ck("b", "sharpe", 0.1, old), ck("c", "sharpe", -3, old),
				ck("d", "sharpe", 0.9, old), ck("e", "sharpe", 0.2, old),
			},
			want: []KeepReason{best, del, del, best, del},
		},
		{
			name:   "negative values rank by value",
			policy: RetentionPolicy{MetricKey: "pnl", Goal: Minimize, KeepBest: 1},
			cands:  []RetentionCandidate{ck("a", "pnl", -1, old), ck("b", "pnl", -5, old), ck("c", "pnl", 0, old)},
			want:   []KeepReason{del, best, del},
		},
		{
			name:   "age window keeps the last 7 days, the boundary included",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepDays: 7},
			cands: []RetentionCandidate{
				ck("a", "val_loss", 1, time.Hour), ck("b", "val_loss", 1, 7*day-time.Millisecond),
				ck("c", "val_loss", 1, 7*day), ck("d", "val_loss", 1, 7*day+time.Millisecond), ck("e", "val_loss", 1, old),
			},
			want: []KeepReason{rec, rec, rec, del, del},
		},
		{
			name:   "a future create time (clock skew) is recent",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepDays: 1},
			cands:  []RetentionCandidate{ck("a", "val_loss", 1, -time.Hour)},
			want:   []KeepReason{rec},
		},
		{
			name:   "best and recent together",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1, KeepDays: 30},
			cands: []RetentionCandidate{
				ck("a", "val_loss", 0.1, day), ck("b", "val_loss", 0.2, old), ck("c", "val_loss", 0.05, old), ck("d", "val_loss", 0.9, 2*day),
			},
			want: []KeepReason{rec, del, best, rec},
		},
		{
			name:   "a checkpoint both best and recent has both reasons",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1, KeepDays: 30},
			cands:  []RetentionCandidate{ck("a", "val_loss", 0.1, day), ck("b", "val_loss", 0.2, old)},
			want:   []KeepReason{best | rec, del},
		},
		{
			name:   "another metric ranks after every checkpoint with the policy's metric",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 3},
			cands: []RetentionCandidate{
				ck("a", "train_loss", 0.001, old), ck("b", "val_loss", 0.9, old), ck("c", "train_loss", 0.002, 50*day),
				ck("d", "val_loss", 0.8, old), ck("e", "accuracy", 0.99, 60*day),
			},
			// Both val_loss checkpoints, then the newest of the others
			// (c, 50 days old), whatever their values.
			want: []KeepReason{del, best, best, best, del},
		},
		{
			name:   "another metric is compared by age only, whatever the goal",
			policy: RetentionPolicy{MetricKey: "val_loss", Goal: Maximize, KeepBest: 1},
			cands:  []RetentionCandidate{ck("a", "loss", 100, old), ck("b", "loss", 1, 50*day)},
			want:   []KeepReason{del, best},
		},
		{
			name:   "a tie keeps the newer checkpoint",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1},
			cands:  []RetentionCandidate{ck("a", "val_loss", 0.5, 60*day), ck("b", "val_loss", 0.5, 40*day), ck("c", "val_loss", 0.5, 50*day)},
			want:   []KeepReason{del, best, del},
		},
		{
			name:   "a tie at the same time keeps the larger id",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1},
			cands:  []RetentionCandidate{ck("b", "val_loss", 0.5, old), ck("c", "val_loss", 0.5, old), ck("a", "val_loss", 0.5, old)},
			want:   []KeepReason{del, best, del},
		},
		{
			name:   "NaN ranks after every number, before another metric",
			policy: RetentionPolicy{MetricKey: "val_loss", Goal: Maximize, KeepBest: 2},
			cands:  []RetentionCandidate{ck("a", "val_loss", math.NaN(), old), ck("b", "val_loss", -1e300, old), ck("c", "other", 1, day)},
			want:   []KeepReason{best, best, del},
		},
		{
			name:   "keep_best 0 keeps none by rank",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 0, KeepDays: 30},
			cands:  []RetentionCandidate{ck("a", "val_loss", 0.0001, old), ck("b", "val_loss", 5, day)},
			want:   []KeepReason{del, rec},
		},
		{
			name:   "keep_days 0 keeps none by age",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1, KeepDays: 0},
			cands:  []RetentionCandidate{ck("a", "val_loss", 0.1, old), ck("b", "val_loss", 5, 0)},
			want:   []KeepReason{best, del},
		},
		{
			name:   "keep_best 0 and keep_days 0 delete everything unprotected",
			policy: RetentionPolicy{MetricKey: "val_loss"},
			cands:  []RetentionCandidate{ck("a", "val_loss", 0.1, 0), aliased(ck("b", "val_loss", 5, old))},
			want:   []KeepReason{del, KeepAliased},
		},
		{
			name:   "keep_best above the count keeps everything",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 10},
			cands:  []RetentionCandidate{ck("a", "val_loss", 0.1, old), ck("b", "x", 5, old)},
			want:   []KeepReason{best, best},
		},
		{
			name:   "protection by alias and by production tag overrides the policy",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1, KeepDays: 7},
			cands: []RetentionCandidate{
				ck("a", "val_loss", 0.1, old), aliased(ck("b", "val_loss", 99, old)),
				production(ck("c", "other", 99, old)), ck("d", "val_loss", 50, old),
				aliased(production(ck("e", "val_loss", 0.05, day))),
			},
			// Protected checkpoints do not take the best slot from
			// others: e is best, and so a is deleted.
			want: []KeepReason{del, KeepAliased, KeepProduction, del, best | rec | KeepAliased | KeepProduction},
		},
		{
			name:   "protected checkpoints are kept in addition to the best",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 1},
			cands:  []RetentionCandidate{aliased(ck("a", "val_loss", 9, old)), ck("b", "val_loss", 1, old), ck("c", "val_loss", 2, old)},
			want:   []KeepReason{KeepAliased, best, del},
		},
		{
			name:   "no checkpoints",
			policy: RetentionPolicy{MetricKey: "val_loss", KeepBest: 10, KeepDays: 30},
			want:   []KeepReason{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.policy.Plan(tt.cands, now)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("verdicts (-want +got):\n%s\nwant %v\ngot  %v", diff, tt.want, got)
			}
		})
	}
}

func TestKeepReasonString(t *testing.T) {
	t.Parallel()
	for r, want := range map[KeepReason]string{
		KeepNone:                     "delete",
		KeepBest:                     "best",
		KeepBest | KeepRecent:        "best+recent",
		KeepAliased | KeepProduction: "aliased+production",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", r, got, want)
		}
	}
	if KeepBest.Protected() || KeepRecent.Protected() || !KeepAliased.Protected() || !KeepProduction.Protected() {
		t.Error("Protected: only aliases and production tags protect")
	}
}
