package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

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
		return DefaultOrder
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
// q.Limit of them, after q.After when set. Build fails only on a query
// that Parse and ParseOrderBy would not produce (a hand-built tree, an
// unknown stage, no experiment) and on a cursor that does not fit the order
// (wrapping ErrCursor).
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

	b := &sqlBuilder{d: d}
	keys := make([]orderCol, len(order))
	var joins strings.Builder
	for i, k := range order {
		keys[i] = b.orderColumn(i, k, &joins)
	}
	var sb strings.Builder
	sb.WriteString(`SELECT r.run_key, r.run_id, r.experiment_id, r.run_name, r.status, r.start_time, r.end_time, r.lifecycle_stage, r.artifact_uri, r.delete_time`)
	for _, k := range keys {
		sb.WriteString(", ")
		sb.WriteString(k.value)
	}
	sb.WriteString(" FROM runs r")
	sb.WriteString(joins.String())

	sb.WriteString(" WHERE r.experiment_id IN (")
	for i, id := range q.ExperimentIDs {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(b.arg(id))
	}
	sb.WriteString(")")
	if len(stages) == 1 {
		sb.WriteString(" AND r.lifecycle_stage = ")
		sb.WriteString(b.arg(q.Stages[0]))
	}
	if q.Filter != nil {
		sb.WriteString(" AND ")
		b.expr(&sb, q.Filter)
	}
	if q.After != nil {
		sb.WriteString(" AND ")
		b.keyset(&sb, order, keys, q.After)
	}
	sb.WriteString(" ORDER BY ")
	for _, k := range keys {
		sb.WriteString(k.sort)
		sb.WriteString(k.dir)
		sb.WriteString(", ")
	}
	sb.WriteString(b.text("r.run_id"))
	sb.WriteString(" ASC LIMIT ")
	sb.WriteString(b.arg(int64(q.Limit)))
	return sb.String(), b.args, nil
}

type sqlBuilder struct {
	d    store.Dialect
	args []any
}

// arg binds v and returns its placeholder.
func (b *sqlBuilder) arg(v any) string {
	b.args = append(b.args, v)
	return "$" + strconv.Itoa(len(b.args))
}

// text returns a text column as compared and ordered: bytewise on both
// backends (SQLite's BINARY collation is the default).
func (b *sqlBuilder) text(col string) string {
	if b.d == store.Postgres {
		return col + ` COLLATE "C"`
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

// orderCol is how one order key appears in the query.
type orderCol struct {
	value    string // the selected value
	sort     string // the expression ordered and compared
	dir      string // " ASC NULLS LAST" or " DESC NULLS LAST"
	nullable bool
}

var orderAliases = [MaxOrderKeys]string{"o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"}

func (b *sqlBuilder) orderColumn(i int, k OrderKey, joins *strings.Builder) orderCol {
	var c orderCol
	if k.Operand.Kind == Attribute {
		c.value = attrColumns[k.Operand.Key]
		c.nullable = k.Operand.Key == AttrEndTime
	} else {
		a := orderAliases[i]
		joins.WriteString(" LEFT JOIN " + kvTables[k.Operand.Kind] + " " + a +
			" ON " + a + ".run_key = r.run_key AND " + a + ".key = " + b.arg(k.Operand.Key))
		c.value = a + ".value"
		c.nullable = true
	}
	c.sort = c.value
	if t := k.Operand.Type(); t == String || t == Status {
		c.sort = b.text(c.value)
	}
	c.dir = " ASC NULLS LAST"
	if k.Desc {
		c.dir = " DESC NULLS LAST"
	}
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
	sb.WriteString("EXISTS (SELECT 1 FROM " + kvTables[c.Operand.Kind] + " f WHERE f.run_key = r.run_key AND f.key = ")
	sb.WriteString(b.arg(c.Operand.Key))
	sb.WriteString(" AND ")
	b.predicate(sb, "f.value", c)
	sb.WriteString(")")
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

// keyset writes the predicate "the row sorts after cursor c": for some
// key i, the keys before i equal the cursor's and key i sorts after it, or
// every key equals the cursor's and the run id is greater. NULLs sort
// after every value, in both directions.
func (b *sqlBuilder) keyset(sb *strings.Builder, order []OrderKey, keys []orderCol, c *Cursor) {
	sb.WriteString("(")
	first := true
	or := func() {
		if !first {
			sb.WriteString(" OR ")
		}
		first = false
	}
	for i := 0; i <= len(keys); i++ {
		if i < len(keys) && c.Values[i] == nil {
			continue // nothing sorts after NULL on this key
		}
		or()
		sb.WriteString("(")
		for j := 0; j < i; j++ {
			if c.Values[j] == nil {
				sb.WriteString(keys[j].value + " IS NULL AND ")
			} else {
				sb.WriteString(keys[j].sort + " = " + b.arg(c.Values[j]) + " AND ")
			}
		}
		if i == len(keys) {
			sb.WriteString(b.text("r.run_id") + " > " + b.arg(c.RunID))
		} else {
			cmp := " > "
			if order[i].Desc {
				cmp = " < "
			}
			if keys[i].nullable {
				sb.WriteString("(" + keys[i].sort + cmp + b.arg(c.Values[i]) + " OR " + keys[i].value + " IS NULL)")
			} else {
				sb.WriteString(keys[i].sort + cmp + b.arg(c.Values[i]))
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
