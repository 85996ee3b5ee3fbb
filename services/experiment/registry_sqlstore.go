package experiment

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// The registry's SQL. Locks, when two are taken, are always taken in the
// same order, so concurrent writers never deadlock: the registered model's
// row first, then the registry_revision counter.

const (
	modelColumns = `m.name, m.description, m.tags, m.create_time, m.update_time,
		(SELECT COALESCE(MAX(v.version), 0) FROM model_versions v WHERE v.model_name = m.name)`
	versionColumns = `v.model_name, v.version, v.format, v.checksum_sha256, v.size_bytes, v.source_run_id,
		v.metrics, v.tags, v.description, v.create_time`
)

func errModelNotFound(name string) error { return apierr.NotFound("registered_model", name) }

func errVersionNotFound(model string, version int64) error {
	return apierr.NotFound("model_version", fmt.Sprintf("%s/%d", model, version))
}

func errAliasNotFound(model, alias string) error {
	return apierr.NotFound("model_alias", model+"@"+alias)
}

// CreateRegisteredModel implements RegistryStore.
func (s *SQLStore) CreateRegisteredModel(ctx context.Context, m *RegisteredModel) error {
	tags, err := json.Marshal(nonNil(m.Tags))
	if err != nil {
		return fmt.Errorf("encode tags: %w", err)
	}
	_, err = s.db.Exec(ctx, `INSERT INTO registered_models (name, description, tags, create_time, update_time)
		VALUES ($1, $2, $3, $4, $5)`, m.Name, m.Description, string(tags), millis(m.CreateTime), millis(m.UpdateTime))
	if store.IsUniqueViolation(err) {
		return apierr.AlreadyExists("registered_model", m.Name, "")
	}
	return s.err("create registered model", err)
}

// GetRegisteredModel implements RegistryStore.
func (s *SQLStore) GetRegisteredModel(ctx context.Context, name string) (*RegisteredModel, error) {
	var out *RegisteredModel
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		m, err := scanModel(tx.QueryRowContext(ctx, `SELECT `+modelColumns+` FROM registered_models m WHERE m.name = $1`, name))
		if errors.Is(err, sql.ErrNoRows) {
			return errModelNotFound(name)
		}
		if err != nil {
			return err
		}
		aliases, err := liveAliases(ctx, tx, `model_name = $1`, name)
		if err != nil {
			return err
		}
		m.Aliases = aliases[name]
		out = m
		return nil
	})
	if err != nil {
		return nil, s.err("get registered model", err)
	}
	return out, nil
}

// ListRegisteredModels implements RegistryStore.
func (s *SQLStore) ListRegisteredModels(ctx context.Context, q ModelListQuery) ([]*RegisteredModel, error) {
	var out []*RegisteredModel
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT `+modelColumns+` FROM registered_models m
			WHERE m.name > $1 ORDER BY m.name LIMIT $2`, q.AfterName, q.Limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			m, err := scanModel(rows)
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(out) == 0 {
			return nil
		}
		// The page is a contiguous range of names, and only existing models
		// have aliases that are set, so the range selects exactly the
		// page's aliases.
		aliases, err := liveAliases(ctx, tx, `model_name >= $1 AND model_name <= $2`, out[0].Name, out[len(out)-1].Name)
		if err != nil {
			return err
		}
		for _, m := range out {
			m.Aliases = aliases[m.Name]
		}
		return nil
	})
	if err != nil {
		return nil, s.err("list registered models", err)
	}
	return out, nil
}

// UpdateRegisteredModel implements RegistryStore.
func (s *SQLStore) UpdateRegisteredModel(ctx context.Context, name string, mutate func(*RegisteredModel) error) (*RegisteredModel, error) {
	var out *RegisteredModel
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockModel(ctx, tx, name); err != nil {
			return err
		}
		m, err := scanModel(tx.QueryRowContext(ctx, `SELECT `+modelColumns+` FROM registered_models m WHERE m.name = $1`, name))
		if err != nil {
			return err
		}
		if m.Aliases, err = modelAliases(ctx, tx, name); err != nil {
			return err
		}
		if err := mutate(m); err != nil {
			return err
		}
		tags, err := json.Marshal(nonNil(m.Tags))
		if err != nil {
			return fmt.Errorf("encode tags: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE registered_models SET description = $2, tags = $3, update_time = $4 WHERE name = $1`,
			name, m.Description, string(tags), millis(m.UpdateTime)); err != nil {
			return err
		}
		out = m
		return nil
	})
	if err != nil {
		return nil, s.err("update registered model", err)
	}
	return out, nil
}

