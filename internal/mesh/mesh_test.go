package mesh_test

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/bus"
)

// built lists the RPCs that are implemented; every other RPC of the mesh
// must answer Unimplemented until its issue lands.
var built = map[string]bool{
	experimentv1.ExperimentService_CreateExperiment_FullMethodName:    true,
	experimentv1.ExperimentService_GetExperiment_FullMethodName:       true,
	experimentv1.ExperimentService_GetExperimentByName_FullMethodName: true,
	experimentv1.ExperimentService_ListExperiments_FullMethodName:     true,
	experimentv1.ExperimentService_UpdateExperiment_FullMethodName:    true,
	experimentv1.ExperimentService_DeleteExperiment_FullMethodName:    true,
	experimentv1.ExperimentService_RestoreExperiment_FullMethodName:   true,
	experimentv1.ExperimentService_CreateRun_FullMethodName:           true,
	experimentv1.ExperimentService_GetRun_FullMethodName:              true,
	experimentv1.ExperimentService_UpdateRun_FullMethodName:           true,
	experimentv1.ExperimentService_DeleteRun_FullMethodName:           true,
	experimentv1.ExperimentService_RestoreRun_FullMethodName:          true,
	experimentv1.ExperimentService_SetRunTag_FullMethodName:           true,
	experimentv1.ExperimentService_DeleteRunTag_FullMethodName:        true,
	experimentv1.ExperimentService_LogBatch_FullMethodName:            true,
	experimentv1.ExperimentService_StreamMetrics_FullMethodName:       true,
	experimentv1.ExperimentService_GetMetricHistory_FullMethodName:    true,
	experimentv1.ExperimentService_SearchRuns_FullMethodName:          true,
	inferencev1.InferenceService_GetDecision_FullMethodName:           true,
	inferencev1.InferenceService_Predict_FullMethodName:               true,
	inferencev1.InferenceService_PredictBatch_FullMethodName:          true,
	inferencev1.InferenceService_StreamPredict_FullMethodName:         true,
	inferencev1.InferenceService_GetModelStatus_FullMethodName:        true,
	inferencev1.InferenceService_ListDecisions_FullMethodName:         true,

	regimev1.RegimeService_GetModel_FullMethodName:         true,
	regimev1.RegimeService_FitModel_FullMethodName:         true,
	regimev1.RegimeService_ListModels_FullMethodName:       true,
	regimev1.RegimeService_ActivateModel_FullMethodName:    true,
	regimev1.RegimeService_GetRegime_FullMethodName:        true,
	regimev1.RegimeService_ClassifyFeatures_FullMethodName: true,
	regimev1.RegimeService_IngestBars_FullMethodName:       true,
	regimev1.RegimeService_WatchRegimes_FullMethodName:     true,

	// Checkpoints.
	experimentv1.ExperimentService_LogCheckpoint_FullMethodName:        true,
	experimentv1.ExperimentService_ListCheckpoints_FullMethodName:      true,
	experimentv1.ExperimentService_ApplyRetentionPolicy_FullMethodName: true,

	// The model registry.
	experimentv1.ExperimentService_CreateRegisteredModel_FullMethodName:  true,
	experimentv1.ExperimentService_GetRegisteredModel_FullMethodName:     true,
	experimentv1.ExperimentService_ListRegisteredModels_FullMethodName:   true,
	experimentv1.ExperimentService_UpdateRegisteredModel_FullMethodName:  true,
	experimentv1.ExperimentService_DeleteRegisteredModel_FullMethodName:  true,
	experimentv1.ExperimentService_CreateModelVersion_FullMethodName:     true,
	experimentv1.ExperimentService_GetModelVersion_FullMethodName:        true,
	experimentv1.ExperimentService_ListModelVersions_FullMethodName:      true,
	experimentv1.ExperimentService_UpdateModelVersion_FullMethodName:     true,
	experimentv1.ExperimentService_SetModelAlias_FullMethodName:          true,
	experimentv1.ExperimentService_DeleteModelAlias_FullMethodName:       true,
	experimentv1.ExperimentService_GetModelVersionByAlias_FullMethodName: true,
	experimentv1.ExperimentService_WatchModel_FullMethodName:             true,

	// A/B tests.
	experimentv1.ExperimentService_CreateABTest_FullMethodName:       true,
	experimentv1.ExperimentService_GetABTest_FullMethodName:          true,
	experimentv1.ExperimentService_ListABTests_FullMethodName:        true,
	experimentv1.ExperimentService_UpdateABTest_FullMethodName:       true,
	experimentv1.ExperimentService_StartABTest_FullMethodName:        true,
	experimentv1.ExperimentService_PauseABTest_FullMethodName:        true,
	experimentv1.ExperimentService_StopABTest_FullMethodName:         true,
	experimentv1.ExperimentService_GetABTestResults_FullMethodName:   true,
	experimentv1.ExperimentService_AssignUnit_FullMethodName:         true,
	experimentv1.ExperimentService_WatchABTests_FullMethodName:       true,
	experimentv1.ExperimentService_RecordObservations_FullMethodName: true,
}

