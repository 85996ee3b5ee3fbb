package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestBacktestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", "eustock", "--policy", "magic"}, "invalid --policy"},
		{[]string{"--data", "eustock", "--strategies", "trend,nope"}, "invalid --strategies"},
		{[]string{"--data", "eustock", "--start", "100", "--end", "100"}, "empty range"},
		{[]string{"--data", "eustock", "--end", "5000"}, "invalid --end"},
		{[]string{"--data", "eustock", "--column", "NIKKEI"}, "invalid --column"},
		{[]string{"--data", "/nonexistent.csv"}, "--data"},
		{[]string{"--data", "eustock", "--end", "80", "--policy", "naive"}, "training window too short"},
		{[]string{"--data", "ttrc", "--pool", "--policy", "naive"}, "no other column"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"backtest"}, tc.args...), &stdout, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
	}
}

func TestBacktestJSON(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"backtest", "--data", "eustock", "--policy", "naive,equal", "--json"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want one per policy:\n%s", len(lines), stdout.String())
	}
	for i, want := range []string{"naive", "equal"} {
		var obj map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &obj); err != nil {
			t.Fatal(err)
		}
		if obj["policy"] != want || obj["column"] != "DAX" || obj["bars_evaluated"] != float64(558) {
			t.Errorf("line %d: %v", i, obj)
		}
		for _, k := range []string{"churn_rate", "max_disruption", "sharpe", "total_return", "max_drawdown", "turnover_cost"} {
			if _, ok := obj[k].(float64); !ok {
				t.Errorf("line %d: no %s", i, k)
			}
		}
	}
}
