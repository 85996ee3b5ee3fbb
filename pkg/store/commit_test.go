package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// A commit whose answer is lost may have been stored: InTx says so with
// ErrCommitUnknown, which is not transient (a retry could write twice),
// and Err still reports it to the caller.
func TestCommitOutcomeUnknown(t *testing.T) {
	t.Parallel()
	u := storetest.NewPostgresDatabase(t)
	ctx := context.Background()
	direct, err := store.Open(ctx, store.Config{URL: u, Timescale: store.TimescaleOff})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	pu.Host = commitDroppingProxy(t, pu.Host)
	db, err := store.Open(ctx, store.Config{URL: pu.String(), Timescale: store.TimescaleOff, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, w := range []struct {
		name  string
		write func(table string) error
	}{
		{"InTx", func(table string) error {
			return db.InTx(ctx, func(tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (id) VALUES (1)`)
				return err
			})
		}},
		{"PgxTx", func(table string) error {
			return db.PgxTx(ctx, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO `+table+` (id) VALUES (1)`)
				return err
			})
		}},
	} {
		table := "lost_" + strings.ToLower(w.name)
		if _, err := direct.Exec(ctx, `CREATE TABLE `+table+` (id INTEGER)`); err != nil {
			t.Fatal(err)
		}
		err := w.write(table)
		var n int
		if err := direct.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if err == nil || n != 1 {
			t.Fatalf("%s = %v with %d rows stored; want an error with the row stored (the proxy drops the commit's answer)", w.name, err, n)
		}
		if !errors.Is(err, store.ErrCommitUnknown) {
			t.Errorf("%s = %v, want ErrCommitUnknown", w.name, err)
		}
		if store.IsTransient(err) {
			t.Errorf("IsTransient(%v) = true: a retry would write the row twice", err)
		}
		if got := store.Err("write", err); got == nil || !errors.Is(got, apierr.ErrUnavailable) {
			t.Errorf("Err = %v, want an unavailable error", got)
		}
	}
}

// commitDroppingProxy forwards TCP connections to target until a client
// sends COMMIT: it forwards the COMMIT, then closes both connections once
// the server has had time to commit, without passing on the answer.
func commitDroppingProxy(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			var (
				mu        sync.Mutex
				committed bool
			)
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					mu.Lock()
					drop := committed
					mu.Unlock()
					if n > 0 && !drop {
						_, _ = c.Write(buf[:n])
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 && bytes.Contains(bytes.ToLower(buf[:n]), []byte("commit")) {
						mu.Lock()
						committed = true
						mu.Unlock()
						_, _ = s.Write(buf[:n])
						time.Sleep(200 * time.Millisecond)
						c.Close()
						s.Close()
						return
					}
					if n > 0 {
						_, _ = s.Write(buf[:n])
					}
					if err != nil {
						s.Close()
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
