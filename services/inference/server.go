// Package inference implements InferenceService.
//
// Model serving with hot-swapped weights and A/B routing (issue 5).
package inference

import (
	"context"
	"log/slog"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Server implements inferencev1.InferenceServiceServer. GetDecision and
// ListDecisions are built; serving (Predict, PredictBatch, StreamPredict,
// GetModelStatus) returns codes.Unimplemented until it lands.
type Server struct {
	inferencev1.UnimplementedInferenceServiceServer

	log       *slog.Logger
	decisions DecisionStore
}

var _ inferencev1.InferenceServiceServer = (*Server)(nil)

// New returns a server reading decisions from decisions.
func New(decisions DecisionStore, log *slog.Logger) *Server {
	return &Server{log: log, decisions: decisions}
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &inferencev1.InferenceService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return inferencev1.RegisterInferenceServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of InferenceService.
func Roles() auth.Policy {
	svc := inferencev1.File_quantmesh_inference_v1_inference_proto.Services().ByName("InferenceService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		nil)
}
