package infra

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// grafanaVars are the dashboard variables, replaced by values PromQL
// accepts before the expressions are parsed.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m",
	"$__range", "1h",
	"$instance", ".*",
	"$account", ".*",
	"$symbol", "CAT",
)

// TestDashboardExpressionsParse checks that every dashboard expression is
// valid PromQL, with promtool (Debian package prometheus): the expressions,
// their Grafana variables substituted, are written as recording rules and
// checked with `promtool check rules`. It is skipped where promtool is not
// installed.
func TestDashboardExpressionsParse(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (Debian package prometheus)")
	}
	qs := dashboardQueries(t)
	var b strings.Builder
	b.WriteString("groups:\n- name: dashboards\n  rules:\n")
	for i, q := range qs {
		if strings.Contains(grafanaVars.Replace(q.expr), "$") {
			t.Errorf("%s: a Grafana variable this test does not know\n\texpr: %s", q.where, q.expr)
		}
		fmt.Fprintf(&b, "  - record: dashboard:expr:%d\n    expr: %s\n", i, strconv.Quote(grafanaVars.Replace(q.expr)))
	}
	path := filepath.Join(t.TempDir(), "dashboards.rules.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		// promtool names the rule (dashboard:expr:N) that fails.
		for i, q := range qs {
			if strings.Contains(string(out), fmt.Sprintf("dashboard:expr:%d ", i)) || strings.Contains(string(out), fmt.Sprintf("dashboard:expr:%d\"", i)) {
				t.Errorf("%s: not valid PromQL\n\texpr: %s", q.where, q.expr)
			}
		}
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("%d dashboard expressions parse", len(qs))
}