// DeleteRegisteredModel implements RegistryStore.
func (s *SQLStore) DeleteRegisteredModel(ctx context.Context, name string) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockModel(ctx, tx, name); err != nil {
			return err
		}
		aliases, err := modelAliases(ctx, tx, name)
		if err != nil {
			return err
		}
		names := make([]string, 0, len(aliases))
		for a := range aliases {
			names = append(names, a)
		}
		sort.Strings(names)
		if len(names) > 0 {
			last, err := nextRevision(ctx, tx, len(names))
			if err != nil {
				return err
			}
			// Each tombstone takes its own revision: a watcher resuming after
			// any of them sees the others.
			first := last - uint64(len(names)) + 1
			for i, a := range names {
				if _, err := tx.ExecContext(ctx, `UPDATE model_aliases SET version = NULL, revision = $3
					WHERE model_name = $1 AND alias = $2`, name, a, int64(first)+int64(i)); err != nil {
					return err
				}
			}
		}
		// Versions go with the model (ON DELETE CASCADE).
		_, err = tx.ExecContext(ctx, `DELETE FROM registered_models WHERE name = $1`, name)
		return err
	})
	return s.err("delete registered model", err)
}

// CreateModelVersion implements RegistryStore.
func (s *SQLStore) CreateModelVersion(ctx context.Context, v *ModelVersion) error {
	metrics, err := json.Marshal(nonNilMetrics(v.Metrics))
	if err != nil {
		return fmt.Errorf("encode metrics: %w", err)
	}
	tags, err := json.Marshal(nonNil(v.Tags))
	if err != nil {
		return fmt.Errorf("encode tags: %w", err)
	}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		// The model's row lock serialises the creators of its versions
		// (SQLite's single writer does it anyway), so MAX + 1 is the next
		// number and numbers stay consecutive. Creating a version changes
		// the model's latest_version, hence its update time.
		res, err := tx.ExecContext(ctx, `UPDATE registered_models SET update_time = $2 WHERE name = $1`, v.ModelName, millis(v.CreateTime))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return errModelNotFound(v.ModelName)
		}
		if v.SourceRunID != "" {
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM runs WHERE run_id = $1`, v.SourceRunID).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return apierr.NotFound("run", v.SourceRunID)
			}
			if err != nil {
				return err
			}
		}
		var next int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model_name = $1`, v.ModelName).Scan(&next); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO model_versions (model_name, version, format, weights, checksum_sha256, size_bytes,
			source_run_id, metrics, tags, description, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			v.ModelName, next, v.Format, v.Weights, v.ChecksumSHA256, v.SizeBytes, v.SourceRunID,
			string(metrics), string(tags), v.Description, millis(v.CreateTime))
		if err != nil {
			return err
		}
		v.Version = next
		return nil
	})
	return s.err("create model version", err)
}

// GetModelVersion implements RegistryStore.
func (s *SQLStore) GetModelVersion(ctx context.Context, model string, version int64, withWeights bool) (*ModelVersion, error) {
	var out *ModelVersion
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		v, err := readVersion(ctx, tx, model, version, withWeights, "")
		out = v
		return err
	})
	if err != nil {
		return nil, s.err("get model version", err)
	}
	return out, nil
}

