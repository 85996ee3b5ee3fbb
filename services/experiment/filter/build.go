package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/quantmesh/quantmesh/pkg/store"
)

// Query is one page of a search.
type Query struct {
	// ExperimentIDs are the experiments to search; at least one.
	ExperimentIDs []string
	// Stages are the lifecycle stages to include: "active", "deleted", or
	// both; at least one.
	Stages []string
	// Filter selects runs; nil matches all.
	Filter Expr
	// Order sorts the runs; empty means DefaultOrder (start_time DESC).
	// run_id ASC always breaks ties last.
	Order []OrderKey
	// After continues after this cursor; nil for the first page.
	After *Cursor
	// Limit is the most rows the query returns, at least 1. Ask for one
	// more than the page size to learn whether another page follows.
	Limit int
	// WalkSize bounds the index walk of the first order key (see the
	// package doc); 0 means 100 entries per row of Limit, at least 2000
	// and at most 20000. For tuning and tests.
	WalkSize int
	// ShortWalk is the longest walk (in entries, expected from the sample)
	// that probes params and tags entry by entry instead of hashing their
	// runs on PostgreSQL (see hashable); 0 means 2000. For tuning and tests.
	ShortWalk int
}

// RunColumns is the number of run columns Build selects before the
// order-key values.
const RunColumns = 10

// Cursor is the sort key of the last run of a page: one value per order
// key (float64 for metrics, int64 for start_time and end_time, string
// otherwise, nil where the run lacks the value) and the run id. It
// round-trips exactly through encoding/json, types included.
type Cursor struct {
	Values []any
	RunID  string
}

// ErrCursor reports a cursor that does not fit the query's order (a
// tampered or mismatched page token).
var ErrCursor = errors.New("the cursor does not match the order")

// EffectiveOrder returns order, or DefaultOrder when it is empty: the keys
// whose values Build selects after the run columns.
func EffectiveOrder(order []OrderKey) []OrderKey {
	if len(order) == 0 {
		return slices.Clone(DefaultOrder)
	}
	return order
}

// CursorFrom builds the cursor of a row from the scanned order-key values
// (the columns after the first RunColumns, scanned into any) and its run
// id. order is the query's Order. Values are normalised to the cursor's
// types ([]byte to string, integers to float64 for metrics).
func CursorFrom(order []OrderKey, values []any, runID string) (*Cursor, error) {
	order = EffectiveOrder(order)
	if len(values) != len(order) {
		return nil, fmt.Errorf("cursor: %d values for %d order keys", len(values), len(order))
	}
	c := &Cursor{Values: make([]any, len(values)), RunID: runID}
	for i, v := range values {
		n, err := normalize(order[i].Operand.Type(), v)
		if err != nil {
			return nil, fmt.Errorf("cursor: order key %s: %w", order[i].Operand, err)
		}
		c.Values[i] = n
	}
	return c, nil
}

func normalize(t Type, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch t {
	case Number:
		switch x := v.(type) {
		case float64:
			return x, nil
		case float32:
			return float64(x), nil
		case int64:
			return float64(x), nil
		}
	case Time:
		switch x := v.(type) {
		case int64:
			return x, nil
		case int32:
			return int64(x), nil
		case int:
			return int64(x), nil
		}
	case String, Status:
		switch x := v.(type) {
		case string:
			return x, nil
		case []byte:
			return string(x), nil
		}
	}
	return nil, fmt.Errorf("unexpected value of type %T", v)
}

// cursorValue is one cursor value in JSON, tagged with its type.
type cursorValue struct {
	F *float64 `json:"f,omitempty"`
	I *int64   `json:"i,omitempty"`
	S *string  `json:"s,omitempty"`
}

type cursorJSON struct {
	V []*cursorValue `json:"v"`
	R string         `json:"r"`
}

