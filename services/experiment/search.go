package experiment

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/page"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

// maxSearchExperiments bounds SearchRuns' experiment_ids.
const maxSearchExperiments = 100

// SearchRuns implements ExperimentServiceServer. The filter and order are
// parsed into a typed tree (package filter) and compiled into one
// parameterised query; pages continue from the last run's sort key
// (keyset), carried in an opaque token bound to the query.
func (s *Server) SearchRuns(ctx context.Context, req *experimentv1.SearchRunsRequest) (*experimentv1.SearchRunsResponse, error) {
	var v apierr.Violations
	ids := req.GetExperimentIds()
	switch {
	case len(ids) == 0:
		v.Add("experiment_ids", "at least one experiment to search")
	case len(ids) > maxSearchExperiments:
		v.Add("experiment_ids", "at most %d experiments, got %d", maxSearchExperiments, len(ids))
	}
	for i, id := range ids {
		v.Merge(validateID(fmt.Sprintf("experiment_ids[%d]", i), id))
	}
	expr, err := filter.Parse(req.GetFilter())
	if err != nil {
		v.Add("filter", "%v", err)
	}
	order, err := filter.ParseOrderBy(req.GetOrderBy())
	if err != nil {
		field := "order_by"
		var fe *filter.Error
		if errors.As(err, &fe) && fe.Clause >= 0 {
			field = fmt.Sprintf("order_by[%d]", fe.Clause)
		}
		v.Add(field, "%v", err)
	}
	view, err := viewFromProto("run_view", req.GetRunView())
	v.Merge(err)
	size, err := page.Standard.Size("page_size", req.GetPageSize())
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	stages := []string{string(StageActive)}
	switch view {
	case ViewDeleted:
		stages = []string{string(StageDeleted)}
	case ViewAll:
		stages = []string{string(StageActive), string(StageDeleted)}
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	canonical := ""
	if expr != nil {
		canonical = expr.String()
	}
	keys := make([]string, len(order))
	for i, k := range order {
		keys[i] = k.String()
	}
	fp := page.Fingerprint("runs", strings.Join(sorted, ","), canonical, strings.Join(keys, ","), strings.Join(stages, ","))
	var cur filter.Cursor
	resumed, err := page.Decode("page_token", req.GetPageToken(), fp, &cur)
	if err != nil {
		return nil, err
	}
	q := filter.Query{ExperimentIDs: sorted, Stages: stages, Filter: expr, Order: order, Limit: size + 1}
	if resumed {
		q.After = &cur
	}
	runs, cursors, err := s.store.SearchRuns(ctx, q)
	if err != nil {
		return nil, err
	}
	resp := &experimentv1.SearchRunsResponse{}
	if runs, resp.NextPageToken, err = page.Cut(runs, size, fp, func(*Run) any { return cursors[size-1] }); err != nil {
		return nil, err
	}
	for _, r := range runs {
		resp.Runs = append(resp.Runs, runToProto(r))
	}
	return resp, nil
}
