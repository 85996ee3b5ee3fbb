package experiment

import (
	"context"
	"math"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/page"
)

// historyPages are GetMetricHistory's page sizes; maxDownsample bounds
// max_points.
var historyPages = page.Limits{Default: 10_000, Max: 100_000}

const maxDownsample = 100_000

// historyCursor is the last point of a page and how many points equal to
// it the page held (identical points are all stored, and a page may end
// among them).
type historyCursor struct {
	Step  int64   `json:"s"`
	Time  int64   `json:"t"`
	Value float64 `json:"v"`
	Same  int     `json:"n"`
}

// GetMetricHistory implements ExperimentServiceServer.
func (s *Server) GetMetricHistory(ctx context.Context, req *experimentv1.GetMetricHistoryRequest) (*experimentv1.GetMetricHistoryResponse, error) {
	var v apierr.Violations
	v.Merge(validateID("run_id", req.GetRunId()))
	naming.Name(&v, "metric_key", req.GetMetricKey())
	size, err := historyPages.Size("page_size", req.GetPageSize())
	v.Merge(err)
	switch mp := req.GetMaxPoints(); {
	case mp < 0:
		v.Add("max_points", "must not be negative, got %d", mp)
	case mp > maxDownsample:
		v.Add("max_points", "must be at most %d, got %d", maxDownsample, mp)
	case mp > 0 && req.GetPageToken() != "":
		v.Add("page_token", "cannot be combined with max_points: a downsampled series comes in one page")
	}
	fp := page.Fingerprint("metric-history", req.GetRunId(), req.GetMetricKey())
	var cur historyCursor
	resumed, err := page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	runKey, err := s.store.RunKey(ctx, req.GetRunId())
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.GetMetricHistoryResponse{}
	if mp := int(req.GetMaxPoints()); mp > 0 {
		points, err := s.store.MetricHistory(ctx, HistoryQuery{RunKey: runKey, Key: req.GetMetricKey()})
		if err != nil {
			return nil, err
		}
		resp.TotalPoints = int64(len(points))
		if len(points) > mp {
			points = lttb(points, mp)
			resp.Downsampled = true
		}
		for _, p := range points {
			resp.Metrics = append(resp.Metrics, pointToProto(p))
		}
		return resp, nil
	}
	if resp.TotalPoints, err = s.store.CountMetric(ctx, runKey, req.GetMetricKey()); err != nil {
		return nil, err
	}
	q := HistoryQuery{RunKey: runKey, Key: req.GetMetricKey(), Limit: size + 1}
	if resumed {
		q.After = &Point{Key: req.GetMetricKey(), Step: cur.Step, Time: cur.Time, Value: cur.Value}
		q.Skip = cur.Same
	}
	points, err := s.store.MetricHistory(ctx, q)
	if err != nil {
		return nil, err
	}
	if len(points) > size {
		points = points[:size]
		last := points[len(points)-1]
		next := historyCursor{Step: last.Step, Time: last.Time, Value: last.Value}
		for i := len(points) - 1; i >= 0 && points[i] == last; i-- {
			next.Same++
		}
		if resumed && q.After != nil && *q.After == last {
			// The whole page repeated the cursor's point: count the
			// ones skipped before it too.
			next.Same += cur.Same
		}
		if resp.NextPageToken, err = page.Encode(fp, next); err != nil {
			return nil, err
		}
	}
	for _, p := range points {
		resp.Metrics = append(resp.Metrics, pointToProto(p))
	}
	return resp, nil
}

// lttb downsamples points (in step order) to n with Largest-Triangle-
// Three-Buckets: the first and last points stay, and each of n-2 equal
// buckets in between keeps the point that forms the largest triangle with
// the point kept before it and the average of the next bucket. Peaks and
// troughs survive, unlike with averaging. x is the step, y the value.
func lttb(points []Point, n int) []Point {
	if n >= len(points) || n < 3 {
		if n < 3 && n < len(points) {
			if n == 1 {
				return []Point{points[len(points)-1]}
			}
			return []Point{points[0], points[len(points)-1]}
		}
		return points
	}
	out := make([]Point, 0, n)
	out = append(out, points[0])
	bucket := float64(len(points)-2) / float64(n-2)
	kept := 0
	for b := 0; b < n-2; b++ {
		lo := int(float64(b)*bucket) + 1
		hi := int(float64(b+1)*bucket) + 1
		// The average of the next bucket (the last point for the last
		// bucket).
		nlo, nhi := hi, int(float64(b+2)*bucket)+1
		if nhi > len(points)-1 {
			nhi = len(points) - 1
		}
		if nlo >= nhi {
			nlo, nhi = len(points)-1, len(points)
		}
		var ax, ay float64
		for _, p := range points[nlo:nhi] {
			ax += float64(p.Step)
			ay += p.Value
		}
		ax /= float64(nhi - nlo)
		ay /= float64(nhi - nlo)
		px, py := float64(points[kept].Step), points[kept].Value
		best, bestArea := lo, -1.0
		for i := lo; i < hi; i++ {
			area := math.Abs((px-ax)*(points[i].Value-py) - (px-float64(points[i].Step))*(ay-py))
			if area > bestArea {
				best, bestArea = i, area
			}
		}
		out = append(out, points[best])
		kept = best
	}
	return append(out, points[len(points)-1])
}
