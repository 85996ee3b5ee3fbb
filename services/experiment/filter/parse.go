package filter

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Bounds on the input.
const (
	MaxFilterBytes  = 10000 // length of a filter
	MaxComparisons  = 100   // comparisons in a filter
	MaxDepth        = 50    // nesting of parentheses
	MaxListValues   = 1000  // values of one IN list
	MaxKeyChars     = 250   // characters of a key
	MaxOrderKeys    = 10    // order_by clauses
	MaxClauseBytes  = 2000  // length of one order_by clause
	maxFoundExcerpt = 24    // bytes of input quoted in an error
)

// RunStatuses are the values status compares with.
var RunStatuses = []string{"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}

// Error is a syntax or semantic error in a filter or an order_by clause.
type Error struct {
	// Clause is the index of the order_by clause, or -1 for the filter.
	Clause int
	// Pos is the 0-based byte offset of the error in the filter or clause.
	Pos int
	// Msg says what is wrong.
	Msg string
}

func (e *Error) Error() string {
	if e.Clause >= 0 {
		return fmt.Sprintf("order_by[%d] at position %d: %s", e.Clause, e.Pos, e.Msg)
	}
	return fmt.Sprintf("at position %d: %s", e.Pos, e.Msg)
}

// Parse parses a filter. An empty or blank filter returns (nil, nil).
// Errors are *Error.
func Parse(s string) (Expr, error) { return parse(s, MaxFilterBytes) }

// parse parses a filter of at most maxBytes bytes. The canonical form of a
// filter can be longer than the filter (metric.a=9e5 prints as
// metrics.a = 900000), so tests re-parse it with a larger bound.
func parse(s string, maxBytes int) (Expr, error) {
	if len(s) > maxBytes {
		return nil, &Error{Clause: -1, Pos: maxBytes, Msg: fmt.Sprintf("the filter is longer than %d bytes", maxBytes)}
	}
	p := &parser{src: s, clause: -1}
	p.skipSpace()
	if p.pos == len(s) {
		return nil, nil
	}
	e, err := p.parseOr(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos < len(s) {
		return nil, p.errorf(p.pos, "expected AND, OR or the end of the filter, found %s", p.found(p.pos))
	}
	return e, nil
}

// ParseOrderBy parses order_by clauses such as "metrics.sharpe DESC",
// "start_time", "params.lr asc". Errors are *Error with Clause set.
func ParseOrderBy(clauses []string) ([]OrderKey, error) {
	if len(clauses) > MaxOrderKeys {
		return nil, &Error{Clause: MaxOrderKeys, Pos: 0, Msg: fmt.Sprintf("at most %d order_by clauses", MaxOrderKeys)}
	}
	var keys []OrderKey
	for i, c := range clauses {
		k, err := parseOrderKey(i, c)
		if err != nil {
			return nil, err
		}
		for j, prev := range keys {
			if prev.Operand == k.Operand {
				return nil, &Error{Clause: i, Pos: 0, Msg: fmt.Sprintf("%s is already ordered by clause %d", k.Operand, j)}
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func parseOrderKey(i int, s string) (OrderKey, error) {
	if len(s) > MaxClauseBytes {
		return OrderKey{}, &Error{Clause: i, Pos: MaxClauseBytes, Msg: fmt.Sprintf("the clause is longer than %d bytes", MaxClauseBytes)}
	}
	p := &parser{src: s, clause: i}
	p.skipSpace()
	if p.pos == len(s) {
		return OrderKey{}, p.errorf(p.pos, "empty clause: expected an operand such as metrics.<key> or start_time")
	}
	op, err := p.parseOperand()
	if err != nil {
		return OrderKey{}, err
	}
	k := OrderKey{Operand: op}
	p.skipSpace()
	if w := p.word(); w != "" {
		switch strings.ToUpper(w) {
		case "ASC":
			p.pos += len(w)
		case "DESC":
			k.Desc = true
			p.pos += len(w)
		}
	}
	p.skipSpace()
	if p.pos < len(s) {
		return OrderKey{}, p.errorf(p.pos, "expected ASC, DESC or the end of the clause, found %s", p.found(p.pos))
	}
	return k, nil
}

type parser struct {
	src         string
	pos         int
	clause      int
	comparisons int
}

func (p *parser) errorf(pos int, format string, args ...any) error {
	return &Error{Clause: p.clause, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

// found describes the input at pos for an error message.
func (p *parser) found(pos int) string {
	if pos >= len(p.src) {
		if p.clause >= 0 {
			return "the end of the clause"
		}
		return "the end of the filter"
	}
	rest := p.src[pos:]
	end := 0
	if w := wordAt(rest); w != "" {
		end = len(w)
	} else {
		// Up to the next space, at least one character.
		for end < len(rest) && end < maxFoundExcerpt {
			r, n := utf8.DecodeRuneInString(rest[end:])
			if end > 0 && unicode.IsSpace(r) {
				break
			}
			end += n
		}
	}
	return quoteExcerpt(rest[:end])
}

func (p *parser) skipSpace() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r', '\f', '\v':
			p.pos++
		default:
			return
		}
	}
}

// word returns the identifier at the current position, or "".
func (p *parser) word() string { return wordAt(p.src[p.pos:]) }

// wordAt returns the ASCII identifier ([A-Za-z_][A-Za-z0-9_]*) s starts with.
func wordAt(s string) string {
	i := 0
	for i < len(s) && (isAlpha(s[i]) || s[i] == '_' || (i > 0 && isDigit(s[i]))) {
		i++
	}
	return s[:i]
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isKeyRune reports whether r may appear in a bare key.
func isKeyRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_-./:", r)
}

// keyword consumes kw (case-insensitive) when it is the next word.
func (p *parser) keyword(kw string) bool {
	w := p.word()
	if strings.EqualFold(w, kw) {
		p.pos += len(w)
		return true
	}
	return false
}

func (p *parser) parseOr(depth int) (Expr, error) {
	var terms []Expr
	for {
		t, err := p.parseAnd(depth)
		if err != nil {
			return nil, err
		}
		if o, ok := t.(*Or); ok {
			terms = append(terms, o.Terms...)
		} else {
			terms = append(terms, t)
		}
		p.skipSpace()
		if !p.keyword("OR") {
			break
		}
	}
	if len(terms) == 1 {
		return terms[0], nil
	}
	return &Or{Terms: terms}, nil
}

func (p *parser) parseAnd(depth int) (Expr, error) {
	var terms []Expr
	for {
		t, err := p.parsePrimary(depth)
		if err != nil {
			return nil, err
		}
		if a, ok := t.(*And); ok {
			terms = append(terms, a.Terms...)
		} else {
			terms = append(terms, t)
		}
		p.skipSpace()
		if !p.keyword("AND") {
			break
		}
	}
	if len(terms) == 1 {
		return terms[0], nil
	}
	return &And{Terms: terms}, nil
}

func (p *parser) parsePrimary(depth int) (Expr, error) {
	p.skipSpace()
	if p.pos < len(p.src) && p.src[p.pos] == '(' {
		open := p.pos
		if depth >= MaxDepth {
			return nil, p.errorf(open, "parentheses are nested more than %d deep", MaxDepth)
		}
		p.pos++
		e, err := p.parseOr(depth + 1)
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.src) || p.src[p.pos] != ')' {
			return nil, p.errorf(p.pos, "expected AND, OR or ')' closing the '(' at position %d, found %s", open, p.found(p.pos))
		}
		p.pos++
		return e, nil
	}
	return p.parseComparison()
}

func (p *parser) parseComparison() (*Comparison, error) {
	start := p.pos
	p.comparisons++
	if p.comparisons > MaxComparisons {
		return nil, p.errorf(start, "more than %d comparisons", MaxComparisons)
	}
	operand, err := p.parseOperand()
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	opPos := p.pos
	op, err := p.parseOp()
	if err != nil {
		return nil, err
	}
	typ := operand.Type()
	switch op {
	case Like, ILike:
		if typ != String {
			return nil, p.errorf(opPos, "%s applies to strings; %s is %s", op, operand, typeDesc(typ))
		}
	case Lt, Le, Gt, Ge:
		if typ == Status {
			return nil, p.errorf(opPos, "status compares with = != IN and NOT IN only")
		}
	}
	c := &Comparison{Operand: operand, Op: op}
	p.skipSpace()
	if op == In || op == NotIn {
		if p.pos >= len(p.src) || p.src[p.pos] != '(' {
			return nil, p.errorf(p.pos, "expected '(' after %s, found %s", op, p.found(p.pos))
		}
		p.pos++
		for {
			p.skipSpace()
			if len(c.Values) == MaxListValues {
				return nil, p.errorf(p.pos, "more than %d values in the list", MaxListValues)
			}
			v, err := p.parseValue(operand, op)
			if err != nil {
				return nil, err
			}
			c.Values = append(c.Values, v)
			p.skipSpace()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.src) && p.src[p.pos] == ')' {
				p.pos++
				break
			}
			return nil, p.errorf(p.pos, "expected ',' or ')' in the list, found %s", p.found(p.pos))
		}
		return c, nil
	}
	v, err := p.parseValue(operand, op)
	if err != nil {
		return nil, err
	}
	c.Values = []any{v}
	return c, nil
}

func typeDesc(t Type) string {
	switch t {
	case Number:
		return "numeric"
	case Status:
		return "a status"
	case Time:
		return "a time"
	}
	return "a string"
}

var prefixes = map[string]Kind{
	"metrics": Metric, "metric": Metric,
	"params": Param, "param": Param,
	"tags": Tag, "tag": Tag,
	"attributes": Attribute, "attribute": Attribute,
}

const operandHint = "metrics.<key>, params.<key>, tags.<key>, status, run_name, run_id, start_time or end_time"

func (p *parser) parseOperand() (Operand, error) {
	start := p.pos
	w := p.word()
	if w == "" {
		return Operand{}, p.errorf(start, "expected an operand (%s), found %s", operandHint, p.found(start))
	}
	if start+len(w) < len(p.src) && p.src[start+len(w)] == '.' {
		kind, ok := prefixes[strings.ToLower(w)]
		if !ok {
			return Operand{}, p.errorf(start, "unknown prefix '%s.': expected metrics., params., tags. or attributes.", w)
		}
		p.pos += len(w) + 1
		keyPos := p.pos
		key, err := p.parseKey(w)
		if err != nil {
			return Operand{}, err
		}
		if kind == Attribute {
			name, ok := attributeName(key)
			if !ok {
				return Operand{}, p.errorf(keyPos, "unknown attribute %s: expected status, run_name, run_id, start_time or end_time", quoteExcerpt(key))
			}
			key = name
		}
		return Operand{Kind: kind, Key: key}, nil
	}
	name, ok := attributeName(w)
	if !ok {
		return Operand{}, p.errorf(start, "unknown operand '%s': expected %s", w, operandHint)
	}
	p.pos += len(w)
	return Operand{Kind: Attribute, Key: name}, nil
}

func attributeName(s string) (string, bool) {
	for _, a := range attributes {
		if strings.EqualFold(s, a) {
			return a, true
		}
	}
	return "", false
}

// parseKey reads a bare or quoted key after prefix and '.'.
func (p *parser) parseKey(prefix string) (string, error) {
	start := p.pos
	if p.pos < len(p.src) && (p.src[p.pos] == '"' || p.src[p.pos] == '`') {
		q := p.src[p.pos]
		p.pos++
		var b strings.Builder
		for {
			i := strings.IndexByte(p.src[p.pos:], q)
			if i < 0 {
				return "", p.errorf(start, "unterminated quoted key")
			}
			b.WriteString(p.src[p.pos : p.pos+i])
			p.pos += i + 1
			if p.pos < len(p.src) && p.src[p.pos] == q {
				b.WriteByte(q)
				p.pos++
				continue
			}
			break
		}
		key := b.String()
		if err := checkKey(key); err != "" {
			return "", p.errorf(start, "%s", err)
		}
		return key, nil
	}
	for p.pos < len(p.src) {
		r, n := utf8.DecodeRuneInString(p.src[p.pos:])
		if !isKeyRune(r) || (r == utf8.RuneError && n == 1) {
			break
		}
		p.pos += n
	}
	if p.pos == start {
		return "", p.errorf(start, "expected a key after '%s.' (quote keys with other characters in \"double quotes\" or `backticks`), found %s", prefix, p.found(start))
	}
	key := p.src[start:p.pos]
	if err := checkKey(key); err != "" {
		return "", p.errorf(start, "%s", err)
	}
	return key, nil
}

// checkKey returns what is wrong with key, or "".
func checkKey(key string) string {
	switch {
	case key == "":
		return "empty key"
	case !utf8.ValidString(key):
		return "the key is not valid UTF-8"
	case strings.IndexFunc(key, unicode.IsControl) >= 0:
		// The service stores no such key, and the SQL joins key and
		// value with a control character.
		return "the key contains a control character"
	case utf8.RuneCountInString(key) > MaxKeyChars:
		return fmt.Sprintf("the key is longer than %d characters", MaxKeyChars)
	}
	return ""
}

func (p *parser) parseOp() (Op, error) {
	s := p.src[p.pos:]
	two := func(op Op) (Op, error) { p.pos += 2; return op, nil }
	one := func(op Op) (Op, error) { p.pos++; return op, nil }
	switch {
	case strings.HasPrefix(s, "!="):
		return two(Ne)
	case strings.HasPrefix(s, "<="):
		return two(Le)
	case strings.HasPrefix(s, ">="):
		return two(Ge)
	case strings.HasPrefix(s, "="):
		return one(Eq)
	case strings.HasPrefix(s, "<"):
		return one(Lt)
	case strings.HasPrefix(s, ">"):
		return one(Gt)
	}
	start := p.pos
	switch w := p.word(); strings.ToUpper(w) {
	case "LIKE":
		p.pos += len(w)
		return Like, nil
	case "ILIKE":
		p.pos += len(w)
		return ILike, nil
	case "IN":
		p.pos += len(w)
		return In, nil
	case "NOT":
		p.pos += len(w)
		p.skipSpace()
		if !p.keyword("IN") {
			return 0, p.errorf(p.pos, "expected IN after NOT, found %s", p.found(p.pos))
		}
		return NotIn, nil
	}
	return 0, p.errorf(start, "expected a comparison operator, found %s", p.found(start))
}

// parseValue reads one literal and checks it against the operand's type.
func (p *parser) parseValue(o Operand, op Op) (any, error) {
	start := p.pos
	if p.pos >= len(p.src) {
		return nil, p.errorf(start, "expected a value, found %s", p.found(start))
	}
	typ := o.Type()
	c := p.src[p.pos]
	switch {
	case c == '\'':
		s, err := p.parseString()
		if err != nil {
			return nil, err
		}
		switch typ {
		case Number:
			return nil, p.errorf(start, "%s is numeric: compare it with a number, found the string %s", o, quoteExcerpt(s))
		case Status:
			for _, st := range RunStatuses {
				if strings.EqualFold(s, st) {
					return st, nil
				}
			}
			return nil, p.errorf(start, "unknown status %s: expected one of 'RUNNING', 'SCHEDULED', 'FINISHED', 'FAILED', 'KILLED'", quoteExcerpt(s))
		case Time:
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return nil, p.errorf(start, "%s takes Unix epoch milliseconds or an RFC 3339 time such as '2024-05-01T12:00:00Z', found %s", o, quoteExcerpt(s))
			}
			if t.Nanosecond()%int(time.Millisecond) != 0 {
				return nil, p.errorf(start, "times are compared in milliseconds; %s is finer", quoteExcerpt(s))
			}
			return t.UnixMilli(), nil
		}
		if op == Like || op == ILike {
			if n := trailingBackslashes(s); n%2 == 1 {
				return nil, p.errorf(start, "the %s pattern ends with a lone escape character '\\'", op)
			}
		}
		return s, nil
	case isDigit(c) || c == '.' || c == '+' || c == '-':
		text, err := p.scanNumber()
		if err != nil {
			return nil, err
		}
		switch typ {
		case Number:
			f, err := strconv.ParseFloat(text, 64)
			if err != nil || math.IsInf(f, 0) {
				return nil, p.errorf(start, "the number %s is out of range", quoteExcerpt(text))
			}
			return f, nil
		case Time:
			if strings.ContainsAny(text, ".eE") {
				return nil, p.errorf(start, "%s takes Unix epoch milliseconds as an integer, found %s", o, text)
			}
			n, err := strconv.ParseInt(text, 10, 64)
			if err != nil {
				return nil, p.errorf(start, "the time %s is out of range", quoteExcerpt(text))
			}
			return n, nil
		case Status:
			return nil, p.errorf(start, "status takes a quoted status name such as 'FINISHED', found the number %s", quoteExcerpt(text))
		}
		return nil, p.errorf(start, "%s is a string: compare it with a string in single quotes, found the number %s", o, quoteExcerpt(text))
	case c == '"':
		return nil, p.errorf(start, "strings are in single quotes ('...'), found %s", p.found(start))
	}
	return nil, p.errorf(start, "expected a value (a number or a string in single quotes), found %s", p.found(start))
}

func trailingBackslashes(s string) int {
	n := 0
	for n < len(s) && s[len(s)-1-n] == '\\' {
		n++
	}
	return n
}

// parseString reads a string in single quotes; a doubled quote is one
// quote.
func (p *parser) parseString() (string, error) {
	start := p.pos
	p.pos++
	var b strings.Builder
	for {
		i := strings.IndexByte(p.src[p.pos:], '\'')
		if i < 0 {
			return "", p.errorf(start, "unterminated string")
		}
		b.WriteString(p.src[p.pos : p.pos+i])
		p.pos += i + 1
		if p.pos < len(p.src) && p.src[p.pos] == '\'' {
			b.WriteByte('\'')
			p.pos++
			continue
		}
		break
	}
	s := b.String()
	if msg := checkString(s); msg != "" {
		return "", p.errorf(start, "%s", msg)
	}
	return s, nil
}

// checkString returns why s cannot be a value, or "": PostgreSQL text holds
// neither invalid UTF-8 nor NUL.
func checkString(s string) string {
	if !utf8.ValidString(s) {
		return "the string is not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "the string contains a NUL character"
	}
	return ""
}

// scanNumber reads [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?
// not followed by a letter, digit, '_' or '.'.
func (p *parser) scanNumber() (string, error) {
	start := p.pos
	s := p.src
	i := p.pos
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
			digits++
		}
	}
	bad := digits == 0
	if !bad && i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for i < len(s) && isDigit(s[i]) {
			i++
			exp++
		}
		bad = exp == 0
	}
	// A number runs into no word: 1AND, 1.2.3 and 2x are malformed.
	for i < len(s) && (isAlpha(s[i]) || isDigit(s[i]) || s[i] == '_' || s[i] == '.') {
		bad = true
		i++
	}
	if bad {
		return "", p.errorf(start, "malformed number %s", quoteExcerpt(s[start:i]))
	}
	p.pos = i
	return s[start:i], nil
}

// quoteExcerpt quotes client input in a message, shortened at a rune
// boundary.
func quoteExcerpt(s string) string {
	if len(s) > maxFoundExcerpt {
		i := maxFoundExcerpt
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i] + "…"
	}
	return "'" + strings.ToValidUTF8(s, "\uFFFD") + "'"
}
