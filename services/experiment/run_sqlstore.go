package experiment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/services/experiment/filter"
)

const runColumns = `run_key, run_id, experiment_id, run_name, status, start_time, end_time, lifecycle_stage, artifact_uri, delete_time`

// CreateRun implements RunStore.
func (s *SQLStore) CreateRun(ctx context.Context, r *Run) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		var stage string
		err := tx.QueryRowContext(ctx, `SELECT lifecycle_stage FROM experiments WHERE experiment_id = $1`+s.lockRow(), r.ExperimentID).Scan(&stage)
		if errors.Is(err, sql.ErrNoRows) {
			return apierr.NotFound("experiment", r.ExperimentID)
		}
		if err != nil {
			return err
		}
		if Stage(stage) != StageActive {
			return apierr.FailedPrecondition("EXPERIMENT_DELETED", "experiment %s is deleted; restore it before creating runs in it", r.ExperimentID)
		}
		err = tx.QueryRowContext(ctx, `INSERT INTO runs (run_id, experiment_id, run_name, status, start_time, end_time, lifecycle_stage, artifact_uri, delete_time)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING run_key`,
			r.ID, r.ExperimentID, r.Name, string(r.Status), millis(r.StartTime), nullMillis(r.EndTime),
			string(r.Stage), r.ArtifactURI, nullMillis(r.DeleteTime)).Scan(&r.Key)
		if err != nil {
			return err
		}
		tags := make([]KV, 0, len(r.Tags))
		for k, v := range r.Tags {
			tags = append(tags, KV{k, v})
		}
		return s.upsertTags(ctx, tx, r.Key, tags)
	})
	return s.err("create run", err)
}

// lockRow is the clause that locks a row read in a write transaction on
// PostgreSQL (SQLite write transactions are exclusive already). NO KEY
// UPDATE does not block the foreign-key checks of rows that reference it.
func (s *SQLStore) lockRow() string {
	if s.db.Dialect() == store.Postgres {
		return ` FOR NO KEY UPDATE`
	}
	return ``
}

// GetRun implements RunStore.
func (s *SQLStore) GetRun(ctx context.Context, id string) (*Run, error) {
	r, err := scanRun(s.db.Reader().QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.NotFound("run", id)
	}
	if err != nil {
		return nil, s.err("get run", err)
	}
	if err := s.loadRunData(ctx, []*Run{r}); err != nil {
		return nil, s.err("get run", err)
	}
	return r, nil
}

// loadRunData fills the params, tags and latest metrics of runs, in one
// statement (one round trip; SearchRuns calls it for every page).
func (s *SQLStore) loadRunData(ctx context.Context, runs []*Run) error {
	if len(runs) == 0 {
		return nil
	}
	byKey := make(map[int64]*Run, len(runs))
	in := make([]string, len(runs))
	args := make([]any, len(runs))
	for i, r := range runs {
		byKey[r.Key] = r
		r.Params, r.Tags, r.Latest = map[string]string{}, map[string]string{}, nil
		in[i] = fmt.Sprintf("$%d", i+1)
		args[i] = r.Key
	}
	set := strings.Join(in, ", ")
	// kind: 0 a param, 1 a tag, 2 a latest metric. Metrics come by run and
	// key, as GetRun lists them.
	rows, err := s.db.Reader().QueryContext(ctx,
		`SELECT 0, run_key, key, value, 0, 0, 0 FROM run_params WHERE run_key IN (`+set+`)`+
			` UNION ALL SELECT 1, run_key, key, value, 0, 0, 0 FROM run_tags WHERE run_key IN (`+set+`)`+
			` UNION ALL SELECT 2, run_key, key, '', value, step, ts FROM latest_metrics WHERE run_key IN (`+set+`)`+
			` ORDER BY 1, 2, 3`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			kind, k int64
			key, v  string
			p       Point
		)
		if err := rows.Scan(&kind, &k, &key, &v, &p.Value, &p.Step, &p.Time); err != nil {
			return err
		}
		switch kind {
		case 0:
			byKey[k].Params[key] = v
		case 1:
			byKey[k].Tags[key] = v
		default:
			p.Key = key
			byKey[k].Latest = append(byKey[k].Latest, p)
		}
	}
	return rows.Err()
}

