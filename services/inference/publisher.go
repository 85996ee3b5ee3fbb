package inference

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
)

// DecisionPublisher puts decisions on the bus topic decisions off the
// request path: Record never blocks a prediction. Decisions wait in a
// bounded queue and are published in batches; when the bus cannot keep up
// (or is down) and the queue is full, new decisions are dropped and counted
// (quantmesh_inference_decisions_dropped_total, which should stay 0).
//
// Metrics:
//
//	quantmesh_inference_decisions_published_total   decisions accepted by the bus
//	quantmesh_inference_decisions_dropped_total      decisions lost because the queue was full
//	quantmesh_inference_decisions_queued             decisions waiting to be published
type DecisionPublisher struct {
	q *queuedPublisher[*inferencev1.Decision]
}

// NewDecisionPublisher starts a publisher on pub. meter may be nil. Close
// it to publish what is queued.
func NewDecisionPublisher(pub bus.Publisher, log *slog.Logger, meter metric.Meter) (*DecisionPublisher, error) {
	q, err := newQueuedPublisher(pub, log, meter, queuedTopic[*inferencev1.Decision]{
		topic: bus.TopicDecisions, what: "decisions", metric: "quantmesh.inference.decisions",
		key: func(d *inferencev1.Decision) string { return d.GetDecisionId() },
		id:  func(d *inferencev1.Decision) slog.Attr { return slog.String("decision_id", d.GetDecisionId()) },
	})
	if err != nil {
		return nil, err
	}
	return &DecisionPublisher{q: q}, nil
}

// Record queues d for publishing; it never blocks. It reports false when
// d was dropped (queue full or publisher closed). When ctx carries a
// sampled span, the published message carries that span's context
// (bus.Message.SpanContext), so a traced bus keeps d in the request's
// trace.
func (p *DecisionPublisher) Record(ctx context.Context, d *inferencev1.Decision) bool {
	return p.q.record(ctx, d)
}

// Close publishes what is queued (giving up when ctx ends) and stops.
func (p *DecisionPublisher) Close(ctx context.Context) { p.q.close(ctx) }

// queuedTopic describes what a queuedPublisher publishes.
type queuedTopic[T proto.Message] struct {
	topic  string            // the bus topic
	what   string            // the messages' name in logs and metric descriptions
	metric string            // the metrics' prefix: <metric>.published, .dropped, .queued
	key    func(T) string    // the bus message key
	id     func(T) slog.Attr // the message's id in logs
}

// queuedPublisher is the bounded queue and batching publisher behind
// DecisionPublisher and ObservationPublisher.
type queuedPublisher[T proto.Message] struct {
	pub   bus.Publisher
	log   *slog.Logger
	t     queuedTopic[T]
	queue chan queued[T]

	published, dropped metric.Int64Counter

	stop    chan struct{}
	done    chan struct{}
	closeMu sync.RWMutex
	closed  bool

	lastDropLog time.Time // owned by record under dropMu
	dropMu      sync.Mutex
}

// queued is a message waiting in the queue, with the context of the span
// that recorded it when that span is sampled (nil otherwise: an unsampled
// request costs no allocation).
type queued[T proto.Message] struct {
	m    T
	span *trace.SpanContext
}

// Publisher sizing.
const (
	publishQueue = 65536
	publishBatch = 500
	publishWait  = 2 * time.Millisecond
)

