package filter

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func metric(key string) Operand { return Operand{Kind: Metric, Key: key} }
func param(key string) Operand  { return Operand{Kind: Param, Key: key} }
func tag(key string) Operand    { return Operand{Kind: Tag, Key: key} }
func attr(name string) Operand  { return Operand{Kind: Attribute, Key: name} }

func cmpv(o Operand, op Op, vals ...any) *Comparison {
	return &Comparison{Operand: o, Op: op, Values: vals}
}

func and(terms ...Expr) *And { return &And{Terms: terms} }
func or(terms ...Expr) *Or   { return &Or{Terms: terms} }

func TestParseValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Expr
	}{
		{"", nil},
		{" \t\n ", nil},
		{"metrics.sharpe > 1.5", cmpv(metric("sharpe"), Gt, 1.5)},
		{"metrics.sharpe>1.5", cmpv(metric("sharpe"), Gt, 1.5)},
		{"metric.a = -2", cmpv(metric("a"), Eq, -2.0)},
		{"metrics.a != +.5", cmpv(metric("a"), Ne, 0.5)},
		{"metrics.a <= 1e3", cmpv(metric("a"), Le, 1000.0)},
		{"metrics.a >= 2.5E-2", cmpv(metric("a"), Ge, 0.025)},
		{"metrics.a < 7.", cmpv(metric("a"), Lt, 7.0)},
		{"metrics.a<-1", cmpv(metric("a"), Lt, -1.0)},
		{"metrics.a IN (1, 2.5, -3)", cmpv(metric("a"), In, 1.0, 2.5, -3.0)},
		{"metrics.train/loss < 0.1", cmpv(metric("train/loss"), Lt, 0.1)},
		{"metrics.val-loss < 0.1", cmpv(metric("val-loss"), Lt, 0.1)},
		{"metrics.a.b:c_d-e/f < 0.1", cmpv(metric("a.b:c_d-e/f"), Lt, 0.1)},
		{"metrics.1 = 1", cmpv(metric("1"), Eq, 1.0)},
		{"metrics.größe = 1", cmpv(metric("größe"), Eq, 1.0)},
		{`metrics."loss (val)" = 1`, cmpv(metric("loss (val)"), Eq, 1.0)},
		{"metrics.`a b` = 1", cmpv(metric("a b"), Eq, 1.0)},
		{`params."say ""hi""" = 'x'`, cmpv(param(`say "hi"`), Eq, "x")},
		{"tags.`it``s` = 'x'", cmpv(tag("it`s"), Eq, "x")},
		{"params.lr = '0.01'", cmpv(param("lr"), Eq, "0.01")},
		{"param.lr = 'it''s'", cmpv(param("lr"), Eq, "it's")},
		{"params.lr = ''", cmpv(param("lr"), Eq, "")},
		{"tags.team IN ('a','b')", cmpv(tag("team"), In, "a", "b")},
		{"tag.team not in ( 'a' )", cmpv(tag("team"), NotIn, "a")},
		{"tags.x LIKE 'a%\\_b'", cmpv(tag("x"), Like, `a%\_b`)},
		{"tags.x ilike '%É'", cmpv(tag("x"), ILike, "%É")},
		{"tags.x < 'b'", cmpv(tag("x"), Lt, "b")},
		{"status = 'FINISHED'", cmpv(attr(AttrStatus), Eq, "FINISHED")},
		{"STATUS = 'failed'", cmpv(attr(AttrStatus), Eq, "FAILED")},
		{"attributes.status IN ('RUNNING', 'killed')", cmpv(attr(AttrStatus), In, "RUNNING", "KILLED")},
		{"attribute.Run_Name LIKE 'x%'", cmpv(attr(AttrRunName), Like, "x%")},
		{"run_id = 'abc'", cmpv(attr(AttrRunID), Eq, "abc")},
		{"start_time >= 1714564800000", cmpv(attr(AttrStartTime), Ge, int64(1714564800000))},
		{"start_time >= '2024-05-01T12:00:00Z'", cmpv(attr(AttrStartTime), Ge, int64(1714564800000))},
		{"end_time < '2024-05-01T14:00:00.5+02:00'", cmpv(attr(AttrEndTime), Lt, int64(1714564800500))},
		{"attributes.end_time IN (1, '1970-01-01T00:00:00.002Z')", cmpv(attr(AttrEndTime), In, int64(1), int64(2))},
		{"end_time = -5", cmpv(attr(AttrEndTime), Eq, int64(-5))},
		// Precedence: AND binds tighter than OR.
		{"metrics.a = 1 OR metrics.b = 2 AND metrics.c = 3",
			or(cmpv(metric("a"), Eq, 1.0), and(cmpv(metric("b"), Eq, 2.0), cmpv(metric("c"), Eq, 3.0)))},
		{"metrics.a = 1 AND metrics.b = 2 OR metrics.c = 3",
			or(and(cmpv(metric("a"), Eq, 1.0), cmpv(metric("b"), Eq, 2.0)), cmpv(metric("c"), Eq, 3.0))},
		{"(metrics.a = 1 OR metrics.b = 2) AND metrics.c = 3",
			and(or(cmpv(metric("a"), Eq, 1.0), cmpv(metric("b"), Eq, 2.0)), cmpv(metric("c"), Eq, 3.0))},
		// Keywords in any case; flattened chains.
		{"metrics.a = 1 and metrics.b = 2 And (metrics.c = 3 aNd metrics.d = 4)",
			and(cmpv(metric("a"), Eq, 1.0), cmpv(metric("b"), Eq, 2.0), cmpv(metric("c"), Eq, 3.0), cmpv(metric("d"), Eq, 4.0))},
		{"metrics.a = 1 or (metrics.b = 2 OR metrics.c = 3)",
			or(cmpv(metric("a"), Eq, 1.0), cmpv(metric("b"), Eq, 2.0), cmpv(metric("c"), Eq, 3.0))},
		{"((((metrics.a = 1))))", cmpv(metric("a"), Eq, 1.0)},
		{"(metrics.a=1)AND(metrics.b=2)", and(cmpv(metric("a"), Eq, 1.0), cmpv(metric("b"), Eq, 2.0))},
		{"\n\tmetrics.a = 1\r\n", cmpv(metric("a"), Eq, 1.0)},
		{"params.a IN('x')AND params.b='y'", and(cmpv(param("a"), In, "x"), cmpv(param("b"), Eq, "y"))},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
			continue
		}
		if got == nil {
			continue
		}
		if err := Validate(got); err != nil {
			t.Errorf("Validate(Parse(%q)): %v", tt.in, err)
		}
		again, err := Parse(got.String())
		if err != nil {
			t.Errorf("Parse(%q) (String of %q): %v", got.String(), tt.in, err)
			continue
		}
		if diff := cmp.Diff(got, again); diff != "" {
			t.Errorf("String of %q = %q parses differently (-first +again):\n%s", tt.in, got.String(), diff)
		}
	}
}