// UpdateRun implements RunStore.
func (s *SQLStore) UpdateRun(ctx context.Context, id string, mutate func(*Run) error) (*Run, error) {
	var out *Run
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		r, err := scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = $1`+s.lockRow(), id))
		if errors.Is(err, sql.ErrNoRows) {
			return apierr.NotFound("run", id)
		}
		if err != nil {
			return err
		}
		if err := mutate(r); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE runs SET run_name = $2, status = $3, start_time = $4, end_time = $5,
			lifecycle_stage = $6, delete_time = $7 WHERE run_key = $1`,
			r.Key, r.Name, string(r.Status), millis(r.StartTime), nullMillis(r.EndTime), string(r.Stage), nullMillis(r.DeleteTime))
		if err != nil {
			return err
		}
		out = r
		return nil
	})
	if err != nil {
		return nil, s.err("update run", err)
	}
	if err := s.loadRunData(ctx, []*Run{out}); err != nil {
		return nil, s.err("update run", err)
	}
	return out, nil
}

// activeRunTx locks an active run's row in tx and returns its key.
func (s *SQLStore) activeRunTx(ctx context.Context, tx *sql.Tx, id string) (int64, error) {
	var (
		key   int64
		stage string
	)
	err := tx.QueryRowContext(ctx, `SELECT run_key, lifecycle_stage FROM runs WHERE run_id = $1`+s.lockRow(), id).Scan(&key, &stage)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, apierr.NotFound("run", id)
	}
	if err != nil {
		return 0, err
	}
	if Stage(stage) != StageActive {
		return 0, errRunDeleted(id)
	}
	return key, nil
}

func errRunDeleted(id string) error {
	return apierr.FailedPrecondition("RUN_DELETED", "run %s is deleted; restore it before writing to it", id)
}

// SetRunTag implements RunStore.
func (s *SQLStore) SetRunTag(ctx context.Context, runID string, tag KV) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		key, err := s.activeRunTx(ctx, tx, runID)
		if err != nil {
			return err
		}
		return s.upsertTags(ctx, tx, key, []KV{tag})
	})
	return s.err("set run tag", err)
}

