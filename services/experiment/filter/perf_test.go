package filter_test

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

var (
	perfDB         = flag.String("filter.perfdb", "", "PostgreSQL database (on the test server) to load once and keep for BenchmarkSearch; empty: a fresh database, dropped after")
	perfExplain    = flag.String("filter.explain", "", "directory where BenchmarkSearch writes the SQL and EXPLAIN ANALYZE of each query")
	perfJIT        = flag.String("filter.jit", "", "with -filter.perfdb: PostgreSQL's jit setting for the benchmark's connections (on, off); empty: the server's")
	perfSQLiteFile = flag.String("filter.perfsqlite", "", "SQLite file to load once and keep for BenchmarkSearchSQLite; empty: a fresh file, removed after")
	perfRuns       = flag.Int("filter.perfruns", 100_000, "runs in the searched experiment of BenchmarkSearch")
)

// Perf data: one experiment with perfRuns runs, each with 10 params, 10
// metrics and 2 tags, plus a second experiment of 10% as many runs. About
// one run in 20 is deleted.
const (
	perfExperiment = "exp-search"
	perfOther      = "exp-other"
)

var perfMetrics = []string{"sharpe", "sortino", "max_drawdown", "val_loss", "train/loss", "accuracy", "pnl", "turnover", "hit_rate", "calmar"}

var perfParams = []struct {
	key    string
	values []string
}{
	{"lr", []string{"0.1", "0.01", "0.001", "0.0001"}},
	{"optimizer", []string{"adam", "sgd", "rmsprop"}},
	{"batch_size", []string{"32", "64", "128", "256"}},
	{"layers", []string{"2", "3", "4", "5", "6", "8"}},
	{"dropout", []string{"0", "0.1", "0.2", "0.3", "0.5"}},
	{"window", []string{"5", "10", "20", "60", "120", "250"}},
	{"universe", []string{"sp500", "nasdaq100", "russell2000", "stoxx600", "nikkei225"}},
	{"seed", nil}, // 1000 values
	{"features", nil},
	{"git_sha", nil}, // unique
}

// perfData is the benchmark's data set, deterministic.
type perfData struct {
	runs [][]any // run_id, experiment_id, run_name, status, start_time, end_time, lifecycle_stage, artifact_uri, delete_time
	// rows returns the params, metrics and tags of the runs, given their
	// run keys in order.
	rows func(keys []int64) (params, metrics, tags [][]any)
}

func newPerfData(n int) perfData {
	rng := rand.New(rand.NewPCG(42, 42))
	total := n + n/10
	statuses := []string{"FINISHED", "FINISHED", "FINISHED", "FINISHED", "FAILED", "KILLED", "RUNNING"}
	runs := make([][]any, total)
	t0 := int64(1_700_000_000_000)
	for i := range runs {
		exp := perfExperiment
		if i%11 == 10 {
			exp = perfOther
		}
		stage := "active"
		var del any
		if rng.IntN(20) == 0 {
			stage, del = "deleted", t0+int64(i)*60_000+3_600_000
		}
		st := statuses[rng.IntN(len(statuses))]
		var end any
		if st != "RUNNING" {
			end = t0 + int64(i)*60_000 + int64(rng.IntN(3_600_000))
		}
		runs[i] = []any{fmt.Sprintf("%08x-run-%d", rng.Uint32(), i), exp, fmt.Sprintf("run-%d", i), st,
			t0 + int64(i)*60_000, end, stage, "file:///artifacts/" + exp, del}
	}
	rows := func(keys []int64) (params, metrics, tags [][]any) {
		params = make([][]any, 0, len(keys)*len(perfParams))
		metrics = make([][]any, 0, len(keys)*len(perfMetrics))
		tags = make([][]any, 0, len(keys)*2)
		teams := []string{"alpha", "beta", "gamma", "delta", "epsilon"}
		for i, k := range keys {
			for j, p := range perfParams {
				var v string
				switch {
				case p.values != nil:
					v = p.values[rng.IntN(len(p.values))]
				case j == len(perfParams)-1:
					v = fmt.Sprintf("%040x", rng.Uint64())
				default:
					v = fmt.Sprint(rng.IntN(1000))
				}
				params = append(params, []any{k, p.key, v})
			}
			for j, m := range perfMetrics {
				v := rng.NormFloat64()*0.5 + 0.5
				if j == 2 { // max_drawdown in [0, 1)
					v = math.Abs(rng.NormFloat64()) * 0.15
				}
				metrics = append(metrics, []any{k, m, v, int64(1000), t0 + int64(i)*60_000})
			}
			tags = append(tags, []any{k, "team", teams[rng.IntN(len(teams))]}, []any{k, "mlflow.user", fmt.Sprintf("user%d", rng.IntN(20))})
		}
		return params, metrics, tags
	}
	return perfData{runs: runs, rows: rows}
}