func newQueuedPublisher[T proto.Message](pub bus.Publisher, log *slog.Logger, meter metric.Meter, t queuedTopic[T]) (*queuedPublisher[T], error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	p := &queuedPublisher[T]{pub: pub, log: log, t: t, queue: make(chan queued[T], publishQueue), stop: make(chan struct{}), done: make(chan struct{})}
	var err error
	if p.published, err = meter.Int64Counter(t.metric+".published",
		metric.WithDescription(fmt.Sprintf("%s accepted by the bus (topic %s).", capitalise(t.what), t.topic))); err != nil {
		return nil, err
	}
	if p.dropped, err = meter.Int64Counter(t.metric+".dropped",
		metric.WithDescription(fmt.Sprintf("%s not published because the publish queue was full. Should stay 0.", capitalise(t.what)))); err != nil {
		return nil, err
	}
	queued, err := meter.Int64ObservableGauge(t.metric+".queued",
		metric.WithDescription(fmt.Sprintf("%s waiting to be published.", capitalise(t.what))))
	if err != nil {
		return nil, err
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(queued, int64(len(p.queue)))
		return nil
	}, queued); err != nil {
		return nil, err
	}
	p.dropped.Add(context.Background(), 0)
	go p.run()
	return p, nil
}

func capitalise(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

func (p *queuedPublisher[T]) record(ctx context.Context, m T) bool {
	q := queued[T]{m: m}
	if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
		q.span = new(trace.SpanContext)
		*q.span = sc
	}
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if !p.closed {
		select {
		case p.queue <- q:
			return true
		default:
		}
	}
	p.dropped.Add(context.Background(), 1)
	p.dropMu.Lock()
	if time.Since(p.lastDropLog) > 10*time.Second {
		p.lastDropLog = time.Now()
		p.log.Error(p.t.what+" dropped: the publish queue is full", "queue", publishQueue, p.t.id(m))
	}
	p.dropMu.Unlock()
	return false
}

func (p *queuedPublisher[T]) close(ctx context.Context) {
	p.closeMu.Lock()
	if !p.closed {
		p.closed = true
		close(p.stop)
	}
	p.closeMu.Unlock()
	select {
	case <-p.done:
	case <-ctx.Done():
	}
}

func (p *queuedPublisher[T]) run() {
	defer close(p.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	batch := make([]bus.Message, 0, publishBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batch = batch[:0]
		select {
		case m := <-p.queue:
			batch = p.add(batch, m)
		case <-p.stop:
			// Publish what is left, then stop.
			for {
				select {
				case m := <-p.queue:
					batch = p.add(batch, m)
					if len(batch) == publishBatch {
						p.publish(ctx, batch)
						batch = batch[:0]
					}
				default:
					p.publish(ctx, batch)
					return
				}
			}
		}
		timer.Reset(publishWait)
	fill:
		for len(batch) < publishBatch {
			select {
			case m := <-p.queue:
				batch = p.add(batch, m)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		p.publish(ctx, batch)
	}
}

func (p *queuedPublisher[T]) add(batch []bus.Message, q queued[T]) []bus.Message {
	v, err := proto.Marshal(q.m)
	if err != nil {
		p.log.Error(p.t.what+" not encodable", p.t.id(q.m), "err", err)
		return batch
	}
	msg := bus.Message{Topic: p.t.topic, Key: []byte(p.t.key(q.m)), Value: v}
	if q.span != nil {
		msg.SpanContext = *q.span
	}
	return append(batch, msg)
}

// publish retries until the bus accepts the batch or the publisher is
// stopped for good (a closing bus answers ErrClosed).
func (p *queuedPublisher[T]) publish(ctx context.Context, batch []bus.Message) {
	if len(batch) == 0 {
		return
	}
	for attempt := 0; ; attempt++ {
		err := p.pub.Publish(ctx, batch...)
		if err == nil {
			p.published.Add(ctx, int64(len(batch)))
			return
		}
		p.log.Warn(p.t.what+" not published; retrying", "messages", len(batch), "attempt", attempt+1, "err", err)
		if attempt >= 2 {
			select {
			case <-p.stop:
				p.dropped.Add(ctx, int64(len(batch)))
				p.log.Error(p.t.what+" dropped at shutdown: the bus did not accept them", "messages", len(batch), "err", err)
				return
			default:
			}
		}
		select {
		case <-time.After(time.Duration(min(attempt+1, 20)) * 50 * time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
}
