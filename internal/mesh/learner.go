package mesh

import (
	"context"
	"sync"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
)

// learner adds the online learner's loops to the runners: it consumes
// decisions and bars from the bus and retrains on its cadence.
func (m *Mesh) learner(cfg learner.Config) {
	log := m.log.With("worker", "learner")
	m.runners = append(m.runners, func(ctx context.Context) {
		conn := m.Peer(Experiment)
		if conn == nil {
			log.Error("online learner not started: ExperimentService is not reachable from this process")
			return
		}
		l, err := learner.New(cfg, experimentv1.NewExperimentServiceClient(conn), log, m.tel.Meter("quantmesh/learner"))
		if err != nil {
			log.Error("online learner not started", "err", err)
			return
		}
		var wg sync.WaitGroup
		wg.Go(func() { l.Run(ctx) })
		if err := l.Consume(ctx, m.Bus); err != nil && ctx.Err() == nil {
			log.Error("online learner: consuming the bus failed", "err", err)
		}
		wg.Wait()
	})
}
