package experiment_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

// searchAll pages through a search and returns the run names in order.
func (h *harness) searchAll(t *testing.T, req *experimentv1.SearchRunsRequest) []string {
	t.Helper()
	var names []string
	for {
		resp, err := h.client.SearchRuns(context.Background(), req)
		if err != nil {
			t.Fatalf("search %q: %v", req.GetFilter(), err)
		}
		for _, r := range resp.GetRuns() {
			names = append(names, r.GetRunName())
		}
		if resp.GetNextPageToken() == "" {
			return names
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func TestSearchRuns(t *testing.T) {
	runServer(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		e, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "search"})
		if err != nil {
			t.Fatal(err)
		}
		exp := e.GetExperiment().GetExperimentId()
		other, err := h.client.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "elsewhere"})
		if err != nil {
			t.Fatal(err)
		}
		// r0..r9: sharpe = i/10 (r9 has none), lr alternates, team by i%3.
		for i := range 10 {
			r, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: exp, RunName: fmt.Sprintf("r%d", i),
				Tags: map[string]string{"team": []string{"a", "b", "c"}[i%3]}})
			if err != nil {
				t.Fatal(err)
			}
			b := &experimentv1.LogBatchRequest{RunId: r.GetRun().GetRunId(), Params: []*experimentv1.Param{{Key: "lr", Value: []string{"0.01", "0.1"}[i%2]}}}
			if i < 9 {
				b.Metrics = []*experimentv1.Metric{{Key: "val/sharpe", Value: float64(i) / 10}}
			}
			if _, err := h.client.LogBatch(ctx, b); err != nil {
				t.Fatal(err)
			}
			if i == 4 {
				if _, err := h.client.DeleteRun(ctx, &experimentv1.DeleteRunRequest{RunId: r.GetRun().GetRunId()}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, err := h.client.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: other.GetExperiment().GetExperimentId(), RunName: "x"}); err != nil {
			t.Fatal(err)
		}
		search := func(filter string, order ...string) []string {
			return h.searchAll(t, &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: filter, OrderBy: order, PageSize: 2})
		}
		for _, tt := range []struct {
			filter string
			order  []string
			want   []string
		}{
			{"metrics.val/sharpe > 0.5", []string{"metrics.val/sharpe DESC"}, []string{"r8", "r7", "r6"}},
			// OR with parentheses (MLflow has AND only); missing values sort last.
			{"params.lr = '0.1' AND (tags.team = 'a' OR metrics.`val/sharpe` <= 0.1)", []string{"metrics.val/sharpe"}, []string{"r1", "r3", "r9"}},
			{"tags.team IN ('b', 'c') AND run_name LIKE 'r_'", []string{"run_name DESC"}, []string{"r8", "r7", "r5", "r2", "r1"}},
			{"run_name ILIKE 'R1%'", nil, []string{"r1"}},
			{"metrics.val/sharpe != 0.3", []string{"run_name"}, []string{"r0", "r1", "r2", "r5", "r6", "r7", "r8"}},
			{"status = 'RUNNING'", []string{"run_name"}, []string{"r0", "r1", "r2", "r3", "r5", "r6", "r7", "r8", "r9"}},
		} {
			if diff := cmp.Diff(tt.want, search(tt.filter, tt.order...)); diff != "" {
				t.Errorf("%s ORDER BY %v (-want +got):\n%s", tt.filter, tt.order, diff)
			}
		}
		deleted := h.searchAll(t, &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, RunView: experimentv1.ViewType_VIEW_TYPE_DELETED_ONLY})
		if diff := cmp.Diff([]string{"r4"}, deleted); diff != "" {
			t.Errorf("deleted view (-want +got):\n%s", diff)
		}
		// The default order is newest first.
		if got := search(""); len(got) != 9 || got[0] != "r9" {
			t.Errorf("default order: %v", got)
		}
		// Each run comes with its params, tags and latest metrics.
		resp, err := h.client.SearchRuns(ctx, &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: "run_name = 'r3'"})
		if err != nil {
			t.Fatal(err)
		}
		if r := resp.GetRuns()[0]; r.GetParams()["lr"] != "0.1" || r.GetTags()["team"] != "a" || len(r.GetLatestMetrics()) != 1 {
			t.Errorf("search result lacks run data: %v", r)
		}

		first, err := h.client.SearchRuns(ctx, &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, PageSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			name, field string
			req         *experimentv1.SearchRunsRequest
		}{
			{"no experiments", "experiment_ids", &experimentv1.SearchRunsRequest{}},
			{"malformed experiment id", "experiment_ids[1]", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp, "e-1"}}},
			{"malformed filter", "filter", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: "metrics.sharpe >> 1"}},
			{"string for a metric", "filter", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: "metrics.sharpe = 'x'"}},
			{"unknown status", "filter", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: "status = 'DONE'"}},
			{"bad order clause", "order_by[1]", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, OrderBy: []string{"run_name", "metrics.x SIDEWAYS"}}},
			{"negative page size", "page_size", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, PageSize: -1}},
			{"token of another query", "page_token", &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: "run_name = 'r1'", PageToken: first.GetNextPageToken()}},
		} {
			wantField(t, tt.name, tt.field, func() error {
				_, err := h.client.SearchRuns(ctx, tt.req)
				return err
			})
		}
		_, err = h.client.SearchRuns(ctx, &experimentv1.SearchRunsRequest{ExperimentIds: []string{exp}, Filter: "metrics.sharpe > 1 AND"})
		if msg := fmt.Sprint(err); !strings.Contains(msg, "position 22") {
			t.Errorf("a malformed filter's error gives the position: %v", err)
		}

		code, body := h.rest(t, http.MethodPost, "/v1/runs:search", `{"experimentIds":["`+exp+`"],"filter":"params.lr = '0.01' AND metrics.val/sharpe >= 0.6","orderBy":["metrics.val/sharpe DESC"]}`)
		if code != http.StatusOK || len(body["runs"].([]any)) != 2 || body["runs"].([]any)[0].(map[string]any)["runName"] != "r8" {
			t.Errorf("search over REST: %d %v", code, body)
		}
	})
}
