package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Defaults shared by the implementations.
const (
	// DefaultMaxBatch is the batch size used when ConsumerConfig.MaxBatch is 0.
	DefaultMaxBatch = 500
	// DefaultMaxWait is the partial-batch wait used when ConsumerConfig.MaxWait
	// is 0.
	DefaultMaxWait = 50 * time.Millisecond
	// DefaultBackoffMin is the first redelivery delay used when Backoff.Min
	// is 0.
	DefaultBackoffMin = 100 * time.Millisecond
	// DefaultBackoffMax is the largest redelivery delay used when
	// Backoff.Max is 0.
	DefaultBackoffMax = 10 * time.Second
)

// Backoff says how long a consumer waits before it redelivers a batch whose
// handler returned an error. The delay starts at Min, doubles on every
// further failure of the same batch up to Max, and carries ±10% jitter.
// Redelivery never gives up: a batch is retried until its handler succeeds
// or the consumer stops.
type Backoff struct {
	// Min is the delay before the first redelivery; 0 means
	// DefaultBackoffMin.
	Min time.Duration
	// Max caps the delay; 0 means DefaultBackoffMax.
	Max time.Duration
}

// Validate reports a negative delay or Min above Max.
func (b Backoff) Validate() error {
	switch {
	case b.Min < 0:
		return fmt.Errorf("Backoff.Min %s: must not be negative", b.Min)
	case b.Max < 0:
		return fmt.Errorf("Backoff.Max %s: must not be negative", b.Max)
	}
	lo, hi := cmp.Or(b.Min, DefaultBackoffMin), cmp.Or(b.Max, DefaultBackoffMax)
	if lo > hi {
		return fmt.Errorf("Backoff.Min %s: must not exceed Backoff.Max %s", lo, hi)
	}
	return nil
}

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = DefaultBackoffMin
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	return b
}

// normalize validates cfg and fills in its defaults.
func (cfg ConsumerConfig) normalize() (ConsumerConfig, error) {
	if cfg.Group == "" {
		return cfg, errors.New("bus: consume: ConsumerConfig.Group is empty")
	}
	if len(cfg.Topics) == 0 {
		return cfg, fmt.Errorf("bus: consume %s: ConsumerConfig.Topics is empty", cfg.Group)
	}
	seen := make(map[string]bool, len(cfg.Topics))
	topics := make([]string, 0, len(cfg.Topics))
	for i, t := range cfg.Topics {
		if t == "" {
			return cfg, fmt.Errorf("bus: consume %s: ConsumerConfig.Topics[%d] is empty", cfg.Group, i)
		}
		if !seen[t] {
			seen[t] = true
			topics = append(topics, t)
		}
	}
	cfg.Topics = topics
	if cfg.MaxBatch < 0 {
		return cfg, fmt.Errorf("bus: consume %s: ConsumerConfig.MaxBatch %d is negative", cfg.Group, cfg.MaxBatch)
	}
	if cfg.MaxWait < 0 {
		return cfg, fmt.Errorf("bus: consume %s: ConsumerConfig.MaxWait %s is negative", cfg.Group, cfg.MaxWait)
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	return cfg, nil
}

// validateMessages rejects a publish that names no topic, before anything
// is appended.
func validateMessages(msgs []Message) error {
	for i := range msgs {
		if msgs[i].Topic == "" {
			return fmt.Errorf("bus: publish: message %d: Topic is empty", i)
		}
	}
	return nil
}

// redeliverer hands batches to a handler and retries them with backoff until
// the handler succeeds.
type redeliverer struct {
	backoff Backoff
	log     *slog.Logger
	group   string
}

func newRedeliverer(b Backoff, log *slog.Logger, group string) *redeliverer {
	return &redeliverer{backoff: b.withDefaults(), log: log, group: group}
}

// delay is the wait before redelivery number attempt (1-based): Min doubled
// per earlier failure, capped at Max, with ±10% jitter.
func (b Backoff) delay(attempt int) time.Duration {
	d := b.Min
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
	return max(d+jitter, 0)
}

// deliver calls h with batch until h returns nil, then reports true. It
// stops retrying, and reports false, once stop is done; a handler call
// already running is not interrupted by stop (h receives hctx), so a batch
// in flight when the consumer is asked to stop still commits if h succeeds.
func (r *redeliverer) deliver(stop, hctx context.Context, h BatchHandler, batch []Message) bool {
	if len(batch) == 0 {
		return false
	}
	first := batch[0]
	for attempt := 1; stop.Err() == nil; attempt++ {
		err := h(hctx, batch)
		if err == nil {
			return true
		}
		wait := r.backoff.delay(attempt)
		r.log.LogAttrs(hctx, slog.LevelWarn, "bus: handler failed; batch will be redelivered",
			slog.String("group", r.group),
			slog.String("topic", first.Topic),
			slog.Int("partition", int(first.Partition)),
			slog.Int64("offset", first.Offset),
			slog.Int("size", len(batch)),
			slog.Int("attempt", attempt),
			slog.Duration("backoff", wait),
			slog.Any("error", err),
		)
		if !sleepCtx(stop, wait) {
			break
		}
	}
	return false
}

// loggerOr returns l, or slog.Default() when l is nil.
func loggerOr(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// sleepCtx waits for d or until ctx is done, and reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
