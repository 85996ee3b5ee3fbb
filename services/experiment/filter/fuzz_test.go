package filter

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quantmesh/quantmesh/pkg/store"
)

var fuzzSeeds = []string{
	"",
	"metrics.sharpe > 1.5 AND (params.lr = '0.01' OR tags.team IN ('a','b'))",
	"metrics.a = 1 OR metrics.b = 2 AND metrics.c = 3",
	"(metrics.a = 1 OR metrics.b = 2) AND NOT_AN_OPERAND",
	"metric.train/loss <= -1.5e-3 and param.x not in ('1', '2')",
	"tags.`it``s` LIKE '%\\_x\\\\' OR tags.\"a\"\"b\" ILIKE 'É%'",
	"status IN ('running', 'FINISHED') AND attributes.run_name != 'x''y'",
	"start_time >= '2024-05-01T12:00:00.123+02:00' AND end_time < 1714564800000",
	"run_id = 'abc' OR run_id IN ('d', 'e')",
	"metrics.a = 1e400",
	"metrics.a = 9e5",
	"metrics.a = .5 AND metrics.b = 5. AND metrics.c = +0 AND metrics.d = -0",
	"((((metrics.a = 1))))",
	"(metrics.a = 1",
	"metrics.a = 1)",
	"params.a = '\xff'",
	"metrics.\u00e9\u00df = 1",
	"metrics.a = 1 ANDmetrics.b = 2",
	"start_time > 99999999999999999999",
	strings.Repeat("(", 60) + "metrics.a = 1",
	"metrics.a DESC",
	"params.lr asc",
}

// FuzzParse checks that Parse never panics, that whatever it accepts is a
// valid tree whose String parses back to an equal tree, and that Build
// compiles it on both dialects. The input also goes through ParseOrderBy as
// one clause.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			pe, ok := err.(*Error)
			if !ok {
				t.Fatalf("Parse(%q) error %T, want *Error", s, err)
			}
			if pe.Clause != -1 || pe.Pos < 0 || pe.Pos > len(s) {
				t.Fatalf("Parse(%q) error clause %d pos %d out of range", s, pe.Clause, pe.Pos)
			}
		} else if e != nil {
			if err := Validate(e); err != nil {
				t.Fatalf("Validate(Parse(%q)): %v", s, err)
			}
			canon := e.String()
			again, err := parse(canon, math.MaxInt)
			if err != nil {
				t.Fatalf("Parse(%q) = %q, which does not parse: %v", s, canon, err)
			}
			if diff := cmp.Diff(e, again); diff != "" {
				t.Fatalf("Parse(%q) = %q, which parses differently (-first +again):\n%s", s, canon, diff)
			}
			if again.String() != canon {
				t.Fatalf("String is not stable: %q then %q", canon, again.String())
			}
			for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
				if _, _, err := Build(Query{ExperimentIDs: []string{"e"}, Stages: []string{"active"}, Filter: e, Limit: 1}, d); err != nil {
					t.Fatalf("Build(Parse(%q)) on %s: %v", s, d, err)
				}
			}
		}

		keys, err := ParseOrderBy([]string{s})
		if err != nil {
			pe, ok := err.(*Error)
			if !ok || pe.Clause != 0 || pe.Pos < 0 || pe.Pos > len(s) {
				t.Fatalf("ParseOrderBy(%q) error %#v", s, err)
			}
			return
		}
		again, err := ParseOrderBy([]string{keys[0].String()})
		if err != nil || !cmp.Equal(keys, again) {
			t.Fatalf("ParseOrderBy(%q) = %v; its String %q gives %v, %v", s, keys, keys[0].String(), again, err)
		}
	})
}
