package experiment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

const checkpointColumns = `checkpoint_id, run_id, experiment_id, step, uri, size_bytes, metric_key, metric_value, model_name, model_version, create_time`

// LogCheckpoint implements CheckpointStore.
func (s *SQLStore) LogCheckpoint(ctx context.Context, c *Checkpoint) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		// The run is read in the transaction (and share-locked on
		// PostgreSQL), so it cannot be deleted between the check and the
		// insert.
		q := `SELECT experiment_id, lifecycle_stage FROM runs WHERE run_id = $1`
		if s.db.Dialect() == store.Postgres {
			q += ` FOR SHARE`
		}
		var expID, stage string
		err := tx.QueryRowContext(ctx, q, c.RunID).Scan(&expID, &stage)
		if errors.Is(err, sql.ErrNoRows) {
			return apierr.NotFound("run", c.RunID)
		}
		if err != nil {
			return err
		}
		if Stage(stage) != StageActive {
			return apierr.FailedPrecondition("RUN_DELETED", "run %s is deleted; restore it before writing to it", c.RunID)
		}
		c.ExperimentID = expID
		_, err = tx.ExecContext(ctx, `INSERT INTO checkpoints (`+checkpointColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			c.ID, c.RunID, c.ExperimentID, c.Step, c.URI, c.SizeBytes, c.MetricKey, c.MetricValue,
			c.ModelName, c.ModelVersion, millis(c.CreateTime))
		return err
	})
	return store.Err("log checkpoint", err)
}

// ListCheckpoints implements CheckpointStore.
func (s *SQLStore) ListCheckpoints(ctx context.Context, q CheckpointQuery) ([]*Checkpoint, error) {
	r := s.db.Reader()
	if q.ExperimentID != "" {
		if err := selectOne(ctx, r, `SELECT 1 FROM experiments WHERE experiment_id = $1`, q.ExperimentID); err != nil {
			return nil, store.Err("list checkpoints", noRowsAsNotFound("experiment", q.ExperimentID, err))
		}
	}
	if q.RunID != "" {
		if err := selectOne(ctx, r, `SELECT 1 FROM runs WHERE run_id = $1`, q.RunID); err != nil {
			return nil, store.Err("list checkpoints", noRowsAsNotFound("run", q.RunID, err))
		}
	}
	query := `SELECT ` + checkpointColumns + ` FROM checkpoints WHERE 1 = 1`
	var args []any
	if q.ExperimentID != "" {
		args = append(args, q.ExperimentID)
		query += fmt.Sprintf(` AND experiment_id = $%d`, len(args))
	}
	if q.RunID != "" {
		args = append(args, q.RunID)
		query += fmt.Sprintf(` AND run_id = $%d`, len(args))
	}
	if q.AfterID != "" {
		args = append(args, q.AfterID)
		query += fmt.Sprintf(` AND checkpoint_id < $%d`, len(args))
	}
	args = append(args, q.Limit)
	query += fmt.Sprintf(` ORDER BY checkpoint_id DESC LIMIT $%d`, len(args))

	rows, err := r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, store.Err("list checkpoints", err)
	}
	defer rows.Close()
	var out []*Checkpoint
	for rows.Next() {
		c, err := scanCheckpoint(rows)
		if err != nil {
			return nil, store.Err("list checkpoints", err)
		}
		out = append(out, c)
	}
	return out, store.Err("list checkpoints", rows.Err())
}

