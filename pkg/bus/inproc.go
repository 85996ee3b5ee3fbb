package bus

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// DefaultCapacity is the number of messages an in-process topic holds when
// InProcConfig.Capacity is 0.
const DefaultCapacity = 65536

// InProcConfig configures the in-process bus.
type InProcConfig struct {
	// Capacity is the most messages one topic holds. A topic is full when
	// this many messages are waiting for at least one consumer group; then
	// Publish blocks until a group commits or the publisher's ctx is done.
	// 0 (or a negative value) means DefaultCapacity.
	Capacity int
	// Backoff paces redelivery of a batch whose handler failed.
	Backoff Backoff
	// Logger receives the bus's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Validate reports a configuration that NewInProc would have to correct.
func (c InProcConfig) Validate() error {
	if c.Capacity < 0 {
		return fmt.Errorf("bus: inproc config: Capacity %d: must not be negative", c.Capacity)
	}
	if err := c.Backoff.Validate(); err != nil {
		return fmt.Errorf("bus: inproc config: %w", err)
	}
	return nil
}

// InProc is the in-process Bus: one bounded log per topic, held in memory.
//
// Retention: a message stays in its topic until every consumer group that
// has ever consumed the topic on this bus has committed past it. Messages
// published before any group subscribes are kept (up to Capacity) and are
// delivered to the first groups that subscribe. A group that subscribed once
// and never comes back therefore holds its topics' messages, and publishers
// block when the topic fills; the bus keeps nothing across restarts.
// Subscribe registers a group ahead of its first Consume call.
//
// Consumption: a group has one cursor per topic, and one active consumer at
// a time. A second Consume call for a group that is already being consumed
// waits, without consuming, until the first call returns (or its own ctx is
// done). Batches hold messages of one topic, in publish order; the handler is
// never called concurrently by one Consume call. Topics of a group are served
// round-robin, batch by batch.
//
// Delivered messages share their Key, Value and Headers with the other
// groups' deliveries: handlers must treat them as read-only.
type InProc struct {
	capacity int
	backoff  Backoff
	log      *slog.Logger

	closing   context.Context // done once Close starts
	stopAll   context.CancelFunc
	consumers sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	changed chan struct{} // closed and replaced on every change of state
	topics  map[string]*topicLog
	active  map[string]bool // consumer groups with a running Consume
}

var _ Bus = (*InProc)(nil)

// topicLog is one topic: messages base..base+len(msgs)-1 and the cursor of
// every group that has subscribed to it.
type topicLog struct {
	msgs    []Message
	base    int64
	cursors map[string]int64 // group → next offset to deliver
}

func (t *topicLog) end() int64 { return t.base + int64(len(t.msgs)) }

// trim drops the messages every subscribed group has committed.
func (t *topicLog) trim() {
	if len(t.cursors) == 0 {
		return
	}
	low := t.end()
	for _, c := range t.cursors {
		low = min(low, c)
	}
	if n := low - t.base; n > 0 {
		clear(t.msgs[:n]) // drop references held by the backing array
		t.msgs = t.msgs[n:]
		t.base = low
	}
}

// NewInProc returns an empty in-process bus. Out-of-range values in cfg are
// replaced by their defaults (see InProcConfig.Validate).
func NewInProc(cfg InProcConfig) *InProc {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	closing, stopAll := context.WithCancel(context.Background())
	return &InProc{
		capacity: cfg.Capacity,
		backoff:  cfg.Backoff.withDefaults(),
		log:      loggerOr(cfg.Logger),
		closing:  closing,
		stopAll:  stopAll,
		changed:  make(chan struct{}),
		topics:   make(map[string]*topicLog),
		active:   make(map[string]bool),
	}
}

// broadcastLocked wakes everything waiting for a change. b.mu must be held.
func (b *InProc) broadcastLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// topicLocked returns the named topic, creating it. b.mu must be held.
func (b *InProc) topicLocked(name string) *topicLog {
	t := b.topics[name]
	if t == nil {
		t = &topicLog{cursors: make(map[string]int64)}
		b.topics[name] = t
	}
	return t
}

// Publish appends msgs to their topics in order. Key, Value and Headers are
// copied, so the caller may reuse them once Publish returns. When a topic is
// full Publish waits for space; if ctx is done first it returns an error
// wrapping ctx.Err(), and the messages before the one that waited stay
// published. After Close it returns an error wrapping ErrClosed.
func (b *InProc) Publish(ctx context.Context, msgs ...Message) error {
	if err := validateMessages(msgs); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	appended := false
	for i := range msgs {
		m := &msgs[i]
		for {
			if b.closed {
				return fmt.Errorf("bus: publish %s: %w", m.Topic, ErrClosed)
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("bus: publish %s: %w", m.Topic, err)
			}
			t := b.topicLocked(m.Topic)
			if len(t.msgs) < b.capacity {
				t.msgs = append(t.msgs, Message{
					Topic:   m.Topic,
					Key:     bytes.Clone(m.Key),
					Value:   bytes.Clone(m.Value),
					Headers: maps.Clone(m.Headers),
					Offset:  t.end(),
					Time:    time.Now(),
				})
				appended = true
				break
			}
			// Full: let consumers see what this call appended, then wait.
			if appended {
				b.broadcastLocked()
				appended = false
			}
			changed := b.changed
			b.mu.Unlock()
			select {
			case <-changed:
			case <-ctx.Done():
			case <-b.closing.Done():
			}
			b.mu.Lock()
		}
	}
	if appended {
		b.broadcastLocked()
	}
	return nil
}

// Consume delivers batches of cfg.Topics to h as consumer group cfg.Group
// until ctx is done, then returns nil once the in-flight batch is handled
// (committed if h returned nil). If the bus is closed it returns an error
// wrapping ErrClosed, also after letting the in-flight batch finish. h
// receives ctx; Close does not cancel it. See InProc for the one consumer
// per group rule.
func (b *InProc) Consume(ctx context.Context, cfg ConsumerConfig, h BatchHandler) error {
	cfg, err := cfg.normalize()
	if err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("bus: consume %s: nil handler", cfg.Group)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return fmt.Errorf("bus: consume %s: %w", cfg.Group, ErrClosed)
	}
	b.consumers.Add(1)
	b.mu.Unlock()
	defer b.consumers.Done()

	stop, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.closing, cancel)()

	if !b.join(stop, cfg) {
		return b.stopped(cfg.Group)
	}
	defer b.leave(cfg.Group)
	b.log.LogAttrs(ctx, slog.LevelDebug, "bus: consumer started",
		slog.String("group", cfg.Group), slog.Any("topics", cfg.Topics))
	if cfg.Assigned != nil {
		all := make(map[string][]int32, len(cfg.Topics))
		for _, t := range cfg.Topics {
			all[t] = []int32{0}
		}
		cfg.Assigned(all)
	}

	r := newRedeliverer(b.backoff, b.log, cfg.Group)
	next := 0 // round-robin position in cfg.Topics
	for {
		batch, ok := b.nextBatch(stop, cfg, &next)
		if !ok {
			return b.stopped(cfg.Group)
		}
		if !r.deliver(stop, ctx, h, batch) {
			return b.stopped(cfg.Group)
		}
		b.commit(batch[0].Topic, cfg.Group, batch[len(batch)-1].Offset+1)
	}
}

