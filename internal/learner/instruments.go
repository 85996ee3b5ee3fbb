package learner

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// instruments are the learner's metrics. Prometheus names:
//
//	quantmesh_learner_retrains_total{result}           retrain attempts (result: published, rejected, failed)
//	quantmesh_learner_consecutive_failures             rejected or failed retrains since the last publish
//	quantmesh_learner_degradation_ratio                the last candidate's worst relative accuracy drop
//	quantmesh_learner_training_loss                    the last candidate's final training loss
//	quantmesh_learner_since_last_publish_seconds       time since the last publish (since start before one)
//	quantmesh_learner_outcomes_total                   outcomes added to the replay buffer
//	quantmesh_learner_decisions_dropped_total{reason}  decisions that became no outcome (reason: unmatched, invalid)
//	quantmesh_learner_replay_outcomes                  outcomes held in the replay buffer
type instruments struct {
	retrains metric.Int64Counter
	outcomes metric.Int64Counter
	dropped  metric.Int64Counter

	mu           sync.Mutex
	failures     int64
	degradation  float64
	loss         float64
	lastPublish  time.Time
	replayLength func() int
}

func newInstruments(meter metric.Meter, replayLength func() int) (*instruments, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	ins := &instruments{lastPublish: time.Now(), replayLength: replayLength}
	var err error
	if ins.retrains, err = meter.Int64Counter("quantmesh.learner.retrains",
		metric.WithDescription("Retrain attempts of the online learner, by result (published, rejected, failed).")); err != nil {
		return nil, err
	}
	if ins.outcomes, err = meter.Int64Counter("quantmesh.learner.outcomes",
		metric.WithDescription("Outcomes (decisions joined with their realised forward return) added to the replay buffer.")); err != nil {
		return nil, err
	}
	if ins.dropped, err = meter.Int64Counter("quantmesh.learner.decisions.dropped",
		metric.WithDescription("Decisions that became no outcome, by reason: unmatched (their bar is unknown: before the symbol's first bar, older than the bars kept, or too many waiting) or invalid (no finite features).")); err != nil {
		return nil, err
	}
	failures, err := meter.Int64ObservableGauge("quantmesh.learner.consecutive_failures",
		metric.WithDescription("Rejected or failed retrains since the last publish."))
	if err != nil {
		return nil, err
	}
	degradation, err := meter.Float64ObservableGauge("quantmesh.learner.degradation_ratio",
		metric.WithDescription("The last candidate's worst relative accuracy drop against the previous version (negative: it improved)."))
	if err != nil {
		return nil, err
	}
	loss, err := meter.Float64ObservableGauge("quantmesh.learner.training_loss",
		metric.WithDescription("The last candidate's training loss after its final epoch."))
	if err != nil {
		return nil, err
	}
	since, err := meter.Float64ObservableGauge("quantmesh.learner.since_last_publish", metric.WithUnit("s"),
		metric.WithDescription("Time since the learner last published a version (since it started, before the first)."))
	if err != nil {
		return nil, err
	}
	replay, err := meter.Int64ObservableGauge("quantmesh.learner.replay_outcomes",
		metric.WithDescription("Outcomes held in the replay buffer."))
	if err != nil {
		return nil, err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		ins.mu.Lock()
		defer ins.mu.Unlock()
		o.ObserveInt64(failures, ins.failures)
		o.ObserveFloat64(degradation, ins.degradation)
		o.ObserveFloat64(loss, ins.loss)
		o.ObserveFloat64(since, time.Since(ins.lastPublish).Seconds())
		o.ObserveInt64(replay, int64(ins.replayLength()))
		return nil
	}, failures, degradation, loss, since, replay)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	for _, r := range []string{resultPublished, resultRejected, resultFailed} {
		ins.retrains.Add(ctx, 0, metric.WithAttributes(attribute.String("result", r)))
	}
	for _, r := range []string{dropUnmatched, dropInvalid} {
		ins.dropped.Add(ctx, 0, metric.WithAttributes(attribute.String("reason", r)))
	}
	return ins, nil
}

// Retrain results.
const (
	resultPublished = "published"
	resultRejected  = "rejected"
	resultFailed    = "failed"
)

// Reasons a decision becomes no outcome.
const (
	dropUnmatched = "unmatched"
	dropInvalid   = "invalid"
)

// droppedDecisions counts decisions the joiner dropped.
func (ins *instruments) droppedDecisions(reason string, n int64) {
	if n > 0 {
		ins.dropped.Add(context.Background(), n, metric.WithAttributes(attribute.String("reason", reason)))
	}
}

// retrained records one retrain attempt.
func (ins *instruments) retrained(result string, degradation, loss float64, haveCandidate bool) {
	ins.retrains.Add(context.Background(), 1, metric.WithAttributes(attribute.String("result", result)))
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if haveCandidate {
		ins.degradation, ins.loss = degradation, loss
	}
	if result == resultPublished {
		ins.failures = 0
		ins.lastPublish = time.Now()
	} else {
		ins.failures++
	}
}

func (ins *instruments) consecutiveFailures() int64 {
	ins.mu.Lock()
	defer ins.mu.Unlock()
	return ins.failures
}