// CheckpointExperiments implements CheckpointStore.
func (s *SQLStore) CheckpointExperiments(ctx context.Context) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT experiment_id FROM checkpoints ORDER BY experiment_id`)
	if err != nil {
		return nil, store.Err("list checkpoint experiments", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, store.Err("list checkpoint experiments", err)
		}
		out = append(out, id)
	}
	return out, store.Err("list checkpoint experiments", rows.Err())
}

// protectedSQL returns the condition under which the checkpoint row named
// by tbl is protected: an alias points at its model version (a NULL
// version is a deleted alias's tombstone and protects nothing), or the
// version is tagged production (ProductionTagRule).
func (s *SQLStore) protectedSQL(tbl string) (aliased, production string) {
	eachTag := `json_each(v.tags)` // SQLite: tags is JSON text
	if s.db.Dialect() == store.Postgres {
		eachTag = `jsonb_each_text(v.tags)`
	}
	aliased = `EXISTS (SELECT 1 FROM model_aliases a
		WHERE a.model_name = ` + tbl + `.model_name AND a.version = ` + tbl + `.model_version)`
	production = `EXISTS (SELECT 1 FROM model_versions v, ` + eachTag + ` t
		WHERE v.model_name = ` + tbl + `.model_name AND v.version = ` + tbl + `.model_version
		AND (lower(trim(t.key)) = '` + ProductionTag + `' OR lower(trim(t.value)) = '` + ProductionTag + `'))`
	return aliased, production
}

// checkpointDeleteChunk bounds the ids of one DELETE statement (SQLite allows 32766
// parameters, PostgreSQL 65535).
const checkpointDeleteChunk = 500

// ApplyRetention implements CheckpointStore.
func (s *SQLStore) ApplyRetention(ctx context.Context, experimentID string, plan func([]RetentionCandidate) []KeepReason, dryRun bool) (*RetentionOutcome, error) {
	if dryRun {
		// One statement is one consistent snapshot on both backends.
		cands, err := s.retentionCandidates(ctx, s.db.Reader(), experimentID, false)
		if err != nil {
			return nil, store.Err("apply retention", err)
		}
		out := &RetentionOutcome{Protected: countProtected(cands)}
		verdicts := plan(cands)
		for i, c := range cands {
			if verdicts[i] == KeepNone {
				out.Deleted = append(out.Deleted, c.Checkpoint)
			}
		}
		out.Kept = int64(len(cands) - len(out.Deleted))
		return out, nil
	}
	var out *RetentionOutcome
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		cands, err := s.retentionCandidates(ctx, tx, experimentID, true)
		if err != nil {
			return err
		}
		out = &RetentionOutcome{Protected: countProtected(cands)}
		verdicts := plan(cands)
		byID := map[string]*Checkpoint{}
		var ids []string
		for i, c := range cands {
			if verdicts[i] == KeepNone {
				byID[c.Checkpoint.ID] = c.Checkpoint
				ids = append(ids, c.Checkpoint.ID)
			}
		}
		aliased, production := s.protectedSQL("checkpoints")
		for chunk := range slices.Chunk(ids, checkpointDeleteChunk) {
			args := make([]any, len(chunk))
			marks := make([]string, len(chunk))
			for i, id := range chunk {
				args[i] = id
				marks[i] = fmt.Sprintf("$%d", i+1)
			}
			rows, err := tx.QueryContext(ctx, `DELETE FROM checkpoints WHERE checkpoint_id IN (`+strings.Join(marks, ", ")+`)
				AND NOT `+aliased+` AND NOT `+production+` RETURNING checkpoint_id`, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				out.Deleted = append(out.Deleted, byID[id])
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		// Serialised per experiment, so nothing else deleted the rest:
		// a planned row not deleted became protected after the read.
		out.Reprieved = int64(len(ids) - len(out.Deleted))
		out.Kept = int64(len(cands) - len(out.Deleted))
		out.Survivors, err = survivingURIs(ctx, tx, out.Deleted)
		return err
	})
	if err != nil {
		return nil, store.Err("apply retention", err)
	}
	slices.SortFunc(out.Deleted, func(a, b *Checkpoint) int { return strings.Compare(b.ID, a.ID) })
	return out, nil
}

// survivingURIs reads the distinct URIs of the remaining checkpoints that
// may name the local file of a deleted one: the same URI, or a file:// URI
// that contains the file's name (decoded or escaped), since one file has
// many spellings (file://localhost/..., "..", a symlinked directory). A
// checkpoint that names the file through a symlink of another name is not
// found. Other URIs are left to their stores, so they are not looked up.
func survivingURIs(ctx context.Context, tx *sql.Tx, deleted []*Checkpoint) ([]string, error) {
	var uris, patterns []string
	for _, c := range deleted {
		if p, ok := localFilePath(c.URI); ok {
			name := filepath.Base(p)
			uris = append(uris, c.URI)
			patterns = append(patterns, `%`+escapeLike(name)+`%`, `%`+escapeLike(url.PathEscape(name))+`%`)
		}
	}
	slices.Sort(uris)
	slices.Sort(patterns)
	found := map[string]bool{}
	for _, q := range []struct {
		args []string
		cond func(marks []string) string
	}{
		{slices.Compact(uris), func(marks []string) string { return `uri IN (` + strings.Join(marks, ", ") + `)` }},
		{slices.Compact(patterns), func(marks []string) string {
			return `lower(substr(uri, 1, 5)) = 'file:' AND (uri LIKE ` + strings.Join(marks, ` ESCAPE '\' OR uri LIKE `) + ` ESCAPE '\')`
		}},
	} {
		for chunk := range slices.Chunk(q.args, checkpointDeleteChunk) {
			args := make([]any, len(chunk))
			marks := make([]string, len(chunk))
			for i, a := range chunk {
				args[i] = a
				marks[i] = fmt.Sprintf("$%d", i+1)
			}
			rows, err := tx.QueryContext(ctx, `SELECT DISTINCT uri FROM checkpoints WHERE `+q.cond(marks), args...)
			if err != nil {
				return nil, err
			}
			for rows.Next() {
				var u string
				if err := rows.Scan(&u); err != nil {
					rows.Close()
					return nil, err
				}
				found[u] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, err
			}
		}
	}
	out := make([]string, 0, len(found))
	for u := range found {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, nil
}