func TestString(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"metrics.a=1e6", "metrics.a = 1e+06"},
		{"metric.a IN (1,2)", "metrics.a IN (1, 2)"},
		{`tags."a b" = 'it''s'`, `tags."a b" = 'it''s'`},
		{"tags.`x\"y` = 'v'", `tags."x""y" = 'v'`},
		{"attributes.STATUS = 'running'", "status = 'RUNNING'"},
		{"start_time > '2024-05-01T12:00:00Z'", "start_time > 1714564800000"},
		{"tags.x not IN ('a')", "tags.x NOT IN ('a')"},
		{"(metrics.a = 1 OR metrics.b = 2) AND (metrics.c = 3 OR metrics.d = 4)",
			"(metrics.a = 1 OR metrics.b = 2) AND (metrics.c = 3 OR metrics.d = 4)"},
		{"(metrics.a = 1 AND metrics.b = 2) OR metrics.c = 3", "metrics.a = 1 AND metrics.b = 2 OR metrics.c = 3"},
	}
	for _, tt := range tests {
		e, err := Parse(tt.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.in, err)
		}
		if got := e.String(); got != tt.want {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		pos     int
		contain string
	}{
		{"foo = 1", 0, "unknown operand 'foo'"},
		{"metrics.a = 1 AND foo", 18, "unknown operand 'foo'"},
		{"metrix.a = 1", 0, "unknown prefix 'metrix.'"},
		{"metrics. = 1", 8, "expected a key after 'metrics.'"},
		{"metrics.", 8, "found the end of the filter"},
		{`metrics."abc = 1`, 8, "unterminated quoted key"},
		{`metrics."" = 1`, 8, "empty key"},
		{"metrics." + strings.Repeat("k", 251) + " = 1", 8, "longer than 250 characters"},
		{`params."a` + "\x00" + `" = 'x'`, 7, "control character"},
		{`params."a` + "\x1f" + `b" = 'x'`, 7, "control character"},
		{"attributes.foo = 1", 11, "unknown attribute 'foo'"},
		{"= 1", 0, "expected an operand"},
		{"(", 1, "expected an operand"},
		{"metrics.a", 9, "expected a comparison operator, found the end of the filter"},
		{"metrics.a foo 1", 10, "expected a comparison operator, found 'foo'"},
		{"metrics.a == 1", 11, "expected a value"},
		{"metrics.a <> 1", 11, "expected a value"},
		{"metrics.a -1", 10, "expected a comparison operator, found '-1'"},
		{"metrics.a NOT 1", 14, "expected IN after NOT"},
		{"metrics.a =", 11, "expected a value, found the end of the filter"},
		{"metrics.a = x", 12, "expected a value"},
		{"metrics.a = 'x'", 12, "metrics.a is numeric"},
		{"metrics.a = 1x", 12, "malformed number '1x'"},
		{"metrics.a = 1.2.3", 12, "malformed number"},
		{"metrics.a = 1e", 12, "malformed number"},
		{"metrics.a = -", 12, "malformed number"},
		{"metrics.a = 1AND metrics.b = 2", 12, "malformed number"},
		{"metrics.a = 1e400", 12, "out of range"},
		{"metrics.a LIKE '%x'", 10, "LIKE applies to strings; metrics.a is numeric"},
		{"start_time ILIKE '%x'", 11, "ILIKE applies to strings"},
		{"params.a = 1", 11, "params.a is a string"},
		{`params.a = "x"`, 11, "strings are in single quotes"},
		{"params.a = 'x", 11, "unterminated string"},
		{"params.a = '\xff'", 11, "not valid UTF-8"},
		{"params.a = 'x\x00'", 11, "NUL"},
		{`params.a LIKE 'x\'`, 14, "lone escape character"},
		{"params.a IN ('x', 'y'", 21, "expected ',' or ')' in the list, found the end of the filter"},
		{"params.a IN 'x'", 12, "expected '(' after IN"},
		{"params.a IN ()", 13, "expected a value"},
		{"params.a IN ('x' 'y')", 17, "expected ',' or ')'"},
		{"params.a IN ('x', 1)", 18, "params.a is a string"},
		{"status = 'DONE'", 9, "unknown status 'DONE'"},
		{"status IN ('RUNNING', 'nope')", 22, "unknown status 'nope'"},
		{"status = 1", 9, "status takes a quoted status name"},
		{"status < 'RUNNING'", 7, "status compares with = != IN and NOT IN only"},
		{"status LIKE 'R%'", 7, "LIKE applies to strings"},
		{"start_time > 1.5", 13, "as an integer"},
		{"start_time > 1e3", 13, "as an integer"},
		{"start_time > 99999999999999999999", 13, "out of range"},
		{"start_time > 'yesterday'", 13, "RFC 3339"},
		{"start_time > '2024-05-01T12:00:00.0001Z'", 13, "finer"},
		{"metrics.a = 1 metrics.b = 2", 14, "expected AND, OR or the end of the filter, found 'metrics'"},
		{"metrics.a = 1 ANDmetrics.b = 2", 14, "found 'ANDmetrics'"},
		{"metrics.a = 1 AND", 17, "expected an operand"},
		{"metrics.a = 1 OR OR metrics.b = 2", 17, "unknown operand 'OR'"},
		{"(metrics.a = 1", 14, "closing the '(' at position 0"},
		{"(metrics.a = 1))", 15, "expected AND, OR or the end of the filter, found ')'"},
		{"metrics.a = 1)", 13, "found ')'"},
		{strings.Repeat("(", 51) + "metrics.a = 1" + strings.Repeat(")", 51), 50, "nested more than 50 deep"},
		{strings.Repeat("metrics.a = 1 AND ", 100) + "metrics.a = 1", 1800, "more than 100 comparisons"},
		{strings.Repeat(" ", 10001), 10000, "longer than 10000 bytes"},
		{"params.a IN (" + strings.Repeat("'x', ", 1000) + "'y')", 13 + 5*1000, "more than 1000 values"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%.60q) = %v, want an *Error", tt.in, err)
			continue
		}
		if pe.Clause != -1 || pe.Pos != tt.pos || !strings.Contains(pe.Msg, tt.contain) {
			t.Errorf("Parse(%.60q) = clause %d pos %d %q, want clause -1 pos %d containing %q", tt.in, pe.Clause, pe.Pos, pe.Msg, tt.pos, tt.contain)
		}
	}
}