// DeleteRunTag implements RunStore.
func (s *SQLStore) DeleteRunTag(ctx context.Context, runID, tagKey string) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		key, err := s.activeRunTx(ctx, tx, runID)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM run_tags WHERE run_key = $1 AND key = $2`, key, tagKey)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return apierr.NotFound("tag", tagKey)
		}
		return nil
	})
	return s.err("delete run tag", err)
}

func (s *SQLStore) upsertTags(ctx context.Context, tx *sql.Tx, runKey int64, tags []KV) error {
	for _, t := range tags {
		if _, err := tx.ExecContext(ctx, `INSERT INTO run_tags (run_key, key, value) VALUES ($1, $2, $3)
			ON CONFLICT (run_key, key) DO UPDATE SET value = excluded.value`, runKey, t.Key, t.Value); err != nil {
			return err
		}
	}
	return nil
}

// ActiveRunKey implements RunStore.
func (s *SQLStore) ActiveRunKey(ctx context.Context, runID string) (int64, error) {
	key, stage, err := s.runKey(ctx, runID)
	if err != nil {
		return 0, err
	}
	if stage != StageActive {
		return 0, errRunDeleted(runID)
	}
	return key, nil
}

// RunKey implements RunStore.
func (s *SQLStore) RunKey(ctx context.Context, runID string) (int64, error) {
	key, _, err := s.runKey(ctx, runID)
	return key, err
}

func (s *SQLStore) runKey(ctx context.Context, runID string) (int64, Stage, error) {
	var (
		key   int64
		stage string
	)
	err := s.db.Reader().QueryRowContext(ctx, `SELECT run_key, lifecycle_stage FROM runs WHERE run_id = $1`, runID).Scan(&key, &stage)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", apierr.NotFound("run", runID)
	}
	if err != nil {
		return 0, "", s.err("read run", err)
	}
	return key, Stage(stage), nil
}

// LogBatch implements RunStore.
func (s *SQLStore) LogBatch(ctx context.Context, runID string, b Batch) (replayed bool, err error) {
	start := time.Now()
	ctx, end := s.db.StartBatch(ctx, "logbatch", len(b.Metrics)+len(b.Params)+len(b.Tags))
	defer func() { end(err) }()
	if err := s.preparePoints(ctx); err != nil {
		return false, s.err("log batch", err)
	}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		replayed = false
		key, err := s.activeRunTx(ctx, tx, runID)
		if err != nil {
			return err
		}
		if b.IdempotencyKey != "" {
			res, err := tx.ExecContext(ctx, `INSERT INTO logbatch_keys (run_key, idempotency_key, create_time) VALUES ($1, $2, $3)
				ON CONFLICT (run_key, idempotency_key) DO NOTHING`, key, b.IdempotencyKey, millis(b.Now))
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				replayed = true
				return nil
			}
		}
		if err := s.insertParams(ctx, tx, runID, key, b.Params); err != nil {
			return err
		}
		if err := s.upsertTags(ctx, tx, key, b.Tags); err != nil {
			return err
		}
		if len(b.Metrics) == 0 {
			return nil
		}
		rows := make([]pointRow, len(b.Metrics))
		for i, p := range b.Metrics {
			rows[i] = pointRow{runKey: key, Point: p}
		}
		return s.writePoints(ctx, tx, rows)
	})
	if err == nil && !replayed && len(b.Metrics) > 0 {
		s.ins.written(ctx, "batch", len(b.Metrics), time.Since(start))
	}
	return replayed, s.err("log batch", err)
}

// insertParams stores params that are new and checks that the others keep
// their value.
func (s *SQLStore) insertParams(ctx context.Context, tx *sql.Tx, runID string, runKey int64, params []KV) error {
	if len(params) == 0 {
		return nil
	}
	for _, p := range params {
		if _, err := tx.ExecContext(ctx, `INSERT INTO run_params (run_key, key, value) VALUES ($1, $2, $3)
			ON CONFLICT (run_key, key) DO NOTHING`, runKey, p.Key, p.Value); err != nil {
			return err
		}
	}
	in := make([]string, len(params))
	args := []any{runKey}
	for i, p := range params {
		args = append(args, p.Key)
		in[i] = fmt.Sprintf("$%d", i+2)
	}
	rows, err := tx.QueryContext(ctx, `SELECT key, value FROM run_params WHERE run_key = $1 AND key IN (`+strings.Join(in, ", ")+`)`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	stored := make(map[string]string, len(params))
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		stored[k] = v
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, p := range params {
		if v := stored[p.Key]; v != p.Value {
			return &apierr.Error{
				Kind:     apierr.ErrFailedPrecondition,
				Reason:   "PARAM_IMMUTABLE",
				Message:  fmt.Sprintf("param %q of run %s is already %q; params cannot change (got %q)", p.Key, runID, naming.Truncate(v), naming.Truncate(p.Value)),
				Metadata: map[string]string{"param": p.Key, "run_id": runID},
			}
		}
	}
	return nil
}

// pointRow is a point of a run.
type pointRow struct {
	runKey int64
	Point
}

// latestOf returns the latest point of each (run, key) among rows, sorted
// by run and key so that concurrent writers lock rows in one order.
func latestOf(rows []pointRow) []pointRow {
	type rk struct {
		run int64
		key string
	}
	best := make(map[rk]int, 64)
	var out []pointRow
	for _, r := range rows {
		k := rk{r.runKey, r.Key}
		if i, ok := best[k]; ok {
			if r.after(out[i].Point) {
				out[i] = r
			}
			continue
		}
		best[k] = len(out)
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].runKey != out[j].runKey {
			return out[i].runKey < out[j].runKey
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// sqliteRowsPerInsert is how many rows one multi-row INSERT carries on
// SQLite (5 parameters each, far below SQLite's limit of 32766).
const sqliteRowsPerInsert = 200

// writePoints inserts rows and advances the latest value of each metric,
// inside tx.
func (s *SQLStore) writePoints(ctx context.Context, tx *sql.Tx, rows []pointRow) error {
	if s.db.Dialect() == store.Postgres {
		runs, keys, steps, times, values := pointColumns(rows)
		if _, err := tx.ExecContext(ctx, `INSERT INTO metrics (run_key, key, step, ts, value)
			SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::float8[])`,
			runs, keys, steps, times, values); err != nil {
			return err
		}
		runs, keys, steps, times, values = pointColumns(latestOf(rows))
		_, err := tx.ExecContext(ctx, upsertLatestPG, runs, keys, steps, times, values)
		return err
	}
	return s.writePointsSQLite(ctx, tx, rows, latestOf(rows))
}

// writePointsSQLite inserts rows and upserts latest in tx, many rows per
// statement. Statements of a full chunk are prepared once on the writer
// connection; placeholders are anonymous (?), since SQLite looks numbered
// names up linearly, which is quadratic in the statement's parameters.
func (s *SQLStore) writePointsSQLite(ctx context.Context, tx *sql.Tx, rows, latest []pointRow) error {
	for _, part := range []struct {
		rows   []pointRow
		upsert bool
	}{{rows, false}, {latest, true}} {
		for start := 0; start < len(part.rows); start += sqliteRowsPerInsert {
			chunk := part.rows[start:min(start+sqliteRowsPerInsert, len(part.rows))]
			args := make([]any, 0, len(chunk)*5)
			for _, r := range chunk {
				args = append(args, r.runKey, r.Key, r.Step, r.Time, r.Value)
			}
			var err error
			if stmt := s.fullChunkStmt(part.upsert); stmt != nil && len(chunk) == sqliteRowsPerInsert {
				_, err = tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
			} else {
				_, err = tx.ExecContext(ctx, sqlitePointInsert(len(chunk), part.upsert), args...)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// fullChunkStmt returns the prepared INSERT of sqliteRowsPerInsert points
// (into latest_metrics with upsert, else into metrics). preparePoints must
// have prepared it.
func (s *SQLStore) fullChunkStmt(upsert bool) *sql.Stmt {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if upsert {
		return s.chunkStmts[1]
	}
	return s.chunkStmts[0]
}

// preparePoints prepares the full-chunk statements on SQLite. Call it
// before a write transaction: the writer has one connection, which the
// transaction holds.
func (s *SQLStore) preparePoints(ctx context.Context) error {
	if s.db.Dialect() != store.SQLite {
		return nil
	}
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	for i, upsert := range []bool{false, true} {
		if s.chunkStmts[i] != nil {
			continue
		}
		stmt, err := s.db.PrepareWrite(ctx, sqlitePointInsert(sqliteRowsPerInsert, upsert))
		if err != nil {
			return err
		}
		s.chunkStmts[i] = stmt
	}
	return nil
}

// latestConflict keeps the later of the stored and the new latest point.
const latestConflict = ` ON CONFLICT (run_key, key) DO UPDATE SET value = excluded.value, step = excluded.step, ts = excluded.ts
	WHERE (excluded.step, excluded.ts, excluded.value) > (latest_metrics.step, latest_metrics.ts, latest_metrics.value)`

// sqlitePointInsert is a multi-row INSERT of n points into metrics, or
// with upsert into latest_metrics keeping the later point.
func sqlitePointInsert(n int, upsert bool) string {
	var b strings.Builder
	table := "metrics"
	if upsert {
		table = "latest_metrics"
	}
	b.WriteString(`INSERT INTO ` + table + ` (run_key, key, step, ts, value) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?)")
	}
	if upsert {
		b.WriteString(latestConflict)
	}
	return b.String()
}