// escapeLike escapes the LIKE wildcards of s, with '\' as the escape.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

func countProtected(cands []RetentionCandidate) int64 {
	var n int64
	for _, c := range cands {
		if c.Aliased || c.Production {
			n++
		}
	}
	return n
}

type rowQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// retentionCandidates reads the experiment's checkpoints, newest first,
// with their protection, in one statement. With lock (in a write
// transaction) it first locks the experiment's row on PostgreSQL, which
// serialises retention runs on one experiment (SQLite has one writer).
func (s *SQLStore) retentionCandidates(ctx context.Context, q rowQuerier, experimentID string, lock bool) ([]RetentionCandidate, error) {
	check := `SELECT 1 FROM experiments WHERE experiment_id = $1`
	if lock && s.db.Dialect() == store.Postgres {
		check += ` FOR NO KEY UPDATE`
	}
	if err := selectOne(ctx, q, check, experimentID); err != nil {
		return nil, noRowsAsNotFound("experiment", experimentID, err)
	}
	aliased, production := s.protectedSQL("c")
	rows, err := q.QueryContext(ctx, `SELECT `+prefixColumns("c", checkpointColumns)+`, `+aliased+`, `+production+`
		FROM checkpoints c WHERE c.experiment_id = $1 ORDER BY c.checkpoint_id DESC`, experimentID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RetentionCandidate
	for rows.Next() {
		var rc RetentionCandidate
		c, err := scanCheckpoint(rows, &rc.Aliased, &rc.Production)
		if err != nil {
			return nil, err
		}
		rc.Checkpoint = c
		out = append(out, rc)
	}
	return out, rows.Err()
}

func prefixColumns(tbl, cols string) string {
	parts := strings.Split(cols, ", ")
	for i, p := range parts {
		parts[i] = tbl + "." + p
	}
	return strings.Join(parts, ", ")
}

// selectOne returns sql.ErrNoRows when query finds no row.
func selectOne(ctx context.Context, q rowQuerier, query string, args ...any) error {
	var one int
	return q.QueryRowContext(ctx, query, args...).Scan(&one)
}

// noRowsAsNotFound turns sql.ErrNoRows into NotFound for resource id and returns
// any other error unchanged.
func noRowsAsNotFound(resource, id string, err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return apierr.NotFound(resource, id)
	}
	return err
}

// scanCheckpoint scans checkpointColumns, then extra.
func scanCheckpoint(r scanner, extra ...any) (*Checkpoint, error) {
	var (
		c       Checkpoint
		created int64
	)
	dest := append([]any{&c.ID, &c.RunID, &c.ExperimentID, &c.Step, &c.URI, &c.SizeBytes, &c.MetricKey,
		&c.MetricValue, &c.ModelName, &c.ModelVersion, &created}, extra...)
	if err := r.Scan(dest...); err != nil {
		return nil, err
	}
	c.CreateTime = time.UnixMilli(created).UTC()
	return &c, nil
}
