package inference

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// ObservationRecorder takes A/B observations off the request path; it
// must not block.
type ObservationRecorder interface {
	RecordObservation(context.Context, *experimentv1.ABObservation) bool
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
	// span is the request's span context, for the observation's trace.
	span trace.SpanContext
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
				rec.RecordObservation(trace.ContextWithSpanContext(ctx, j.span), j.obs)
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
	q *queuedPublisher[*experimentv1.ABObservation]
}

// NewObservationPublisher starts a publisher on pub. meter may be nil.
// Close it to publish what is queued.
func NewObservationPublisher(pub bus.Publisher, log *slog.Logger, meter metric.Meter) (*ObservationPublisher, error) {
	q, err := newQueuedPublisher(pub, log, meter, queuedTopic[*experimentv1.ABObservation]{
		topic: bus.TopicABObservations, what: "A/B observations", metric: "quantmesh.inference.abtest.observations",
		key: func(o *experimentv1.ABObservation) string { return o.GetUnitId() },
		id: func(o *experimentv1.ABObservation) slog.Attr {
			return slog.String("observation_id", o.GetObservationId())
		},
	})
	if err != nil {
		return nil, err
	}
	return &ObservationPublisher{q: q}, nil
}

// RecordObservation queues o; it never blocks. It reports false when o was
// dropped. Like DecisionPublisher.Record, it keeps o in the trace of ctx's
// sampled span.
func (p *ObservationPublisher) RecordObservation(ctx context.Context, o *experimentv1.ABObservation) bool {
	return p.q.record(ctx, o)
}

// Close publishes what is queued (giving up when ctx ends) and stops.
func (p *ObservationPublisher) Close(ctx context.Context) { p.q.close(ctx) }