// stopped is what Consume returns once it stops: nil when its ctx ended it,
// ErrClosed when Close did.
func (b *InProc) stopped(group string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("bus: consume %s: %w", group, ErrClosed)
	}
	return nil
}

// join makes the caller the group's active consumer, waiting for a previous
// one to leave, and subscribes the group to cfg.Topics. It reports false if
// stop is done first.
func (b *InProc) join(stop context.Context, cfg ConsumerConfig) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.active[cfg.Group] {
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-stop.Done():
		}
		b.mu.Lock()
		if stop.Err() != nil {
			return false
		}
	}
	b.active[cfg.Group] = true
	b.subscribeLocked(cfg.Group, cfg.Topics)
	return true
}

// Subscribe registers group as a consumer of topics without consuming:
// from now on the topics keep every message until group has committed it,
// as if group had called Consume. Wiring code calls it before publishers
// start so that a consumer started later misses nothing. Subscribing an
// already subscribed group changes nothing.
func (b *InProc) Subscribe(group string, topics ...string) error {
	if _, err := (ConsumerConfig{Group: group, Topics: topics}).normalize(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("bus: subscribe %s: %w", group, ErrClosed)
	}
	b.subscribeLocked(group, topics)
	return nil
}

// subscribeLocked starts group's cursors at the oldest message kept. b.mu
// must be held.
func (b *InProc) subscribeLocked(group string, topics []string) {
	for _, name := range topics {
		t := b.topicLocked(name)
		if _, ok := t.cursors[group]; !ok {
			t.cursors[group] = t.base
		}
	}
}

