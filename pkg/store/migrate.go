package store

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// MigrationSet is one component's versioned schema. FS holds a directory per
// dialect, sqlite/ and postgres/, of files named NNNN_description.sql,
// applied in version order, each in its own transaction, exactly once.
//
// A postgres file named NNNN_x.timescale.sql applies only when TimescaleDB is
// in use and NNNN_x.plain.sql only when it is not; the two share a version
// number. A file whose first line is "-- quantmesh:no-transaction" runs
// outside a transaction (TimescaleDB continuous aggregates need that).
type MigrationSet struct {
	// Component owns the tables, for example "experiment".
	Component string
	// FS holds sqlite/ and postgres/ directories.
	FS fs.FS
}

// Embedded returns the set of component whose files sit in the
// "migrations" directory of fsys (usually an embed.FS declared with
// //go:embed migrations).
func Embedded(component string, fsys fs.FS) MigrationSet {
	sub, err := fs.Sub(fsys, "migrations")
	if err != nil {
		panic(fmt.Sprintf("store: migrations of %s: %v", component, err)) // fs.Sub fails only on an invalid path
	}
	return MigrationSet{Component: component, FS: sub}
}

// Migration is one file of a set, resolved for a dialect.
type Migration struct {
	Component string
	Version   int
	Name      string
	SQL       string
	NoTx      bool
}

const noTxMarker = "-- quantmesh:no-transaction"

// Plan lists the migrations of sets that apply to this database, in order.
func (db *DB) Plan(sets ...MigrationSet) ([]Migration, error) {
	var out []Migration
	for _, set := range sets {
		ms, err := set.Resolve(db.dialect, db.timescale)
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// Resolve lists the migrations of the set that apply to a database of
// dialect d, with or without TimescaleDB, in order.
func (set MigrationSet) Resolve(d Dialect, timescale bool) ([]Migration, error) {
	dir := string(d)
	entries, err := fs.ReadDir(set.FS, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations %s/%s: %w", set.Component, dir, err)
	}
	seen := map[int]string{}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		switch {
		case strings.HasSuffix(name, ".timescale.sql") && !timescale:
			continue
		case strings.HasSuffix(name, ".plain.sql") && timescale:
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migrations %s: file %s: name must start with a positive version and an underscore", set.Component, name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s: version %d used by %s and %s", set.Component, v, prev, name)
		}
		seen[v] = name
		b, err := fs.ReadFile(set.FS, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("migrations %s: %w", set.Component, err)
		}
		text := string(b)
		out = append(out, Migration{
			Component: set.Component,
			Version:   v,
			Name:      name,
			SQL:       text,
			NoTx:      strings.HasPrefix(strings.TrimSpace(text), noTxMarker),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// MigrateResult says what Migrate did.
type MigrateResult struct {
	// Applied lists the migrations applied by this call, in order.
	Applied []Migration
	// Current is the number of migrations already in place before the call.
	Current int
}

// Migrate applies every migration of sets not yet applied. It is safe to run
// from several processes at once: on PostgreSQL an advisory lock serialises
// them. A failed migration leaves the schema at the previous version and
// returns an error naming the file.
func (db *DB) Migrate(ctx context.Context, sets ...MigrationSet) (MigrateResult, error) {
	var res MigrateResult
	plan, err := db.Plan(sets...)
	if err != nil {
		return res, err
	}
	err = db.InTx(ctx, func(tx *sql.Tx) error {
		if err := db.lockMigrations(ctx, tx); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			component  TEXT   NOT NULL,
			version    BIGINT NOT NULL,
			name       TEXT   NOT NULL,
			applied_at BIGINT NOT NULL,
			PRIMARY KEY (component, version)
		)`)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	for _, m := range plan {
		applied, err := db.apply(ctx, m)
		if err != nil {
			return res, fmt.Errorf("migration %s/%s/%s failed: %w", m.Component, db.dialect, m.Name, err)
		}
		if applied {
			res.Applied = append(res.Applied, m)
		} else {
			res.Current++
		}
	}
	return res, nil
}

// migrationLockKey is the PostgreSQL advisory lock id held while migrating.
const migrationLockKey = 0x71756e746d657368 // "quntmesh"

func (db *DB) apply(ctx context.Context, m Migration) (bool, error) {
	if m.NoTx {
		return db.applyNoTx(ctx, m)
	}
	applied := false
	err := db.InTx(ctx, func(tx *sql.Tx) error {
		if err := db.lockMigrations(ctx, tx); err != nil {
			return err
		}
		done, err := isApplied(ctx, tx, m)
		if err != nil || done {
			return err
		}
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return err
		}
		applied = true
		return record(ctx, tx, m)
	})
	return applied, err
}

// lockMigrations holds the migration lock until tx ends (PostgreSQL; SQLite
// transactions are already exclusive).
func (db *DB) lockMigrations(ctx context.Context, tx *sql.Tx) error {
	if db.dialect != Postgres {
		return nil
	}
	_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLockKey))
	return err
}

// applyNoTx runs a migration outside a transaction while holding a
// session-level advisory lock on one connection.
func (db *DB) applyNoTx(ctx context.Context, m Migration) (bool, error) {
	release, err := db.acquireWrite(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	conn, err := db.writer.Conn(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if db.dialect == Postgres {
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLockKey)); err != nil {
			return false, err
		}
		defer func() {
			// An unlock failure ends with the session when conn closes.
			_, _ = conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLockKey))
		}()
	}
	done, err := isApplied(ctx, conn, m)
	if err != nil || done {
		return false, err
	}
	if _, err := conn.ExecContext(ctx, m.SQL); err != nil {
		return false, err
	}
	if db.afterNoTxSQL != nil {
		db.afterNoTxSQL()
	}
	// The migration is in place: record it even if ctx ends now (SIGTERM),
	// or every later start would run it again.
	return true, record(context.WithoutCancel(ctx), conn, m)
}

type execQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func isApplied(ctx context.Context, q execQuerier, m Migration) (bool, error) {
	var n int
	err := q.QueryRowContext(ctx,
		`SELECT COUNT(*) FROM schema_migrations WHERE component = $1 AND version = $2`,
		m.Component, m.Version).Scan(&n)
	return n > 0, err
}

func record(ctx context.Context, q execQuerier, m Migration) error {
	_, err := q.ExecContext(ctx,
		`INSERT INTO schema_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)`,
		m.Component, m.Version, m.Name, time.Now().UnixMilli())
	return err
}
