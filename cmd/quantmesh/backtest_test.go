package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
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
		{[]string{"--data", "eustock", "--pool=false"}, "name it with --column"},
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
	metricKeys := []string{"churn_rate", "max_disruption", "sharpe", "total_return", "max_drawdown", "turnover_cost"}
	backtest := func(t *testing.T, args ...string) []map[string]any {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"backtest", "--data", "eustock", "--policy", "naive,equal", "--json"}, args...), &stdout, &stderr)
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("%d lines, want one per policy:\n%s", len(lines), stdout.String())
		}
		var out []map[string]any
		for i, want := range []string{"naive", "equal"} {
			var obj map[string]any
			if err := json.Unmarshal([]byte(lines[i]), &obj); err != nil {
				t.Fatal(err)
			}
			if obj["policy"] != want || obj["bars_evaluated"] != float64(558) {
				t.Errorf("line %d: %v", i, obj)
			}
			for _, k := range metricKeys {
				if _, ok := obj[k].(float64); !ok {
					t.Errorf("line %d: no %s", i, k)
				}
			}
			out = append(out, obj)
		}
		return out
	}
	t.Run("column", func(t *testing.T) {
		t.Parallel()
		for i, obj := range backtest(t, "--column", "SMI") {
			if obj["column"] != "SMI" || obj["per_column"] != nil {
				t.Errorf("line %d: %v", i, obj)
			}
		}
	})
	t.Run("every column", func(t *testing.T) {
		t.Parallel()
		for i, obj := range backtest(t) {
			cols, _ := obj["columns"].([]any)
			per, _ := obj["per_column"].(map[string]any)
			// The first column, then the others as RunBacktest orders them.
			if fmt.Sprint(cols) != "[DAX CAC FTSE SMI]" || len(per) != 4 {
				t.Fatalf("line %d: columns %v, per column %v", i, obj["columns"], obj["per_column"])
			}
			// The portfolio's churn is the mean of the columns'.
			var churn float64
			for _, c := range cols {
				m := per[c.(string)].(map[string]any)
				for _, k := range metricKeys {
					if _, ok := m[k].(float64); !ok {
						t.Errorf("line %d column %s: no %s", i, c, k)
					}
				}
				churn += m["churn_rate"].(float64) / 4
			}
			if got := obj["churn_rate"].(float64); math.Abs(got-churn) > 1e-12 {
				t.Errorf("line %d: portfolio churn %v, mean of the columns' %v", i, got, churn)
			}
		}
	})
}