// MarshalJSON encodes c with each value tagged by its type.
func (c Cursor) MarshalJSON() ([]byte, error) {
	out := cursorJSON{V: make([]*cursorValue, len(c.Values)), R: c.RunID}
	for i, v := range c.Values {
		switch x := v.(type) {
		case nil:
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, fmt.Errorf("cursor: value %d is not finite", i)
			}
			out.V[i] = &cursorValue{F: &x}
		case int64:
			out.V[i] = &cursorValue{I: &x}
		case string:
			out.V[i] = &cursorValue{S: &x}
		default:
			return nil, fmt.Errorf("cursor: value %d has type %T", i, v)
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (c *Cursor) UnmarshalJSON(b []byte) error {
	var in cursorJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	vals := make([]any, len(in.V))
	for i, v := range in.V {
		if v == nil {
			continue
		}
		n := 0
		if v.F != nil {
			vals[i] = *v.F
			n++
		}
		if v.I != nil {
			vals[i] = *v.I
			n++
		}
		if v.S != nil {
			vals[i] = *v.S
			n++
		}
		if n != 1 {
			return fmt.Errorf("cursor: value %d must have exactly one of f, i, s", i)
		}
	}
	c.Values, c.RunID = vals, in.R
	return nil
}

// Build returns one SELECT and its bind arguments. Its columns, in order:
//
//	r.run_key, r.run_id, r.experiment_id, r.run_name, r.status,
//	r.start_time, r.end_time, r.lifecycle_stage, r.artifact_uri,
//	r.delete_time
//
// then one column per key of EffectiveOrder(q.Order): the run's value,
// NULL when it lacks it. Rows come in the order's sequence, at most
// q.Limit of them, after q.After when set.
//
// On PostgreSQL the first argument is pgx.QueryExecModeExec, which pgx (and
// database/sql over pgx's stdlib) takes as an option, not a parameter: the
// statement is planned for its values on every execution. A prepared
// statement reused with other values gets a generic plan, which does not
// know how selective the filter is and can be a hundred times slower. Pass
// the arguments unchanged to QueryContext or pgxpool's Query.
//
// Build fails only on a query that Parse and ParseOrderBy would not produce
// (a hand-built tree, an unknown stage, no experiment) and on a cursor that
// does not fit the order (wrapping ErrCursor).
func Build(q Query, d store.Dialect) (string, []any, error) {
	if d != store.SQLite && d != store.Postgres {
		return "", nil, fmt.Errorf("filter: unknown dialect %q", d)
	}
	if len(q.ExperimentIDs) == 0 {
		return "", nil, errors.New("filter: at least one experiment id is required")
	}
	if q.Limit < 1 {
		return "", nil, fmt.Errorf("filter: limit must be at least 1, got %d", q.Limit)
	}
	stages := map[string]bool{}
	for _, s := range q.Stages {
		if s != "active" && s != "deleted" {
			return "", nil, fmt.Errorf("filter: unknown lifecycle stage %q", s)
		}
		stages[s] = true
	}
	if len(stages) == 0 {
		return "", nil, errors.New("filter: at least one lifecycle stage is required")
	}
	if q.Filter != nil {
		if err := Validate(q.Filter); err != nil {
			return "", nil, err
		}
	}
	order := EffectiveOrder(q.Order)
	if len(order) > MaxOrderKeys {
		return "", nil, fmt.Errorf("filter: at most %d order keys, got %d", MaxOrderKeys, len(order))
	}
	for i, k := range order {
		if err := checkOperand(k.Operand); err != nil {
			return "", nil, fmt.Errorf("filter: order key %d: %w", i, err)
		}
	}
	if q.After != nil {
		if err := checkCursor(order, q.After); err != nil {
			return "", nil, err
		}
	}

	b := &sqlBuilder{d: d, q: q, order: order}
	if d == store.Postgres {
		b.args = []any{pgx.QueryExecModeExec}
	}
	if len(stages) == 1 {
		b.stage = q.Stages[0]
	}
	var sb strings.Builder
	first := order[0].Operand
	walkable := first.Kind != Attribute || first.Key == AttrStartTime
	if !walkable || (q.After != nil && q.After.Values[0] == nil) {
		b.plain(&sb, b.arg(int64(q.Limit)))
		return sb.String(), b.args, nil
	}
	b.walk(&sb)
	return sb.String(), b.args, nil
}

// walkSize bounds the index walk of the first order key: a hundred
// entries per row asked for, within bounds (WalkSize overrides it).
func walkSize(q Query) int64 {
	if q.WalkSize > 0 {
		return int64(q.WalkSize)
	}
	return int64(min(max(100*q.Limit, 2000), 20000))
}

// sampleSize is how many index entries the walk's sample tests.
const sampleSize = 500

// shortWalk is the most entries a walk may be expected to read (at the
// sample's density) and still probe params and tags entry by entry rather
// than hash their runs (Query.ShortWalk overrides it).
func shortWalk(q Query) int64 {
	if q.ShortWalk > 0 {
		return int64(q.ShortWalk)
	}
	return 2000
}

// walk writes a query that reads the first order key's index in order and
// tests each run against the filter, stopping when the page is full. That
// is fast when matches are dense along the order, whatever the planner
// estimates, and slow when they are sparse, so the query first tests the
// filter on a sample (s) of the first entries and walks (a) only when the
// page should fill within walkSize entries. The walk is bounded to the
// runs sorting strictly before the walkSize-th entry (h), so a full page
// from it is exactly the first of all matching runs. When the walk is not
// taken or does not fill the page, the plain query (p) answers instead.
//
//	WITH s AS (sample), h AS (boundary), a AS (walk if the sample is dense)
//	SELECT * FROM (a if full UNION ALL p unless a is full) u
//	ORDER BY ... LIMIT n
func (b *sqlBuilder) walk(sb *strings.Builder) {
	k := b.order[0]
	limit := b.arg(int64(b.q.Limit))
	ws := walkSize(b.q)
	ss := min(int64(sampleSize), ws)
	w := b.arg(ws)

	sb.WriteString("WITH ")
	gate := ""
	if b.q.Filter != nil {
		// s: entries sampled (e) and matching runs among them (m). CASE
		// keeps the filter's EXISTS tests per-row probes.
		sb.WriteString("s AS MATERIALIZED (SELECT count(*) AS e, sum(CASE WHEN ")
		if k.Operand.Kind == Attribute {
			sb.WriteString("(")
			b.walkExpr(sb)
			sb.WriteString(") THEN 1 ELSE 0 END) AS m FROM " + b.walkSource(b.arg(ss)) + " r), ")
		} else {
			// The comparisons of metrics, params and tags first, on the
			// index entry, cheapest first; the run is read only for
			// entries that pass them.
			early, late := b.splitTerms()
			b.walkForm = true
			b.corr = "o0.run_key"
			for _, t := range early {
				sb.WriteString("(")
				b.expr(sb, t)
				sb.WriteString(") AND ")
			}
			b.corr = ""
			sb.WriteString("EXISTS (SELECT 1 FROM runs r WHERE r.run_key = o0.run_key AND " + b.runsWhere())
			for _, t := range late {
				sb.WriteString(" AND (")
				b.expr(sb, t)
				sb.WriteString(")")
			}
			b.walkForm = false
			sb.WriteString(") THEN 1 ELSE 0 END) AS m FROM " + b.walkSource(b.arg(ss)) + " o0), ")
		}
		// Walk when the sample holds every entry, or when at its density
		// the page fills within the walk.
		gate = "((SELECT e FROM s) < " + b.arg(ss) + " OR (SELECT m FROM s) * " + w + " >= " + b.arg(int64(b.q.Limit)*ss) + ") AND "
		// A walk the sample says is long may test params and tags on
		// hashes of their runs (see hashable); a short one probes.
		b.longWalk = true
	}

	// h: the number of entries in the walk and the value of the last one.
	agg, before := "MAX", " < "
	if k.Desc {
		agg, before = "MIN", " > "
	}
	alias := "o0"
	if k.Operand.Kind == Attribute {
		alias = "r"
	}
	sortCol := b.textIf(k.Operand, alias+"."+walkColumn(k.Operand))
	sb.WriteString("h AS MATERIALIZED (SELECT count(*) AS e, " + agg + "(" + sortCol + ") AS v FROM " + b.walkSource(w) + " " + alias + ")")

	// a: the walk, limited to the runs before the last entry of h, unless h
	// holds every entry.
	sb.WriteString(", a AS MATERIALIZED (")
	b.selectList(sb, firstWalk)
	sb.WriteString(" AND " + gate + "(" + b.keys[0].sort + before + "(SELECT v FROM h) OR (SELECT e FROM h) < " + w + ")")
	b.afterCursor(sb, firstWalk)
	b.walkConds(sb)
	b.longWalk = false
	b.orderLimit(sb, firstWalk, limit)
	sb.WriteString(")")

	full := "(SELECT count(*) FROM a) = " + limit
	if len(b.bounds()) > 0 {
		// The walk read every entry its bounds allow (fewer than w):
		// it holds every matching run, however few.
		full = "(" + full + " OR (" + strings.TrimSuffix(gate, " AND ") + " AND (SELECT e FROM h) < " + w + "))"
	}
	sb.WriteString(" SELECT * FROM (SELECT * FROM a WHERE " + full + " UNION ALL SELECT * FROM (")
	// LIMIT 0 keeps PostgreSQL from even starting this part.
	b.plain(sb, "CASE WHEN "+full+" THEN 0 ELSE "+limit+" END")
	sb.WriteString(") p) u ORDER BY ")
	for i, k := range b.order {
		sb.WriteString(b.textIf(k.Operand, "u."+valueAliases[i]) + direction(k.Desc) + ", ")
	}
	sb.WriteString(b.text("u.run_id") + " ASC LIMIT " + limit)
}

// walkColumn is the column of the first order key in its walk source.
func walkColumn(o Operand) string {
	if o.Kind == Attribute {
		return strings.TrimPrefix(attrColumns[o.Key], "r.")
	}
	return "value"
}

// walkSource returns a subquery of the first limit entries of the first
// order key's index, in order, from the cursor on: (run_key, value) rows of
// the key's table, or whole runs for an attribute.
func (b *sqlBuilder) walkSource(limit string) string {
	k := b.order[0]
	var sb strings.Builder
	var col string
	if k.Operand.Kind == Attribute {
		col = attrColumns[k.Operand.Key]
		sb.WriteString("(SELECT * FROM runs r WHERE " + b.runsWhere())
	} else {
		col = b.textIf(k.Operand, "o0.value")
		sb.WriteString("(SELECT o0.run_key, o0.value FROM " + kvTables[k.Operand.Kind] + " o0 WHERE o0.key = " + b.arg(k.Operand.Key))
	}
	if b.q.After != nil {
		sb.WriteString(" AND " + col + b.startBound(k) + b.arg(b.q.After.Values[0]))
	}
	raw := "o0.value"
	if k.Operand.Kind == Attribute {
		raw = attrColumns[k.Operand.Key]
	}
	for _, c := range b.bounds() {
		sb.WriteString(" AND ")
		b.predicate(&sb, raw, c)
	}
	sb.WriteString(" ORDER BY " + col + plainDirection(k.Desc) + " LIMIT " + limit + ")")
	return sb.String()
}

// bounds returns the filter's top-level AND comparisons of the first order
// key (metrics.loss < 0.5 AND ... ORDER BY metrics.loss): the walk reads
// only the part of the index they allow, and as a run that lacks the key
// matches none of them, a walk that reads all of that part has found every
// matching run.
func (b *sqlBuilder) bounds() []*Comparison {
	if b.q.Filter == nil {
		return nil
	}
	terms := []Expr{b.q.Filter}
	if a, ok := b.q.Filter.(*And); ok {
		terms = a.Terms
	}
	var out []*Comparison
	for _, t := range terms {
		c, ok := t.(*Comparison)
		if !ok || c.Operand != b.order[0].Operand {
			continue
		}
		switch c.Op {
		case Eq, Lt, Le, Gt, Ge:
			out = append(out, c)
		}
	}
	return out
}

// walkExpr writes the filter as the walk tests it: comparisons of params
// and tags on (key, value), whose index answers a per-run probe alone.
func (b *sqlBuilder) walkExpr(sb *strings.Builder) {
	b.walkForm = true
	b.expr(sb, b.q.Filter)
	b.walkForm = false
}

// walkConds writes the filter as conditions of the walk, wrapped in IS
// TRUE so that its EXISTS tests stay per-row probes instead of becoming
// joins. In a walk over a metric, param or tag, the top-level AND terms
// that test only metrics, params and tags correlate with the index entry
// (o0.run_key), so PostgreSQL tests them before it reads the run.
func (b *sqlBuilder) walkConds(sb *strings.Builder) {
	if b.q.Filter == nil {
		return
	}
	early, late := b.splitTerms()
	b.walkForm = true
	for _, part := range []struct {
		terms []Expr
		corr  string
	}{{early, "o0.run_key"}, {late, ""}} {
		if len(part.terms) == 0 {
			continue
		}
		b.corr = part.corr
		sb.WriteString(" AND ")
		if len(part.terms) == 1 {
			sb.WriteString("(")
			b.expr(sb, part.terms[0])
			sb.WriteString(")")
		} else {
			b.junction(sb, part.terms, " AND ")
		}
		sb.WriteString(" IS TRUE")
	}
	b.corr = ""
	b.walkForm = false
}

// splitTerms splits the filter's top-level AND terms into those a walk over
// a metric, param or tag tests on the index entry (early: only metrics,
// params and tags) and those that need the run (late), each cheapest
// first. In a walk over an attribute every term is late.
func (b *sqlBuilder) splitTerms() (early, late []Expr) {
	terms := []Expr{b.q.Filter}
	if a, ok := b.q.Filter.(*And); ok {
		terms = a.Terms
	}
	for _, t := range terms {
		if b.order[0].Operand.Kind != Attribute && onlyKV(t) {
			early = append(early, t)
		} else {
			late = append(late, t)
		}
	}
	// Params and tags first: their index answers alone, while a metric's
	// value is read from the table.
	slices.SortStableFunc(early, func(x, y Expr) int { return probeCost(x) - probeCost(y) })
	slices.SortStableFunc(late, func(x, y Expr) int { return probeCost(x) - probeCost(y) })
	return early, late
}

// probeCost ranks how costly testing e on one run is: attributes (0) are
// in the run's row, params and tags (1) in their index, metrics (2) in
// their table.
func probeCost(e Expr) int {
	c, ok := e.(*Comparison)
	if !ok {
		return 3
	}
	switch c.Operand.Kind {
	case Attribute:
		return 0
	case Param, Tag:
		return 1
	}
	return 2
}

// onlyKV reports whether e compares only metrics, params and tags.
func onlyKV(e Expr) bool {
	switch e := e.(type) {
	case *And:
		return !slices.ContainsFunc(e.Terms, func(t Expr) bool { return !onlyKV(t) })
	case *Or:
		return !slices.ContainsFunc(e.Terms, func(t Expr) bool { return !onlyKV(t) })
	case *Comparison:
		return e.Operand.Kind != Attribute
	}
	return false
}

// plain writes the query that finds every matching run and sorts them:
// every order key LEFT JOINed, the planner free to start from the most
// selective comparison.
func (b *sqlBuilder) plain(sb *strings.Builder, limit string) {
	b.selectList(sb, firstAny)
	b.afterCursor(sb, firstAny)
	if b.q.Filter != nil {
		sb.WriteString(" AND ")
		b.expr(sb, b.q.Filter)
	}
	b.orderLimit(sb, firstAny, limit)
}

// How a query reads the first order key.
const (
	firstAny  = iota // a metric, param or tag LEFT JOINed: NULL when missing
	firstWalk        // from the walk's source (walkSource)
)

var valueAliases = [MaxOrderKeys]string{"v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9"}

func direction(desc bool) string {
	if desc {
		return " DESC NULLS LAST"
	}
	return " ASC NULLS LAST"
}

// plainDirection orders a column that is never NULL. PostgreSQL walks an
// ascending index backwards for DESC (NULLS FIRST, the default), not for
// DESC NULLS LAST, even on a NOT NULL column.
func plainDirection(desc bool) string {
	if desc {
		return " DESC"
	}
	return " ASC"
}

// startBound is the comparison that bounds an index walk at a cursor value.
func (b *sqlBuilder) startBound(k OrderKey) string {
	if k.Desc {
		return " <= "
	}
	return " >= "
}

// runsWhere is the condition on runs: the experiments and the stage.
func (b *sqlBuilder) runsWhere() string {
	var sb strings.Builder
	sb.WriteString("r.experiment_id IN (")
	for i, id := range b.q.ExperimentIDs {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(b.arg(id))
	}
	sb.WriteString(")")
	if b.stage != "" {
		sb.WriteString(" AND r.lifecycle_stage = " + b.arg(b.stage))
	}
	return sb.String()
}

// selectList writes SELECT columns FROM runs and the order keys' joins
// WHERE the runs condition, and sets b.keys.
func (b *sqlBuilder) selectList(sb *strings.Builder, mode int) {
	b.keys = make([]orderCol, len(b.order))
	var joins strings.Builder
	for i, k := range b.order {
		b.keys[i] = b.orderColumn(i, k, &joins, mode)
	}
	sb.WriteString(`SELECT r.run_key, r.run_id, r.experiment_id, r.run_name, r.status, r.start_time, r.end_time, r.lifecycle_stage, r.artifact_uri, r.delete_time`)
	for i, k := range b.keys {
		sb.WriteString(", " + k.value + " AS " + valueAliases[i])
	}
	from := "runs r"
	if mode == firstWalk {
		if b.order[0].Operand.Kind == Attribute {
			from = b.walkSource(b.arg(walkSize(b.q))) + " r"
		} else {
			from = b.walkSource(b.arg(walkSize(b.q))) + " o0 JOIN runs r ON r.run_key = o0.run_key"
		}
	}
	sb.WriteString(" FROM " + from + joins.String() + " WHERE " + b.runsWhere())
}

// afterCursor writes the keyset condition of b.q.After, if any, and a
// bound on the first key that lets PostgreSQL start an index walk there.
func (b *sqlBuilder) afterCursor(sb *strings.Builder, mode int) {
	after := b.q.After
	if after == nil {
		return
	}
	if after.Values[0] != nil && !b.keys[0].nullable {
		sb.WriteString(" AND " + b.keys[0].sort + b.startBound(b.order[0]) + b.arg(after.Values[0]))
	}
	sb.WriteString(" AND ")
	b.keyset(sb, b.order, b.keys, after.Values, after.RunID)
}

// orderLimit writes ORDER BY the keys and run_id, and LIMIT limit.
func (b *sqlBuilder) orderLimit(sb *strings.Builder, mode int, limit string) {
	sb.WriteString(" ORDER BY ")
	for i, k := range b.keys {
		if k.nullable {
			sb.WriteString(k.sort + direction(b.order[i].Desc) + ", ")
		} else {
			sb.WriteString(k.sort + plainDirection(b.order[i].Desc) + ", ")
		}
	}
	sb.WriteString(b.text("r.run_id") + " ASC LIMIT " + limit)
}

type sqlBuilder struct {
	d     store.Dialect
	q     Query
	order []OrderKey
	stage string // the one lifecycle stage, or "" for both
	keys  []orderCol
	// walkForm writes param and tag comparisons on (key, value), whose
	// index answers a per-run probe from the index alone.
	walkForm bool
	// corr is the run_key column EXISTS tests correlate with; "" means
	// r.run_key.
	corr string
	// longWalk says the walk's conditions are being written after a
	// sample: hashable comparisons test hashGate, true when the sample
	// expects a long walk, where they may hash their runs.
	longWalk bool
	hashGate string
	args     []any
}

// arg binds v and returns its placeholder.
func (b *sqlBuilder) arg(v any) string {
	b.args = append(b.args, v)
	n := len(b.args)
	if b.d == store.Postgres {
		n-- // the exec mode option is no parameter
	}
	return "$" + strconv.Itoa(n)
}

// text returns a text column as compared and ordered: bytewise on both
// backends (SQLite's BINARY collation is the default).
func (b *sqlBuilder) text(col string) string {
	if b.d == store.Postgres {
		return col + ` COLLATE "C"`
	}
	return col
}

// textIf returns col as compared and ordered for operand o.
func (b *sqlBuilder) textIf(o Operand, col string) string {
	if t := o.Type(); t == String || t == Status {
		return b.text(col)
	}
	return col
}

// attrColumns are the runs columns of the attributes.
var attrColumns = map[string]string{
	AttrStatus:    "r.status",
	AttrRunName:   "r.run_name",
	AttrRunID:     "r.run_id",
	AttrStartTime: "r.start_time",
	AttrEndTime:   "r.end_time",
}

// kvTables are the tables of metric, param and tag values.
var kvTables = map[Kind]string{
	Metric: "latest_metrics",
	Param:  "run_params",
	Tag:    "run_tags",
}

// orderCol is how one order key appears in a query.
type orderCol struct {
	value    string // the selected value
	sort     string // the expression ordered and compared
	nullable bool
}

var orderAliases = [MaxOrderKeys]string{"o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"}

func (b *sqlBuilder) orderColumn(i int, k OrderKey, joins *strings.Builder, mode int) orderCol {
	var c orderCol
	if k.Operand.Kind == Attribute {
		c.value = attrColumns[k.Operand.Key]
		c.nullable = k.Operand.Key == AttrEndTime
	} else {
		a := orderAliases[i]
		if i > 0 || mode != firstWalk {
			joins.WriteString(" LEFT JOIN " + kvTables[k.Operand.Kind] + " " + a +
				" ON " + a + ".run_key = r.run_key AND " + a + ".key = " + b.arg(k.Operand.Key))
		}
		c.value = a + ".value"
		c.nullable = i > 0 || mode != firstWalk
	}
	c.sort = b.textIf(k.Operand, c.value)
	return c
}

func (b *sqlBuilder) expr(sb *strings.Builder, e Expr) {
	switch e := e.(type) {
	case *And:
		b.junction(sb, e.Terms, " AND ")
	case *Or:
		b.junction(sb, e.Terms, " OR ")
	case *Comparison:
		b.comparison(sb, e)
	}
}

func (b *sqlBuilder) junction(sb *strings.Builder, terms []Expr, sep string) {
	sb.WriteString("(")
	for i, t := range terms {
		if i > 0 {
			sb.WriteString(sep)
		}
		b.expr(sb, t)
	}
	sb.WriteString(")")
}

func (b *sqlBuilder) comparison(sb *strings.Builder, c *Comparison) {
	if c.Operand.Kind == Attribute {
		b.predicate(sb, attrColumns[c.Operand.Key], c)
		return
	}
	corr := "r.run_key"
	if b.corr != "" {
		corr = b.corr
	}
	if b.d == store.SQLite && !b.walkForm {
		// SQLite runs a correlated EXISTS once per run; an IN list it
		// builds once, or starts from when it is small.
		sb.WriteString(corr + " IN (SELECT f.run_key FROM " + kvTables[c.Operand.Kind] + " f WHERE f.key = " + b.arg(c.Operand.Key) + " AND ")
		b.predicate(sb, "f.value", c)
		sb.WriteString(")")
		return
	}
	if !b.walkForm || b.d != store.Postgres {
		b.exists(sb, c, corr, false)
		return
	}
	if b.longWalk && hashable(c) {
		if b.hashGate == "" {
			// Bound on first use: PostgreSQL rejects unused parameters.
			ss := min(int64(sampleSize), walkSize(b.q))
			b.hashGate = "(SELECT e FROM s) >= " + b.arg(ss) + " AND (SELECT m FROM s) * " + b.arg(shortWalk(b.q)) + " < " + b.arg(int64(b.q.Limit)*ss)
		}
		sb.WriteString("CASE WHEN " + b.hashGate + " THEN ")
		b.exists(sb, c, corr, false)
		sb.WriteString(" ELSE ")
		b.exists(sb, c, corr, true)
		sb.WriteString(" END")
		return
	}
	// OFFSET 0 keeps the test a per-row probe: PostgreSQL would otherwise
	// hash the whole set of matching rows first, which costs more than the
	// few probes of a walk that stops early.
	b.exists(sb, c, corr, true)
}

// exists writes EXISTS (the run corr has a value of c's key that satisfies
// c), with OFFSET 0 when probe (see comparison).
func (b *sqlBuilder) exists(sb *strings.Builder, c *Comparison, corr string, probe bool) {
	sb.WriteString("EXISTS (SELECT 1 FROM " + kvTables[c.Operand.Kind] + " f WHERE f.run_key = " + corr + " AND ")
	sb.WriteString("f.key = " + b.arg(c.Operand.Key) + " AND ")
	b.predicate(sb, "f.value", c)
	if probe {
		sb.WriteString(" OFFSET 0")
	}
	sb.WriteString(")")
}

// hashable reports whether a long walk may test c on a hash of the runs
// that match it: = and IN on a param or tag, whose matching runs the (key,
// value, run_key) index lists alone. Without OFFSET 0, PostgreSQL chooses
// between that hash (built once, then a lookup per entry walked) and a
// per-row probe by their estimated costs over the whole walk, and keeps
// the probe when the hash would not fit in memory. Probing a parameter
// with ten values cost a walk about three index pages per entry, most of
// the walk's work; the hash of its runs, one index page per few hundred
// runs. But the hash is built in full however early the walk stops, so
// only a walk the sample expects to read more than shortWalk entries may
// use it: hashing the 55,000 runs of params.batch_size IN ('64', '128')
// for a walk of 458 entries took 20 ms. Ranges, != and metrics always
// probe: their sets can be most of the experiment (metrics.loss > 0).
func hashable(c *Comparison) bool {
	return c.Operand.Kind != Metric && (c.Op == Eq || c.Op == In)
}

var sqlOps = map[Op]string{Eq: " = ", Ne: " <> ", Lt: " < ", Le: " <= ", Gt: " > ", Ge: " >= "}

// predicate writes col <op> value(s).
func (b *sqlBuilder) predicate(sb *strings.Builder, col string, c *Comparison) {
	expr := col
	if t := c.Operand.Type(); t == String || t == Status {
		expr = b.text(col)
	}
	switch c.Op {
	case Eq, Ne, Lt, Le, Gt, Ge:
		sb.WriteString(expr + sqlOps[c.Op] + b.arg(c.Values[0]))
	case In, NotIn:
		sb.WriteString(expr)
		if c.Op == NotIn {
			sb.WriteString(" NOT")
		}
		sb.WriteString(" IN (")
		for i, v := range c.Values {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(b.arg(v))
		}
		sb.WriteString(")")
	case Like:
		if b.d == store.Postgres {
			sb.WriteString(expr + " LIKE " + b.arg(c.Values[0]))
		} else {
			// SQLite's LIKE ignores ASCII case; GLOB does not.
			sb.WriteString(col + " GLOB " + b.arg(likeToGlob(c.Values[0].(string))))
		}
	case ILike:
		if b.d == store.Postgres {
			// Under "C", ILIKE folds ASCII letters only, as SQLite's LIKE.
			sb.WriteString(expr + " ILIKE " + b.arg(c.Values[0]))
		} else {
			sb.WriteString(col + ` LIKE ` + b.arg(c.Values[0]) + ` ESCAPE '\'`)
		}
	}
}

// likeToGlob turns a LIKE pattern (% _ and backslash escapes) into a SQLite
// GLOB pattern (* ? and brackets for literal metacharacters).
func likeToGlob(p string) string {
	var g strings.Builder
	lit := func(c byte) {
		switch c {
		case '*':
			g.WriteString("[*]")
		case '?':
			g.WriteString("[?]")
		case '[':
			g.WriteString("[[]")
		default:
			g.WriteByte(c)
		}
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '\\':
			if i+1 < len(p) {
				i++
				lit(p[i])
			}
		case '%':
			g.WriteByte('*')
		case '_':
			g.WriteByte('?')
		default:
			lit(c)
		}
	}
	return g.String()
}

// keyset writes the predicate "the row sorts after the cursor" (values,
// runID) on keys: for some key i, the keys before i equal the cursor's and
// key i sorts after it, or every key equals the cursor's and the run id is
// greater. NULLs sort after every value, in both directions.
func (b *sqlBuilder) keyset(sb *strings.Builder, order []OrderKey, keys []orderCol, values []any, runID string) {
	sb.WriteString("(")
	first := true
	for i := 0; i <= len(keys); i++ {
		if i < len(keys) && values[i] == nil {
			continue // nothing sorts after NULL on this key
		}
		if !first {
			sb.WriteString(" OR ")
		}
		first = false
		sb.WriteString("(")
		for j := 0; j < i; j++ {
			if values[j] == nil {
				sb.WriteString(keys[j].value + " IS NULL AND ")
			} else {
				sb.WriteString(keys[j].sort + " = " + b.arg(values[j]) + " AND ")
			}
		}
		if i == len(keys) {
			sb.WriteString(b.text("r.run_id") + " > " + b.arg(runID))
		} else {
			cmp := " > "
			if order[i].Desc {
				cmp = " < "
			}
			if keys[i].nullable {
				sb.WriteString("(" + keys[i].sort + cmp + b.arg(values[i]) + " OR " + keys[i].value + " IS NULL)")
			} else {
				sb.WriteString(keys[i].sort + cmp + b.arg(values[i]))
			}
		}
		sb.WriteString(")")
	}
	sb.WriteString(")")
}

func checkCursor(order []OrderKey, c *Cursor) error {
	if len(c.Values) != len(order) {
		return fmt.Errorf("%w: %d values for %d order keys", ErrCursor, len(c.Values), len(order))
	}
	for i, v := range c.Values {
		k := order[i]
		if v == nil {
			if k.Operand.Kind == Attribute && k.Operand.Key != AttrEndTime {
				return fmt.Errorf("%w: %s is never NULL", ErrCursor, k.Operand)
			}
			continue
		}
		if err := checkValue(k.Operand.Type(), v); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCursor, k.Operand, err)
		}
	}
	return nil
}

