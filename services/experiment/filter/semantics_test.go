package filter_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

func end(ms int64) *int64 { return &ms }

// semanticRuns are five runs that pin the documented semantics.
func semanticRuns() []*testRun {
	return []*testRun{
		{ID: "r1", Experiment: "e", Name: "alpha", Status: "FINISHED", Stage: "active", Start: 1000, End: end(5000),
			Params: map[string]string{"lr": "0.01", "opt": "adam"}, Tags: map[string]string{"team": "Café", "note": "50%_off"},
			Metrics: map[string]float64{"sharpe": 1.5, "train/loss": 0.2, "val-loss": 0.3}},
		{ID: "r2", Experiment: "e", Name: "Alpha", Status: "RUNNING", Stage: "active", Start: 2000,
			Params: map[string]string{"lr": "0.1"}, Tags: map[string]string{"team": "CAFÉ", "note": "50x off"},
			Metrics: map[string]float64{"sharpe": -0.5}},
		{ID: "r3", Experiment: "e", Name: "beta", Status: "FAILED", Stage: "active", Start: 2000, End: end(3000),
			Params: map[string]string{"lr": "0.01"}, Tags: map[string]string{"team": "cafe", "note": "a*b?[c]"},
			Metrics: map[string]float64{"sharpe": 1.5, "val-loss": 0.1}},
		{ID: "r4", Experiment: "e", Name: "it's", Status: "KILLED", Stage: "deleted", Start: 3000, End: end(9000),
			Params: map[string]string{"opt": "sgd"}, Tags: map[string]string{}, Metrics: map[string]float64{}},
		{ID: "r5", Experiment: "other", Name: "alpha", Status: "FINISHED", Stage: "active", Start: 1000,
			Params: map[string]string{"lr": "0.01"}, Tags: map[string]string{}, Metrics: map[string]float64{"sharpe": 9}},
	}
}

