// Package metacontroller implements MetaControllerService.
//
// Strategy allocation by a hierarchical policy over options (issue 7).
package metacontroller

import (
	"context"
	"log/slog"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Server implements metacontrollerv1.MetaControllerServiceServer. Every RPC returns
// codes.Unimplemented until its issue lands.
type Server struct {
	metacontrollerv1.UnimplementedMetaControllerServiceServer

	log *slog.Logger
}

var _ metacontrollerv1.MetaControllerServiceServer = (*Server)(nil)

// New returns a server.
func New(log *slog.Logger) *Server {
	return &Server{log: log}
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &metacontrollerv1.MetaControllerService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return metacontrollerv1.RegisterMetaControllerServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of MetaControllerService.
func Roles() auth.Policy {
	svc := metacontrollerv1.File_quantmesh_metacontroller_v1_metacontroller_proto.Services().ByName("MetaControllerService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleResearcher},
		nil)
}
