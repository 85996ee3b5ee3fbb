package experiment

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"
)

// Retention defaults, as the proto states them.
const (
	DefaultKeepBest = 10
	DefaultKeepDays = 30
)

// ProductionTag is the word that marks a model version as production in
// its tags. ProductionTagRule: a model version is marked production when
// any of its tags has the key "production" (whatever its value, "false"
// included) or the value "production" (stage=production, env=Production),
// compared without surrounding spaces and ignoring ASCII case. The rule errs
// on the side of keeping: deleting a checkpoint cannot be undone, keeping
// one costs only bytes.
const ProductionTag = "production"

// MetricGoal says whether a smaller or a larger metric is better.
type MetricGoal int

// Goals.
const (
	Minimize MetricGoal = iota
	Maximize
)

// KeepReason is the set of reasons a retention policy keeps a checkpoint;
// KeepNone means it is deleted.
type KeepReason uint8

// Reasons to keep a checkpoint.
const (
	KeepNone KeepReason = 0
	// KeepBest: among the best KeepBest by the policy's metric.
	KeepBest KeepReason = 1 << (iota - 1)
	// KeepRecent: logged within the last KeepDays days.
	KeepRecent
	// KeepAliased: an alias points at its model version.
	KeepAliased
	// KeepProduction: its model version is tagged production.
	KeepProduction
)

// Protected reports whether r includes a protection (alias or production
// tag), which no policy overrides.
func (r KeepReason) Protected() bool { return r&(KeepAliased|KeepProduction) != 0 }

func (r KeepReason) String() string {
	if r == KeepNone {
		return "delete"
	}
	var parts []string
	for _, n := range []struct {
		bit  KeepReason
		name string
	}{{KeepBest, "best"}, {KeepRecent, "recent"}, {KeepAliased, "aliased"}, {KeepProduction, "production"}} {
		if r&n.bit != 0 {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, "+")
}

// RetentionPolicy decides which checkpoints of one experiment to keep.
type RetentionPolicy struct {
	// MetricKey ranks checkpoints; those logged with another key rank
	// after every checkpoint logged with it.
	MetricKey string
	Goal      MetricGoal
	// KeepBest keeps the best N by rank; 0 keeps none by rank.
	KeepBest int
	// KeepDays keeps everything logged in the last D days (create time at
	// or after now minus D calendar days); 0 keeps none by age.
	KeepDays int
}

// Plan returns, for each candidate in order, why it is kept, or KeepNone
// when it is to be deleted. A checkpoint is kept when it ranks among the
// best KeepBest, when it is recent, or when it is protected (an alias or a
// production tag on its model version); protected checkpoints are kept in
// addition to the best KeepBest, not in their place.
//
// Ranking: checkpoints logged with MetricKey first, by value (ascending
// for Minimize, descending for Maximize; NaN, which LogCheckpoint rejects,
// after every number), then those logged with another key. Ties, and the
// checkpoints with another key among themselves, go newest first (create
// time, then id), so of two equal checkpoints the later one is kept.
func (p RetentionPolicy) Plan(cands []RetentionCandidate, now time.Time) []KeepReason {
	out := make([]KeepReason, len(cands))
	order := make([]int, len(cands))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return p.compare(cands[a].Checkpoint, cands[b].Checkpoint) })
	for rank, i := range order {
		if rank < p.KeepBest {
			out[i] |= KeepBest
		}
	}
	var cutoff time.Time
	if p.KeepDays > 0 {
		cutoff = now.AddDate(0, 0, -p.KeepDays)
	}
	for i, c := range cands {
		if p.KeepDays > 0 && !c.Checkpoint.CreateTime.Before(cutoff) {
			out[i] |= KeepRecent
		}
		if c.Aliased {
			out[i] |= KeepAliased
		}
		if c.Production {
			out[i] |= KeepProduction
		}
	}
	return out
}

// compare orders a before b when a ranks better.
func (p RetentionPolicy) compare(a, b *Checkpoint) int {
	am, bm := a.MetricKey == p.MetricKey, b.MetricKey == p.MetricKey
	switch {
	case am && !bm:
		return -1
	case !am && bm:
		return 1
	case am && bm:
		if c := p.compareValues(a.MetricValue, b.MetricValue); c != 0 {
			return c
		}
	}
	if c := b.CreateTime.Compare(a.CreateTime); c != 0 {
		return c
	}
	return cmp.Compare(b.ID, a.ID)
}

func (p RetentionPolicy) compareValues(a, b float64) int {
	an, bn := math.IsNaN(a), math.IsNaN(b)
	switch {
	case an && bn:
		return 0
	case an:
		return 1
	case bn:
		return -1
	}
	if p.Goal == Maximize {
		return cmp.Compare(b, a)
	}
	return cmp.Compare(a, b)
}