func TestErrorString(t *testing.T) {
	t.Parallel()
	_, err := Parse("metrics.sharpe > foo")
	if got, want := err.Error(), "at position 17: expected a value (a number or a string in single quotes), found 'foo'"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	_, err = ParseOrderBy([]string{"start_time", "metrics.x sideways"})
	if got, want := err.Error(), "order_by[1] at position 10: expected ASC, DESC or the end of the clause, found 'sideways'"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseBounds(t *testing.T) {
	t.Parallel()
	// At the bounds, not beyond: accepted.
	deep := strings.Repeat("(", 50) + "metrics.a = 1" + strings.Repeat(")", 50)
	if _, err := Parse(deep); err != nil {
		t.Errorf("50 parentheses: %v", err)
	}
	many := strings.Repeat("metrics.a = 1 OR ", 99) + "metrics.a = 1"
	if _, err := Parse(many); err != nil {
		t.Errorf("100 comparisons: %v", err)
	}
	long := "params.a = '" + strings.Repeat("x", MaxFilterBytes-len("params.a = ''")) + "'"
	if _, err := Parse(long); err != nil {
		t.Errorf("%d bytes: %v", len(long), err)
	}
	// A deep filter made of parentheses fails on length or depth, not the
	// stack.
	if _, err := Parse(strings.Repeat("(", MaxFilterBytes)); err == nil {
		t.Error("10000 parentheses parsed")
	}
}

func TestParseOrderBy(t *testing.T) {
	t.Parallel()
	got, err := ParseOrderBy([]string{"metrics.sharpe DESC", "start_time", "params.lr asc", " tags.`a b`  desc ", "attributes.END_TIME", "run_id Desc"})
	if err != nil {
		t.Fatal(err)
	}
	want := []OrderKey{
		{Operand: metric("sharpe"), Desc: true},
		{Operand: attr(AttrStartTime)},
		{Operand: param("lr")},
		{Operand: tag("a b"), Desc: true},
		{Operand: attr(AttrEndTime)},
		{Operand: attr(AttrRunID), Desc: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	var clauses []string
	for _, k := range got {
		clauses = append(clauses, k.String())
	}
	again, err := ParseOrderBy(clauses)
	if err != nil || !cmp.Equal(got, again) {
		t.Errorf("ParseOrderBy(%q) = %v, %v; want the same keys", clauses, again, err)
	}
	if got, err := ParseOrderBy(nil); err != nil || got != nil {
		t.Errorf("ParseOrderBy(nil) = %v, %v", got, err)
	}
}

func TestParseOrderByErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      []string
		clause  int
		pos     int
		contain string
	}{
		{[]string{""}, 0, 0, "empty clause"},
		{[]string{"start_time", "  "}, 1, 2, "empty clause"},
		{[]string{"metrics.a", "foo"}, 1, 0, "unknown operand 'foo'"},
		{[]string{"metrics.a DESC ASC"}, 0, 15, "expected ASC, DESC or the end of the clause, found 'ASC'"},
		{[]string{"metrics.a, start_time"}, 0, 9, "found ','"},
		{[]string{"metrics.a", "metric.a DESC"}, 1, 0, "metrics.a is already ordered by clause 0"},
		{[]string{"start_time", "attributes.start_time"}, 1, 0, "already ordered"},
		{[]string{`tags."x`}, 0, 5, "unterminated quoted key"},
		{[]string{"params.x = 'a'"}, 0, 9, "found '='"},
		{strings.Split(strings.Repeat("run_id,", 11), ",")[:11], 10, 0, "at most 10"},
		{[]string{"metrics." + strings.Repeat("x", 2000)}, 0, 2000, "longer than 2000 bytes"},
	}
	for _, tt := range tests {
		_, err := ParseOrderBy(tt.in)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("ParseOrderBy(%.60q) = %v, want an *Error", tt.in, err)
			continue
		}
		if pe.Clause != tt.clause || pe.Pos != tt.pos || !strings.Contains(pe.Msg, tt.contain) {
			t.Errorf("ParseOrderBy(%.60q) = clause %d pos %d %q, want clause %d pos %d containing %q", tt.in, pe.Clause, pe.Pos, pe.Msg, tt.clause, tt.pos, tt.contain)
		}
	}
}