func pointColumns(rows []pointRow) (runs []int64, keys []string, steps, times []int64, values []float64) {
	runs = make([]int64, len(rows))
	keys = make([]string, len(rows))
	steps = make([]int64, len(rows))
	times = make([]int64, len(rows))
	values = make([]float64, len(rows))
	for i, r := range rows {
		runs[i], keys[i], steps[i], times[i], values[i] = r.runKey, r.Key, r.Step, r.Time, r.Value
	}
	return
}

const upsertLatestPG = `INSERT INTO latest_metrics (run_key, key, step, ts, value)
	SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::float8[])` + latestConflict

// MetricHistory implements RunStore.
func (s *SQLStore) MetricHistory(ctx context.Context, q HistoryQuery) ([]Point, error) {
	query := `SELECT step, ts, value FROM metrics WHERE run_key = $1 AND key = $2`
	args := []any{q.RunKey, q.Key}
	if q.After != nil {
		query += ` AND (step, ts, value) >= ($3, $4, $5)`
		args = append(args, q.After.Step, q.After.Time, q.After.Value)
	}
	query += ` ORDER BY step, ts, value`
	if q.Limit > 0 {
		args = append(args, q.Limit+q.Skip)
		query += fmt.Sprintf(` LIMIT $%d`, len(args))
	}
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.err("metric history", err)
	}
	defer rows.Close()
	var out []Point
	skip := q.Skip
	for rows.Next() {
		p := Point{Key: q.Key}
		if err := rows.Scan(&p.Step, &p.Time, &p.Value); err != nil {
			return nil, s.err("metric history", err)
		}
		if q.After != nil && p == *q.After {
			if skip > 0 {
				skip--
				continue
			}
		} else if q.After != nil {
			skip = 0
		}
		out = append(out, p)
	}
	return out, s.err("metric history", rows.Err())
}

