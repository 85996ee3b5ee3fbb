package experiment_test

import (
	"context"
	"fmt"
	"io/fs"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/services/experiment"
)

// rollupColumns are the columns of ab_rollups and of the continuous
// aggregate ab_rollups_cagg, in one order.
const rollupColumns = `ab_test_id, minute, arm, requests, buy, hold, sell, confidence_sum, latency_sum_ms, paired, agreements,
	shadow_buy, shadow_hold, shadow_sell, shadow_confidence_sum, shadow_latency_sum_ms, paired_confidence_sum`

// caggQuery returns the defining query of the TimescaleDB continuous
// aggregate (migration 0010) with time_bucket written as the integer
// arithmetic it stands for, so that plain PostgreSQL and SQLite run it.
func caggQuery(t *testing.T) string {
	t.Helper()
	b, err := fs.ReadFile(experiment.Migrations().FS, "postgres/0010_ab_rollups_cagg.timescale.sql")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "SELECT ")
	end := strings.Index(text, "WITH NO DATA")
	if start < 0 || end < start {
		t.Fatalf("0010 has no SELECT ... WITH NO DATA:\n%s", text)
	}
	q := strings.ReplaceAll(text[start:end], "time_bucket(60000::BIGINT, observe_time)", "(observe_time - observe_time % 60000)")
	if strings.Contains(q, "time_bucket") {
		t.Fatalf("0010 buckets time in a way this test does not rewrite:\n%s", q)
	}
	return q
}

type rollupRow struct {
	test                                                  string
	minute                                                int64
	arm                                                   int64
	requests, buy, hold, sell                             int64
	confidence, latency                                   float64
	paired, agreements, shadowBuy, shadowHold, shadowSell int64
	shadowConfidence, shadowLatency, pairedConfidence     float64
}

