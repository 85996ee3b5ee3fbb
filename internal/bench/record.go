package bench

import (
	"context"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// maxLatencyUS is the largest latency a histogram tracks, in microseconds;
// longer samples are recorded as this value.
const maxLatencyUS = 60_000_000

// newHistogram returns an empty latency histogram: 1 µs to 60 s, three
// significant digits.
func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, maxLatencyUS, 3)
}

// recordLatency adds d to h in whole microseconds (rounded, at least 1 µs,
// at most maxLatencyUS).
func recordLatency(h *hdrhistogram.Histogram, d time.Duration) {
	us := int64((d + time.Microsecond/2) / time.Microsecond)
	us = max(1, min(us, maxLatencyUS))
	_ = h.RecordValue(us) // in range by construction
}

// recorder holds one worker's named timings and counters. Only the worker's
// goroutine touches it, so it needs no locking.
type recorder struct {
	// measuring is false during the warm-up: nothing is kept.
	measuring bool
	timings   map[string]*hdrhistogram.Histogram
	counters  map[string]int64
}

func newRecorder() *recorder {
	return &recorder{timings: map[string]*hdrhistogram.Histogram{}, counters: map[string]int64{}}
}

type recorderKey struct{}

// Record adds a named sub-latency of the current operation, such as the
// create and the get of a create-then-get operation. The report prints each
// name as "<name>_latency_us" with p50, p95, p99 and max. Samples taken during
// the warm-up are dropped. Call it from the goroutine running Op, before Op
// returns; outside a run it does nothing.
func Record(ctx context.Context, name string, d time.Duration) {
	r, ok := ctx.Value(recorderKey{}).(*recorder)
	if !ok || !r.measuring {
		return
	}
	h := r.timings[name]
	if h == nil {
		h = newHistogram()
		r.timings[name] = h
	}
	recordLatency(h, d)
}

// Count adds n to a named counter, such as "creates" or "metrics". The
// report prints each counter as "<name>" and its rate over the measured
// window as "<name>_per_s". Counts made during the warm-up are dropped. Call
// it from the goroutine running Op, before Op returns; outside a run it does
// nothing.
func Count(ctx context.Context, name string, n int64) {
	r, ok := ctx.Value(recorderKey{}).(*recorder)
	if !ok || !r.measuring {
		return
	}
	r.counters[name] += n
}
