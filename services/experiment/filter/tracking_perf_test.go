package filter_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

var trackingDB = flag.String("filter.trackingdb", "", "PostgreSQL URL of a database loaded by `quantmesh bench tracking-search` for BenchmarkSearchTracking")

// BenchmarkSearchTracking runs the searches of `quantmesh bench
// tracking-search` (metrics.mA > x AND params.pB = 'vC' AND tags.team !=
// 'T' ordered by metrics.mD DESC, 100 per page, and the page after) on the
// database that bench loaded, without gRPC and one at a time: p50 and p95
// of the query in milliseconds, and the mean of the shared buffers each
// statement touched (EXPLAIN (ANALYZE, BUFFERS), one run per query), which
// unlike the time does not depend on what else the machine runs. Every
// iteration is a new random search, the same sequence on every run.
//
//	go test ./services/experiment/filter/ -run XXX -bench SearchTracking -benchtime 200x \
//		-args -filter.trackingdb='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
func BenchmarkSearchTracking(b *testing.B) {
	if *trackingDB == "" {
		b.Skip("needs -filter.trackingdb")
	}
	ctx := context.Background()
	db, err := store.Open(ctx, store.Config{URL: *trackingDB, MaxConns: 2, Timescale: store.TimescaleOff})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var exp string
	if err := db.Reader().QueryRowContext(ctx, `SELECT experiment_id FROM runs GROUP BY experiment_id ORDER BY count(*) DESC LIMIT 1`).Scan(&exp); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(0, 42))
	var (
		lat  []time.Duration
		bufs []float64
	)
	run := func(q filter.Query) (*filter.Cursor, int) {
		text, args, err := filter.Build(q, db.Dialect())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		last, n := scanPage(b, db, q, text, args)
		lat = append(lat, time.Since(start))
		b.StopTimer()
		bufs = append(bufs, sharedBuffers(b, db, text, args))
		b.StartTimer()
		return last, n
	}
	for b.Loop() {
		f := fmt.Sprintf("metrics.m%d > %.3f AND params.p%d = 'v%d' AND tags.team != 'team-%d'",
			rng.IntN(10), rng.Float64(), rng.IntN(10), rng.IntN(10), rng.IntN(4))
		e, err := filter.Parse(f)
		if err != nil {
			b.Fatal(err)
		}
		order, err := filter.ParseOrderBy([]string{"metrics.m" + strconv.Itoa(rng.IntN(10)) + " DESC"})
		if err != nil {
			b.Fatal(err)
		}
		q := filter.Query{ExperimentIDs: []string{exp}, Stages: []string{"active"}, Filter: e, Order: order, Limit: 101}
		if last, n := run(q); n == 101 {
			q.After = last
			run(q)
		}
	}
	slices.Sort(lat)
	ms := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	var sum float64
	for _, v := range bufs {
		sum += v
	}
	b.ReportMetric(ms(0.5), "p50-ms")
	b.ReportMetric(ms(0.95), "p95-ms")
	b.ReportMetric(sum/float64(len(bufs)), "buffers/query")
}

// scanPage runs one page and returns the cursor of its 100th row (the
// next page's) and the number of rows.
func scanPage(tb testing.TB, db *store.DB, q filter.Query, text string, args []any) (*filter.Cursor, int) {
	tb.Helper()
	rows, err := db.Reader().QueryContext(context.Background(), text, args...)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var (
		after *filter.Cursor
		n     int
	)
	for rows.Next() {
		var (
			key                    int64
			id, exp, name, st, stg string
			art                    string
			start                  int64
			end, deleted           sql.NullInt64
			v                      any
		)
		if err := rows.Scan(&key, &id, &exp, &name, &st, &start, &end, &stg, &art, &deleted, &v); err != nil {
			tb.Fatal(err)
		}
		n++
		if n == 100 {
			if after, err = filter.CursorFrom(q.Order, []any{v}, id); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return after, n
}

// sharedBuffers returns the shared buffers (hit and read) one execution of
// the statement touched.
func sharedBuffers(tb testing.TB, db *store.DB, text string, args []any) float64 {
	tb.Helper()
	var js string
	if err := db.Reader().QueryRowContext(context.Background(), "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) "+text, args...).Scan(&js); err != nil {
		tb.Fatal(err)
	}
	var out []struct {
		Plan struct {
			Hit  float64 `json:"Shared Hit Blocks"`
			Read float64 `json:"Shared Read Blocks"`
		}
	}
	if err := json.Unmarshal([]byte(js), &out); err != nil || len(out) == 0 {
		tb.Fatalf("EXPLAIN: %v", err)
	}
	return out[0].Plan.Hit + out[0].Plan.Read
}