func init() {
	// MetaControllerService is built in full.
	for _, m := range metacontrollerv1.MetaControllerService_ServiceDesc.Methods {
		built["/"+metacontrollerv1.MetaControllerService_ServiceDesc.ServiceName+"/"+m.MethodName] = true
	}
	for _, st := range metacontrollerv1.MetaControllerService_ServiceDesc.Streams {
		built["/"+metacontrollerv1.MetaControllerService_ServiceDesc.ServiceName+"/"+st.StreamName] = true
	}
	// RiskService is built in full.
	for _, m := range riskv1.RiskService_ServiceDesc.Methods {
		built["/"+riskv1.RiskService_ServiceDesc.ServiceName+"/"+m.MethodName] = true
	}
	for _, st := range riskv1.RiskService_ServiceDesc.Streams {
		built["/"+riskv1.RiskService_ServiceDesc.ServiceName+"/"+st.StreamName] = true
	}
}

func TestUnbuiltRPCsAnswerUnimplemented(t *testing.T) {
	t.Parallel()
	_, conn := meshtest.Serve(t, meshtest.Config(t, mesh.AllServices...))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var unbuilt []string
	for _, desc := range []grpc.ServiceDesc{
		experimentv1.ExperimentService_ServiceDesc,
		riskv1.RiskService_ServiceDesc,
		regimev1.RegimeService_ServiceDesc,
		metacontrollerv1.MetaControllerService_ServiceDesc,
		inferencev1.InferenceService_ServiceDesc,
	} {
		for _, m := range desc.Methods {
			full := "/" + desc.ServiceName + "/" + m.MethodName
			err := conn.Invoke(ctx, full, &emptypb.Empty{}, &emptypb.Empty{})
			if built[full] {
				if status.Code(err) == codes.Unimplemented {
					t.Errorf("%s is listed as built but answers Unimplemented", full)
				}
				continue
			}
			if status.Code(err) != codes.Unimplemented {
				t.Errorf("%s: %v, want Unimplemented", full, err)
			}
			unbuilt = append(unbuilt, full)
		}
		for _, s := range desc.Streams {
			full := "/" + desc.ServiceName + "/" + s.StreamName
			if built[full] {
				continue
			}
			cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: s.ServerStreams, ClientStreams: s.ClientStreams}, full)
			if err == nil {
				if err = cs.SendMsg(&emptypb.Empty{}); err == nil {
					_ = cs.CloseSend()
					err = cs.RecvMsg(&emptypb.Empty{})
				}
			}
			if status.Code(err) != codes.Unimplemented {
				t.Errorf("%s: %v, want Unimplemented", full, err)
			}
			unbuilt = append(unbuilt, full)
		}
	}
	sort.Strings(unbuilt)
	t.Logf("%d RPCs not built yet:\n%s", len(unbuilt), strings.Join(unbuilt, "\n"))
}

func TestKafkaBus(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close) // registered first, so it runs after the mesh stops
	cfg := meshtest.Config(t, mesh.Experiment)
	cfg.KafkaBrokers = cluster.ListenAddrs()
	m, _ := meshtest.Serve(t, cfg)
	b := m.Bus
	if u, ok := b.(interface{ Unwrap() bus.Bus }); ok {
		b = u.Unwrap()
	}
	if _, ok := b.(interface {
		EnsureTopics(context.Context, []string, int32) error
	}); !ok {
		t.Errorf("bus is %T, want the Kafka bus", m.Bus)
	}
}

