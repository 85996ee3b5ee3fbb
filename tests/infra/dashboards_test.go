// Package infra checks the files under infra/ against the metric catalogue:
// every metric a Grafana dashboard or a Prometheus alert rule queries must
// be a family the mesh exports, as listed in docs/metrics.md (which
// TestMetricsCatalogue checks against a running mesh).
package infra

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

const root = "../.."

// catalogue returns the metric families named in docs/metrics.md: the first
// cell of every table row, when it is a backquoted name.
func catalogue(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \\|")
	fams := map[string]bool{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			fams[m[1]] = true
		}
	}
	if len(fams) < 20 {
		t.Fatalf("docs/metrics.md: found only %d metric families in its tables; has the table format changed?", len(fams))
	}
	return fams
}

// exported reports whether name is a series the mesh exports: a catalogued
// family, a histogram's _bucket/_sum/_count series, Prometheus's own `up`,
// or the Go and process collectors' go_* and process_* families.
func exported(fams map[string]bool, name string) bool {
	if fams[name] || name == "up" || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && fams[base] {
			return true
		}
	}
	return false
}

// promqlFunctions are PromQL's functions and aggregation operators: an
// identifier followed by "(" must be one of them.
var promqlFunctions = setOf(
	// aggregation operators
	"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
	"quantile", "count_values", "limitk", "limit_ratio",
	// functions
	"abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
	"day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
	"floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
	"histogram_stddev", "histogram_stdvar", "histogram_sum", "double_exponential_smoothing",
	"holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
	"ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round",
	"scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt",
	"time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
	"sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
	"stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time",
	"acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan",
	"tanh", "deg", "rad", "pi", "start", "end",
)

// promqlKeywords are identifiers that are not metric names wherever they
// stand: aggregators written before their "by" clause, binary and set
// operators, modifiers, and the number literals Inf and NaN.
var promqlKeywords = setOf(
	"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
	"quantile", "count_values", "limitk", "limit_ratio",
	"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
	"and", "or", "unless", "atan2", "inf", "nan",
)

func setOf(names ...string) map[string]bool {
	s := make(map[string]bool, len(names))
	for _, n := range names {
		s[n] = true
	}
	return s
}

var (
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'` + "|`[^`]*`")
	bracketed   = regexp.MustCompile(`\[[^\]]*\]`)
	matchers    = regexp.MustCompile(`\{[^}]*\}`)
	labelLists  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	token       = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*|[0-9][0-9a-zA-Z_.]*`)
	funcCallEnd = regexp.MustCompile(`^\s*\(`)
)

// metricNames returns the metric names a PromQL expression selects, in
// order of first appearance, and the identifiers it calls as functions that
// PromQL does not know. Label matchers, label lists, strings, durations,
// ranges and numbers are not metric names.
func metricNames(expr string) (names, unknownFuncs []string) {
	e := stringLit.ReplaceAllString(expr, `""`)
	e = bracketed.ReplaceAllString(e, "[]")
	e = matchers.ReplaceAllString(e, "{}")
	e = labelLists.ReplaceAllString(e, " ")
	for _, loc := range token.FindAllStringIndex(e, -1) {
		id := e[loc[0]:loc[1]]
		if id[0] >= '0' && id[0] <= '9' {
			continue // a number or a duration
		}
		if promqlKeywords[strings.ToLower(id)] {
			continue // an operator or an aggregator, "or (" and "sum(" alike
		}
		if funcCallEnd.MatchString(e[loc[1]:]) {
			if !promqlFunctions[id] && !slices.Contains(unknownFuncs, id) {
				unknownFuncs = append(unknownFuncs, id)
			}
			continue
		}
		if slices.Contains(names, id) {
			continue
		}
		names = append(names, id)
	}
	return names, unknownFuncs
}

// query is one PromQL expression and where it was found.
type query struct {
	where string // file and position, for failure messages
	expr  string
}

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
}

type panel struct {
	ID         int         `json:"id"`
	Title      string      `json:"title"`
	Type       string      `json:"type"`
	GridPos    *gridPos    `json:"gridPos"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a row's collapsed panels
}

type gridPos struct{ H, W, X, Y int }

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// dashboardQueries parses every dashboard under infra/grafana/dashboards,
// checks its shape, and returns the expressions of its panels' targets.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "infra", "grafana", "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"system.json", "trading.json", "training.json"} {
		if !slices.ContainsFunc(files, func(f string) bool { return filepath.Base(f) == want }) {
			t.Errorf("infra/grafana/dashboards/%s: missing", want)
		}
	}
	var qs []query
	uids := map[string]string{}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Errorf("%s: not valid dashboard JSON: %v", rel, err)
			continue
		}
		if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
			t.Errorf("%s: want a uid, a title and schemaVersion >= 36, have uid %q, title %q, schemaVersion %d", rel, d.UID, d.Title, d.SchemaVersion)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %q is also used by %s", rel, d.UID, other)
		}
		uids[d.UID] = rel
		if len(d.Panels) == 0 {
			t.Errorf("%s: no panels", rel)
		}
		var walk func(ps []panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				walk(p.Panels)
				if p.Type == "row" {
					continue
				}
				at := fmt.Sprintf("%s: panel %d %q", rel, p.ID, p.Title)
				if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
					t.Errorf("%s: missing or invalid gridPos %+v", at, p.GridPos)
				}
				if p.Datasource == nil || *p.Datasource != (datasource{Type: "prometheus", UID: "prometheus"}) {
					t.Errorf("%s: datasource %+v, want {prometheus prometheus} (the provisioned datasource)", at, p.Datasource)
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: no targets", at)
				}
				for i, tg := range p.Targets {
					if strings.TrimSpace(tg.Expr) == "" {
						t.Errorf("%s: target %d (refId %q) has an empty expr", at, i, tg.RefID)
						continue
					}
					qs = append(qs, query{where: fmt.Sprintf("%s target %s", at, tg.RefID), expr: tg.Expr})
				}
			}
		}
		walk(d.Panels)
	}
	return qs
}

