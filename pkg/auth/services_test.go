package auth_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/inference"
	"github.com/quantmesh/quantmesh/services/metacontroller"
	"github.com/quantmesh/quantmesh/services/regime"
	"github.com/quantmesh/quantmesh/services/risk"
)

// Default deny means a method without a policy entry is unusable by anyone
// but admin; every method the servers register, unary or streaming, must
// have one, and no entry may name a method that does not exist.
func TestServicePoliciesCoverEveryMethod(t *testing.T) {
	t.Parallel()
	tests := []struct {
		desc  *grpc.ServiceDesc
		roles func() auth.Policy
	}{
		{&experimentv1.ExperimentService_ServiceDesc, experiment.Roles},
		{&riskv1.RiskService_ServiceDesc, risk.Roles},
		{&regimev1.RegimeService_ServiceDesc, regime.Roles},
		{&metacontrollerv1.MetaControllerService_ServiceDesc, metacontroller.Roles},
		{&inferencev1.InferenceService_ServiceDesc, inference.Roles},
	}
	for _, tt := range tests {
		t.Run(tt.desc.ServiceName, func(t *testing.T) {
			t.Parallel()
			var want []string
			for _, m := range tt.desc.Methods {
				want = append(want, "/"+tt.desc.ServiceName+"/"+m.MethodName)
			}
			for _, s := range tt.desc.Streams {
				want = append(want, "/"+tt.desc.ServiceName+"/"+s.StreamName)
			}
			if len(want) == 0 {
				t.Fatal("service descriptor lists no methods")
			}
			policy := tt.roles()
			if diff := cmp.Diff(want, policy.Methods(), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("policy methods mismatch (-registered +policy):\n%s", diff)
			}
			for m, roles := range policy {
				for _, r := range roles {
					if _, err := auth.ParseRole(string(r)); err != nil {
						t.Errorf("%s: %v", m, err)
					}
				}
			}
		})
	}
}