func TestSemantics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		filter string
		order  []string
		stages []string
		want   []string
	}{
		{name: "all active, newest first", want: []string{"r2", "r3", "r1"}},
		{name: "deleted only", stages: []string{"deleted"}, want: []string{"r4"}},
		{name: "both stages", stages: []string{"active", "deleted"}, want: []string{"r4", "r2", "r3", "r1"}},
		{name: "metric", filter: "metrics.sharpe > 1", want: []string{"r3", "r1"}},
		{name: "keys with / and -", filter: "metrics.train/loss < 1 OR metrics.val-loss < 0.2", want: []string{"r3", "r1"}},
		{name: "missing key never matches !=", filter: "metrics.val-loss != 0.3", want: []string{"r3"}},
		{name: "missing key never matches NOT IN", filter: "params.opt NOT IN ('sgd')", want: []string{"r1"}},
		{name: "unset end_time never matches", filter: "end_time != 1", want: []string{"r3", "r1"}},
		{name: "end_time compares", filter: "end_time < 4000", want: []string{"r3"}},
		{name: "RFC 3339 time", filter: "start_time >= '1970-01-01T00:00:02Z'", want: []string{"r2", "r3"}},
		{name: "status", filter: "status IN ('running', 'FAILED')", want: []string{"r2", "r3"}},
		{name: "OR and AND", filter: "params.lr = '0.01' AND metrics.sharpe > 1 OR status = 'RUNNING'", want: []string{"r2", "r3", "r1"}},
		{name: "parentheses", filter: "params.lr = '0.01' AND (metrics.sharpe < 0 OR status = 'FAILED')", want: []string{"r3"}},
		{name: "string order is bytewise", filter: "run_name < 'a'", want: []string{"r2"}},
		{name: "LIKE is case-sensitive", filter: "run_name LIKE 'al%'", want: []string{"r1"}},
		{name: "ILIKE folds ASCII", filter: "run_name ILIKE 'AL%'", want: []string{"r2", "r1"}},
		{name: "ILIKE does not fold É", filter: "tags.team ILIKE 'café'", want: []string{"r1"}},
		{name: "ILIKE folds C, A, F", filter: "tags.team ILIKE 'cafÉ'", want: []string{"r2"}},
		{name: "LIKE _ is one character", filter: "tags.team LIKE 'Caf_'", want: []string{"r1"}},
		{name: "LIKE escapes", filter: `tags.note LIKE '50\%\_%'`, want: []string{"r1"}},
		{name: "LIKE % and _ without escapes", filter: `tags.note LIKE '50%_%'`, want: []string{"r2", "r1"}},
		{name: "GLOB metacharacters are literal", filter: `tags.note LIKE 'a*b?[c]'`, want: []string{"r3"}},
		{name: "GLOB metacharacters are literal in ILIKE", filter: `tags.note ILIKE 'A*B?[C]'`, want: []string{"r3"}},
		{name: "doubled quote", filter: "run_name = 'it''s'", stages: []string{"deleted"}, want: []string{"r4"}},
		{name: "order by metric DESC, missing last, run_id breaks ties", order: []string{"metrics.sharpe DESC"}, want: []string{"r1", "r3", "r2"}},
		{name: "order by metric ASC, missing last", order: []string{"metrics.val-loss"}, want: []string{"r3", "r1", "r2"}},
		{name: "order by end_time DESC, unset last", order: []string{"end_time DESC"}, want: []string{"r1", "r3", "r2"}},
		{name: "order by param then start_time", order: []string{"params.lr", "start_time DESC"}, want: []string{"r3", "r1", "r2"}},
		{name: "order by run_name is bytewise", order: []string{"run_name"}, want: []string{"r2", "r1", "r3"}},
	}
	storetest.Run(t, migrations(), func(t *testing.T, db *store.DB) {
		runs := semanticRuns()
		insertRuns(t, db, runs)
		for _, tt := range tests {
			q := filter.Query{ExperimentIDs: []string{"e"}, Stages: tt.stages}
			if q.Stages == nil {
				q.Stages = []string{"active"}
			}
			var err error
			if q.Filter, err = filter.Parse(tt.filter); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if q.Order, err = filter.ParseOrderBy(tt.order); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			for _, limit := range []int{1, 2, 100} {
				var got []string
				for _, r := range search(t, db, q, limit) {
					got = append(got, r.ID)
				}
				if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("%s (limit %d): %q order %q (-want +got):\n%s", tt.name, limit, tt.filter, tt.order, diff)
				}
			}
			// The evaluator of the differential test agrees.
			var ref []string
			for _, r := range evaluate(runs, q) {
				ref = append(ref, r.ID)
			}
			if diff := cmp.Diff(tt.want, ref, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("%s: evaluator (-want +got):\n%s", tt.name, diff)
			}
		}
	})
}

// TestNoSplicing checks that keys and values reach the database only as
// bind arguments.
func TestNoSplicing(t *testing.T) {
	t.Parallel()
	evil := `x'); DROP TABLE runs; --`
	e, err := filter.Parse(`params."` + evil + `" = '` + strings.ReplaceAll(evil, "'", "''") + `' OR tags."` + evil + `" LIKE '` + strings.ReplaceAll(evil, "'", "''") + `%'`)
	if err != nil {
		t.Fatal(err)
	}
	order := []filter.OrderKey{{Operand: filter.Operand{Kind: filter.Metric, Key: evil}}}
	after := &filter.Cursor{Values: []any{1.5}, RunID: evil}
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		query, args, err := filter.Build(filter.Query{ExperimentIDs: []string{evil}, Stages: []string{"active"}, Filter: e, Order: order, After: after, Limit: 10}, d)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(query, "DROP") || strings.Contains(query, "x'") {
			t.Errorf("%s: user text in SQL: %s", d, query)
		}
		params := args
		if d == store.Postgres {
			if args[0] != pgx.QueryExecModeExec {
				t.Errorf("postgres: first argument %v, want pgx.QueryExecModeExec", args[0])
			}
			params = args[1:]
		}
		for i := range params {
			if !strings.Contains(query, fmt.Sprintf("$%d", i+1)) {
				t.Errorf("%s: no placeholder $%d for argument %d", d, i+1, i)
			}
		}
		if strings.Contains(query, fmt.Sprintf("$%d", len(params)+1)) {
			t.Errorf("%s: placeholder $%d without an argument", d, len(params)+1)
		}
	}
}