func (b *InProc) leave(group string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.active, group)
	b.broadcastLocked()
}

// nextBatch waits for a batch for cfg.Group: up to cfg.MaxBatch messages of
// one topic, handed over as soon as that many are waiting or cfg.MaxWait
// after the first one was seen. It reports false if stop is done first.
func (b *InProc) nextBatch(stop context.Context, cfg ConsumerConfig, next *int) ([]Message, bool) {
	var (
		deadline time.Time
		timer    *time.Timer
		timeout  <-chan time.Time
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if stop.Err() != nil {
			return nil, false
		}
		now := time.Now()
		n := len(cfg.Topics)
		for k := range n {
			i := (*next + k) % n
			t := b.topics[cfg.Topics[i]]
			cur := t.cursors[cfg.Group]
			pending := t.end() - cur
			if pending <= 0 {
				continue
			}
			if pending >= int64(cfg.MaxBatch) || (!deadline.IsZero() && !now.Before(deadline)) {
				from := cur - t.base
				size := min(pending, int64(cfg.MaxBatch))
				*next = (i + 1) % n
				batch := slices.Clone(t.msgs[from : from+size])
				for i := range batch {
					batch[i].Behind = t.end() - batch[i].Offset - 1
				}
				return batch, true
			}
			if deadline.IsZero() {
				deadline = now.Add(cfg.MaxWait)
				timer = time.NewTimer(cfg.MaxWait)
				timeout = timer.C
			}
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
		case <-stop.Done():
		}
		b.mu.Lock()
	}
}

// commit moves group's cursor on topic to offset and frees what every group
// has consumed.
func (b *InProc) commit(topic, group string, offset int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[topic]
	if offset > t.cursors[group] {
		t.cursors[group] = offset
	}
	t.trim()
	b.broadcastLocked()
}

// Drain waits until every group being consumed has committed every
// message of its topics, or ctx is done (then it returns ctx's error).
// Topics without a consuming group are not waited for: nothing here would
// read them. A process shutting down drains before it stops its consumers,
// since the bus keeps nothing across restarts.
func (b *InProc) Drain(ctx context.Context) error {
	for {
		b.mu.Lock()
		idle := true
		for _, t := range b.topics {
			for g, c := range t.cursors {
				if b.active[g] && c < t.end() {
					idle = false
				}
			}
		}
		changed := b.changed
		b.mu.Unlock()
		if idle {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// Close stops the bus: Publish and Consume return ErrClosed from now on,
// blocked publishers are released with ErrClosed, and running consumers
// finish their in-flight batch. Close returns once every Consume call has
// returned; it waits for handlers that are running. Closing twice is a
// no-op.
func (b *InProc) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.broadcastLocked()
	b.mu.Unlock()
	b.stopAll()
	b.consumers.Wait()
	return nil
}