func scanRollups(t *testing.T, db *store.DB, query string) []rollupRow {
	t.Helper()
	rows, err := db.Reader().QueryContext(context.Background(), `SELECT `+rollupColumns+` FROM (`+query+`) r ORDER BY ab_test_id, minute, arm`)
	if err != nil {
		t.Fatalf("%v\nquery: %s", err, query)
	}
	defer rows.Close()
	var out []rollupRow
	for rows.Next() {
		var r rollupRow
		// Sums come back as NUMERIC on PostgreSQL: scan through float64.
		var requests, buy, hold, sell, paired, agreements, sb, sh, ss float64
		if err := rows.Scan(&r.test, &r.minute, &r.arm, &requests, &buy, &hold, &sell, &r.confidence, &r.latency, &paired,
			&agreements, &sb, &sh, &ss, &r.shadowConfidence, &r.shadowLatency, &r.pairedConfidence); err != nil {
			t.Fatal(err)
		}
		r.requests, r.buy, r.hold, r.sell = int64(requests), int64(buy), int64(hold), int64(sell)
		r.paired, r.agreements, r.shadowBuy, r.shadowHold, r.shadowSell = int64(paired), int64(agreements), int64(sb), int64(sh), int64(ss)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The continuous aggregate TimescaleDB maintains must count what the
// service's own rollups count: run its defining query on the observations
// and compare it with ab_rollups, row by row.
func TestABRollupsCaggQueryMatchesMaintained(t *testing.T) {
	runRegistry(t, func(t *testing.T, db *store.DB) {
		if db.Timescale() {
			t.Fatal("this test compares the maintained rollups, which TimescaleDB replaces")
		}
		h := serveRegistry(t, db, "127.0.0.1:0")
		c, ctx := h.client, context.Background()
		abModel(t, c, "policy")
		test := createAB(t, c, "policy", experimentv1.ABTestMode_AB_TEST_MODE_SHADOW, 3000)
		base := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
		actions := []experimentv1.TradeAction{
			experimentv1.TradeAction_TRADE_ACTION_BUY, experimentv1.TradeAction_TRADE_ACTION_HOLD, experimentv1.TradeAction_TRADE_ACTION_SELL,
		}
		var batch []*experimentv1.ABObservation
		for i := range 600 {
			arm := experimentv1.ABArm_AB_ARM_CONTROL
			if i%3 == 0 {
				arm = experimentv1.ABArm_AB_ARM_TREATMENT
			}
			o := obs(test.GetAbTestId(), fmt.Sprintf("o%d", i), fmt.Sprintf("u%d", i%37), arm, actions[i%3], 0.3+float64(i%7)/10, float64(i%11)+0.5)
			o.ObserveTime = timestamppb.New(base.Add(time.Duration(i) * 700 * time.Millisecond)) // 7 minutes
			if i%2 == 0 {
				o.Paired = true
				o.ShadowAction = actions[(i/2)%3]
				o.ShadowConfidence = 0.25 + float64(i%5)/10
				o.ShadowLatencyMs = float64(i%13) + 0.25
			}
			batch = append(batch, o)
		}
		for lo := 0; lo < len(batch); lo += 150 {
			if _, err := c.RecordObservations(ctx, &experimentv1.RecordObservationsRequest{Observations: batch[lo : lo+150]}); err != nil {
				t.Fatal(err)
			}
		}

		maintained := scanRollups(t, db, `SELECT `+rollupColumns+` FROM ab_rollups`)
		derived := scanRollups(t, db, caggQuery(t))
		if len(maintained) < 7*2 {
			t.Fatalf("maintained rollups: %d rows, want at least 14 (7 minutes, 2 arms)", len(maintained))
		}
		if len(derived) != len(maintained) {
			t.Fatalf("continuous aggregate query: %d rows, maintained rollups %d", len(derived), len(maintained))
		}
		var total int64
		for i, m := range maintained {
			d := derived[i]
			total += m.requests
			floats := [][2]float64{{m.confidence, d.confidence}, {m.latency, d.latency}, {m.shadowConfidence, d.shadowConfidence},
				{m.shadowLatency, d.shadowLatency}, {m.pairedConfidence, d.pairedConfidence}}
			for _, f := range floats {
				if math.Abs(f[0]-f[1]) > 1e-9 {
					t.Errorf("row %d: sums differ: maintained %+v, aggregate %+v", i, m, d)
				}
			}
			m.confidence, m.latency, m.shadowConfidence, m.shadowLatency, m.pairedConfidence = 0, 0, 0, 0, 0
			d.confidence, d.latency, d.shadowConfidence, d.shadowLatency, d.pairedConfidence = 0, 0, 0, 0, 0
			if m != d {
				t.Errorf("row %d: maintained %+v, aggregate %+v", i, m, d)
			}
		}
		if total != int64(len(batch)) {
			t.Errorf("rollups count %d requests, recorded %d", total, len(batch))
		}
	})
}

// With TimescaleDB the rollups come from a continuous aggregate, which
// PostgreSQL cannot create inside a transaction block: its migration must
// run outside a transaction and hold that one statement. Without
// TimescaleDB none of it applies.
func TestABRollupsCaggMigrations(t *testing.T) {
	names := func(timescale bool) map[string]store.Migration {
		ms, err := experiment.Migrations().Resolve(store.Postgres, timescale)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]store.Migration{}
		for _, m := range ms {
			out[m.Name] = m
		}
		return out
	}
	ts, plain := names(true), names(false)
	for _, name := range []string{"0009_ab_observations_hypertable.timescale.sql", "0010_ab_rollups_cagg.timescale.sql", "0011_ab_rollups_cagg_policy.timescale.sql"} {
		if _, ok := ts[name]; !ok {
			t.Errorf("%s: not applied with TimescaleDB", name)
		}
		if _, ok := plain[name]; ok {
			t.Errorf("%s: applied without TimescaleDB", name)
		}
	}
	cagg := ts["0010_ab_rollups_cagg.timescale.sql"]
	if !cagg.NoTx {
		t.Error("0010 runs inside a transaction; a continuous aggregate cannot be created there")
	}
	var body []string
	for line := range strings.Lines(cagg.SQL) {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			body = append(body, line)
		}
	}
	if n := strings.Count(strings.TrimSpace(strings.Join(body, "")), ";"); n != 0 {
		t.Errorf("0010 holds %d statement separators; a multi-statement string runs as one implicit transaction block", n)
	}
}