var exprKey = regexp.MustCompile(`^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$`)

// ruleQueries returns every expr: value in infra/prometheus/rules/*.yml,
// inline or as a block scalar (expr: | or expr: >), without a YAML library.
func ruleQueries(t *testing.T) []query {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "infra", "prometheus", "rules", "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("infra/prometheus/rules: no *.yml rule files")
	}
	var qs []query
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(lines); i++ {
			m := exprKey.FindStringSubmatch(lines[i])
			if m == nil {
				continue
			}
			indent, value := len(m[1]), m[2]
			where := fmt.Sprintf("%s:%d", rel, i+1)
			if value != "" && !strings.ContainsRune("|>", rune(value[0])) {
				if strings.HasPrefix(value, `"`) || strings.HasPrefix(value, `'`) {
					value = value[1 : len(value)-1]
					if strings.Contains(value, `\\`) {
						value = strings.ReplaceAll(value, `\\`, `\`)
					}
				}
				qs = append(qs, query{where: where, expr: value})
				continue
			}
			var block []string
			for i+1 < len(lines) {
				next := lines[i+1]
				trimmed := strings.TrimSpace(next)
				if trimmed != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
					break
				}
				i++
				if !strings.HasPrefix(trimmed, "#") {
					block = append(block, trimmed)
				}
			}
			qs = append(qs, query{where: where, expr: strings.Join(block, "\n")})
		}
	}
	return qs
}

// TestDashboardAndRuleMetricsExist checks that every metric used by the
// Grafana dashboards and the Prometheus alert rules is in docs/metrics.md.
func TestDashboardAndRuleMetricsExist(t *testing.T) {
	fams := catalogue(t)
	dash := dashboardQueries(t)
	rules := ruleQueries(t)
	if len(rules) < 10 {
		t.Errorf("infra/prometheus/rules: found %d expr: values, want at least the ten alerts", len(rules))
	}
	used := map[string]bool{}
	for _, q := range append(dash, rules...) {
		if strings.TrimSpace(q.expr) == "" {
			t.Errorf("%s: empty expr", q.where)
			continue
		}
		names, unknown := metricNames(q.expr)
		for _, fn := range unknown {
			t.Errorf("%s: %q is called as a function but is not a PromQL function\n\texpr: %s", q.where, fn, q.expr)
		}
		if len(names) == 0 {
			t.Errorf("%s: no metric name found\n\texpr: %s", q.where, q.expr)
		}
		for _, n := range names {
			used[n] = true
			if !exported(fams, n) {
				t.Errorf("%s: metric %q is not a family in docs/metrics.md (nor a histogram series of one, up, go_* or process_*)\n\texpr: %s", q.where, n, q.expr)
			}
		}
	}
	list := make([]string, 0, len(used))
	for n := range used {
		list = append(list, n)
	}
	sort.Strings(list)
	t.Logf("%d dashboard and %d rule expressions use %d metrics: %s", len(dash), len(rules), len(list), strings.Join(list, " "))
}

// TestMetricNames checks the extractor itself, so that a name it silently
// drops cannot make TestDashboardAndRuleMetricsExist pass.
func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr          string
		names, unknwn []string
	}{
		{`up`, []string{"up"}, nil},
		{`histogram_quantile(0.95, sum by (instance, le) (rate(rpc_server_call_duration_seconds_bucket{job="quantmesh", rpc_method=~"a\\.b/(C|D)"}[5m]))) > 0.2`,
			[]string{"rpc_server_call_duration_seconds_bucket"}, nil},
		{"increase(a_total{job=\"q\"}[5m]) > 0\nor (a_total > 0 unless a_total offset 5m)", []string{"a_total"}, nil},
		{`label_replace(rate(x_errors_total[5m]) > 0, "signal", "batches fail to store", "", "") or label_replace(y_state{target="bus"} == 2, "signal", "open", "", "")`,
			[]string{"x_errors_total", "y_state"}, nil},
		{`sum(rate(h_count[$__rate_interval])) by (rpc_method) / on (instance) group_left(model) m_info`, []string{"h_count", "m_info"}, nil},
		{`sum by (action) (increase(p_total{instance=~"$instance"}[$__range])) * 1e3 + Inf`, []string{"p_total"}, nil},
		{`max(a:recorded:rate5m) - bool b`, []string{"a:recorded:rate5m", "b"}, nil},
		{`rat(a[5m])`, []string{"a"}, []string{"rat"}},
	} {
		names, unknown := metricNames(c.expr)
		if !slices.Equal(names, c.names) || !slices.Equal(unknown, c.unknwn) {
			t.Errorf("metricNames(%q) = %q, %q; want %q, %q", c.expr, names, unknown, c.names, c.unknwn)
		}
	}
	fams := map[string]bool{"h_seconds": true, "c_total": true}
	for name, want := range map[string]bool{
		"h_seconds": true, "h_seconds_bucket": true, "h_seconds_count": true, "c_total": true,
		"up": true, "go_goroutines": true, "process_cpu_seconds_total": true,
		"c_total_bucket_x": false, "quantmesh_made_up_total": false, "h_bucket": false,
	} {
		if got := exported(fams, name); got != want {
			t.Errorf("exported(%q) = %v, want %v", name, got, want)
		}
	}
}