// Validate checks a tree built by hand against what Parse accepts: node
// types, operand and operator, value types, list sizes and the bounds on
// comparisons and depth. Parsed trees are valid.
func Validate(e Expr) error {
	n := 0
	return validate(e, 0, &n)
}

func validate(e Expr, depth int, n *int) error {
	if depth > MaxDepth+1 {
		return fmt.Errorf("filter: nested more than %d deep", MaxDepth)
	}
	switch e := e.(type) {
	case *And:
		return validateTerms(e.Terms, depth, n)
	case *Or:
		return validateTerms(e.Terms, depth, n)
	case *Comparison:
		*n++
		if *n > MaxComparisons {
			return fmt.Errorf("filter: more than %d comparisons", MaxComparisons)
		}
		if err := checkComparison(e); err != nil {
			return fmt.Errorf("filter: %s: %w", e.Operand, err)
		}
		return nil
	case nil:
		return errors.New("filter: nil expression")
	}
	return fmt.Errorf("filter: unknown expression %T", e)
}

func validateTerms(terms []Expr, depth int, n *int) error {
	if len(terms) == 0 {
		return errors.New("filter: AND or OR without terms")
	}
	for _, t := range terms {
		if err := validate(t, depth+1, n); err != nil {
			return err
		}
	}
	return nil
}

