package store_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

func widgets(t *testing.T) store.MigrationSet {
	t.Helper()
	return store.MigrationSet{Component: "widgets", FS: os.DirFS("testdata/migrations")}
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	storetest.Run(t, nil, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		res, err := db.Migrate(ctx, widgets(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Applied) != 2 || res.Current != 0 {
			t.Fatalf("first migrate: applied %d, current %d; want 2, 0", len(res.Applied), res.Current)
		}
		res, err = db.Migrate(ctx, widgets(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Applied) != 0 || res.Current != 2 {
			t.Fatalf("second migrate: applied %d, current %d; want 0, 2", len(res.Applied), res.Current)
		}
		if _, err := db.Exec(ctx, `INSERT INTO widgets (id, n, name) VALUES ($1, $2, $3)`, "a", 1, "x"); err != nil {
			t.Fatal(err)
		}
		// The plain or the timescale variant of version 2 applied, never both.
		var def string
		if _, err := db.Exec(ctx, `INSERT INTO widgets (id, n) VALUES ('b', 2)`); err != nil {
			t.Fatal(err)
		}
		if err := db.Reader().QueryRowContext(ctx, `SELECT name FROM widgets WHERE id = 'b'`).Scan(&def); err != nil {
			t.Fatal(err)
		}
		want := ""
		if db.Timescale() {
			want = "timescale"
		}
		if def != want {
			t.Errorf("default name = %q, want %q (timescale=%v)", def, want, db.Timescale())
		}
	})
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	u := storetest.NewPostgresDatabase(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			db, err := store.Open(ctx, store.Config{URL: u, MaxConns: 2})
			if err != nil {
				errs[i] = err
				return
			}
			defer db.Close()
			_, errs[i] = db.Migrate(ctx, widgets(t))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate: %v", err)
		}
	}
}

func TestMigrateFailureNamesFileAndRollsBack(t *testing.T) {
	t.Parallel()
	bad := store.MigrationSet{Component: "bad", FS: fstest.MapFS{
		"sqlite/0001_ok.sql":        {Data: []byte(`CREATE TABLE ok_t (id INTEGER PRIMARY KEY);`)},
		"sqlite/0002_broken.sql":    {Data: []byte(`CREATE TABLE broken_t (id INTEGER PRIMARY KEY); SELECT nonsense FROM;`)},
		"postgres/0001_ok.sql":      {Data: []byte(`CREATE TABLE ok_t (id INTEGER PRIMARY KEY);`)},
		"postgres/0002_broken.sql":  {Data: []byte(`CREATE TABLE broken_t (id INTEGER PRIMARY KEY); SELECT nonsense FROM;`)},
		"postgres/0003_unused.sql":  {Data: []byte(`SELECT 1;`)},
		"sqlite/0003_unused.sql":    {Data: []byte(`SELECT 1;`)},
		"sqlite/README":             {Data: []byte(`not a migration`)},
		"postgres/notes/0009_x.sql": {Data: []byte(`directories are ignored`)},
	}}
	storetest.Run(t, nil, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		_, err := db.Migrate(ctx, bad)
		if err == nil || !strings.Contains(err.Error(), "0002_broken.sql") {
			t.Fatalf("error = %v, want one naming 0002_broken.sql", err)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE component = 'bad'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("recorded migrations = %d, want 1", n)
		}
		// The broken migration's first statement was rolled back with it.
		if _, err := db.Reader().ExecContext(ctx, `SELECT * FROM broken_t`); err == nil {
			t.Error("broken_t exists: the failed migration was not rolled back")
		}
	})
}

func TestBadMigrationNames(t *testing.T) {
	t.Parallel()
	db := storetest.SQLite(t)
	for _, fsys := range []fstest.MapFS{
		{"sqlite/one_x.sql": {Data: []byte(`SELECT 1`)}},
		{"sqlite/0001_a.sql": {Data: []byte(`SELECT 1`)}, "sqlite/0001_b.sql": {Data: []byte(`SELECT 1`)}},
	} {
		if _, err := db.Migrate(context.Background(), store.MigrationSet{Component: "c", FS: fsys}); err == nil {
			t.Errorf("Migrate(%v) succeeded, want an error", fsys)
		}
	}
}