// ListModelVersions implements RegistryStore.
func (s *SQLStore) ListModelVersions(ctx context.Context, q VersionListQuery) ([]*ModelVersion, error) {
	var out []*ModelVersion
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		out = nil
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM registered_models WHERE name = $1`, q.Model).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errModelNotFound(q.Model)
		}
		if err != nil {
			return err
		}
		before := q.BeforeVersion
		if before <= 0 {
			before = 1<<63 - 1
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+versionColumns+` FROM model_versions v
			WHERE v.model_name = $1 AND v.version < $2 ORDER BY v.version DESC LIMIT $3`, q.Model, before, q.Limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			v, err := scanVersion(rows, false)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		aliases, err := modelAliases(ctx, tx, q.Model)
		if err != nil {
			return err
		}
		for _, v := range out {
			v.Aliases = aliasesOf(aliases, v.Version)
		}
		return nil
	})
	if err != nil {
		return nil, s.err("list model versions", err)
	}
	return out, nil
}

// UpdateModelVersion implements RegistryStore.
func (s *SQLStore) UpdateModelVersion(ctx context.Context, model string, version int64, mutate func(*ModelVersion) error) (*ModelVersion, error) {
	var out *ModelVersion
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		v, err := readVersion(ctx, tx, model, version, false, s.lockRow())
		if err != nil {
			return err
		}
		if err := mutate(v); err != nil {
			return err
		}
		tags, err := json.Marshal(nonNil(v.Tags))
		if err != nil {
			return fmt.Errorf("encode tags: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE model_versions SET description = $3, tags = $4 WHERE model_name = $1 AND version = $2`,
			model, version, v.Description, string(tags)); err != nil {
			return err
		}
		out = v
		return nil
	})
	if err != nil {
		return nil, s.err("update model version", err)
	}
	return out, nil
}

// SetModelAlias implements RegistryStore.
func (s *SQLStore) SetModelAlias(ctx context.Context, m AliasMove) (uint64, error) {
	var rev uint64
	err := s.db.InTx(ctx, func(tx *sql.Tx) (err error) {
		rev, err = s.setAliasTx(ctx, tx, m)
		return err
	})
	if err != nil {
		return 0, s.err("set model alias", err)
	}
	return rev, nil
}

// setAliasTx moves an alias inside tx (see SetModelAlias), taking the
// model's row lock, then the registry counter.
func (s *SQLStore) setAliasTx(ctx context.Context, tx *sql.Tx, m AliasMove) (uint64, error) {
	if err := s.lockModel(ctx, tx, m.Model); err != nil {
		return 0, err
	}
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM model_versions WHERE model_name = $1 AND version = $2`, m.Model, m.Version).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, errVersionNotFound(m.Model, m.Version)
	}
	if err != nil {
		return 0, err
	}
	cur, err := aliasRow(ctx, tx, m.Model, m.Alias)
	if err != nil {
		return 0, err
	}
	if cur.set() && cur.version.Int64 == m.Version {
		return cur.revision, nil
	}
	if want := m.ExpectedRevision; want != nil && !cur.matches(*want) {
		return 0, errRevisionMismatch(m.Model, m.Alias, cur.revision, *want)
	}
	rev, err := nextRevision(ctx, tx, 1)
	if err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO model_aliases (model_name, alias, version, revision) VALUES ($1, $2, $3, $4)
		ON CONFLICT (model_name, alias) DO UPDATE SET version = excluded.version, revision = excluded.revision`,
		m.Model, m.Alias, m.Version, int64(rev)); err != nil {
		return 0, err
	}
	_, err = tx.ExecContext(ctx, `UPDATE registered_models SET update_time = $2 WHERE name = $1`, m.Model, millis(m.Now))
	return rev, err
}

func errRevisionMismatch(model, alias string, current, expected uint64) error {
	return &apierr.Error{
		Kind:    apierr.ErrAborted,
		Reason:  "ALIAS_REVISION_MISMATCH",
		Message: fmt.Sprintf("alias %q of model %q is at revision %d, not the expected %d; read it again and retry", alias, model, current, expected),
		Metadata: map[string]string{
			"model": model, "alias": alias,
			"revision": fmt.Sprint(current), "expected_revision": fmt.Sprint(expected),
		},
	}
}