func checkOperand(o Operand) error {
	switch o.Kind {
	case Metric, Param, Tag:
		if msg := checkKey(o.Key); msg != "" {
			return errors.New(msg)
		}
		return nil
	case Attribute:
		if _, ok := attrColumns[o.Key]; !ok {
			return fmt.Errorf("unknown attribute %q", o.Key)
		}
		return nil
	}
	return fmt.Errorf("unknown operand kind %d", o.Kind)
}

func checkComparison(c *Comparison) error {
	if err := checkOperand(c.Operand); err != nil {
		return err
	}
	t := c.Operand.Type()
	switch c.Op {
	case Eq, Ne, Lt, Le, Gt, Ge, Like, ILike:
		if len(c.Values) != 1 {
			return fmt.Errorf("%s takes one value, got %d", c.Op, len(c.Values))
		}
	case In, NotIn:
		if len(c.Values) < 1 || len(c.Values) > MaxListValues {
			return fmt.Errorf("%s takes 1 to %d values, got %d", c.Op, MaxListValues, len(c.Values))
		}
	default:
		return fmt.Errorf("unknown operator %d", int(c.Op))
	}
	switch {
	case (c.Op == Like || c.Op == ILike) && t != String:
		return fmt.Errorf("%s applies to strings", c.Op)
	case (c.Op == Lt || c.Op == Le || c.Op == Gt || c.Op == Ge) && t == Status:
		return fmt.Errorf("status compares with = != IN and NOT IN only")
	}
	for _, v := range c.Values {
		if err := checkValue(t, v); err != nil {
			return err
		}
		if c.Op == Like || c.Op == ILike {
			if trailingBackslashes(v.(string))%2 == 1 {
				return errors.New("the pattern ends with a lone escape character")
			}
		}
	}
	return nil
}

// checkValue checks that v has the Go type of t and a value the backends
// can bind and compare exactly.
func checkValue(t Type, v any) error {
	switch t {
	case Number:
		f, ok := v.(float64)
		if !ok {
			return fmt.Errorf("want a float64, got %T", v)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%v is not finite", f)
		}
	case Time:
		if _, ok := v.(int64); !ok {
			return fmt.Errorf("want an int64, got %T", v)
		}
	case String, Status:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a string, got %T", v)
		}
		if msg := checkString(s); msg != "" {
			return errors.New(msg)
		}
		if t == Status && !isStatus(s) {
			return fmt.Errorf("unknown status %q", s)
		}
	default:
		return errors.New("unknown type")
	}
	return nil
}

func isStatus(s string) bool {
	for _, st := range RunStatuses {
		if s == st {
			return true
		}
	}
	return false
}