func TestUniqueViolationAndTx(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{widgets(t)}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		insert := func(tx *sql.Tx, id string) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO widgets (id, n) VALUES ($1, 1)`, id)
			return err
		}
		if err := db.InTx(ctx, func(tx *sql.Tx) error { return insert(tx, "a") }); err != nil {
			t.Fatal(err)
		}
		err := db.InTx(ctx, func(tx *sql.Tx) error {
			if err := insert(tx, "b"); err != nil {
				return err
			}
			return insert(tx, "a")
		})
		if !store.IsUniqueViolation(err) {
			t.Fatalf("error = %v, want a unique violation", err)
		}
		if store.IsTransient(err) {
			t.Error("a unique violation is not transient")
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM widgets`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("rows = %d, want 1: the failed transaction must write nothing", n)
		}
	})
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, err := store.Open(ctx, store.Config{}); err == nil {
		t.Error("empty URL: want an error")
	}
	if _, err := store.Open(ctx, store.Config{URL: "x.db", Timescale: "maybe"}); err == nil {
		t.Error("bad timescale mode: want an error")
	}
	_, err := store.Open(ctx, store.Config{URL: "postgres://u:secret@127.0.0.1:1/db?connect_timeout=1"})
	if err == nil {
		t.Fatal("unreachable postgres: want an error")
	}
	if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("error = %q, want 'unreachable' and no password", err)
	}
	// A directory where the file should be cannot be opened.
	dir := t.TempDir()
	if _, err := store.Open(ctx, store.Config{URL: dir}); err == nil {
		t.Error("directory as database: want an error")
	}
}

func TestSQLiteReaderIsReadOnly(t *testing.T) {
	t.Parallel()
	db := storetest.SQLite(t, widgets(t))
	_, err := db.Reader().ExecContext(context.Background(), `INSERT INTO widgets (id, n) VALUES ('x', 1)`)
	if err == nil {
		t.Fatal("write through the reader succeeded")
	}
}

// SQLite's automatic checkpoint is off on the writer; the background
// checkpointer keeps the WAL bounded under writes that never pause, and
// loses nothing.
func TestSQLiteWALStaysBoundedUnderSustainedWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "wal.db")
	db, err := store.Open(ctx, store.Config{URL: path})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(ctx, `CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	// Each transaction writes 16 pages or more of the WAL: all of them
	// add up to about 100 MB, several times what the checkpointer lets the
	// WAL hold before it restarts it.
	const writes = 1600
	blob := make([]byte, 64<<10)
	var written, peak int64
	for i := range writes {
		blob[i%len(blob)]++
		if _, err := db.Exec(ctx, `INSERT INTO blobs (id, b) VALUES ($1, $2)`, i, blob); err != nil {
			t.Fatal(err)
		}
		written += int64(len(blob))
		if i%50 == 0 {
			if fi, err := os.Stat(path + "-wal"); err == nil {
				peak = max(peak, fi.Size())
			}
		}
	}
	if peak == 0 || peak > written/2 {
		t.Errorf("the WAL reached %d MB of the %d MB written, want at most half: it is not checkpointed under sustained writes",
			peak>>20, written>>20)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = store.Open(ctx, store.Config{URL: path})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	var last []byte
	if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM blobs`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := db.Reader().QueryRowContext(ctx, `SELECT b FROM blobs WHERE id = $1`, writes-1).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if n != writes || string(last) != string(blob) {
		t.Errorf("after reopening: %d rows (want %d), last blob equal: %v", n, writes, string(last) == string(blob))
	}
}

