package inference

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/protobuf/proto"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
)

// ForensicsGroup is the consumer group of the forensics consumer.
const ForensicsGroup = "forensics"

// Forensics persists the decisions published on the bus topic decisions,
// in batches, idempotently by decision id: a batch redelivered after a crash
// stores nothing twice.
//
// Metrics:
//
//	quantmesh_forensics_decisions_persisted_total   decisions stored (new ones)
//	quantmesh_forensics_lag_seconds                 age of the oldest decision on the bus not yet stored; 0 when caught up
//	quantmesh_forensics_backlog                     decisions on the bus not yet stored, as of the last batch
//	quantmesh_forensics_batch_size                  decisions per batch (histogram)
//	quantmesh_forensics_errors_total                batches that failed to store (they are redelivered)
type Forensics struct {
	consumer bus.Consumer
	store    DecisionStore
	log      *slog.Logger
	now      func() time.Time

	persisted metric.Int64Counter
	batches   metric.Int64Histogram
	failures  metric.Int64Counter

	mu sync.Mutex
	// By partition, as of the last batch: decisions not yet stored, and
	// since when (the bus time of the first of them, or of the last stored
	// one when the next is not known yet).
	backlog map[int32]int64
	pending map[int32]time.Time
}

// ForensicsConfig sizes the consumer's batches.
type ForensicsConfig struct {
	// MaxBatch is the most decisions stored per transaction; 0 means 2000.
	MaxBatch int
	// MaxWait is how long a partial batch waits; 0 means 10ms. It bounds
	// the lag added by batching.
	MaxWait time.Duration
}

// NewForensics returns a consumer of c that stores into st. meter may be
// nil.
func NewForensics(c bus.Consumer, st DecisionStore, log *slog.Logger, meter metric.Meter) (*Forensics, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	f := &Forensics{consumer: c, store: st, log: log, now: time.Now, backlog: map[int32]int64{}, pending: map[int32]time.Time{}}
	var err error
	if f.persisted, err = meter.Int64Counter("quantmesh.forensics.decisions.persisted",
		metric.WithDescription("Decisions stored by the forensics consumer (redelivered ones not counted again).")); err != nil {
		return nil, err
	}
	if f.batches, err = meter.Int64Histogram("quantmesh.forensics.batch.size",
		metric.WithDescription("Decisions per forensics batch."),
		metric.WithExplicitBucketBoundaries(1, 10, 50, 100, 250, 500, 1000, 2000)); err != nil {
		return nil, err
	}
	if f.failures, err = meter.Int64Counter("quantmesh.forensics.errors",
		metric.WithDescription("Forensics batches that failed to store; they are redelivered.")); err != nil {
		return nil, err
	}
	lag, err := meter.Float64ObservableGauge("quantmesh.forensics.lag", metric.WithUnit("s"),
		metric.WithDescription("How far the forensics consumer is behind: the age of the oldest decision on the bus not yet stored, 0 when nothing is waiting."))
	if err != nil {
		return nil, err
	}
	backlog, err := meter.Int64ObservableGauge("quantmesh.forensics.backlog",
		metric.WithDescription("Decisions on the bus that the forensics consumer has not stored yet, as of its last batch."))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		l, b := f.Lag()
		o.ObserveFloat64(lag, l.Seconds())
		o.ObserveInt64(backlog, b)
		return nil
	}, lag, backlog); err != nil {
		return nil, err
	}
	f.persisted.Add(context.Background(), 0)
	f.failures.Add(context.Background(), 0)
	return f, nil
}

// Lag returns how old the oldest decision not yet stored is (0 when
// caught up) and how many decisions wait, as of the consumer's last batch.
// A consumer that is stuck keeps reporting a growing lag.
func (f *Forensics) Lag() (time.Duration, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		b   int64
		lag time.Duration
	)
	now := f.now()
	for p, n := range f.backlog {
		if n == 0 {
			continue
		}
		b += n
		lag = max(lag, now.Sub(f.pending[p]))
	}
	return lag, b
}

// note records the backlog of a partition after a batch.
func (f *Forensics) note(partition int32, waiting int64, since time.Time) {
	f.mu.Lock()
	f.backlog[partition] = waiting
	f.pending[partition] = since
	f.mu.Unlock()
}

// Run consumes until ctx is done. A batch that fails to store is
// redelivered by the bus after a backoff; Run returns only when ctx ends
// or the bus is closed.
func (f *Forensics) Run(ctx context.Context, cfg ForensicsConfig) error {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 2000
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 10 * time.Millisecond
	}
	return f.consumer.Consume(ctx, bus.ConsumerConfig{
		Group: ForensicsGroup, Topics: []string{bus.TopicDecisions}, MaxBatch: cfg.MaxBatch, MaxWait: cfg.MaxWait,
		Assigned: f.assigned,
	}, f.handle)
}

// assigned forgets the backlog of partitions this consumer no longer
// reads (a rebalance gave them to another): their lag is the new owner's
// to report, and here it would only grow.
func (f *Forensics) assigned(partitions map[string][]int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.backlog {
		if !slices.Contains(partitions[bus.TopicDecisions], p) {
			delete(f.backlog, p)
			delete(f.pending, p)
		}
	}
}

func (f *Forensics) handle(ctx context.Context, msgs []bus.Message) error {
	ds := make([]*inferencev1.Decision, 0, len(msgs))
	for _, m := range msgs {
		d := &inferencev1.Decision{}
		if err := proto.Unmarshal(m.Value, d); err != nil || d.GetDecisionId() == "" || d.GetDecisionTime() == nil {
			// A record that can never be stored must not block the topic:
			// log it and move on.
			f.log.Error("forensics: undecodable decision skipped", "partition", m.Partition, "offset", m.Offset, "err", err)
			continue
		}
		ds = append(ds, d)
	}
	first, last := msgs[0], msgs[len(msgs)-1]
	n, err := f.store.InsertDecisions(ctx, ds, f.now())
	if err != nil {
		f.note(first.Partition, first.Behind+1, first.Time)
		if ctx.Err() == nil { // not a shutdown: a real failure
			f.failures.Add(ctx, 1)
			f.log.Error("forensics: store decisions", "decisions", len(ds), "err", err)
		}
		return fmt.Errorf("store %d decisions: %w", len(ds), err)
	}
	f.persisted.Add(ctx, int64(n))
	f.batches.Record(ctx, int64(len(ds)))
	f.note(last.Partition, last.Behind, last.Time)
	return nil
}