// DeleteModelAlias implements RegistryStore.
func (s *SQLStore) DeleteModelAlias(ctx context.Context, model, alias string, now time.Time) (uint64, error) {
	var rev uint64
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockModel(ctx, tx, model); err != nil {
			return err
		}
		cur, err := aliasRow(ctx, tx, model, alias)
		if err != nil {
			return err
		}
		if !cur.set() {
			return errAliasNotFound(model, alias)
		}
		if rev, err = nextRevision(ctx, tx, 1); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE model_aliases SET version = NULL, revision = $3 WHERE model_name = $1 AND alias = $2`,
			model, alias, int64(rev)); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE registered_models SET update_time = $2 WHERE name = $1`, model, millis(now))
		return err
	})
	if err != nil {
		return 0, s.err("delete model alias", err)
	}
	return rev, nil
}

// GetModelVersionByAlias implements RegistryStore.
func (s *SQLStore) GetModelVersionByAlias(ctx context.Context, model, alias string, withWeights bool) (*ModelVersion, error) {
	var out *ModelVersion
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM registered_models WHERE name = $1`, model).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errModelNotFound(model)
		}
		if err != nil {
			return err
		}
		cur, err := aliasRow(ctx, tx, model, alias)
		if err != nil {
			return err
		}
		if !cur.set() {
			return errAliasNotFound(model, alias)
		}
		out, err = readVersion(ctx, tx, model, cur.version.Int64, withWeights, "")
		return err
	})
	if err != nil {
		return nil, s.err("get model version by alias", err)
	}
	return out, nil
}

// AliasChange implements RegistryStore.
func (s *SQLStore) AliasChange(ctx context.Context, model, alias string, after uint64) (*AliasState, error) {
	var out *AliasState
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		out = nil
		cur, err := aliasRow(ctx, tx, model, alias)
		if err != nil {
			return err
		}
		if !cur.exists || cur.revision <= after {
			return nil
		}
		st := &AliasState{Model: model, Alias: alias, Revision: cur.revision}
		if cur.set() {
			// The same snapshot: an alias that is set points at an existing
			// version (deleting a model tombstones its aliases first).
			if st.Version, err = readVersion(ctx, tx, model, cur.version.Int64, true, ""); err != nil {
				return err
			}
		}
		out = st
		return nil
	})
	if err != nil {
		return nil, s.err("read alias change", err)
	}
	return out, nil
}

// RegistryRevision implements RegistryStore.
func (s *SQLStore) RegistryRevision(ctx context.Context) (uint64, error) {
	var rev int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT revision FROM registry_revision WHERE id = 1`).Scan(&rev)
	if err != nil {
		return 0, s.err("read registry revision", err)
	}
	return uint64(rev), nil
}

