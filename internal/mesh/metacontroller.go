package mesh

import (
	"context"
	"log/slog"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/services/metacontroller"
)

// metaController builds MetaControllerService and its runner, which follows
// RegimeService's regime stream and the policy's registry alias.
func (m *Mesh) metaController(log *slog.Logger) (server.Registration, error) {
	srv, err := metacontroller.New(metacontroller.DefaultConfig(), log, metacontroller.WithMeter(m.tel.Meter("quantmesh/metacontroller")))
	if err != nil {
		return server.Registration{}, err
	}
	// Peers are dialled after the services are built: resolve them when
	// the runner starts.
	m.runners = append(m.runners, func(ctx context.Context) {
		var regime regimev1.RegimeServiceClient
		if conn := m.Peer(Regime); conn != nil {
			regime = regimev1.NewRegimeServiceClient(conn)
		}
		var registry experimentv1.ExperimentServiceClient
		if conn := m.Peer(Experiment); conn != nil {
			registry = experimentv1.NewExperimentServiceClient(conn)
		}
		srv.Run(ctx, regime, registry)
	})
	return srv.Registration(), nil
}