func TestPeersAndSubsets(t *testing.T) {
	t.Parallel()
	// A process running experiment only reaches risk through its peer
	// address, and itself for experiment.
	cfg := meshtest.Config(t, mesh.Experiment)
	cfg.Peers = map[string]string{mesh.Risk: "127.0.0.1:1"}
	m, _ := meshtest.Serve(t, cfg)
	if m.Peer(mesh.Experiment) == nil || m.Peer(mesh.Risk) == nil {
		t.Error("missing peer connections")
	}
	if m.Peer(mesh.Regime) != nil {
		t.Error("regime is neither local nor a peer, yet has a connection")
	}
	// A peer that is down fails calls fast with Unavailable, not a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := riskv1.NewRiskServiceClient(m.Peer(mesh.Risk)).GetLimits(ctx, &riskv1.GetLimitsRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("call to a down peer: %v, want Unavailable", err)
	}
}

func oneKey(t *testing.T, key string) auth.Keys {
	t.Helper()
	var k auth.Keys
	if err := k.Add(key, auth.Principal{Name: "peer", Role: auth.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(*mesh.Config)
		want   string
	}{
		{"no services", func(c *mesh.Config) { c.Services = nil }, "services"},
		{"unknown service", func(c *mesh.Config) { c.Services = []string{"risk", "bogus"} }, "bogus"},
		{"duplicate service", func(c *mesh.Config) { c.Services = []string{"risk", "risk"} }, "twice"},
		{"peer of a local service", func(c *mesh.Config) { c.Peers = map[string]string{"risk": "h:1"} }, "peer-risk"},
		{"unknown peer", func(c *mesh.Config) { c.Peers = map[string]string{"oracle": "h:1"} }, "peer-oracle"},
		{"bad peer address", func(c *mesh.Config) { c.Peers = map[string]string{"regime": "nohost"} }, "peer-regime"},
		{"no database", func(c *mesh.Config) { c.Store.URL = "" }, "database-url"},
		{"no artifact root", func(c *mesh.Config) { c.Experiment.ArtifactRoot = "" }, "artifact-root"},
		{"split inference without its consumers on the in-process bus", func(c *mesh.Config) {
			c.Services, c.Peers = []string{mesh.Inference}, map[string]string{mesh.Experiment: "h:1"}
		}, "kafka-brokers: "},
		{"keys without a peer key", func(c *mesh.Config) { c.Keys = oneKey(t, "k-0123456789abcdef") }, "peer-api-key: required"},
		{"a peer key the process refuses", func(c *mesh.Config) {
			c.Keys, c.PeerAPIKey = oneKey(t, "k-0123456789abcdef"), "other-0123456789abcdef"
		}, "peer-api-key: not one of"},
	}
	for _, tt := range tests {
		cfg := meshtest.Config(t, mesh.Risk)
		tt.mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error = %v, want one naming %q", tt.name, err, tt.want)
		}
	}
}

func TestPublishGoesThroughTheBusPolicy(t *testing.T) {
	t.Parallel()
	m, _ := meshtest.Serve(t, meshtest.Config(t, mesh.Experiment))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := bus.Message{Topic: bus.TopicDecisions, Key: []byte("k"), Value: []byte("v")}
	if err := m.Publisher.Publish(ctx, msg); err != nil {
		t.Fatal(err)
	}
	got := make(chan bus.Message, 1)
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	go func() {
		_ = m.Bus.Consume(cctx, bus.ConsumerConfig{Group: "test", Topics: []string{bus.TopicDecisions}}, func(_ context.Context, msgs []bus.Message) error {
			got <- msgs[0]
			ccancel()
			return nil
		})
	}()
	select {
	case g := <-got:
		if string(g.Value) != "v" {
			t.Errorf("consumed %q", g.Value)
		}
	case <-ctx.Done():
		t.Fatal("published message never consumed")
	}
	// A publish with an invalid message is refused and not retried into a
	// hang.
	if err := m.Publisher.Publish(ctx, bus.Message{}); err == nil {
		t.Error("publish without a topic succeeded")
	}
}
