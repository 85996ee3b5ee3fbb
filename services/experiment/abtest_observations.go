package experiment

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/bus"
)

// ObservationsGroup is the consumer group that aggregates A/B observations.
const ObservationsGroup = "experiment-abtest-observations"

// ConsumeObservations aggregates the observations published on the bus
// topic abtest.observations until ctx is done. A batch is stored in one
// transaction and committed on the bus only after that, so a crash replays
// it, and the store ignores the replayed observations (idempotent by
// observation id). Messages that do not decode or validate, and
// observations of tests that do not exist, are logged and skipped: they
// would fail on every redelivery.
func (s *Server) ConsumeObservations(ctx context.Context, c bus.Consumer) error {
	return c.Consume(ctx, bus.ConsumerConfig{Group: ObservationsGroup, Topics: []string{bus.TopicABObservations}, MaxBatch: 1000},
		func(ctx context.Context, msgs []bus.Message) error { return s.storeObservations(ctx, msgs) })
}

func (s *Server) storeObservations(ctx context.Context, msgs []bus.Message) error {
	obs := make([]*ABObservation, 0, len(msgs))
	known := map[string]bool{}
	skipped := 0
	for _, m := range msgs {
		var o experimentv1.ABObservation
		if err := proto.Unmarshal(m.Value, &o); err != nil {
			skipped++
			continue
		}
		var v apierr.Violations
		validateObservation(&v, "observation", &o)
		if v.Err() != nil {
			skipped++
			continue
		}
		ok, seen := known[o.GetAbTestId()]
		if !seen {
			_, err := s.store.GetABTest(ctx, o.GetAbTestId())
			switch {
			case errors.Is(err, apierr.ErrNotFound):
				ok = false
			case err != nil:
				return err // redelivered after a backoff
			default:
				ok = true
			}
			known[o.GetAbTestId()] = ok
		}
		if !ok {
			skipped++
			continue
		}
		obs = append(obs, observationFromProto(&o, m.Time))
	}
	if skipped > 0 {
		s.log.Warn("A/B observations skipped: undecodable, invalid or of an unknown test", "skipped", skipped, "batch", len(msgs))
	}
	if _, err := s.store.RecordABObservations(ctx, obs); err != nil {
		return fmt.Errorf("store A/B observations: %w", err)
	}
	s.checkGuardrails(ctx, testIDs(obs))
	return nil
}
