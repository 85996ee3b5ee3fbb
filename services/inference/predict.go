package inference

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// Request limits.
const (
	maxFeatures  = 4096
	maxBatch     = 1000
	maxUnitID    = 250
	maxRequestID = 128
)

// instruments are the serving metrics. Prometheus names:
//
//	quantmesh_inference_predictions_total{model, action}   answers given
//	quantmesh_inference_predict_duration_seconds{model}     server-side time of one answer (validation, routing, forward pass)
//	quantmesh_inference_model_loaded_version{model}          the version answering unrouted requests (0: none)
type instruments struct {
	predictions metric.Int64Counter
	duration    metric.Float64Histogram
}

func newInstruments(meter metric.Meter) (*instruments, error) {
	var (
		ins instruments
		err error
	)
	if ins.predictions, err = meter.Int64Counter("quantmesh.inference.predictions",
		metric.WithDescription("Predictions answered, by model and action.")); err != nil {
		return nil, err
	}
	if ins.duration, err = meter.Float64Histogram("quantmesh.inference.predict.duration", metric.WithUnit("s"),
		metric.WithDescription("Server-side time to answer one prediction: validation, routing and the forward pass."),
		metric.WithExplicitBucketBoundaries(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05)); err != nil {
		return nil, err
	}
	return &ins, nil
}

func (s *Server) registerGauges(meter metric.Meter) error {
	g, err := meter.Int64ObservableGauge("quantmesh.inference.model.loaded_version",
		metric.WithDescription("The model version answering unrouted requests; 0 while none is loaded."))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, name := range s.names {
			var v int64
			if lv := s.models[name].current.Load(); lv != nil {
				v = lv.version
			}
			o.ObserveInt64(g, v, metric.WithAttributes(attribute.String("model", name)))
		}
		return nil
	}, g)
	return err
}

// Predict implements InferenceServiceServer.
func (s *Server) Predict(ctx context.Context, req *inferencev1.PredictRequest) (*inferencev1.PredictResponse, error) {
	start := time.Now()
	tg, err := s.prepare("", req)
	if err != nil {
		return nil, err
	}
	return s.answer(ctx, req, tg, start), nil
}

// target is what answers a request: a version of a served model, pinned or
// chosen by the alias or an A/B test.
type target struct {
	m      *served
	lv     *loaded
	pinned bool
	rt     *routing // nil when not routed
	// out and took are the forward pass's answer and duration.
	out  policy.Output
	took time.Duration
}

// forward runs the forward pass of the target's version. Features the
// model cannot score (finite values whose logits overflow) are a violation
// of prefix+"features".
func (tg *target) forward(prefix string, req *inferencev1.PredictRequest) error {
	start := time.Now()
	if err := tg.lv.net.Predict(req.GetFeatures(), &tg.out); err != nil {
		return apierr.Invalid(prefix+"features", "%v", err)
	}
	tg.took = time.Since(start)
	return nil
}