var runCopyColumns = []string{"run_id", "experiment_id", "run_name", "status", "start_time", "end_time", "lifecycle_stage", "artifact_uri", "delete_time"}

// loadPerfData fills a migrated, empty database: with CopyFrom on
// PostgreSQL, in one transaction of prepared inserts on SQLite.
func loadPerfData(tb testing.TB, db *store.DB, n int) {
	tb.Helper()
	ctx := context.Background()
	start := time.Now()
	data := newPerfData(n)
	exps := `INSERT INTO experiments (experiment_id, name, lifecycle_stage, create_time, update_time) VALUES ($1, $1, 'active', 0, 0), ($2, $2, 'active', 0, 0)`
	var counts [3]int
	if db.Dialect() == store.Postgres {
		pool := db.Pool()
		if _, err := pool.Exec(ctx, exps, perfExperiment, perfOther); err != nil {
			tb.Fatal(err)
		}
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"runs"}, runCopyColumns, pgx.CopyFromRows(data.runs)); err != nil {
			tb.Fatal(err)
		}
		rows, err := pool.Query(ctx, `SELECT run_key FROM runs ORDER BY run_key`)
		if err != nil {
			tb.Fatal(err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			tb.Fatal(err)
		}
		params, metrics, tags := data.rows(keys)
		counts = [3]int{len(params), len(metrics), len(tags)}
		for _, c := range []struct {
			table string
			cols  []string
			rows  [][]any
		}{
			{"run_params", []string{"run_key", "key", "value"}, params},
			{"run_tags", []string{"run_key", "key", "value"}, tags},
			{"latest_metrics", []string{"run_key", "key", "value", "step", "ts"}, metrics},
		} {
			if _, err := pool.CopyFrom(ctx, pgx.Identifier{c.table}, c.cols, pgx.CopyFromRows(c.rows)); err != nil {
				tb.Fatalf("copy %s: %v", c.table, err)
			}
		}
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
			tb.Fatal(err)
		}
	} else {
		err := db.InTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, exps, perfExperiment, perfOther); err != nil {
				return err
			}
			keys := make([]int64, len(data.runs))
			for i := range keys {
				keys[i] = int64(i + 1)
			}
			params, metrics, tags := data.rows(keys)
			counts = [3]int{len(params), len(metrics), len(tags)}
			for _, c := range []struct {
				insert string
				rows   [][]any
			}{
				{`INSERT INTO runs (run_key, run_id, experiment_id, run_name, status, start_time, end_time, lifecycle_stage, artifact_uri, delete_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, withKeys(keys, data.runs)},
				{`INSERT INTO run_params (run_key, key, value) VALUES (?, ?, ?)`, params},
				{`INSERT INTO run_tags (run_key, key, value) VALUES (?, ?, ?)`, tags},
				{`INSERT INTO latest_metrics (run_key, key, value, step, ts) VALUES (?, ?, ?, ?, ?)`, metrics},
			} {
				stmt, err := tx.PrepareContext(ctx, c.insert)
				if err != nil {
					return err
				}
				for _, r := range c.rows {
					if _, err := stmt.ExecContext(ctx, r...); err != nil {
						return err
					}
				}
				stmt.Close()
			}
			_, err := tx.ExecContext(ctx, `ANALYZE`)
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	tb.Logf("loaded %d runs, %d params, %d metrics, %d tags in %s", len(data.runs), counts[0], counts[1], counts[2], time.Since(start).Round(time.Millisecond))
}

func withKeys(keys []int64, rows [][]any) [][]any {
	out := make([][]any, len(rows))
	for i, r := range rows {
		out[i] = append([]any{keys[i]}, r...)
	}
	return out
}

// perfSQLite returns a loaded SQLite database: the file named by
// -filter.perfsqlite (loaded when new), or a fresh one in a temporary
// directory.
func perfSQLite(tb testing.TB) *store.DB {
	tb.Helper()
	ctx := context.Background()
	if *perfSQLiteFile == "" {
		db := storetest.SQLite(tb, migrations()...)
		loadPerfData(tb, db, *perfRuns)
		return db
	}
	db, err := store.Open(ctx, store.Config{URL: *perfSQLiteFile})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, migrations()...); err != nil {
		tb.Fatal(err)
	}
	var runs int
	if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM runs`).Scan(&runs); err != nil {
		tb.Fatal(err)
	}
	if runs == 0 {
		loadPerfData(tb, db, *perfRuns)
	}
	return db
}