func TestErrClassification(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"network", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{"bad connection", driver.ErrBadConn, true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"syntax", &pgconn.PgError{Code: "42601"}, false},
		{"other", errors.New("boom"), false},
		{"deadline", context.DeadlineExceeded, false},
		{"commit outcome unknown", fmt.Errorf("%w: %w", store.ErrCommitUnknown, &net.OpError{Op: "read", Err: errors.New("connection reset")}), true},
	}
	for _, tt := range tests {
		got := store.Err("op", tt.err)
		if errors.Is(got, apierr.ErrUnavailable) != tt.unavailable {
			t.Errorf("%s: Err = %v, unavailable = %v, want %v", tt.name, got, !tt.unavailable, tt.unavailable)
		}
		if !errors.Is(got, tt.err) && !tt.unavailable {
			t.Errorf("%s: Err = %v does not wrap the cause", tt.name, got)
		}
	}
	for _, err := range []error{context.Canceled, context.DeadlineExceeded, fmt.Errorf("query: %w", context.DeadlineExceeded)} {
		if store.IsTransient(err) {
			t.Errorf("IsTransient(%v) = true, want false: the context has ended", err)
		}
		if got := store.Err("x", err); !errors.Is(got, err) {
			t.Errorf("Err(%v) = %v", err, got)
		}
	}
	if store.Err("x", nil) != nil {
		t.Error("Err(nil) != nil")
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string
		want string
	}{
		{"postgres://user:pw@host:5432/db?sslmode=disable", "postgres://user:xxxxx@host:5432/db?sslmode=disable"},
		{"postgres://user@host/db", "postgres://user@host/db"},
		{"postgres://user@host/db?password=hunter2&sslmode=disable", "postgres://user@host/db?password=xxxxx&sslmode=disable"},
		{"postgresql://host/db?sslmode=require&sslpassword=hunter2", "postgresql://host/db?sslmode=require&sslpassword=xxxxx"},
		{"postgres://host/db?PassWord=hunter2", "postgres://host/db?PassWord=xxxxx"},
		// Unescaped '#', '/', '?' or a bad '%' in the password.
		{"postgres://app:hun#ter2/pw@127.0.0.1:1/db", "postgres://<unparsable URL, redacted>"},
		{"postgres://app:hunter%zz2@127.0.0.1:1/db", "postgres://<unparsable URL, redacted>"},
		{"postgres://app:12#hunter2@127.0.0.1:1/db", "postgres://<ambiguous URL, redacted>"},
		{"postgres://app:12/hunter2@127.0.0.1:1/db", "postgres://<ambiguous URL, redacted>"},
		{"postgres://app:12?hunter2@127.0.0.1:1/db", "postgres://<ambiguous URL, redacted>"},
	}
	for _, tt := range tests {
		if got := store.Redact(tt.url); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.url, got, tt.want)
		}
	}
	// Open's errors show the URL redacted.
	for _, u := range []string{
		"postgres://app:hun#ter2/pw@127.0.0.1:1/db",
		"postgres://app:hunter%zz2@127.0.0.1:1/db",
		"postgres://app@127.0.0.1:1/db?password=hunter2&connect_timeout=1",
	} {
		_, err := store.Open(context.Background(), store.Config{URL: u, ConnectTimeout: time.Second})
		if err == nil || strings.Contains(err.Error(), "hunter") {
			t.Errorf("Open(%q) error = %v, want an error without the password", u, err)
		}
	}
}

// A no-transaction migration whose SQL ran is recorded even if the context
// ends right after (SIGTERM during migration): otherwise every later start
// would run it again and fail.
func TestNoTxMigrationRecordedWhenCanceled(t *testing.T) {
	t.Parallel()
	set := store.MigrationSet{Component: "notx", FS: fstest.MapFS{
		"sqlite/0001_a.sql":   {Data: []byte("-- quantmesh:no-transaction\nCREATE TABLE a (id INTEGER PRIMARY KEY);")},
		"postgres/0001_a.sql": {Data: []byte("-- quantmesh:no-transaction\nCREATE TABLE a (id INTEGER PRIMARY KEY);")},
	}}
	storetest.Run(t, nil, func(t *testing.T, db *store.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		store.SetAfterNoTxSQL(db, cancel)
		if _, err := db.Migrate(ctx, set); err != nil {
			t.Fatalf("migrate canceled after the SQL ran: %v", err)
		}
		store.SetAfterNoTxSQL(db, nil)
		res, err := db.Migrate(context.Background(), set)
		if err != nil {
			t.Fatalf("migrate again: %v", err)
		}
		if len(res.Applied) != 0 || res.Current != 1 {
			t.Errorf("migrate again: applied %d, current %d; want 0, 1", len(res.Applied), res.Current)
		}
	})
}

// The SQLite file is where its path says, whatever the path holds.
func TestSQLitePathIsEscaped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, dir := range []string{"dh#1", "dp%41", "dq%zz", "d x"} {
		path := filepath.Join(t.TempDir(), dir, "q.db")
		db, err := store.Open(ctx, store.Config{URL: path})
		if err != nil {
			t.Errorf("%s: open: %v", dir, err)
			continue
		}
		if _, err := db.Exec(ctx, `CREATE TABLE t (id INTEGER)`); err != nil {
			t.Errorf("%s: write: %v", dir, err)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM t`).Scan(&n); err != nil {
			t.Errorf("%s: read: %v", dir, err)
		}
		if err := db.Close(); err != nil {
			t.Errorf("%s: close: %v", dir, err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("%s: the database is not at its path: %v", dir, err)
		}
	}
}
