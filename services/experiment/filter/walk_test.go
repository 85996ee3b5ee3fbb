package filter_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

// TestWalkSetTests pages through walks whose filter compares params and
// tags with = and IN (which PostgreSQL may test on a hash of the matching
// runs rather than a probe per entry, in a walk the sample expects to be
// long: ShortWalk 1 makes every walk long) next to metric, != and attribute
// comparisons (per-entry probes, and the run read last), on enough runs
// that the walk, its sample and the fallback all take part. Some runs lack
// the order key (they sort last, in both directions), the param or the
// tag; others belong to another experiment or are deleted. Filters that
// bound the first order key let the walk stop at the bound. Every page
// sequence must equal the reference evaluator's.
func TestWalkSetTests(t *testing.T) {
	t.Parallel()
	storetest.Run(t, migrations(), func(t *testing.T, db *store.DB) {
		t.Parallel()
		rng := rand.New(rand.NewPCG(7, 7))
		runs := make([]*testRun, 1500)
		for i := range runs {
			r := &testRun{
				ID: fmt.Sprintf("run-%04d", i), Experiment: "exp-1", Name: fmt.Sprintf("name-%d", i%37),
				Status: "FINISHED", Stage: "active", Start: int64(1000 + i%250),
				Params:  map[string]string{},
				Tags:    map[string]string{},
				Metrics: map[string]float64{},
			}
			switch {
			case i%13 == 0:
				r.Experiment = "exp-2"
			case i%17 == 0:
				r.Stage = "deleted"
			}
			if i%9 != 0 {
				r.Params["p"] = fmt.Sprintf("v%d", rng.IntN(5))
			}
			r.Params["q"] = fmt.Sprintf("w%d", rng.IntN(3))
			if i%7 != 0 {
				r.Tags["team"] = fmt.Sprintf("t%d", rng.IntN(4))
			}
			if i%11 != 0 {
				// Ties on the order key: values on a coarse grid.
				r.Metrics["m"] = float64(rng.IntN(200)) / 10
			}
			r.Metrics["x"] = rng.Float64()
			runs[i] = r
		}
		insertRuns(t, db, runs)
		if db.Dialect() == store.Postgres {
			for _, table := range []string{"runs", "run_params", "run_tags", "latest_metrics"} {
				if _, err := db.Exec(context.Background(), "VACUUM (ANALYZE) "+table); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, tc := range []struct {
			filter string
			order  []string
		}{
			{"params.p = 'v1' AND tags.team != 't0' AND metrics.x > 0.2", []string{"metrics.m DESC"}},
			{"params.p = 'v1' AND tags.team != 't0' AND metrics.x > 0.2", []string{"metrics.m ASC"}},
			{"params.p IN ('v0', 'v3') AND tags.team = 't2'", []string{"metrics.m DESC", "params.q"}},
			{"tags.team IN ('t1', 't2') AND params.q = 'w1' AND run_name LIKE 'name-1%'", []string{"metrics.m DESC"}},
			{"params.p = 'v4' OR tags.team = 't3'", []string{"metrics.x"}},
			{"params.p = 'v2' AND metrics.x < 0.5", []string{"params.q DESC", "metrics.m"}},
			{"params.p = 'nope' AND tags.team = 't1'", []string{"metrics.m DESC"}},
			{"params.q = 'w0'", []string{"tags.team DESC", "metrics.m"}},
			// Bounds on the first order key: the walk reads only the
			// index range they allow, and may end it with a short page.
			{"metrics.m > 15 AND params.p = 'v1'", []string{"metrics.m DESC"}},
			{"metrics.m <= 3 AND tags.team != 't1'", []string{"metrics.m"}},
			{"metrics.m = 7 AND params.q = 'w2'", []string{"metrics.m DESC", "metrics.x"}},
			{"metrics.m >= 19.5", []string{"metrics.m DESC"}},
			{"params.p >= 'v3' AND params.p < 'v4' AND tags.team = 't0'", []string{"params.p DESC"}},
			{"start_time > 1200 AND params.p = 'v2'", []string{"start_time"}},
		} {
			e, err := filter.Parse(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			order, err := filter.ParseOrderBy(tc.order)
			if err != nil {
				t.Fatal(err)
			}
			// ShortWalk 1: every walk the sample lets run may hash.
			for _, w := range []struct{ walk, short int }{{0, 0}, {0, 1}, {60, 1}} {
				q := filter.Query{ExperimentIDs: []string{"exp-1"}, Stages: []string{"active"}, Filter: e, Order: order, WalkSize: w.walk, ShortWalk: w.short}
				want := evaluate(runs, q)
				for _, limit := range []int{9, 50} {
					got := search(t, db, q, limit)
					if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
						t.Fatalf("%s order %v walk %d short walk %d page size %d (-want +got):\n%s", tc.filter, tc.order, w.walk, w.short, limit, diff)
					}
				}
			}
		}
		if db.Dialect() != store.Postgres {
			return
		}
		// With ShortWalk 1 the first query's walk tests the param on a
		// hash of its runs, the shape this test is for.
		e, _ := filter.Parse("params.p = 'v1' AND tags.team != 't0' AND metrics.x > 0.2")
		order, _ := filter.ParseOrderBy([]string{"metrics.m DESC"})
		text, args, err := filter.Build(filter.Query{ExperimentIDs: []string{"exp-1"}, Stages: []string{"active"}, Filter: e, Order: order, Limit: 51, ShortWalk: 1}, db.Dialect())
		if err != nil {
			t.Fatal(err)
		}
		rows, err := db.Reader().QueryContext(context.Background(), "EXPLAIN (ANALYZE) "+text, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var plan strings.Builder
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan.WriteString(line + "\n")
		}
		// Run, not only planned: the hashed subplan's scan of the param's
		// index executed.
		lines := strings.Split(plan.String(), "\n")
		ran := false
		for _, m := range regexp.MustCompile(`hashed SubPlan (\d+)`).FindAllStringSubmatch(plan.String(), -1) {
			for i, l := range lines[:len(lines)-1] {
				if strings.TrimSpace(l) == "SubPlan "+m[1] && strings.Contains(lines[i+1], "run_params_search") && !strings.Contains(lines[i+1], "never executed") {
					ran = true
				}
			}
		}
		if !ran {
			t.Errorf("the walk did not hash the param's runs:\n%s", plan.String())
		}
	})
}