// PredictBatch implements InferenceServiceServer: every request is
// validated, its model resolved and its forward pass run before any
// decision is recorded, so a failed batch records nothing.
func (s *Server) PredictBatch(ctx context.Context, req *inferencev1.PredictBatchRequest) (*inferencev1.PredictBatchResponse, error) {
	start := time.Now()
	reqs := req.GetRequests()
	var v apierr.Violations
	switch {
	case len(reqs) == 0:
		v.Add("requests", "at least one request")
	case len(reqs) > maxBatch:
		v.Add("requests", "at most %d requests per batch, got %d", maxBatch, len(reqs))
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	ready := make([]target, len(reqs))
	var firstErr error
	for i, r := range reqs {
		prefix := fmt.Sprintf("requests[%d].", i)
		tg, err := s.prepare(prefix, r)
		if err != nil && !v.Merge(err) && firstErr == nil {
			firstErr = err
		}
		ready[i] = tg
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	if firstErr != nil {
		return nil, firstErr
	}
	out := &inferencev1.PredictBatchResponse{Responses: make([]*inferencev1.PredictResponse, len(reqs))}
	for i, r := range reqs {
		out.Responses[i] = s.answer(ctx, r, ready[i], start)
	}
	return out, nil
}

// StreamPredict implements InferenceServiceServer.
func (s *Server) StreamPredict(stream grpc.BidiStreamingServer[inferencev1.StreamPredictRequest, inferencev1.StreamPredictResponse]) error {
	ctx := stream.Context()
	for seq := uint64(1); ; seq++ {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		start := time.Now()
		req := in.GetRequest()
		out := &inferencev1.StreamPredictResponse{Sequence: seq, RequestId: req.GetRequestId()}
		var resp *inferencev1.PredictResponse
		tg, err := s.prepare("request.", req)
		if err == nil {
			resp = s.answer(ctx, req, tg, start)
		}
		if err != nil {
			out.Result = &inferencev1.StreamPredictResponse_Error{Error: predictError(err)}
		} else {
			out.Result = &inferencev1.StreamPredictResponse_Response{Response: resp}
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

// predictError describes a failed streamed request as Predict would have
// failed.
func predictError(err error) *inferencev1.PredictError {
	st, _ := apierr.Status(err)
	pe := &inferencev1.PredictError{Code: int32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, fv := range d.GetFieldViolations() {
				pe.FieldViolations = append(pe.FieldViolations, &inferencev1.PredictFieldViolation{Field: fv.GetField(), Description: fv.GetDescription()})
			}
			if len(pe.FieldViolations) > 0 {
				pe.Field = pe.FieldViolations[0].GetField()
			}
		case *errdetails.ErrorInfo:
			pe.Reason = d.GetReason()
		}
	}
	return pe
}

// prepare validates req (violations named with prefix), resolves the
// model version that answers it, routing it under the model's A/B test,
// and runs that version's forward pass. Errors are InvalidArgument,
// NotFound, FailedPrecondition or Unavailable.
func (s *Server) prepare(prefix string, req *inferencev1.PredictRequest) (target, error) {
	var v apierr.Violations
	if req == nil {
		v.Add(strings.TrimSuffix(prefix, "."), "required")
		return target{}, v.Err()
	}
	name := req.GetModelName()
	switch {
	case name == "":
		v.Add(prefix+"model_name", "required")
	case len(name) > maxModelName:
		v.Add(prefix+"model_name", "must be at most %d characters", maxModelName)
	}
	if n := utf8.RuneCountInString(req.GetUnitId()); n > maxUnitID {
		v.Add(prefix+"unit_id", "must be at most %d characters, got %d", maxUnitID, n)
	}
	switch n := utf8.RuneCountInString(req.GetSymbol()); {
	case n == 0:
		v.Add(prefix+"symbol", "required: the instrument the features describe")
	case n > maxSymbol:
		v.Add(prefix+"symbol", "must be at most %d characters, got %d", maxSymbol, n)
	}
	if n := utf8.RuneCountInString(req.GetRequestId()); n > maxRequestID {
		v.Add(prefix+"request_id", "must be at most %d characters, got %d", maxRequestID, n)
	}
	if ts := req.GetClientTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			v.Add(prefix+"client_time", "invalid timestamp: %v", err)
		}
	}
	feats := req.GetFeatures()
	switch {
	case len(feats) == 0:
		v.Add(prefix+"features", "required: the model's feature vector")
	case len(feats) > maxFeatures:
		v.Add(prefix+"features", "at most %d values, got %d", maxFeatures, len(feats))
	default:
		for i, x := range feats {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				v.Add(fmt.Sprintf("%sfeatures[%d]", prefix, i), "must be finite, got %v", x)
				break
			}
		}
	}
	if req.ModelVersion != nil && req.GetModelVersion() <= 0 {
		v.Add(prefix+"model_version", "must be positive when set, got %d", req.GetModelVersion())
	}
	if err := v.Err(); err != nil {
		return target{}, err
	}
	m := s.models[name]
	if m == nil {
		return target{}, apierr.NotFound("model", name)
	}
	lv := m.current.Load()
	if lv == nil {
		m.mu.Lock()
		why := m.lastErr
		m.mu.Unlock()
		return target{}, &apierr.Error{
			Kind:     apierr.ErrUnavailable,
			Reason:   "MODEL_NOT_LOADED",
			Message:  fmt.Sprintf("model %q has no loaded version yet: %s", name, why),
			Metadata: map[string]string{"model": name, "alias": m.spec.Alias},
		}
	}
	pinned := false
	if req.ModelVersion != nil {
		if alv := armVersion(m, req.GetModelVersion()); req.GetModelVersion() != lv.version && alv != nil {
			lv = alv
		} else if req.GetModelVersion() != lv.version {
			return target{}, &apierr.Error{
				Kind:     apierr.ErrFailedPrecondition,
				Reason:   "MODEL_VERSION_NOT_LOADED",
				Message:  fmt.Sprintf("model %q version %d is not loaded here; the loaded version is %d (or an arm of its A/B test)", name, req.GetModelVersion(), lv.version),
				Metadata: map[string]string{"model": name},
			}
		}
		pinned = true
	}
	rt, paused := routeFor(m, req.GetUnitId(), pinned)
	if paused != nil {
		lv = paused
	}
	if rt != nil {
		lv = rt.answer
		if rt.shadowRun && rt.route.treatment.net.Inputs() != len(feats) {
			rt.shadowRun = false // the treatment cannot read these features
		}
	}
	if len(feats) != lv.net.Inputs() {
		v.Add(prefix+"features", "model %q version %d takes %d features, got %d", name, lv.version, lv.net.Inputs(), len(feats))
		return target{}, v.Err()
	}
	tg := target{m: m, lv: lv, pinned: pinned, rt: rt}
	err := tg.forward(prefix, req)
	return tg, err
}

// answer builds the response from the target's forward pass, records the
// decision and, under an A/B test, the observation (or queues the shadow
// run that completes it).
func (s *Server) answer(ctx context.Context, req *inferencev1.PredictRequest, tg target, start time.Time) *inferencev1.PredictResponse {
	m, lv, pinned, rt, out := tg.m, tg.lv, tg.pinned, tg.rt, tg.out
	id := uuid.Must(uuid.NewV7())
	now := s.now()
	probs := &inferencev1.ActionProbabilities{Buy: out.Probs[policy.ActionBuy], Hold: out.Probs[policy.ActionHold], Sell: out.Probs[policy.ActionSell]}
	action := actionToProto(out.Action)
	alias := m.spec.Alias
	if cur := m.current.Load(); pinned || cur == nil || cur.version != lv.version || (rt != nil && rt.arm == inferencev1.Arm_ARM_TREATMENT) {
		alias = "" // the alias's version did not answer
	}
	took := time.Since(start)
	resp := &inferencev1.PredictResponse{
		DecisionId: id.String(), RequestId: req.GetRequestId(), Action: action, Probabilities: probs, Confidence: out.Confidence,
		ModelName: m.spec.Name, ModelVersion: lv.version, Alias: alias,
		LatencyMs: float64(took.Microseconds()) / 1000, DecisionTime: timestamppb.New(now),
	}
	if rt != nil {
		resp.AbTestId, resp.Arm, resp.Shadow = rt.route.testID, rt.arm, rt.route.mode == inferencev1.ABTestMode_AB_TEST_MODE_SHADOW
		s.observeAB(ctx, req, resp, rt, &out, tg.took)
	}
	s.ins.predictions.Add(ctx, 1, metric.WithAttributes(attribute.String("model", m.spec.Name), attribute.String("action", out.Action.String())))
	s.ins.duration.Record(ctx, took.Seconds(), metric.WithAttributes(attribute.String("model", m.spec.Name)))
	if s.recorder != nil {
		s.recorder.Record(ctx, &inferencev1.Decision{
			DecisionId: resp.DecisionId, DecisionTime: resp.DecisionTime, RequestId: req.GetRequestId(), ClientTime: req.GetClientTime(),
			ModelName: m.spec.Name, ModelVersion: lv.version, Alias: alias, Symbol: req.GetSymbol(), UnitId: req.GetUnitId(),
			Features: req.GetFeatures(), Action: action, Probabilities: probs, Confidence: out.Confidence, LatencyMs: resp.LatencyMs,
			Pinned: pinned, AbTestId: resp.AbTestId, Arm: resp.Arm, Shadow: resp.Shadow,
		})
	}
	return resp
}

func actionToProto(a policy.Action) inferencev1.Action {
	switch a {
	case policy.ActionBuy:
		return inferencev1.Action_ACTION_BUY
	case policy.ActionSell:
		return inferencev1.Action_ACTION_SELL
	}
	return inferencev1.Action_ACTION_HOLD
}

// GetModelStatus implements InferenceServiceServer.
func (s *Server) GetModelStatus(_ context.Context, req *inferencev1.GetModelStatusRequest) (*inferencev1.GetModelStatusResponse, error) {
	resp := &inferencev1.GetModelStatusResponse{}
	if name := req.GetModelName(); name != "" {
		m := s.models[name]
		if m == nil {
			return nil, apierr.NotFound("model", name)
		}
		resp.Models = append(resp.Models, m.status())
		return resp, nil
	}
	for _, name := range s.names {
		resp.Models = append(resp.Models, s.models[name].status())
	}
	return resp, nil
}
