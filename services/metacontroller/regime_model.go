package metacontroller

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/features"
)

// classifyBatch is how many feature vectors go in one ClassifyFeatures call
// (the contract allows 10000).
const classifyBatch = 5000

// storedRegimeModel reads the RegimeService model id (the request's field)
// for a backtest or a training over ds whose evaluated (held-out) rows start
// at row firstEval of the whole series (ds.start-based), and returns it as a
// backtest regime model that classifies through ClassifyFeatures.
//
// Walk-forward: a model fitted on rows that are evaluated is
// INVALID_ARGUMENT. The check compares what both sides can locate: rows of
// the same bundled dataset (any of its columns, since a row is the same day
// in every column), or bar times when the model was fitted on timestamped
// bars and the series has timestamps. A model whose training data cannot
// be placed against the series (stored bars against a series without
// timestamps, another dataset, inline bars) is used as the caller says.
func (s *Server) storedRegimeModel(ctx context.Context, field, id string, ds *dataset, firstEval int) (*backtest.RegimeModel, error) {
	_, client := s.clients()
	if client == nil {
		return nil, apierr.Unavailable("RegimeService", errors.New("not reachable from this process"))
	}
	resp, err := client.GetModel(ctx, &regimev1.GetModelRequest{ModelId: id, View: regimev1.ModelView_MODEL_VIEW_BASIC})
	if err != nil {
		return nil, regimeErr(field, id, err)
	}
	m := resp.GetModel()
	if err := overlaps(field, m, ds, firstEval); err != nil {
		return nil, err
	}
	var specs []features.Spec
	for _, f := range m.GetFeatures().GetFeatures() {
		sp := features.Spec{Kind: features.Kind(f.GetKind()), Window: int(f.GetWindow())}
		if sp.Kind == features.VolumeZScore {
			return nil, apierr.Invalid(field, "regime model %s uses a volume feature; backtests and trainings compute features from closes only", id)
		}
		specs = append(specs, sp)
	}
	if _, err := features.NewComputer(specs); err != nil {
		return nil, apierr.Invalid(field, "regime model %s: %v", id, err)
	}
	var regimes []backtest.Regime
	for _, r := range m.GetRegimes() {
		regimes = append(regimes, backtest.Regime{Weight: r.GetWeight(), Volatility: r.GetVolatility(), MeanReturn: r.GetMeanReturn()})
	}
	nr := len(regimes)
	out, err := backtest.NewRegimeModel(regimes, func(ctx context.Context, closes []float64) ([][]float64, error) {
		return classifyCloses(ctx, client, field, id, specs, nr, closes)
	})
	if err != nil {
		return nil, apierr.Invalid(field, "regime model %s: %v", id, err)
	}
	return out, nil
}

// overlaps rejects a model fitted on rows of ds at or after firstEval:
// evaluated rows, or later ones (a model that has seen the future of the
// rows it is judged on).
func overlaps(field string, m *regimev1.Model, ds *dataset, firstEval int) error {
	evalEnd := ds.start + len(ds.closes)
	if sl := m.GetSource().GetDataset(); sl != nil && ds.datasetID != "" && sl.GetDatasetId() == ds.datasetID {
		start, end := int(sl.GetStartIndex()), int(sl.GetEndIndex())
		if end == 0 {
			end = math.MaxInt
		}
		if end > firstEval {
			rows := fmt.Sprintf("%d-%d", start, end)
			if sl.GetEndIndex() == 0 {
				rows = fmt.Sprintf("%d-end", start)
			}
			return apierr.Invalid(field, "regime model %s was fitted on rows %s of %s, not all before the evaluated rows %d-%d: walk-forward needs a model fitted before row %d",
				m.GetModelId(), rows, ds.datasetID, firstEval, evalEnd, firstEval)
		}
		return nil
	}
	if ds.times == nil || m.GetFirstBarTime() == nil || m.GetLastBarTime() == nil {
		return nil
	}
	first, last := m.GetFirstBarTime().AsTime(), m.GetLastBarTime().AsTime()
	evalFirst, evalLast := ds.times[firstEval-ds.start], ds.times[len(ds.times)-1]
	if !last.Before(evalFirst) {
		return apierr.Invalid(field, "regime model %s was fitted on bars from %s to %s, not all before the evaluated bars from %s to %s: walk-forward needs a model fitted on earlier bars",
			m.GetModelId(), first.Format(time.RFC3339), last.Format(time.RFC3339), evalFirst.Format(time.RFC3339), evalLast.Format(time.RFC3339))
	}
	return nil
}

// classifyCloses computes the model's feature vector of every bar of closes
// and asks RegimeService for each one's regime probabilities; their logs
// are the filter's per-bar log-likelihoods (up to a per-bar constant).
func classifyCloses(ctx context.Context, client regimev1.RegimeServiceClient, field, id string, specs []features.Spec, regimes int, closes []float64) ([][]float64, error) {
	out := make([][]float64, len(closes))
	var rows []int
	var vecs []*regimev1.FeatureVector
	flush := func() error {
		if len(vecs) == 0 {
			return nil
		}
		resp, err := client.ClassifyFeatures(ctx, &regimev1.ClassifyFeaturesRequest{ModelId: id, Vectors: vecs})
		if err != nil {
			return regimeErr(field, id, err)
		}
		cs := resp.GetClassifications()
		if len(cs) != len(vecs) {
			return fmt.Errorf("ClassifyFeatures: %d classifications for %d vectors", len(cs), len(vecs))
		}
		for i, c := range cs {
			p := c.GetRawProbabilities()
			if len(p) != regimes {
				return fmt.Errorf("ClassifyFeatures: %d probabilities, the model has %d regimes", len(p), regimes)
			}
			ll := make([]float64, regimes)
			for j, x := range p {
				ll[j] = math.Log(math.Max(x, math.SmallestNonzeroFloat64))
			}
			out[rows[i]] = ll
		}
		rows, vecs = rows[:0], vecs[:0]
		return nil
	}
	err := features.EachClose(specs, closes, func(t int, vec []float64) error {
		rows = append(rows, t)
		vecs = append(vecs, &regimev1.FeatureVector{Values: append([]float64(nil), vec...)})
		if len(vecs) == classifyBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// regimeErr maps RegimeService's answer about the model id to the
// request's field.
func regimeErr(field, id string, err error) error {
	switch status.Code(err) {
	case codes.NotFound:
		return apierr.Invalid(field, "regime model %q not found", truncate(id))
	case codes.InvalidArgument:
		return apierr.Invalid(field, "%s", status.Convert(err).Message())
	case codes.Unavailable, codes.DeadlineExceeded:
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return err
		}
		return apierr.Unavailable("RegimeService", err)
	}
	return fmt.Errorf("RegimeService model %s: %w", id, err)
}