// readTx runs fn in a read-only transaction: one consistent snapshot
// across its statements (REPEATABLE READ on PostgreSQL; a SQLite read
// transaction is a snapshot already).
func (s *SQLStore) readTx(ctx context.Context, fn func(*sql.Tx) error) error {
	var opts *sql.TxOptions
	if s.db.Dialect() == store.Postgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := s.db.Reader().BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // after Commit, a no-op
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// lockModel locks a registered model's row for the rest of the write
// transaction (SQLite's write transactions are exclusive already).
func (s *SQLStore) lockModel(ctx context.Context, tx *sql.Tx, name string) error {
	var got string
	err := tx.QueryRowContext(ctx, `SELECT name FROM registered_models WHERE name = $1`+s.lockRow(), name).Scan(&got)
	if errors.Is(err, sql.ErrNoRows) {
		return errModelNotFound(name)
	}
	return err
}

// nextRevision takes the next n revisions of the registry counter and
// returns the last. The counter's row stays locked until the transaction
// ends, so revisions are committed in the order they are taken.
func nextRevision(ctx context.Context, tx *sql.Tx, n int) (uint64, error) {
	var rev int64
	err := tx.QueryRowContext(ctx, `UPDATE registry_revision SET revision = revision + $1 WHERE id = 1 RETURNING revision`, n).Scan(&rev)
	if err != nil {
		return 0, fmt.Errorf("next registry revision: %w", err)
	}
	return uint64(rev), nil
}

// aliasRecord is an alias's row: absent, set (version valid) or a tombstone.
type aliasRecord struct {
	exists   bool
	version  sql.NullInt64
	revision uint64
}

func (a aliasRecord) set() bool { return a.exists && a.version.Valid }

// matches reports whether an expected revision allows a move: the current
// revision, or 0 when the alias is unset (never set, or a tombstone).
func (a aliasRecord) matches(expected uint64) bool {
	if !a.set() && expected == 0 {
		return true
	}
	return a.exists && a.revision == expected
}

func aliasRow(ctx context.Context, tx *sql.Tx, model, alias string) (aliasRecord, error) {
	var (
		a   aliasRecord
		rev int64
	)
	err := tx.QueryRowContext(ctx, `SELECT version, revision FROM model_aliases WHERE model_name = $1 AND alias = $2`, model, alias).Scan(&a.version, &rev)
	if errors.Is(err, sql.ErrNoRows) {
		return aliasRecord{}, nil
	}
	if err != nil {
		return aliasRecord{}, err
	}
	a.exists, a.revision = true, uint64(rev)
	return a, nil
}

// liveAliases reads the aliases that are set, by model, under a condition
// on model_aliases.
func liveAliases(ctx context.Context, tx *sql.Tx, where string, args ...any) (map[string]map[string]int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT model_name, alias, version FROM model_aliases WHERE version IS NOT NULL AND `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]map[string]int64{}
	for rows.Next() {
		var (
			model, alias string
			version      int64
		)
		if err := rows.Scan(&model, &alias, &version); err != nil {
			return nil, err
		}
		if out[model] == nil {
			out[model] = map[string]int64{}
		}
		out[model][alias] = version
	}
	return out, rows.Err()
}

func modelAliases(ctx context.Context, tx *sql.Tx, model string) (map[string]int64, error) {
	all, err := liveAliases(ctx, tx, `model_name = $1`, model)
	return all[model], err
}

// aliasesOf lists, sorted, the aliases that point to version.
func aliasesOf(aliases map[string]int64, version int64) []string {
	var out []string
	for a, v := range aliases {
		if v == version {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// readVersion reads one version and the aliases that point to it; lock is
// appended to the version's query.
func readVersion(ctx context.Context, tx *sql.Tx, model string, version int64, withWeights bool, lock string) (*ModelVersion, error) {
	cols := versionColumns
	if withWeights {
		cols += `, v.weights`
	}
	v, err := scanVersion(tx.QueryRowContext(ctx, `SELECT `+cols+` FROM model_versions v WHERE v.model_name = $1 AND v.version = $2`+lock, model, version), withWeights)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errVersionNotFound(model, version)
	}
	if err != nil {
		return nil, err
	}
	aliases, err := modelAliases(ctx, tx, model)
	if err != nil {
		return nil, err
	}
	v.Aliases = aliasesOf(aliases, version)
	return v, nil
}

func scanModel(r scanner) (*RegisteredModel, error) {
	var (
		m                RegisteredModel
		tags             string
		created, updated int64
	)
	if err := r.Scan(&m.Name, &m.Description, &tags, &created, &updated, &m.LatestVersion); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(tags), &m.Tags); err != nil {
		return nil, fmt.Errorf("decode tags of model %s: %w", m.Name, err)
	}
	m.CreateTime = time.UnixMilli(created).UTC()
	m.UpdateTime = time.UnixMilli(updated).UTC()
	return &m, nil
}

func scanVersion(r scanner, withWeights bool) (*ModelVersion, error) {
	var (
		v             ModelVersion
		metrics, tags string
		created       int64
	)
	dest := []any{&v.ModelName, &v.Version, &v.Format, &v.ChecksumSHA256, &v.SizeBytes, &v.SourceRunID,
		&metrics, &tags, &v.Description, &created}
	if withWeights {
		dest = append(dest, &v.Weights)
	}
	if err := r.Scan(dest...); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(metrics), &v.Metrics); err != nil {
		return nil, fmt.Errorf("decode metrics of model version %s/%d: %w", v.ModelName, v.Version, err)
	}
	if err := json.Unmarshal([]byte(tags), &v.Tags); err != nil {
		return nil, fmt.Errorf("decode tags of model version %s/%d: %w", v.ModelName, v.Version, err)
	}
	v.CreateTime = time.UnixMilli(created).UTC()
	return &v, nil
}

func nonNilMetrics(m map[string]float64) map[string]float64 {
	if m == nil {
		return map[string]float64{}
	}
	return m
}
