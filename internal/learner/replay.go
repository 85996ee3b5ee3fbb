package learner

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/quantmesh/quantmesh/pkg/policy"
)

// Outcome is a decision joined with what happened: its features and the
// action that the realised forward return says would have been right.
type Outcome struct {
	Symbol   string
	Time     time.Time
	Features []float64
	Label    policy.Action
}

// Replay is a bounded buffer of outcomes: the newest Cap are kept, in
// arrival order. It is safe for concurrent use.
type Replay struct {
	mu    sync.Mutex
	buf   []Outcome
	next  int // where the next outcome goes once full
	added int64
}

// NewReplay returns an empty buffer of capacity n ≥ 1.
func NewReplay(n int) *Replay { return &Replay{buf: make([]Outcome, 0, max(n, 1))} }

// Add appends outcomes, dropping the oldest beyond the capacity. An
// outcome with a non-finite feature or an invalid label is refused.
func (r *Replay) Add(os ...Outcome) error {
	for i, o := range os {
		if !o.Label.Valid() {
			return fmt.Errorf("outcome %d: label %d is not an action", i, int(o.Label))
		}
		if len(o.Features) == 0 {
			return fmt.Errorf("outcome %d: no features", i)
		}
		for j, v := range o.Features {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("outcome %d: feature %d is %v", i, j, v)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range os {
		if len(r.buf) < cap(r.buf) {
			r.buf = append(r.buf, o)
		} else {
			r.buf[r.next] = o
			r.next = (r.next + 1) % len(r.buf)
		}
		r.added++
	}
	return nil
}

// Len is the number of outcomes held.
func (r *Replay) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buf)
}

// Added is the number of outcomes ever added.
func (r *Replay) Added() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.added
}

// Snapshot returns the outcomes held, oldest first, and Added at the same
// moment: outcome i is the (added − len + i + 1)-th ever added.
func (r *Replay) Snapshot() (outs []Outcome, added int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Outcome, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...), r.added
}