// CountMetric implements RunStore.
func (s *SQLStore) CountMetric(ctx context.Context, runKey int64, key string) (int64, error) {
	var n int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM metrics WHERE run_key = $1 AND key = $2`, runKey, key).Scan(&n)
	return n, s.err("count metric", err)
}

// SearchRuns implements RunStore.
func (s *SQLStore) SearchRuns(ctx context.Context, q filter.Query) ([]*Run, []*filter.Cursor, error) {
	text, args, err := filter.Build(q, s.db.Dialect())
	switch {
	case errors.Is(err, filter.ErrCursor):
		return nil, nil, apierr.Invalid("page_token", "the page token does not fit the query's order_by")
	case err != nil:
		return nil, nil, apierr.Invalid("filter", "%v", err)
	}
	rows, err := s.db.Reader().QueryContext(ctx, text, args...)
	if err != nil {
		return nil, nil, s.err("search runs", err)
	}
	defer rows.Close()
	order := filter.EffectiveOrder(q.Order)
	var (
		runs    []*Run
		cursors []*filter.Cursor
	)
	for rows.Next() {
		vals := make([]any, len(order))
		extra := make([]any, len(order))
		for i := range vals {
			extra[i] = &vals[i]
		}
		r, err := scanRun(rows, extra...)
		if err != nil {
			return nil, nil, s.err("search runs", err)
		}
		c, err := filter.CursorFrom(q.Order, vals, r.ID)
		if err != nil {
			return nil, nil, s.err("search runs", err)
		}
		runs, cursors = append(runs, r), append(cursors, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, s.err("search runs", err)
	}
	if err := s.loadRunData(ctx, runs); err != nil {
		return nil, nil, s.err("search runs", err)
	}
	return runs, cursors, nil
}

func scanRun(r scanner, extra ...any) (*Run, error) {
	var (
		run                Run
		status, stage      string
		start              int64
		end, deleted       sql.NullInt64
		artifact, name, id string
	)
	if err := r.Scan(append([]any{&run.Key, &id, &run.ExperimentID, &name, &status, &start, &end, &stage, &artifact, &deleted}, extra...)...); err != nil {
		return nil, err
	}
	run.ID, run.Name, run.ArtifactURI = id, name, artifact
	run.Status, run.Stage = RunStatus(status), Stage(stage)
	run.StartTime = time.UnixMilli(start).UTC()
	if end.Valid {
		run.EndTime = time.UnixMilli(end.Int64).UTC()
	}
	if deleted.Valid {
		run.DeleteTime = time.UnixMilli(deleted.Int64).UTC()
	}
	return &run, nil
}
