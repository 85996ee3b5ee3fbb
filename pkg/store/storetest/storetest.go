// Package storetest gives tests a fresh, migrated database on every backend.
//
// SQLite databases are files in the test's temporary directory. PostgreSQL
// databases are cloned from a template database that is migrated once per
// migration content (CREATE DATABASE ... TEMPLATE), so each test gets its own
// database in milliseconds and tests never see each other's rows. PostgreSQL
// runs only when QUANTMESH_TEST_DATABASE_URL is set; otherwise those tests
// skip with a message naming the variable.
package storetest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jackc/pgx/v5"

	"github.com/quantmesh/quantmesh/pkg/store"
)

// EnvPostgresURL names the variable holding the PostgreSQL URL tests use,
// for example postgres://postgres@127.0.0.1:5432/test?sslmode=disable.
const EnvPostgresURL = "QUANTMESH_TEST_DATABASE_URL"

// Run calls fn once per backend as subtests named "sqlite" and "postgres",
// each with a fresh database migrated with sets.
func Run(t *testing.T, sets []store.MigrationSet, fn func(t *testing.T, db *store.DB)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		fn(t, SQLite(t, sets...))
	})
	t.Run("postgres", func(t *testing.T) {
		fn(t, Postgres(t, sets...))
	})
}

// SQLite opens a migrated SQLite database in t's temporary directory.
func SQLite(t testing.TB, sets ...store.MigrationSet) *store.DB {
	t.Helper()
	return openSQLite(t, store.Config{}, sets)
}

// TracedSQLite is SQLite with batch spans recorded: it returns the tracer
// provider the database records with and the recorder that holds its
// ended spans.
func TracedSQLite(t testing.TB, sets ...store.MigrationSet) (*store.DB, *sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	return openSQLite(t, store.Config{TracerProvider: tp}, sets), tp, rec
}

func openSQLite(t testing.TB, cfg store.Config, sets []store.MigrationSet) *store.DB {
	t.Helper()
	ctx := context.Background()
	cfg.URL = filepath.Join(t.TempDir(), "test.db")
	db, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, sets...); err != nil {
		t.Fatalf("migrate sqlite: %v", err)
	}
	return db
}

// PostgresURL returns the test server URL, skipping t when it is not set.
func PostgresURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvPostgresURL)
	if u == "" {
		t.Skipf("PostgreSQL tests skipped: set %s (for example postgres://postgres@127.0.0.1:5432/test?sslmode=disable)", EnvPostgresURL)
	}
	return u
}

// Postgres opens a fresh PostgreSQL database cloned from a template
// migrated with sets, and drops it when t ends.
func Postgres(t testing.TB, sets ...store.MigrationSet) *store.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := PostgresURL(t)
	tmpl, err := ensureTemplate(ctx, admin, sets)
	if err != nil {
		t.Fatalf("postgres template: %v", err)
	}
	name := "qm_test_" + randomSuffix()
	if err := adminExec(ctx, admin, fmt.Sprintf(`CREATE DATABASE %s TEMPLATE %s`, name, tmpl)); err != nil {
		t.Fatalf("clone template: %v", err)
	}
	dropOnCleanup(t, admin, name)
	u, err := withDatabase(admin, name)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, store.Config{URL: u, MaxConns: 8})
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// NewPostgresDatabase creates an empty database (no migrations) and returns
// its URL; it is dropped when t ends. For tests of migration itself and of
// processes that migrate on start.
func NewPostgresDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := PostgresURL(t)
	name := "qm_test_" + randomSuffix()
	if err := adminExec(ctx, admin, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	dropOnCleanup(t, admin, name)
	u, err := withDatabase(admin, name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// ensureTemplate creates (once, across concurrent test processes) a
// template database migrated with sets and returns its name. The name
// carries a hash of the migrations, so a changed migration gets a new
// template.
func ensureTemplate(ctx context.Context, admin string, sets []store.MigrationSet) (string, error) {
	h, err := hashSets(sets)
	if err != nil {
		return "", err
	}
	name := "qm_tmpl_" + h
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	// Serialise template builds across test processes.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(7268530611)`); err != nil {
		return "", err
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(7268530611)`) }()

	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	// Build under a temporary name and rename when complete, so an
	// interrupted build never leaves a half-migrated template behind.
	build := name + "_build"
	if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+build+` WITH (FORCE)`); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+build); err != nil {
		return "", err
	}
	u, err := withDatabase(admin, build)
	if err != nil {
		return "", err
	}
	db, err := store.Open(ctx, store.Config{URL: u, MaxConns: 2})
	if err != nil {
		return "", err
	}
	_, merr := db.Migrate(ctx, sets...)
	db.Close()
	if merr != nil {
		return "", merr
	}
	if _, err := conn.Exec(ctx, `ALTER DATABASE `+build+` RENAME TO `+name); err != nil {
		return "", err
	}
	return name, nil
}

// dropOnCleanup drops database name when t ends.
func dropOnCleanup(t testing.TB, admin, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := adminExec(ctx, admin, fmt.Sprintf(`DROP DATABASE IF EXISTS %s WITH (FORCE)`, name)); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
}

func hashSets(sets []store.MigrationSet) (string, error) {
	h := sha256.New()
	for _, s := range sets {
		fmt.Fprintf(h, "component %s\n", s.Component)
		var files []string
		err := fs.WalkDir(s.FS, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return "", err
		}
		sort.Strings(files)
		for _, f := range files {
			b, err := fs.ReadFile(s.FS, f)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%s %d\n", f, len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}

func adminExec(ctx context.Context, admin, stmt string) error {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, stmt)
	return err
}

func withDatabase(raw, name string) (string, error) {
	// Keep user, host and query parameters; replace the database.
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%s must be a postgres:// URL", EnvPostgresURL)
	}
	u.Path = "/" + name
	return u.String(), nil
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
