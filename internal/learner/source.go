package learner

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

// ConsumerGroup is the learner's bus consumer group.
const ConsumerGroup = "learner"

// Consume feeds the learner from the bus until ctx is done: decisions of
// its model (topic decisions) joined with bars (topic market.bars) into
// outcomes in the replay buffer. Undecodable messages are skipped and
// logged; decisions that become no outcome are counted
// (quantmesh_learner_decisions_dropped_total).
func (l *Learner) Consume(ctx context.Context, c bus.Consumer) error {
	var mu sync.Mutex // the bus may run the handler for several partitions at once
	j := NewJoiner(l.cfg.Horizon, l.cfg.LabelThreshold)
	return c.Consume(ctx, bus.ConsumerConfig{Group: ConsumerGroup, Topics: []string{bus.TopicDecisions, bus.TopicMarketBars}},
		func(_ context.Context, msgs []bus.Message) error {
			mu.Lock()
			defer mu.Unlock()
			unmatched, invalid := j.Unmatched, j.Invalid
			defer func() {
				l.ins.droppedDecisions(dropUnmatched, j.Unmatched-unmatched)
				l.ins.droppedDecisions(dropInvalid, j.Invalid-invalid)
			}()
			var outs []Outcome
			for _, m := range msgs {
				switch m.Topic {
				case bus.TopicMarketBars:
					var b regimev1.Bar
					if err := proto.Unmarshal(m.Value, &b); err != nil {
						l.log.Error("learner: undecodable bar skipped", "offset", m.Offset, "err", err)
						continue
					}
					// A bar stamped far ahead (RegimeService refuses it too)
					// would make every later bar of its symbol look old.
					if t := b.GetTime().AsTime(); t.After(time.Now().Add(marketdata.MaxBarLead)) {
						l.log.Error("learner: bar stamped in the future skipped", "symbol", b.GetSymbol(), "time", t, "offset", m.Offset)
						continue
					}
					outs = append(outs, j.Bar(b.GetSymbol(), b.GetTime().AsTime(), b.GetClose())...)
				case bus.TopicDecisions:
					var d inferencev1.Decision
					if err := proto.Unmarshal(m.Value, &d); err != nil {
						l.log.Error("learner: undecodable decision skipped", "offset", m.Offset, "err", err)
						continue
					}
					if d.GetModelName() != l.cfg.Model {
						continue
					}
					// The client's time (the bar its features describe, when
					// it says so) places the decision among the bars; the
					// server's clock only when the client gave none.
					at := d.GetDecisionTime()
					if d.GetClientTime() != nil {
						at = d.GetClientTime()
					}
					resolved, _ := j.Decision(d.GetDecisionId(), d.GetSymbol(), at.AsTime(), d.GetFeatures())
					outs = append(outs, resolved...)
				}
			}
			if len(outs) > 0 {
				if err := l.Add(outs...); err != nil {
					l.log.Error("learner: outcomes skipped", "outcomes", len(outs), "err", err)
				}
			}
			return nil
		})
}
