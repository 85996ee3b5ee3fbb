package inference

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
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
	pub   bus.Publisher
	log   *slog.Logger
	queue chan *inferencev1.Decision

	published, dropped metric.Int64Counter

	stop    chan struct{}
	done    chan struct{}
	closeMu sync.RWMutex
	closed  bool

	lastDropLog time.Time // owned by Record under dropMu
	dropMu      sync.Mutex
}

// Publisher sizing.
const (
	publishQueue = 65536
	publishBatch = 500
	publishWait  = 2 * time.Millisecond
)

// NewDecisionPublisher starts a publisher on pub. meter may be nil. Close
// it to publish what is queued.
func NewDecisionPublisher(pub bus.Publisher, log *slog.Logger, meter metric.Meter) (*DecisionPublisher, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	p := &DecisionPublisher{pub: pub, log: log, queue: make(chan *inferencev1.Decision, publishQueue), stop: make(chan struct{}), done: make(chan struct{})}
	var err error
	if p.published, err = meter.Int64Counter("quantmesh.inference.decisions.published",
		metric.WithDescription("Decisions accepted by the bus (topic decisions).")); err != nil {
		return nil, err
	}
	if p.dropped, err = meter.Int64Counter("quantmesh.inference.decisions.dropped",
		metric.WithDescription("Decisions not published because the publish queue was full. Should stay 0.")); err != nil {
		return nil, err
	}
	queued, err := meter.Int64ObservableGauge("quantmesh.inference.decisions.queued",
		metric.WithDescription("Decisions waiting to be published."))
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

// Record queues d for publishing; it never blocks. It reports false when
// d was dropped (queue full or publisher closed).
func (p *DecisionPublisher) Record(d *inferencev1.Decision) bool {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if !p.closed {
		select {
		case p.queue <- d:
			return true
		default:
		}
	}
	p.dropped.Add(context.Background(), 1)
	p.dropMu.Lock()
	if time.Since(p.lastDropLog) > 10*time.Second {
		p.lastDropLog = time.Now()
		p.log.Error("decision dropped: the publish queue is full", "queue", publishQueue, "decision_id", d.GetDecisionId())
	}
	p.dropMu.Unlock()
	return false
}

// Close publishes what is queued (giving up when ctx ends) and stops.
func (p *DecisionPublisher) Close(ctx context.Context) {
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

func (p *DecisionPublisher) run() {
	defer close(p.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	batch := make([]bus.Message, 0, publishBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batch = batch[:0]
		select {
		case d := <-p.queue:
			batch = p.add(batch, d)
		case <-p.stop:
			// Publish what is left, then stop.
			for {
				select {
				case d := <-p.queue:
					batch = p.add(batch, d)
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
			case d := <-p.queue:
				batch = p.add(batch, d)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		p.publish(ctx, batch)
	}
}

func (p *DecisionPublisher) add(batch []bus.Message, d *inferencev1.Decision) []bus.Message {
	v, err := proto.Marshal(d)
	if err != nil {
		p.log.Error("decision not encodable", "decision_id", d.GetDecisionId(), "err", err)
		return batch
	}
	return append(batch, bus.Message{Topic: bus.TopicDecisions, Key: []byte(d.GetDecisionId()), Value: v})
}

// publish retries until the bus accepts the batch or the publisher is
// stopped for good (a closing bus answers ErrClosed).
func (p *DecisionPublisher) publish(ctx context.Context, batch []bus.Message) {
	if len(batch) == 0 {
		return
	}
	for attempt := 0; ; attempt++ {
		err := p.pub.Publish(ctx, batch...)
		if err == nil {
			p.published.Add(ctx, int64(len(batch)))
			return
		}
		p.log.Warn("decisions not published; retrying", "decisions", len(batch), "attempt", attempt+1, "err", err)
		if attempt >= 2 {
			select {
			case <-p.stop:
				p.dropped.Add(ctx, int64(len(batch)))
				p.log.Error("decisions dropped at shutdown: the bus did not accept them", "decisions", len(batch), "err", err)
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
