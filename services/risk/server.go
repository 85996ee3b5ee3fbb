// Package risk implements RiskService.
//
// Pre-trade risk: every order is checked against per-account limits before it reaches a market (issue 3).
package risk

import (
	"context"
	"log/slog"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Server implements riskv1.RiskServiceServer. Every RPC returns
// codes.Unimplemented until its issue lands.
type Server struct {
	riskv1.UnimplementedRiskServiceServer

	log *slog.Logger
}

var _ riskv1.RiskServiceServer = (*Server)(nil)

// New returns a server.
func New(log *slog.Logger) *Server {
	return &Server{log: log}
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &riskv1.RiskService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return riskv1.RegisterRiskServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of RiskService.
func Roles() auth.Policy {
	svc := riskv1.File_quantmesh_risk_v1_risk_proto.Services().ByName("RiskService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleTrader},
		map[string][]auth.Role{
			// Limits and kill switches are for admins only.
			"SetLimits":         nil,
			"TriggerKillSwitch": nil,
			"ResetKillSwitch":   nil,
		})
}
