// Package regime implements RegimeService.
//
// Market regime detection with a Dirichlet-process Gaussian mixture (issue 6).
package regime

import (
	"context"
	"log/slog"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Server implements regimev1.RegimeServiceServer. Every RPC returns
// codes.Unimplemented until its issue lands.
type Server struct {
	regimev1.UnimplementedRegimeServiceServer

	log *slog.Logger
}

var _ regimev1.RegimeServiceServer = (*Server)(nil)

// New returns a server.
func New(log *slog.Logger) *Server {
	return &Server{log: log}
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &regimev1.RegimeService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return regimev1.RegisterRegimeServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of RegimeService.
func Roles() auth.Policy {
	svc := regimev1.File_quantmesh_regime_v1_regime_proto.Services().ByName("RegimeService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleResearcher},
		map[string][]auth.Role{
			// Market data feeders run with the trader role.
			"IngestBars": {auth.RoleTrader, auth.RoleResearcher},
		})
}
