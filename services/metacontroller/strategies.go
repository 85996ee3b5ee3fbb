package metacontroller

import (
	"context"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/page"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

var strategyPages = page.Limits{Default: 100, Max: 100}

type strategyCursor struct {
	Index int `json:"i"`
}

func strategyToProto(i int, s strategy.Strategy) *metacontrollerv1.Strategy {
	params := map[string]string{}
	for k, v := range s.Parameters {
		params[k] = v
	}
	return &metacontrollerv1.Strategy{
		Name: s.Name, Description: s.Description, Kind: metacontrollerv1.StrategyKind(s.Kind), Index: int32(i), Parameters: params,
	}
}

// ListStrategies implements MetaControllerServiceServer.
func (s *Server) ListStrategies(_ context.Context, req *metacontrollerv1.ListStrategiesRequest) (*metacontrollerv1.ListStrategiesResponse, error) {
	var v apierr.Violations
	size, err := strategyPages.Size("page_size", req.GetPageSize())
	v.Merge(err)
	fp := page.Fingerprint("metacontroller-strategies")
	cur := strategyCursor{Index: -1}
	_, err = page.Decode("page_token", req.GetPageToken(), fp, &cur)
	v.Merge(err)
	if err := v.Err(); err != nil {
		return nil, err
	}
	type item struct {
		i int
		s strategy.Strategy
	}
	var items []item
	for i, st := range strategy.All() {
		if i > cur.Index {
			items = append(items, item{i, st})
		}
	}
	resp := &metacontrollerv1.ListStrategiesResponse{}
	if items, resp.NextPageToken, err = page.Cut(items, size, fp, func(last item) any { return strategyCursor{Index: last.i} }); err != nil {
		return nil, err
	}
	for _, it := range items {
		resp.Strategies = append(resp.Strategies, strategyToProto(it.i, it.s))
	}
	return resp, nil
}
