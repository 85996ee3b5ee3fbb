package inference_test

import (
	"context"
	"errors"
	"io"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/policy"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/inference"
)

// mesh is ExperimentService and InferenceService on one loopback server,
// InferenceService following the registry through a client to itself.
type mesh struct {
	exp      experimentv1.ExperimentServiceClient
	inf      inferencev1.InferenceServiceClient
	bus      *bus.InProc
	stopExp  func() // stops the experiment server only (the registry goes away)
	features int
}

const inputs = 9

func startMesh(t *testing.T, db *store.DB) *mesh {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	expStore := experiment.NewSQLStore(db)
	t.Cleanup(func() { expStore.Close() })
	expSrv, err := server.New(ctx, server.Options{
		Config:   server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 2 * time.Second},
		Services: []server.Registration{experiment.New(experiment.DefaultConfig(), expStore, quiet, experiment.WithAliasPollInterval(50*time.Millisecond)).Registration()},
		Logger:   quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	expCtx, stopExp := context.WithCancel(ctx)
	expDone := make(chan struct{})
	go func() { _ = expSrv.Serve(expCtx); close(expDone) }()

	b := bus.NewInProc(bus.InProcConfig{Logger: quiet})
	t.Cleanup(func() { b.Close() })
	pub, err := inference.NewDecisionPublisher(b, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close(context.Background()) })
	inf, err := inference.New(inference.DefaultConfig(), inference.Deps{Decisions: inference.NewSQLDecisions(db), Recorder: pub, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	infSrv, err := server.New(ctx, server.Options{
		Config:   server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 2 * time.Second},
		Services: []server.Registration{inf.Registration()},
		Logger:   quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	infDone := make(chan struct{})
	go func() { _ = infSrv.Serve(ctx); close(infDone) }()

	expConn := dial(t, expSrv.GRPCTarget())
	follow := make(chan struct{})
	go func() { inf.Run(ctx, experimentv1.NewExperimentServiceClient(expConn)); close(follow) }()
	t.Cleanup(func() { cancel(); <-follow; <-infDone; <-expDone })
	return &mesh{
		exp: experimentv1.NewExperimentServiceClient(expConn), inf: inferencev1.NewInferenceServiceClient(dial(t, infSrv.GRPCTarget())),
		bus: b, stopExp: func() { stopExp(); <-expDone }, features: inputs,
	}
}

func dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// register stores a network as a new version of "policy" and returns its
// version number.
func (m *mesh) register(t *testing.T, net *policy.Network) int64 {
	t.Helper()
	ctx := context.Background()
	_, err := m.exp.CreateRegisteredModel(ctx, &experimentv1.CreateRegisteredModelRequest{Name: "policy"})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		t.Fatal(err)
	}
	w, err := net.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, net.Inputs())
	for i := range names {
		names[i] = "f" + string(rune('a'+i))
	}
	mv, err := m.exp.CreateModelVersion(ctx, &experimentv1.CreateModelVersionRequest{
		ModelName: "policy", Format: policy.Format, Weights: w, Tags: map[string]string{inference.FeaturesTag: strings.Join(names, ",")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return mv.GetModelVersion().GetVersion()
}

func (m *mesh) promote(t *testing.T, version int64) {
	t.Helper()
	if _, err := m.exp.SetModelAlias(context.Background(), &experimentv1.SetModelAliasRequest{ModelName: "policy", Alias: "production", Version: version}); err != nil {
		t.Fatal(err)
	}
}

// waitLoaded waits until the served version is version.
func (m *mesh) waitLoaded(t *testing.T, version int64) *inferencev1.ModelStatus {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := m.inf.GetModelStatus(context.Background(), &inferencev1.GetModelStatusRequest{ModelName: "policy"})
		if err != nil {
			t.Fatal(err)
		}
		if s := st.GetModels()[0]; s.GetLoadedVersion() == version {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("version %d not loaded after 15s: %v", version, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func network(t *testing.T, seed int64) *policy.Network {
	t.Helper()
	n, err := policy.New(policy.DefaultConfig(inputs), seed)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func features(i int) []float64 {
	x := make([]float64, inputs)
	for j := range x {
		x[j] = math.Sin(float64(i*inputs+j)) * 0.05
	}
	return x
}

func request(i int) *inferencev1.PredictRequest {
	return &inferencev1.PredictRequest{ModelName: "policy", Symbol: "DAX", UnitId: "acct-1", Features: features(i), RequestId: "r"}
}

// expect is what net answers to request i.
func expect(t *testing.T, net *policy.Network, i int) policy.Output {
	t.Helper()
	var out policy.Output
	if err := net.Predict(features(i), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPredictServesTheAliasAndNamesTheVersion(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		m := startMesh(t, db)
		ctx := context.Background()
		// Before any version: Unavailable, saying why.
		_, err := m.inf.Predict(ctx, request(0))
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "no loaded version") {
			t.Fatalf("predict before a model: %v", err)
		}
		st, _ := m.inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{})
		if s := st.GetModels()[0]; s.GetSourceState() != inferencev1.ModelSourceState_MODEL_SOURCE_STATE_NEVER_LOADED || s.GetLastError() == "" {
			t.Errorf("status before a model: %v", s)
		}

		net := network(t, 1)
		m.promote(t, m.register(t, net))
		s := m.waitLoaded(t, 1)
		if s.GetFeatureCount() != inputs || len(s.GetFeatureNames()) != inputs || s.GetFormat() != policy.Format ||
			s.GetSourceState() != inferencev1.ModelSourceState_MODEL_SOURCE_STATE_WATCHING || s.GetChecksumSha256() == "" {
			t.Errorf("status after load: %v", s)
		}
		resp, err := m.inf.Predict(ctx, request(3))
		if err != nil {
			t.Fatal(err)
		}
		want := expect(t, net, 3)
		p := resp.GetProbabilities()
		if resp.GetModelVersion() != 1 || resp.GetAlias() != "production" || resp.GetDecisionId() == "" || resp.GetRequestId() != "r" ||
			p.GetBuy() != want.Probs[0] || p.GetHold() != want.Probs[1] || p.GetSell() != want.Probs[2] || resp.GetConfidence() != want.Confidence ||
			math.Abs(p.GetBuy()+p.GetHold()+p.GetSell()-1) > 1e-9 {
			t.Errorf("predict: %v, want probabilities %v", resp, want.Probs)
		}

		// The decision reaches the bus with everything the response said.
		var got *inferencev1.Decision
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = m.bus.Consume(cctx, bus.ConsumerConfig{Group: "t", Topics: []string{bus.TopicDecisions}}, func(_ context.Context, msgs []bus.Message) error {
			got = &inferencev1.Decision{}
			if err := proto.Unmarshal(msgs[0].Value, got); err != nil {
				t.Error(err)
			}
			cancel()
			return nil
		})
		cancel()
		if got.GetDecisionId() != resp.GetDecisionId() || got.GetModelVersion() != 1 || got.GetSymbol() != "DAX" || len(got.GetFeatures()) != inputs ||
			got.GetAction() != resp.GetAction() {
			t.Errorf("decision on the bus: %v", got)
		}
	})
}

// TestHotSwapUnderLoad moves the alias back and forth while clients
// predict: no request fails, and every answer is exactly what the version
// it names computes.
func TestHotSwapUnderLoad(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		m := startMesh(t, db)
		nets := map[int64]*policy.Network{}
		for seed := int64(1); seed <= 2; seed++ {
			net := network(t, seed)
			nets[m.register(t, net)] = net
		}
		m.promote(t, 1)
		m.waitLoaded(t, 1)
		ctx, cancel := context.WithCancel(context.Background())
		var (
			wg       sync.WaitGroup
			answered atomic.Int64
			seen     sync.Map
		)
		for w := range 4 {
			wg.Go(func() {
				for i := w; ctx.Err() == nil; i += 4 {
					resp, err := m.inf.Predict(context.Background(), request(i))
					if err != nil {
						t.Errorf("predict during swaps: %v", err)
						return
					}
					net := nets[resp.GetModelVersion()]
					if net == nil {
						t.Errorf("answer names version %d", resp.GetModelVersion())
						return
					}
					if want := expect(t, net, i); resp.GetProbabilities().GetBuy() != want.Probs[0] || resp.GetConfidence() != want.Confidence {
						t.Errorf("request %d: answer %v is not version %d's", i, resp.GetProbabilities(), resp.GetModelVersion())
						return
					}
					seen.Store(resp.GetModelVersion(), true)
					answered.Add(1)
				}
			})
		}
		for swap := range 6 {
			v := int64(2 - swap%2)
			m.promote(t, v)
			m.waitLoaded(t, v)
		}
		cancel()
		wg.Wait()
		_, v1 := seen.Load(int64(1))
		_, v2 := seen.Load(int64(2))
		if answered.Load() == 0 || !v1 || !v2 {
			t.Errorf("%d answers, versions seen: 1=%v 2=%v", answered.Load(), v1, v2)
		}
	})
}

// TestKeepsServingWithoutTheRegistry: the registry goes away; the loaded
// version keeps answering and the status says the subscription is down.
func TestKeepsServingWithoutTheRegistry(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		m := startMesh(t, db)
		m.promote(t, m.register(t, network(t, 1)))
		m.waitLoaded(t, 1)
		m.stopExp()
		deadline := time.Now().Add(15 * time.Second)
		for {
			st, err := m.inf.GetModelStatus(context.Background(), &inferencev1.GetModelStatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if s := st.GetModels()[0]; s.GetSourceState() == inferencev1.ModelSourceState_MODEL_SOURCE_STATE_DISCONNECTED {
				if s.GetLoadedVersion() != 1 || s.GetLastError() == "" {
					t.Errorf("disconnected status: %v", s)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("status never said DISCONNECTED")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if resp, err := m.inf.Predict(context.Background(), request(1)); err != nil || resp.GetModelVersion() != 1 {
			t.Errorf("predict without the registry: %v %v", resp, err)
		}
	})
}

func TestPredictBatchAndStream(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		m := startMesh(t, db)
		// ReLU, so that huge finite features overflow the logits.
		cfg := policy.DefaultConfig(inputs)
		cfg.Activation = policy.ActivationReLU
		net, err := policy.New(cfg, 7)
		if err != nil {
			t.Fatal(err)
		}
		m.promote(t, m.register(t, net))
		m.waitLoaded(t, 1)
		ctx := context.Background()
		batch := &inferencev1.PredictBatchRequest{}
		for i := range 5 {
			batch.Requests = append(batch.Requests, request(i))
		}
		resp, err := m.inf.PredictBatch(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for i, r := range resp.GetResponses() {
			if r.GetConfidence() != expect(t, net, i).Confidence {
				t.Errorf("batch answer %d out of order or wrong", i)
			}
			ids[r.GetDecisionId()] = true
		}
		if len(ids) != 5 {
			t.Errorf("%d distinct decision ids for 5 answers", len(ids))
		}
		// One bad request fails the whole batch, naming it, and records
		// nothing: also when only its forward pass fails (finite features
		// so large that the network's sums overflow).
		batch.Requests[3].Features = []float64{1}
		wantField(t, "batch with a short vector", "requests[3].features", func() error {
			_, err := m.inf.PredictBatch(ctx, batch)
			return err
		})
		batch.Requests[3].Features = features(3)
		huge := request(9)
		for j := range huge.Features {
			huge.Features[j] = math.MaxFloat64
		}
		batch.Requests = append(batch.Requests, huge)
		wantField(t, "batch whose last vector overflows", "requests[5].features", func() error {
			_, err := m.inf.PredictBatch(ctx, batch)
			return err
		})

		stream, err := m.inf.StreamPredict(ctx)
		if err != nil {
			t.Fatal(err)
		}
		reqs := []*inferencev1.PredictRequest{request(0), {ModelName: "policy", Symbol: "X", Features: []float64{math.NaN()}}, request(2), {}, {ModelName: "nope", Symbol: "X", Features: features(0)}, request(5)}
		go func() {
			for _, r := range reqs {
				_ = stream.Send(&inferencev1.StreamPredictRequest{Request: r})
			}
			_ = stream.Send(&inferencev1.StreamPredictRequest{}) // no request at all
			_ = stream.CloseSend()
		}()
		var got []*inferencev1.StreamPredictResponse
		for {
			r, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, r)
		}
		if len(got) != len(reqs)+1 {
			t.Fatalf("%d stream answers for %d requests", len(got), len(reqs)+1)
		}
		if e := got[len(reqs)].GetError(); e.GetCode() != int32(codes.InvalidArgument) || e.GetField() != "request" {
			t.Errorf("a message without a request: %v", e)
		}
		for i, r := range got {
			if r.GetSequence() != uint64(i+1) {
				t.Errorf("answer %d has sequence %d", i, r.GetSequence())
			}
		}
		if got[0].GetResponse().GetConfidence() != expect(t, net, 0).Confidence || got[5].GetResponse().GetConfidence() != expect(t, net, 5).Confidence {
			t.Error("streamed answers out of order")
		}
		if e := got[1].GetError(); e.GetCode() != int32(codes.InvalidArgument) || e.GetField() != "request.features[0]" {
			t.Errorf("NaN in a stream: %v", e)
		}
		if e := got[3].GetError(); e.GetCode() != int32(codes.InvalidArgument) || len(e.GetFieldViolations()) < 3 {
			t.Errorf("empty request in a stream: %v", e)
		}
		if e := got[4].GetError(); e.GetCode() != int32(codes.NotFound) {
			t.Errorf("unknown model in a stream: %v", e)
		}

		// Only the answered requests were recorded: the first batch's and
		// the stream's three.
		answered := map[string]bool{}
		for _, r := range resp.GetResponses() {
			answered[r.GetDecisionId()] = true
		}
		for _, i := range []int{0, 2, 5} {
			answered[got[i].GetResponse().GetDecisionId()] = true
		}
		seen := 0
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = m.bus.Consume(cctx, bus.ConsumerConfig{Group: "count", Topics: []string{bus.TopicDecisions}}, func(_ context.Context, msgs []bus.Message) error {
			for _, msg := range msgs {
				var d inferencev1.Decision
				if err := proto.Unmarshal(msg.Value, &d); err != nil || !answered[d.GetDecisionId()] {
					t.Errorf("decision %s recorded, but no answer carried it (%v)", d.GetDecisionId(), err)
				}
				if seen++; seen == len(answered) {
					cancel()
				}
			}
			return nil
		})
		if seen != len(answered) {
			t.Errorf("%d decisions on the bus, want %d", seen, len(answered))
		}
	})
}

func TestPredictBadInput(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		m := startMesh(t, db)
		m.promote(t, m.register(t, network(t, 1)))
		m.waitLoaded(t, 1)
		ctx := context.Background()
		with := func(mutate func(r *inferencev1.PredictRequest)) func() error {
			return func() error {
				r := request(0)
				mutate(r)
				_, err := m.inf.Predict(ctx, r)
				return err
			}
		}
		for _, tt := range []struct {
			name, field string
			call        func() error
		}{
			{"no model", "model_name", with(func(r *inferencev1.PredictRequest) { r.ModelName = "" })},
			{"no symbol", "symbol", with(func(r *inferencev1.PredictRequest) { r.Symbol = "" })},
			{"long symbol", "symbol", with(func(r *inferencev1.PredictRequest) { r.Symbol = strings.Repeat("S", 65) })},
			{"no features", "features", with(func(r *inferencev1.PredictRequest) { r.Features = nil })},
			{"wrong count", "features", with(func(r *inferencev1.PredictRequest) { r.Features = r.Features[:3] })},
			{"NaN", "features[2]", with(func(r *inferencev1.PredictRequest) { r.Features[2] = math.NaN() })},
			{"+Inf", "features[0]", with(func(r *inferencev1.PredictRequest) { r.Features[0] = math.Inf(1) })},
			{"too many", "features", with(func(r *inferencev1.PredictRequest) { r.Features = make([]float64, 4097) })},
			{"long unit", "unit_id", with(func(r *inferencev1.PredictRequest) { r.UnitId = strings.Repeat("u", 251) })},
			{"long request id", "request_id", with(func(r *inferencev1.PredictRequest) { r.RequestId = strings.Repeat("r", 129) })},
			{"zero pin", "model_version", with(func(r *inferencev1.PredictRequest) { r.ModelVersion = proto.Int64(0) })},
			{"empty batch", "requests", func() error {
				_, err := m.inf.PredictBatch(ctx, &inferencev1.PredictBatchRequest{})
				return err
			}},
			{"bad decision id", "decision_id", func() error {
				_, err := m.inf.GetDecision(ctx, &inferencev1.GetDecisionRequest{DecisionId: "d-1"})
				return err
			}},
			{"end before start", "end_time", func() error {
				_, err := m.inf.ListDecisions(ctx, &inferencev1.ListDecisionsRequest{StartTime: timestamp(2), EndTime: timestamp(1)})
				return err
			}},
			{"version without model", "model_version", func() error {
				_, err := m.inf.ListDecisions(ctx, &inferencev1.ListDecisionsRequest{ModelVersion: 2})
				return err
			}},
		} {
			wantField(t, tt.name, tt.field, tt.call)
		}
		wantCode(t, "unknown model", codes.NotFound, with(func(r *inferencev1.PredictRequest) { r.ModelName = "other" }))
		wantCode(t, "pin to a version not loaded", codes.FailedPrecondition, with(func(r *inferencev1.PredictRequest) { r.ModelVersion = proto.Int64(7) }))
		if resp, err := m.inf.Predict(ctx, func() *inferencev1.PredictRequest { r := request(0); r.ModelVersion = proto.Int64(1); return r }()); err != nil || resp.GetAlias() != "" {
			t.Errorf("pinned to the loaded version: %v %v", resp, err)
		}
		wantCode(t, "status of an unknown model", codes.NotFound, func() error {
			_, err := m.inf.GetModelStatus(ctx, &inferencev1.GetModelStatusRequest{ModelName: "other"})
			return err
		})
	})
}

func TestListDecisionsPages(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		m := startMesh(t, db)
		ctx := context.Background()
		base := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
		var ds []*inferencev1.Decision
		for i := range 40 {
			// Pairs share a time: the id breaks the tie.
			ds = append(ds, decision(i, base.Add(time.Duration(i/2)*time.Second)))
		}
		if _, err := inference.NewSQLDecisions(db).InsertDecisions(ctx, ds, time.Now()); err != nil {
			t.Fatal(err)
		}
		for _, oldest := range []bool{false, true} {
			var got []string
			token := ""
			for {
				resp, err := m.inf.ListDecisions(ctx, &inferencev1.ListDecisionsRequest{ModelName: "policy", PageSize: 7, PageToken: token, OldestFirst: oldest})
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range resp.GetDecisions() {
					got = append(got, d.GetDecisionId())
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if len(got) != 40 {
				t.Fatalf("oldest first %v: %d decisions, want 40", oldest, len(got))
			}
			seen := map[string]bool{}
			for i, id := range got {
				if seen[id] {
					t.Fatalf("decision %s listed twice", id)
				}
				seen[id] = true
				if i > 0 && (id > got[i-1]) != oldest {
					t.Fatalf("oldest first %v: order broken at %d", oldest, i)
				}
			}
		}
		first, err := m.inf.ListDecisions(ctx, &inferencev1.ListDecisionsRequest{PageSize: 5})
		if err != nil {
			t.Fatal(err)
		}
		wantField(t, "token of another query", "page_token", func() error {
			_, err := m.inf.ListDecisions(ctx, &inferencev1.ListDecisionsRequest{PageSize: 5, Symbol: "DAX", PageToken: first.GetNextPageToken()})
			return err
		})
	})
}
