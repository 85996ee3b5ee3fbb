// Package store opens the database behind every quantmesh service and
// applies its migrations. Two backends share one API:
//
//   - SQLite (modernc.org/sqlite, pure Go): the embedded default. WAL mode, one
//     writer connection (transactions never contend), several read-only
//     connections, synchronous=FULL so a committed write survives a crash,
//     and WAL checkpoints in the background rather than inside a commit.
//   - PostgreSQL through a pgx v5 pool, with TimescaleDB features when the
//     extension is available.
//
// Services write portable SQL with $1-style placeholders through Reader and
// Writer (both understand them), and reach the pgx pool directly for bulk
// paths (CopyFrom). Each service owns its tables and its migrations.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"modernc.org/sqlite"
)

// Dialect names a backend.
type Dialect string

// Backends.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Timescale modes.
const (
	TimescaleAuto = "auto" // use TimescaleDB when the extension is available
	TimescaleOn   = "on"   // require it
	TimescaleOff  = "off"  // never use it
)

// Config says which database to open.
type Config struct {
	// URL selects the backend: postgres:// or postgresql:// URLs open
	// PostgreSQL; anything else is a SQLite file path (its directory is
	// created). Required.
	URL string
	// MaxConns bounds the PostgreSQL pool, or the SQLite reader connections.
	// 0 means 16 for PostgreSQL and 4 for SQLite.
	MaxConns int
	// Timescale is auto, on or off (PostgreSQL only); empty means auto.
	Timescale string
	// ConnectTimeout bounds the first connection; 0 means 5s.
	ConnectTimeout time.Duration
	// TracerProvider, when set, records a span for every batched write
	// (see DB.StartBatch).
	TracerProvider trace.TracerProvider

	// timescaleExtension replaces timescaledb in tests.
	timescaleExtension string
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("database URL must not be empty")
	}
	if c.MaxConns < 0 {
		return fmt.Errorf("max connections must not be negative, got %d", c.MaxConns)
	}
	switch c.Timescale {
	case "", TimescaleAuto, TimescaleOn, TimescaleOff:
	default:
		return fmt.Errorf("timescale must be auto, on or off, got %q", c.Timescale)
	}
	return nil
}

// postgresSchemes are the URL prefixes that select PostgreSQL.
var postgresSchemes = []string{"postgres://", "postgresql://"}

// IsPostgresURL reports whether url selects the PostgreSQL backend.
func IsPostgresURL(u string) bool { return redactedScheme(u) != "" }

// DB is an open database.
type DB struct {
	dialect Dialect
	writer  *sql.DB
	// writeQueue serialises SQLite writers in arrival order (channel
	// senders are woken first in, first out; database/sql hands a freed
	// connection to a random waiter, which starves some writers). Nil on
	// PostgreSQL.
	writeQueue chan struct{}
	reader     *sql.DB
	pool       *pgxpool.Pool
	timescale  bool
	display    string

	// Batch write spans (StartBatch); tracer is nil without a provider.
	tracer trace.Tracer
	system attribute.KeyValue

	// SQLite only: the connection the background checkpointer uses, and
	// how to stop it.
	ckpt     *sql.DB
	ckptStop chan struct{}
	ckptOnce sync.Once
	ckptDone sync.WaitGroup

	// afterNoTxSQL, in tests, runs between a no-transaction migration's
	// SQL and its record.
	afterNoTxSQL func()
}

// Open connects to the database cfg names and checks that it answers.
// Errors say which database could not be opened and why, without secrets.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	open := openSQLite
	if IsPostgresURL(cfg.URL) {
		open = openPostgres
	}
	db, err := open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	db.setTracer(cfg.TracerProvider)
	return db, nil
}