// perfDatabase returns a loaded PostgreSQL database: the one named by
// -filter.perfdb (created and loaded when missing), or a fresh one.
func perfDatabase(tb testing.TB) *store.DB {
	tb.Helper()
	if *perfDB == "" {
		db := storetest.Postgres(tb, migrations()...)
		loadPerfData(tb, db, *perfRuns)
		return db
	}
	ctx := context.Background()
	admin := storetest.PostgresURL(tb)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Fatal(err)
	}
	var exists bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, *perfDB).Scan(&exists)
	if err == nil && !exists {
		_, err = conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{*perfDB}.Sanitize())
	}
	conn.Close(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	u, err := url.Parse(admin)
	if err != nil {
		tb.Fatal(err)
	}
	u.Path = "/" + *perfDB
	if *perfJIT != "" {
		v := u.Query()
		v.Set("jit", *perfJIT) // pgx sends unknown parameters as settings
		u.RawQuery = v.Encode()
	}
	db, err := store.Open(ctx, store.Config{URL: u.String(), MaxConns: 4, Timescale: store.TimescaleOff})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, migrations()...); err != nil {
		tb.Fatal(err)
	}
	var runs int
	if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM runs`).Scan(&runs); err != nil {
		tb.Fatal(err)
	}
	if runs == 0 {
		loadPerfData(tb, db, *perfRuns)
	}
	return db
}

// perfQueries are the searches BenchmarkSearch times: three-clause
// filters of different selectivity, ordered by a metric.
var perfQueries = []struct {
	name   string
	filter string
	order  []string
}{
	{"typical", "metrics.sharpe > 0.5 AND params.optimizer = 'adam' AND tags.team = 'alpha'", []string{"metrics.sharpe DESC"}},
	{"selective", "metrics.sharpe > 1 AND params.optimizer = 'adam' AND params.lr = '0.01'", []string{"metrics.val_loss ASC"}},
	{"broad", "metrics.sharpe > 0 AND status = 'FINISHED' AND params.batch_size IN ('64', '128')", []string{"metrics.sharpe DESC"}},
	{"narrow", "metrics.sharpe > 2 AND metrics.max_drawdown < 0.05 AND tags.team = 'alpha'", []string{"metrics.pnl DESC"}},
	{"or-like", "(params.optimizer = 'adam' OR params.optimizer = 'sgd') AND metrics.accuracy > 0.9 AND run_name LIKE 'run-1%'", []string{"metrics.accuracy DESC"}},
	{"none", "metrics.sharpe > 100 AND params.optimizer = 'adam' AND tags.team = 'alpha'", []string{"metrics.sharpe DESC"}},
	{"by-param", "metrics.sharpe > 0.5 AND params.optimizer = 'adam' AND tags.team = 'alpha'", []string{"params.window DESC", "metrics.sharpe DESC"}},
	{"newest", "metrics.sharpe > 0.5 AND params.optimizer = 'adam' AND tags.team = 'alpha'", nil},
}

// BenchmarkSearch times Build's queries on PostgreSQL with the issue's
// tracking-search data: 100,000 runs with 10 params and 10 metrics each,
// pages of 100. For each filter it times the first page and the page after
// page 10 (a cursor), reporting p50 and p95 in milliseconds, with Build's
// arguments (exec: planned for the values on every execution) and without
// its exec mode option (cache: pgx's prepared statement cache, where
// PostgreSQL uses a generic plan after five executions). Run it with
//
//	QUANTMESH_TEST_DATABASE_URL=... go test ./services/experiment/filter/ -run XXX -bench 'Search$' -benchtime 100x \
//		-args -filter.perfdb=filter_perf -filter.jit=off
func BenchmarkSearch(b *testing.B) {
	benchSearch(b, perfDatabase(b), []string{"exec", "cache"})
}

// BenchmarkSearchSQLite is BenchmarkSearch on SQLite.
//
//	go test ./services/experiment/filter/ -run XXX -bench SearchSQLite -benchtime 20x -args -filter.perfsqlite=/tmp/filter_perf.db
func BenchmarkSearchSQLite(b *testing.B) {
	benchSearch(b, perfSQLite(b), []string{"sqlite"})
}

func benchSearch(b *testing.B, db *store.DB, modes []string) {
	ctx := context.Background()
	for _, pq := range perfQueries {
		e, err := filter.Parse(pq.filter)
		if err != nil {
			b.Fatal(err)
		}
		order, err := filter.ParseOrderBy(pq.order)
		if err != nil {
			b.Fatal(err)
		}
		q := filter.Query{ExperimentIDs: []string{perfExperiment}, Stages: []string{"active"}, Filter: e, Order: order, Limit: 101}
		// The cursor after ten pages of 100.
		all := search(b, db, q, 1000)
		var after *filter.Cursor
		if len(all) >= 1000 {
			last := all[999]
			after = &filter.Cursor{Values: last.Values, RunID: last.ID}
		}
		for _, page := range []struct {
			name  string
			after *filter.Cursor
		}{{"first", nil}, {"page11", after}} {
			if page.name != "first" && page.after == nil {
				continue
			}
			for _, mode := range modes {
				b.Run(pq.name+"/"+page.name+"/"+mode, func(b *testing.B) {
					q := q
					q.After = page.after
					query, args, err := filter.Build(q, db.Dialect())
					if err != nil {
						b.Fatal(err)
					}
					if mode == "cache" {
						args = args[1:] // without pgx.QueryExecModeExec
					}
					if *perfExplain != "" && db.Dialect() == store.Postgres {
						explain(b, db, filepath.Join(*perfExplain, strings.ReplaceAll(b.Name(), "/", "_")+".txt"), query, args)
					}
					var lat []time.Duration
					n := 0
					for b.Loop() {
						t := time.Now()
						rows, err := db.Reader().QueryContext(ctx, query, args...)
						if err != nil {
							b.Fatal(err)
						}
						n = 0
						for rows.Next() {
							n++
						}
						if err := rows.Err(); err != nil {
							b.Fatal(err)
						}
						rows.Close()
						lat = append(lat, time.Since(t))
					}
					slices.Sort(lat)
					ms := func(p float64) float64 {
						return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
					}
					b.ReportMetric(ms(0.5), "p50-ms")
					b.ReportMetric(ms(0.95), "p95-ms")
					b.ReportMetric(float64(n), "rows")
					b.ReportMetric(float64(len(all)), "matches")
				})
			}
		}
	}
}

// explain writes a query, its arguments and its EXPLAIN ANALYZE to file.
func explain(tb testing.TB, db *store.DB, file, query string, args []any) {
	tb.Helper()
	rows, err := db.Reader().QueryContext(context.Background(), "EXPLAIN (ANALYZE, BUFFERS) "+query, args...)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out strings.Builder
	fmt.Fprintf(&out, "%s\n\nargs %v\n\n", query, args)
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			tb.Fatal(err)
		}
		out.WriteString(line + "\n")
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(out.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
}
