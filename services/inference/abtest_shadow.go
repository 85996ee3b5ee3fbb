package inference

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// ObservationRecorder takes A/B observations off the request path; it
// must not block.
type ObservationRecorder interface {
	RecordObservation(*experimentv1.ABObservation) bool
}

// shadowQueue is how many treatment runs may wait; beyond it they are
// dropped and counted (the request never waits for one).
const shadowQueue = 4096

// shadowJob is one treatment run of a shadowed request: the control's
// observation, completed with the treatment's answer.
type shadowJob struct {
	route    *abRoute
	features []float64
	obs      *experimentv1.ABObservation
}

// shadowRunner runs treatments off the request path, on one goroutine
// (started by Run), from a bounded queue.
type shadowRunner struct {
	queue   chan shadowJob
	dropped metric.Int64Counter
}

func newShadowRunner(meter metric.Meter) (*shadowRunner, error) {
	dropped, err := meter.Int64Counter("quantmesh.inference.abtest.shadow.dropped",
		metric.WithDescription("Shadow treatment runs dropped because the shadow queue was full; the control's answer is recorded unpaired."))
	if err != nil {
		return nil, err
	}
	dropped.Add(context.Background(), 0)
	return &shadowRunner{queue: make(chan shadowJob, shadowQueue), dropped: dropped}, nil
}

// submit queues a treatment run; when the queue is full the run is
// dropped, counted, and false is returned. It never blocks.
func (r *shadowRunner) submit(j shadowJob) bool {
	select {
	case r.queue <- j:
		return true
	default:
		j.route.dropped.Add(1)
		r.dropped.Add(context.Background(), 1)
		return false
	}
}

// run answers queued treatment runs until ctx ends.
func (r *shadowRunner) run(ctx context.Context, rec ObservationRecorder) {
	var out policy.Output
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-r.queue:
			t0 := time.Now()
			err := j.route.treatment.net.Predict(j.features, &out)
			took := time.Since(t0)
			if err == nil {
				j.obs.Paired = true
				j.obs.ShadowAction = tradeAction(out.Action)
				j.obs.ShadowConfidence = out.Confidence
				j.obs.ShadowLatencyMs = millis(took)
			}
			if rec != nil {
				rec.RecordObservation(j.obs)
			}
		}
	}
}

func millis(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func tradeAction(a policy.Action) experimentv1.TradeAction {
	switch a {
	case policy.ActionBuy:
		return experimentv1.TradeAction_TRADE_ACTION_BUY
	case policy.ActionSell:
		return experimentv1.TradeAction_TRADE_ACTION_SELL
	}
	return experimentv1.TradeAction_TRADE_ACTION_HOLD
}

// ObservationPublisher puts A/B observations on the bus topic
// abtest.observations off the request path, as DecisionPublisher does for
// decisions: a bounded queue, batches, and a drop counter
// (quantmesh_inference_abtest_observations_dropped_total, which should
// stay 0) when the bus cannot keep up.
type ObservationPublisher struct {
	pub   bus.Publisher
	log   *slog.Logger
	queue chan *experimentv1.ABObservation

	published, dropped metric.Int64Counter

	stop    chan struct{}
	done    chan struct{}
	closeMu sync.RWMutex
	closed  bool
}

// NewObservationPublisher starts a publisher on pub. meter may be nil.
// Close it to publish what is queued.
func NewObservationPublisher(pub bus.Publisher, log *slog.Logger, meter metric.Meter) (*ObservationPublisher, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	p := &ObservationPublisher{pub: pub, log: log, queue: make(chan *experimentv1.ABObservation, publishQueue),
		stop: make(chan struct{}), done: make(chan struct{})}
	var err error
	if p.published, err = meter.Int64Counter("quantmesh.inference.abtest.observations.published",
		metric.WithDescription("A/B observations accepted by the bus (topic abtest.observations).")); err != nil {
		return nil, err
	}
	if p.dropped, err = meter.Int64Counter("quantmesh.inference.abtest.observations.dropped",
		metric.WithDescription("A/B observations not published because the queue was full. Should stay 0.")); err != nil {
		return nil, err
	}
	p.dropped.Add(context.Background(), 0)
	go p.run()
	return p, nil
}

// RecordObservation queues o; it never blocks. It reports false when o was
// dropped.
func (p *ObservationPublisher) RecordObservation(o *experimentv1.ABObservation) bool {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if !p.closed {
		select {
		case p.queue <- o:
			return true
		default:
		}
	}
	p.dropped.Add(context.Background(), 1)
	return false
}

// Close publishes what is queued (giving up when ctx ends) and stops.
func (p *ObservationPublisher) Close(ctx context.Context) {
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

func (p *ObservationPublisher) run() {
	defer close(p.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	batch := make([]bus.Message, 0, publishBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batch = batch[:0]
		select {
		case o := <-p.queue:
			batch = p.add(batch, o)
		case <-p.stop:
			for {
				select {
				case o := <-p.queue:
					batch = p.add(batch, o)
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
			case o := <-p.queue:
				batch = p.add(batch, o)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		p.publish(ctx, batch)
	}
}

func (p *ObservationPublisher) add(batch []bus.Message, o *experimentv1.ABObservation) []bus.Message {
	v, err := proto.Marshal(o)
	if err != nil {
		p.log.Error("A/B observation not encodable", "observation_id", o.GetObservationId(), "err", err)
		return batch
	}
	return append(batch, bus.Message{Topic: bus.TopicABObservations, Key: []byte(o.GetUnitId()), Value: v})
}

// publish retries until the bus accepts the batch or the publisher is
// stopped for good.
func (p *ObservationPublisher) publish(ctx context.Context, batch []bus.Message) {
	if len(batch) == 0 {
		return
	}
	for attempt := 0; ; attempt++ {
		err := p.pub.Publish(ctx, batch...)
		if err == nil {
			p.published.Add(ctx, int64(len(batch)))
			return
		}
		p.log.Warn("A/B observations not published; retrying", "observations", len(batch), "attempt", attempt+1, "err", err)
		if attempt >= 2 {
			select {
			case <-p.stop:
				p.dropped.Add(ctx, int64(len(batch)))
				p.log.Error("A/B observations dropped at shutdown: the bus did not accept them", "observations", len(batch), "err", err)
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