func openPostgres(ctx context.Context, cfg Config) (*DB, error) {
	display := Redact(cfg.URL)
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("database URL %s: %w", display, err)
	}
	pc.MaxConns = 16
	if cfg.MaxConns > 0 {
		pc.MaxConns = int32(cfg.MaxConns)
	}
	pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	// JIT compilation pays off for long analytic queries, not for the
	// mesh's short indexed ones: it added 40-500 ms to SearchRuns. A URL
	// that sets jit keeps its choice.
	if _, set := pc.ConnConfig.RuntimeParams["jit"]; !set {
		pc.ConnConfig.RuntimeParams["jit"] = "off"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", display, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database %s is unreachable: %w", display, err)
	}
	sdb := stdlib.OpenDBFromPool(pool)
	db := &DB{dialect: Postgres, writer: sdb, reader: sdb, pool: pool, display: display}
	ext := cfg.timescaleExtension
	if ext == "" {
		ext = "timescaledb"
	}
	if err := db.setupTimescale(ctx, cfg.Timescale, ext); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func (db *DB) setupTimescale(ctx context.Context, mode, ext string) error {
	if mode != TimescaleOff {
		on, err := db.enableTimescale(ctx, mode, ext)
		if err != nil {
			return err
		}
		db.timescale = on
	}
	if db.timescale {
		return nil
	}
	return db.checkPlainSchema(ctx)
}

