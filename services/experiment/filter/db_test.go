package filter_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

var (
	seedFlag    = flag.Uint64("filter.seed", 0, "seed of the differential test (0: from the clock)")
	queriesFlag = flag.Int("filter.queries", 0, "random queries per backend in the differential test (0: 250, or 40 with -race)")
)

// raceEnabled is set by race_test.go: the race detector makes the pure-Go
// SQLite driver about 20 times slower.
var raceEnabled bool

func queries() int {
	switch {
	case *queriesFlag > 0:
		return *queriesFlag
	case raceEnabled:
		return 40
	}
	return 250
}

// testRun is a run as the evaluator sees it.
type testRun struct {
	Key        int64
	ID         string
	Experiment string
	Name       string
	Status     string
	Stage      string
	Start      int64
	End        *int64
	Params     map[string]string
	Tags       map[string]string
	Metrics    map[string]float64
}

func migrations() []store.MigrationSet { return []store.MigrationSet{experiment.Migrations()} }

// insertRuns writes experiments and runs with plain SQL and sets each
// run's Key.
func insertRuns(t testing.TB, db *store.DB, runs []*testRun) {
	t.Helper()
	ctx := context.Background()
	err := db.InTx(ctx, func(tx *sql.Tx) error {
		exps := map[string]bool{}
		for _, r := range runs {
			if exps[r.Experiment] {
				continue
			}
			exps[r.Experiment] = true
			if _, err := tx.ExecContext(ctx, `INSERT INTO experiments (experiment_id, name, lifecycle_stage, create_time, update_time) VALUES ($1, $2, 'active', 0, 0)`,
				r.Experiment, "name-"+r.Experiment); err != nil {
				return err
			}
		}
		for _, r := range runs {
			var end any
			if r.End != nil {
				end = *r.End
			}
			err := tx.QueryRowContext(ctx, `INSERT INTO runs (run_id, experiment_id, run_name, status, start_time, end_time, lifecycle_stage, artifact_uri)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING run_key`,
				r.ID, r.Experiment, r.Name, r.Status, r.Start, end, r.Stage, "file:///"+r.ID).Scan(&r.Key)
			if err != nil {
				return err
			}
			for k, v := range r.Params {
				if _, err := tx.ExecContext(ctx, `INSERT INTO run_params (run_key, key, value) VALUES ($1, $2, $3)`, r.Key, k, v); err != nil {
					return err
				}
			}
			for k, v := range r.Tags {
				if _, err := tx.ExecContext(ctx, `INSERT INTO run_tags (run_key, key, value) VALUES ($1, $2, $3)`, r.Key, k, v); err != nil {
					return err
				}
			}
			for k, v := range r.Metrics {
				if _, err := tx.ExecContext(ctx, `INSERT INTO latest_metrics (run_key, key, value, step, ts) VALUES ($1, $2, $3, 0, 0)`, r.Key, k, v); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("insert runs: %v", err)
	}
}

// row is one result row: the run id, its run columns and the order-key
// values.
type row struct {
	ID     string
	Exp    string
	Name   string
	Status string
	Start  int64
	End    *int64
	Stage  string
	Values []any
}

// search pages through q with page size limit, round-tripping each cursor
// through JSON, and returns every row.
func search(t testing.TB, db *store.DB, q filter.Query, limit int) []row {
	t.Helper()
	ctx := context.Background()
	q.Limit = limit
	q.After = nil
	var out []row
	for page := 0; ; page++ {
		if page > 1000 {
			t.Fatalf("more than 1000 pages")
		}
		query, args, err := filter.Build(q, db.Dialect())
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		rows, err := db.Reader().QueryContext(ctx, query, args...)
		if err != nil {
			t.Fatalf("query: %v\n%s", err, query)
		}
		n := 0
		var last row
		for rows.Next() {
			var r row
			var key int64
			var artifact string
			var end, deleted sql.NullInt64
			order := filter.EffectiveOrder(q.Order)
			r.Values = make([]any, len(order))
			dest := []any{&key, &r.ID, &r.Exp, &r.Name, &r.Status, &r.Start, &end, &r.Stage, &artifact, &deleted}
			for i := range r.Values {
				dest = append(dest, &r.Values[i])
			}
			if err := rows.Scan(dest...); err != nil {
				t.Fatalf("scan: %v", err)
			}
			if end.Valid {
				r.End = &end.Int64
			}
			c, err := filter.CursorFrom(q.Order, r.Values, r.ID)
			if err != nil {
				t.Fatalf("CursorFrom: %v", err)
			}
			r.Values = c.Values // normalised
			out = append(out, r)
			last = r
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("rows: %v", err)
		}
		rows.Close()
		if n > limit {
			t.Fatalf("page of %d rows, limit %d", n, limit)
		}
		if n < limit {
			return out
		}
		c, err := filter.CursorFrom(q.Order, last.Values, last.ID)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal cursor: %v", err)
		}
		var back filter.Cursor
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal cursor %s: %v", b, err)
		}
		if diff := cmp.Diff(*c, back); diff != "" {
			t.Fatalf("cursor %s does not round-trip (-want +got):\n%s", b, diff)
		}
		q.After = &back
	}
}

// evaluate is the reference: the runs q selects, in order, with their
// order-key values.
func evaluate(runs []*testRun, q filter.Query) []row {
	order := filter.EffectiveOrder(q.Order)
	var sel []*testRun
	for _, r := range runs {
		if !slices.Contains(q.ExperimentIDs, r.Experiment) || !slices.Contains(q.Stages, r.Stage) {
			continue
		}
		if q.Filter != nil && !matches(r, q.Filter) {
			continue
		}
		sel = append(sel, r)
	}
	slices.SortFunc(sel, func(a, b *testRun) int {
		for _, k := range order {
			av, aok := value(a, k.Operand)
			bv, bok := value(b, k.Operand)
			switch {
			case !aok && !bok:
				continue
			case !aok:
				return 1 // missing values last, in both directions
			case !bok:
				return -1
			}
			c := compare(av, bv)
			if k.Desc {
				c = -c
			}
			if c != 0 {
				return c
			}
		}
		return strings.Compare(a.ID, b.ID)
	})
	out := make([]row, len(sel))
	for i, r := range sel {
		out[i] = row{ID: r.ID, Exp: r.Experiment, Name: r.Name, Status: r.Status, Start: r.Start, End: r.End, Stage: r.Stage}
		for _, k := range order {
			v, ok := value(r, k.Operand)
			if !ok {
				v = nil
			}
			out[i].Values = append(out[i].Values, v)
		}
	}
	return out
}

// value reads an operand of r: float64, int64 or string, false when r
// lacks it.
func value(r *testRun, o filter.Operand) (any, bool) {
	switch o.Kind {
	case filter.Metric:
		v, ok := r.Metrics[o.Key]
		return v, ok
	case filter.Param:
		v, ok := r.Params[o.Key]
		return v, ok
	case filter.Tag:
		v, ok := r.Tags[o.Key]
		return v, ok
	}
	switch o.Key {
	case filter.AttrStatus:
		return r.Status, true
	case filter.AttrRunName:
		return r.Name, true
	case filter.AttrRunID:
		return r.ID, true
	case filter.AttrStartTime:
		return r.Start, true
	case filter.AttrEndTime:
		if r.End == nil {
			return nil, false
		}
		return *r.End, true
	}
	panic("unknown operand " + o.String())
}

// compare orders two values of one type: numbers numerically, strings
// bytewise.
func compare(a, b any) int {
	switch a := a.(type) {
	case float64:
		b := b.(float64)
		switch {
		case a < b:
			return -1
		case a > b:
			return 1
		}
		return 0
	case int64:
		b := b.(int64)
		switch {
		case a < b:
			return -1
		case a > b:
			return 1
		}
		return 0
	case string:
		return strings.Compare(a, b.(string))
	}
	panic(fmt.Sprintf("compare %T", a))
}

func matches(r *testRun, e filter.Expr) bool {
	switch e := e.(type) {
	case *filter.And:
		for _, t := range e.Terms {
			if !matches(r, t) {
				return false
			}
		}
		return true
	case *filter.Or:
		for _, t := range e.Terms {
			if matches(r, t) {
				return true
			}
		}
		return false
	case *filter.Comparison:
		v, ok := value(r, e.Operand)
		if !ok {
			return false // a missing value matches nothing, != included
		}
		switch e.Op {
		case filter.Eq:
			return compare(v, e.Values[0]) == 0
		case filter.Ne:
			return compare(v, e.Values[0]) != 0
		case filter.Lt:
			return compare(v, e.Values[0]) < 0
		case filter.Le:
			return compare(v, e.Values[0]) <= 0
		case filter.Gt:
			return compare(v, e.Values[0]) > 0
		case filter.Ge:
			return compare(v, e.Values[0]) >= 0
		case filter.In, filter.NotIn:
			in := false
			for _, x := range e.Values {
				if compare(v, x) == 0 {
					in = true
				}
			}
			return in == (e.Op == filter.In)
		case filter.Like:
			return like(v.(string), e.Values[0].(string), false)
		case filter.ILike:
			return like(v.(string), e.Values[0].(string), true)
		}
	}
	panic(fmt.Sprintf("unknown expression %T", e))
}

// like matches s against a LIKE pattern by code points: % any run, _ one
// character, backslash escapes the next; fold lowers ASCII letters only.
func like(s, pattern string, fold bool) bool {
	type tok struct {
		r    rune
		kind byte // 'l' literal, '_' one, '%' any
	}
	var toks []tok
	for i := 0; i < len(pattern); {
		r, n := utf8.DecodeRuneInString(pattern[i:])
		i += n
		switch r {
		case '\\':
			r, n = utf8.DecodeRuneInString(pattern[i:])
			i += n
			toks = append(toks, tok{r, 'l'})
		case '%':
			toks = append(toks, tok{0, '%'})
		case '_':
			toks = append(toks, tok{0, '_'})
		default:
			toks = append(toks, tok{r, 'l'})
		}
	}
	lower := func(r rune) rune {
		if fold && r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}
	text := []rune(s)
	// m[j] reports whether toks[:i] matches text[:j].
	m := make([]bool, len(text)+1)
	m[0] = true
	for _, tk := range toks {
		next := make([]bool, len(text)+1)
		for j := 0; j <= len(text); j++ {
			switch tk.kind {
			case '%':
				next[j] = m[j] || (j > 0 && next[j-1])
			case '_':
				next[j] = j > 0 && m[j-1]
			default:
				next[j] = j > 0 && m[j-1] && lower(text[j-1]) == lower(tk.r)
			}
		}
		m = next
	}
	return m[len(text)]
}

// Pools the random runs and filters draw from: ties, missing keys, case
// and Unicode variants, and LIKE and GLOB metacharacters in values.
var (
	keyPool     = []string{"lr", "opt", "train/loss", "val-loss", "a b", "x%_*"}
	strPool     = []string{"", "a", "A", "b", "ab", "aXb", "a%b", "a_b", "a*b", "a?b", "[x]", `a\b`, "it's", "É", "é", "e", "ß", "z", "10", "9", "日本", "%", "_"}
	likePool    = []string{"a%", "%b", "a_b", `a\%b`, `a\_b`, "%É%", "%é%", "_", "%", "A%", "%\\\\%", "[%", "*%", "%?%", "__", "%'%", "日_", "e", "E"}
	metricPool  = []float64{-1.5, 0, 0.5, 1, 2, 3.25, 1e10, -1e-3}
	timePool    = []int64{1000, 2000, 3000, 1714564800000}
	statusPool  = filter.RunStatuses
	runIDPrefix = []string{"run-", "Run-", "rün-", "run_", "RUN-", "r"}
)

func randomRuns(rng *rand.Rand, n int) []*testRun {
	pick := func(p []string) string { return p[rng.IntN(len(p))] }
	runs := make([]*testRun, n)
	for i := range runs {
		r := &testRun{
			ID:         fmt.Sprintf("%s%03d", pick(runIDPrefix), rng.IntN(1000)) + fmt.Sprint(i),
			Experiment: []string{"exp-1", "exp-1", "exp-1", "exp-2"}[rng.IntN(4)],
			Name:       pick(strPool),
			Status:     pick(statusPool),
			Stage:      []string{"active", "active", "deleted"}[rng.IntN(3)],
			Start:      timePool[rng.IntN(len(timePool))],
			Params:     map[string]string{},
			Tags:       map[string]string{},
			Metrics:    map[string]float64{},
		}
		if rng.IntN(3) > 0 {
			end := r.Start + int64(rng.IntN(3))*500
			r.End = &end
		}
		for _, k := range keyPool {
			if rng.IntN(3) > 0 {
				r.Params[k] = pick(strPool)
			}
			if rng.IntN(3) > 0 {
				r.Tags[k] = pick(strPool)
			}
			if rng.IntN(3) > 0 {
				if rng.IntN(4) == 0 {
					r.Metrics[k] = rng.Float64()*4 - 2
				} else {
					r.Metrics[k] = metricPool[rng.IntN(len(metricPool))]
				}
			}
		}
		runs[i] = r
	}
	return runs
}

func randomOperand(rng *rand.Rand) filter.Operand {
	key := keyPool[rng.IntN(len(keyPool))]
	if rng.IntN(8) == 0 {
		key = "absent"
	}
	switch rng.IntN(8) {
	case 0, 1:
		return filter.Operand{Kind: filter.Metric, Key: key}
	case 2, 3:
		return filter.Operand{Kind: filter.Param, Key: key}
	case 4:
		return filter.Operand{Kind: filter.Tag, Key: key}
	}
	attrs := []string{filter.AttrStatus, filter.AttrRunName, filter.AttrRunID, filter.AttrStartTime, filter.AttrEndTime}
	return filter.Operand{Kind: filter.Attribute, Key: attrs[rng.IntN(len(attrs))]}
}

func randomValue(rng *rand.Rand, o filter.Operand, runs []*testRun) any {
	switch o.Type() {
	case filter.Number:
		if rng.IntN(3) == 0 {
			return float64(rng.IntN(5)) - 2
		}
		return metricPool[rng.IntN(len(metricPool))]
	case filter.Time:
		return timePool[rng.IntN(len(timePool))] + int64(rng.IntN(3)-1)*500
	case filter.Status:
		return statusPool[rng.IntN(len(statusPool))]
	}
	if o.Key == filter.AttrRunID && rng.IntN(2) == 0 {
		return runs[rng.IntN(len(runs))].ID
	}
	return strPool[rng.IntN(len(strPool))]
}

func randomComparison(rng *rand.Rand, runs []*testRun) *filter.Comparison {
	o := randomOperand(rng)
	ops := []filter.Op{filter.Eq, filter.Ne, filter.Lt, filter.Le, filter.Gt, filter.Ge, filter.In, filter.NotIn}
	switch o.Type() {
	case filter.String:
		ops = append(ops, filter.Like, filter.ILike, filter.Like, filter.ILike)
	case filter.Status:
		ops = []filter.Op{filter.Eq, filter.Ne, filter.In, filter.NotIn}
	}
	c := &filter.Comparison{Operand: o, Op: ops[rng.IntN(len(ops))]}
	switch c.Op {
	case filter.Like, filter.ILike:
		c.Values = []any{likePool[rng.IntN(len(likePool))]}
	case filter.In, filter.NotIn:
		for n := 1 + rng.IntN(3); n > 0; n-- {
			c.Values = append(c.Values, randomValue(rng, o, runs))
		}
	default:
		c.Values = []any{randomValue(rng, o, runs)}
	}
	return c
}

func randomExpr(rng *rand.Rand, runs []*testRun, depth int) filter.Expr {
	if depth == 0 || rng.IntN(3) == 0 {
		return randomComparison(rng, runs)
	}
	n := 2 + rng.IntN(2)
	terms := make([]filter.Expr, n)
	for i := range terms {
		terms[i] = randomExpr(rng, runs, depth-1)
	}
	if rng.IntN(2) == 0 {
		return &filter.And{Terms: terms}
	}
	return &filter.Or{Terms: terms}
}

func randomQuery(t *testing.T, rng *rand.Rand, runs []*testRun) filter.Query {
	q := filter.Query{
		ExperimentIDs: [][]string{{"exp-1"}, {"exp-1", "exp-2"}, {"exp-2", "missing"}}[rng.IntN(3)],
		Stages:        [][]string{{"active"}, {"deleted"}, {"active", "deleted"}}[rng.IntN(3)],
	}
	if rng.IntN(6) > 0 {
		// Through the parser: the tree String prints parses to the
		// filter that runs (flattened, canonical).
		src := randomExpr(rng, runs, 3).String()
		e, err := filter.Parse(src)
		if err != nil {
			t.Fatalf("Parse(%q): %v", src, err)
		}
		q.Filter = e
	}
	var clauses []string
	used := map[filter.Operand]bool{}
	for n := rng.IntN(4); n > 0; n-- {
		o := randomOperand(rng)
		if used[o] {
			continue
		}
		used[o] = true
		dir := []string{"", " ASC", " DESC", " desc"}[rng.IntN(4)]
		clauses = append(clauses, o.String()+dir)
	}
	order, err := filter.ParseOrderBy(clauses)
	if err != nil {
		t.Fatalf("ParseOrderBy(%q): %v", clauses, err)
	}
	q.Order = order
	return q
}

func describe(q filter.Query) string {
	f := "<none>"
	if q.Filter != nil {
		f = q.Filter.String()
	}
	return fmt.Sprintf("experiments %q stages %q filter %s order %v walk %d", q.ExperimentIDs, q.Stages, f, q.Order, q.WalkSize)
}

// TestDifferential runs random filters and orders against random runs on
// each backend, paging with small limits and JSON-round-tripped cursors,
// and compares every page sequence with the evaluator above.
func TestDifferential(t *testing.T) {
	t.Parallel()
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -filter.seed=%d)", seed, seed)
	n := queries()
	storetest.Run(t, migrations(), func(t *testing.T, db *store.DB) {
		t.Parallel()
		rng := rand.New(rand.NewPCG(seed, 1))
		runs := randomRuns(rng, 70)
		insertRuns(t, db, runs)
		nonEmpty := 0
		for i := 0; i < n; i++ {
			q := randomQuery(t, rng, runs)
			want := evaluate(runs, q)
			limit := 1 + rng.IntN(7)
			// Small walks exercise the walk's boundary and the fallback.
			q.WalkSize = []int{0, 1, 2, 3, 5, 8, 13, 30}[rng.IntN(8)]
			got := search(t, db, q, limit)
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("query %d, page size %d: %s\n(-want +got):\n%s", i, limit, describe(q), diff)
			}
			if len(want) > 0 {
				nonEmpty++
			}
		}
		// The generator must exercise the backends, not only agree on
		// empty results.
		if nonEmpty < n/4 {
			t.Errorf("only %d of %d queries matched any run", nonEmpty, n)
		}
	})
}
