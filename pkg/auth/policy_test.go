package auth_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/auth"
)

var (
	readRoles  = []auth.Role{auth.RoleTrader, auth.RoleResearcher}
	writeRoles = []auth.Role{auth.RoleResearcher}
)

func experimentService(t *testing.T) protoreflect.ServiceDescriptor {
	t.Helper()
	svc := experimentv1.File_quantmesh_experiment_v1_experiment_proto.Services().ByName("ExperimentService")
	if svc == nil {
		t.Fatal("ExperimentService descriptor not found")
	}
	return svc
}

func TestPolicyFor(t *testing.T) {
	t.Parallel()
	svc := experimentService(t)
	p := auth.PolicyFor(svc, readRoles, writeRoles, map[string][]auth.Role{
		"RecordObservations": {auth.RoleTrader, auth.RoleResearcher},
		"DeleteExperiment":   nil, // admin only
	})

	tests := []struct {
		method string
		want   []auth.Role
	}{
		// NO_SIDE_EFFECTS reads.
		{experimentv1.ExperimentService_GetExperiment_FullMethodName, readRoles},
		{experimentv1.ExperimentService_ListExperiments_FullMethodName, readRoles},
		{experimentv1.ExperimentService_SearchRuns_FullMethodName, readRoles},
		{experimentv1.ExperimentService_WatchModel_FullMethodName, readRoles},
		// Writes.
		{experimentv1.ExperimentService_CreateExperiment_FullMethodName, writeRoles},
		{experimentv1.ExperimentService_LogBatch_FullMethodName, writeRoles},
		{experimentv1.ExperimentService_StreamMetrics_FullMethodName, writeRoles},
		{experimentv1.ExperimentService_SetModelAlias_FullMethodName, writeRoles},
		// Overrides.
		{experimentv1.ExperimentService_RecordObservations_FullMethodName, []auth.Role{auth.RoleTrader, auth.RoleResearcher}},
		{experimentv1.ExperimentService_DeleteExperiment_FullMethodName, nil},
	}
	for _, tt := range tests {
		got, ok := p[tt.method]
		if !ok {
			t.Errorf("no policy entry for %s", tt.method)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("roles of %s mismatch (-want +got):\n%s", tt.method, diff)
		}
	}

	// Every method, and nothing else, has an entry, and each entry agrees
	// with the method's idempotency level unless overridden.
	methods := svc.Methods()
	if len(p) != methods.Len() {
		t.Errorf("policy has %d entries, service has %d methods", len(p), methods.Len())
	}
	for i := range methods.Len() {
		m := methods.Get(i)
		full := fmt.Sprintf("/%s/%s", svc.FullName(), m.Name())
		roles, ok := p[full]
		if !ok {
			t.Errorf("no policy entry for %s", full)
			continue
		}
		if m.Name() == "RecordObservations" || m.Name() == "DeleteExperiment" {
			continue
		}
		want := writeRoles
		if m.Options().(*descriptorpb.MethodOptions).GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
			want = readRoles
		}
		if diff := cmp.Diff(want, roles); diff != "" {
			t.Errorf("roles of %s mismatch (-want +got):\n%s", full, diff)
		}
	}
}

// The policy PolicyFor builds is enforced as described: readers read,
// writers write, overrides win, admin does all.
func TestPolicyForAuthorizes(t *testing.T) {
	t.Parallel()
	p := auth.PolicyFor(experimentService(t), readRoles, writeRoles, map[string][]auth.Role{
		"DeleteExperiment": nil,
	})
	a := auth.NewAuthorizer(testKeys(t), p)
	tests := []struct {
		key    string
		method string
		want   bool
	}{
		{traderKey, experimentv1.ExperimentService_GetExperiment_FullMethodName, true},
		{traderKey, experimentv1.ExperimentService_CreateExperiment_FullMethodName, false},
		{researcherKey, experimentv1.ExperimentService_CreateExperiment_FullMethodName, true},
		{researcherKey, experimentv1.ExperimentService_DeleteExperiment_FullMethodName, false},
		{adminKey, experimentv1.ExperimentService_DeleteExperiment_FullMethodName, true},
	}
	for _, tt := range tests {
		_, err := a.Authorize(incoming("x-api-key", tt.key), tt.method)
		if got := err == nil; got != tt.want {
			t.Errorf("Authorize(%s key, %s) allowed = %v (%v), want %v", strings.SplitN(tt.key, "-", 2)[0], tt.method, got, err, tt.want)
		}
	}
}

func TestPolicyForUnknownOverridePanics(t *testing.T) {
	t.Parallel()
	defer func() {
		r := recover()
		if r == nil {
			t.Fatal("PolicyFor with an override for an unknown method did not panic")
		}
		msg := fmt.Sprint(r)
		if !strings.Contains(msg, "GetExperimentz") || !strings.Contains(msg, "quantmesh.experiment.v1.ExperimentService") {
			t.Errorf("panic %q does not name the service and method", msg)
		}
	}()
	auth.PolicyFor(experimentService(t), readRoles, writeRoles, map[string][]auth.Role{
		"GetExperimentz": readRoles,
	})
}

func TestPolicyMergeAndMethods(t *testing.T) {
	t.Parallel()
	p := auth.Policy{
		"/b.S/M": {auth.RoleTrader},
		"/a.S/M": {auth.RoleTrader},
	}
	p.Merge(auth.Policy{
		"/b.S/M": {auth.RoleResearcher}, // replaces
		"/c.S/M": nil,
	})
	want := auth.Policy{
		"/a.S/M": {auth.RoleTrader},
		"/b.S/M": {auth.RoleResearcher},
		"/c.S/M": nil,
	}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("Merge mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/a.S/M", "/b.S/M", "/c.S/M"}, p.Methods()); diff != "" {
		t.Errorf("Methods mismatch (-want +got):\n%s", diff)
	}
}