// enableTimescale creates the TimescaleDB extension ext (timescaledb but in
// tests) when it is available, and reports whether it is installed.
func (db *DB) enableTimescale(ctx context.Context, mode, ext string) (bool, error) {
	var available bool
	err := db.pool.QueryRow(ctx,
		`SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)`, ext).Scan(&available)
	if err != nil {
		return false, fmt.Errorf("database %s: probe TimescaleDB: %w", db.display, err)
	}
	if !available {
		if mode == TimescaleOn {
			return false, fmt.Errorf("database %s: timescale=on but the %s extension is not available", db.display, ext)
		}
		return false, nil
	}
	_, err = db.pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS `+pgx.Identifier{ext}.Sanitize())
	if err == nil {
		return true, nil
	}
	// Processes starting together on a fresh database race to create the
	// extension, and the losers fail (duplicate key): what counts is
	// whether it is installed now.
	var installed bool
	if qerr := db.pool.QueryRow(ctx,
		`SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)`, ext).Scan(&installed); qerr != nil {
		return false, fmt.Errorf("database %s: create extension %s: %w (and checking for it: %w)", db.display, ext, err, qerr)
	}
	if installed {
		return true, nil
	}
	if mode == TimescaleOn {
		return false, fmt.Errorf("database %s: create extension %s: %w", db.display, ext, err)
	}
	// auto: available but not loadable (for example missing from
	// shared_preload_libraries); plain PostgreSQL works.
	return false, nil
}

// checkPlainSchema refuses to run without TimescaleDB on a database whose
// schema was migrated with the TimescaleDB variants (NNNN_x.timescale.sql):
// its hypertables and continuous aggregates would be used as plain tables.
func (db *DB) checkPlainSchema(ctx context.Context) error {
	var exists bool
	if err := db.pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("database %s: check schema: %w", db.display, err)
	}
	if !exists {
		return nil
	}
	var name string
	err := db.pool.QueryRow(ctx,
		`SELECT component || '/' || name FROM schema_migrations WHERE name LIKE '%.timescale.sql' ORDER BY component, version LIMIT 1`).Scan(&name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("database %s: check schema: %w", db.display, err)
	}
	return fmt.Errorf("database %s: its schema was migrated for TimescaleDB (%s) but TimescaleDB is not in use: "+
		"start with --timescale=on (or auto) on a server where the timescaledb extension loads", db.display, name)
}

// SQLite WAL checkpoints. SQLite's automatic checkpoint runs inside the
// commit that takes the WAL past 1000 pages: that commit copies the WAL into
// the database file and fsyncs it, and every write queued behind it waits
// (a few milliseconds, several times a second under sustained writes). The
// writer connection therefore runs with wal_autocheckpoint=0, and a
// goroutine on a connection of its own checkpoints instead:
//
//   - every checkpointInterval, a PASSIVE checkpoint copies what the WAL
//     holds into the database while the writer keeps committing;
//   - when the WAL holds walRestartPages or more, a second PASSIVE
//     checkpoint runs between two write transactions (it takes the writer's
//     turn), so that it copies only what was committed since the first and
//     leaves the WAL fully checkpointed: the next transaction starts the
//     WAL over from its beginning (unless a reader still uses it, as with
//     SQLite's own checkpoints).
//
// The WAL stays bounded by what is committed between two checkpoints, and
// its file is cut back to walSizeLimit when it restarts. Durability does not
// change: a commit is durable when it returns (synchronous=FULL), and a
// checkpoint syncs the WAL before and the database file after copying.
const (
	checkpointInterval = 100 * time.Millisecond
	walRestartPages    = 4096
	walSizeLimit       = 64 << 20
)

// SQLiteDSN returns the modernc.org/sqlite data source name (a URI) for the
// database file at path, which it escapes: WAL journal, full sync on commit, foreign keys on, a busy timeout,
// and IMMEDIATE transactions unless readOnly. A read-write connection does
// not checkpoint the WAL by itself: Open starts a background checkpointer.
func SQLiteDSN(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Add("_pragma", "wal_autocheckpoint(0)")
		q.Add("_pragma", fmt.Sprintf("journal_size_limit(%d)", walSizeLimit))
		q.Set("_txlock", "immediate")
	}
	return "file:" + sqliteURIPath.Replace(path) + "?" + q.Encode()
}

// sqliteURIPath escapes what SQLite's URI file names would otherwise read
// as an escape ('%'), the start of the query ('?') or of a fragment ('#').
var sqliteURIPath = strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23")

func openSQLite(ctx context.Context, cfg Config) (*DB, error) {
	path := strings.TrimPrefix(cfg.URL, "sqlite://")
	path = strings.TrimPrefix(path, "file:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("database %s: create directory: %w", path, err)
		}
	}
	writer, err := sql.Open("sqlite", SQLiteDSN(path, false))
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	// One writer: SQLite allows one write transaction at a time, and a
	// single connection turns contention into an in-process queue.
	writer.SetMaxOpenConns(1)
	writer.SetConnMaxIdleTime(0)
	pctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := writer.PingContext(pctx); err != nil {
		writer.Close()
		return nil, fmt.Errorf("database %s cannot be opened: %w", path, err)
	}
	reader, err := sql.Open("sqlite", SQLiteDSN(path, true))
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	n := 4
	if cfg.MaxConns > 0 {
		n = cfg.MaxConns
	}
	reader.SetMaxOpenConns(n)
	reader.SetMaxIdleConns(n)
	ckpt, err := sql.Open("sqlite", SQLiteDSN(path, false))
	if err != nil {
		writer.Close()
		reader.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	ckpt.SetMaxOpenConns(1)
	ckpt.SetConnMaxIdleTime(0)
	db := &DB{dialect: SQLite, writer: writer, reader: reader, writeQueue: make(chan struct{}, 1), display: path,
		ckpt: ckpt, ckptStop: make(chan struct{})}
	db.ckptDone.Go(db.checkpointer)
	return db, nil
}

// checkpointer checkpoints the SQLite WAL every checkpointInterval until
// Close. A failure is logged once, and again when checkpoints work again.
func (db *DB) checkpointer() {
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-db.ckptStop:
			return
		case <-t.C:
		}
		err := db.checkpoint()
		switch {
		case err != nil && !failing:
			slog.Warn("sqlite checkpoint failed; the WAL grows until one succeeds", "database", db.display, "error", err)
		case err == nil && failing:
			slog.Info("sqlite checkpoint recovered", "database", db.display)
		}
		failing = err != nil
	}
}

// checkpoint runs one background checkpoint; see checkpointInterval.
func (db *DB) checkpoint() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pages, copied, err := db.walCheckpoint(ctx)
	// copied < pages: a reader still needs part of the WAL, and a second
	// checkpoint could not restart it either.
	if err != nil || pages < walRestartPages || copied < pages {
		return err
	}
	release, err := db.acquireWrite(ctx)
	if err != nil {
		return err
	}
	defer release()
	_, _, err = db.walCheckpoint(ctx)
	return err
}

// walCheckpoint runs a PASSIVE checkpoint: it returns the number of pages
// in the WAL and how many of them are now in the database file.
func (db *DB) walCheckpoint(ctx context.Context) (pages, copied int, err error) {
	var busy int
	err = db.ckpt.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &pages, &copied)
	return pages, copied, err
}

// Dialect returns the backend in use.
func (db *DB) Dialect() Dialect { return db.dialect }

// acquireWrite waits for the SQLite writer's turn, in arrival order.
func (db *DB) acquireWrite(ctx context.Context) (release func(), err error) {
	if db.writeQueue == nil {
		return func() {}, nil
	}
	select {
	case db.writeQueue <- struct{}{}:
		return func() { <-db.writeQueue }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Exec runs one write statement outside an explicit transaction. It is
// durable when Exec returns nil.
func (db *DB) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	release, err := db.acquireWrite(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return db.writer.ExecContext(ctx, query, args...)
}

// Reader returns the connection pool for reads. On SQLite its connections
// are read-only; on PostgreSQL it is the one pool. Write through Exec and
// InTx.
func (db *DB) Reader() *sql.DB { return db.reader }

// Pool returns the pgx pool on PostgreSQL (for CopyFrom and batches), nil on
// SQLite.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Timescale reports whether TimescaleDB features are in use.
func (db *DB) Timescale() bool { return db.timescale }

// String describes the database without secrets.
func (db *DB) String() string { return string(db.dialect) + " " + db.display }

// Mode names the storage mode for logs and metrics: sqlite, postgres or
// timescaledb.
func (db *DB) Mode() string {
	if db.timescale {
		return "timescaledb"
	}
	return string(db.dialect)
}

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.writer.PingContext(ctx); err != nil {
		return err
	}
	if db.reader != db.writer {
		return db.reader.PingContext(ctx)
	}
	return nil
}

// PrepareWrite prepares a statement for repeated use in write transactions:
// inside InTx, run it with tx.StmtContext(ctx, stmt). On SQLite it is bound
// to the single writer connection, so it is parsed once, not per use.
func (db *DB) PrepareWrite(ctx context.Context, query string) (*sql.Stmt, error) {
	return db.writer.PrepareContext(ctx, query)
}

// InTx runs fn in a write transaction and commits when fn returns nil. The
// write is durable when InTx returns nil. When the commit's answer is lost,
// the error wraps ErrCommitUnknown: the write may or may not be stored.
func (db *DB) InTx(ctx context.Context, fn func(*sql.Tx) error) (err error) {
	release, err := db.acquireWrite(ctx)
	if err != nil {
		return err
	}
	defer release()
	tx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	if err = tx.Commit(); err != nil {
		return commitErr(err)
	}
	return nil
}

// PgxTx runs fn in a pgx transaction on the PostgreSQL pool, as InTx does
// with database/sql: rolled back when fn fails or panics, and a commit
// whose outcome is unknown reported as ErrCommitUnknown.
func (db *DB) PgxTx(ctx context.Context, fn func(pgx.Tx) error) (err error) {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			panic(p)
		}
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	if err = tx.Commit(ctx); err != nil {
		return commitErr(err)
	}
	return nil
}

// Close closes every connection.
func (db *DB) Close() error {
	var errs []error
	if db.ckpt != nil {
		db.ckptOnce.Do(func() { close(db.ckptStop) })
		db.ckptDone.Wait()
		errs = append(errs, db.ckpt.Close())
	}
	if db.reader != db.writer {
		errs = append(errs, db.reader.Close())
	}
	// The writer closes last: closing the last connection checkpoints the
	// WAL with the writer's settings.
	errs = append(errs, db.writer.Close())
	if db.pool != nil {
		db.pool.Close()
	}
	return errors.Join(errs...)
}

// Redact returns a database URL without secrets: its password and any
// password or sslpassword parameter are replaced by "xxxxx". A URL that does
// not parse, or whose password may have spilled out of the user information
// (an unescaped '#', '/' or '?' in it), is replaced by a placeholder that
// shows nothing of it.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return redactedScheme(raw) + "<unparsable URL, redacted>"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	u.RawQuery = redactQuery(u.RawQuery)
	// '@' separates the user information from the host: anywhere else it
	// means the user information was cut short, and what follows it
	// carries part of a password.
	if strings.Contains(u.Host+u.Path+u.RawQuery+u.Fragment, "@") {
		return redactedScheme(raw) + "<ambiguous URL, redacted>"
	}
	return u.String()
}

// redactedScheme returns the PostgreSQL scheme prefix of raw, or nothing.
func redactedScheme(raw string) string {
	for _, p := range postgresSchemes {
		if strings.HasPrefix(raw, p) {
			return p
		}
	}
	return ""
}

// redactQuery replaces the values of the password parameters of a raw
// query, keeping the order of the parameters.
func redactQuery(raw string) string {
	if raw == "" {
		return raw
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		k, _, _ := strings.Cut(p, "=")
		key, err := url.QueryUnescape(k)
		if err != nil || strings.EqualFold(key, "password") || strings.EqualFold(key, "sslpassword") {
			// A key that does not unescape might be either: redact it.
			parts[i] = k + "=xxxxx"
		}
	}
	return strings.Join(parts, "&")
}

// keep the sqlite driver registered even if nothing else references it.
var _ = sqlite.Error{}