func TestCursorJSON(t *testing.T) {
	t.Parallel()
	c := filter.Cursor{Values: []any{1.5, math.Copysign(0, -1), 1e-300, int64(1<<62 + 1), "é'\"", nil, ""}, RunID: "r"}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back filter.Cursor
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, back); diff != "" {
		t.Errorf("round trip of %s (-want +got):\n%s", b, diff)
	}
	if math.Signbit(back.Values[1].(float64)) != true {
		t.Error("-0 lost its sign")
	}
	if _, err := json.Marshal(filter.Cursor{Values: []any{math.NaN()}}); err == nil {
		t.Error("NaN encoded")
	}
	if err := json.Unmarshal([]byte(`{"v":[{"f":1,"s":"x"}],"r":"r"}`), &back); err == nil {
		t.Error("a value with two types decoded")
	}
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	metricOrder := []filter.OrderKey{{Operand: filter.Operand{Kind: filter.Metric, Key: "m"}}}
	ok := filter.Query{ExperimentIDs: []string{"e"}, Stages: []string{"active"}, Limit: 1}
	with := func(f func(*filter.Query)) filter.Query { q := ok; f(&q); return q }
	tests := []struct {
		name   string
		q      filter.Query
		cursor bool
	}{
		{"no experiment", with(func(q *filter.Query) { q.ExperimentIDs = nil }), false},
		{"no stage", with(func(q *filter.Query) { q.Stages = nil }), false},
		{"bad stage", with(func(q *filter.Query) { q.Stages = []string{"gone"} }), false},
		{"zero limit", with(func(q *filter.Query) { q.Limit = 0 }), false},
		{"string for a metric", with(func(q *filter.Query) {
			q.Filter = &filter.Comparison{Operand: filter.Operand{Kind: filter.Metric, Key: "m"}, Op: filter.Eq, Values: []any{"1"}}
		}), false},
		{"LIKE on status", with(func(q *filter.Query) {
			q.Filter = &filter.Comparison{Operand: filter.Operand{Kind: filter.Attribute, Key: "status"}, Op: filter.Like, Values: []any{"R%"}}
		}), false},
		{"empty AND", with(func(q *filter.Query) { q.Filter = &filter.And{} }), false},
		{"unknown attribute order", with(func(q *filter.Query) {
			q.Order = []filter.OrderKey{{Operand: filter.Operand{Kind: filter.Attribute, Key: "user"}}}
		}), false},
		{"cursor too short", with(func(q *filter.Query) { q.After = &filter.Cursor{RunID: "r"} }), true},
		{"cursor int for a metric", with(func(q *filter.Query) {
			q.Order = metricOrder
			q.After = &filter.Cursor{Values: []any{int64(1)}, RunID: "r"}
		}), true},
		{"cursor NULL start_time", with(func(q *filter.Query) { q.After = &filter.Cursor{Values: []any{nil}, RunID: "r"} }), true},
		{"cursor float start_time", with(func(q *filter.Query) { q.After = &filter.Cursor{Values: []any{1.0}, RunID: "r"} }), true},
	}
	for _, tt := range tests {
		_, _, err := filter.Build(tt.q, store.Postgres)
		if err == nil {
			t.Errorf("%s: Build succeeded", tt.name)
			continue
		}
		if got := errors.Is(err, filter.ErrCursor); got != tt.cursor {
			t.Errorf("%s: %v; errors.Is(ErrCursor) = %v, want %v", tt.name, err, got, tt.cursor)
		}
	}
}
