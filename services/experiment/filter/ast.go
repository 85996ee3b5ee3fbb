package filter

import (
	"fmt"
	"strconv"
	"strings"
)

// Expr is a parsed filter: *Comparison, *And or *Or.
type Expr interface {
	// String returns the canonical filter, which parses back to an equal
	// tree. It can be longer than the filter it was parsed from (numbers,
	// prefixes and spacing are normalised), so near MaxFilterBytes Parse
	// may refuse it for its length alone.
	String() string
	isExpr()
}

// And matches runs that every term matches. Parsed trees have two or more
// terms, none of them an *And.
type And struct {
	Terms []Expr
}

// Or matches runs that any term matches. Parsed trees have two or more
// terms, none of them an *Or.
type Or struct {
	Terms []Expr
}

// Comparison compares one operand of a run with a value or a list.
type Comparison struct {
	Operand Operand
	Op      Op
	// Values holds the value, or the list of In and NotIn: float64 for
	// metrics, int64 epoch milliseconds for start_time and end_time, string
	// for everything else (status as its upper-case name, LIKE and ILIKE
	// patterns as written).
	Values []any
}

func (*And) isExpr()        {}
func (*Or) isExpr()         {}
func (*Comparison) isExpr() {}

// Kind says what an operand refers to.
type Kind int

// Operand kinds.
const (
	Metric    Kind = iota + 1 // metrics.<key>: the latest value in latest_metrics
	Param                     // params.<key>
	Tag                       // tags.<key>
	Attribute                 // a column of runs: Key is one of the Attr names
)

// Attribute names, as Operand.Key of an Attribute.
const (
	AttrStatus    = "status"
	AttrRunName   = "run_name"
	AttrRunID     = "run_id"
	AttrStartTime = "start_time"
	AttrEndTime   = "end_time"
)

var attributes = []string{AttrStatus, AttrRunName, AttrRunID, AttrStartTime, AttrEndTime}

// Operand is what a comparison or an order key reads from a run.
type Operand struct {
	Kind Kind
	// Key is the metric, param or tag key, or the attribute name.
	Key string
}

// Type is the type of an operand's values.
type Type int

// Value types.
const (
	Number Type = iota + 1 // float64
	String                 // string, bytewise order
	Status                 // string, a RunStatus name
	Time                   // int64 epoch milliseconds
)

// Type returns the type of o's values, or 0 when o is not valid.
func (o Operand) Type() Type {
	switch o.Kind {
	case Metric:
		return Number
	case Param, Tag:
		return String
	case Attribute:
		switch o.Key {
		case AttrStatus:
			return Status
		case AttrRunName, AttrRunID:
			return String
		case AttrStartTime, AttrEndTime:
			return Time
		}
	}
	return 0
}

// String prints o as a filter operand: metrics.<key>, params.<key>,
// tags.<key> or the bare attribute name. Keys that are not bare are
// double-quoted.
func (o Operand) String() string {
	switch o.Kind {
	case Metric:
		return "metrics." + quoteKey(o.Key)
	case Param:
		return "params." + quoteKey(o.Key)
	case Tag:
		return "tags." + quoteKey(o.Key)
	case Attribute:
		return o.Key
	}
	return fmt.Sprintf("<invalid operand %d %q>", o.Kind, o.Key)
}

// Op is a comparison operator.
type Op int

// Operators.
const (
	Eq Op = iota + 1
	Ne
	Lt
	Le
	Gt
	Ge
	Like
	ILike
	In
	NotIn
)

var opNames = [...]string{Eq: "=", Ne: "!=", Lt: "<", Le: "<=", Gt: ">", Ge: ">=", Like: "LIKE", ILike: "ILIKE", In: "IN", NotIn: "NOT IN"}

func (op Op) String() string {
	if op >= Eq && op <= NotIn {
		return opNames[op]
	}
	return fmt.Sprintf("Op(%d)", int(op))
}

// OrderKey is one order_by clause.
type OrderKey struct {
	Operand Operand
	Desc    bool
}

// String prints k as an order_by clause: the operand, then ASC or DESC.
func (k OrderKey) String() string {
	if k.Desc {
		return k.Operand.String() + " DESC"
	}
	return k.Operand.String() + " ASC"
}

// DefaultOrder is the order of a query without order keys.
var DefaultOrder = []OrderKey{{Operand: Operand{Kind: Attribute, Key: AttrStartTime}, Desc: true}}

func (e *And) String() string {
	var b strings.Builder
	for i, t := range e.Terms {
		if i > 0 {
			b.WriteString(" AND ")
		}
		if _, ok := t.(*Or); ok {
			b.WriteString("(" + t.String() + ")")
		} else {
			b.WriteString(t.String())
		}
	}
	return b.String()
}

func (e *Or) String() string {
	var b strings.Builder
	for i, t := range e.Terms {
		if i > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString(t.String())
	}
	return b.String()
}

func (c *Comparison) String() string {
	var b strings.Builder
	b.WriteString(c.Operand.String())
	b.WriteByte(' ')
	b.WriteString(c.Op.String())
	b.WriteByte(' ')
	if c.Op == In || c.Op == NotIn {
		b.WriteByte('(')
		for i, v := range c.Values {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(formatValue(v))
		}
		b.WriteByte(')')
	} else if len(c.Values) > 0 {
		b.WriteString(formatValue(c.Values[0]))
	}
	return b.String()
}

func formatValue(v any) string {
	switch v := v.(type) {
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case int64:
		return strconv.FormatInt(v, 10)
	case string:
		return "'" + strings.ReplaceAll(v, "'", "''") + "'"
	}
	return fmt.Sprintf("<invalid value %T>", v)
}

// quoteKey returns key as written after a prefix: bare when every
// character is a bare-key character, else double-quoted.
func quoteKey(key string) string {
	if key != "" && isBareKey(key) {
		return key
	}
	return `"` + strings.ReplaceAll(key, `"`, `""`) + `"`
}

func isBareKey(s string) bool {
	for _, r := range s {
		if !isKeyRune(r) {
			return false
		}
	}
	return true
}
