package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// IsUniqueViolation reports whether err is a unique or primary-key
// constraint violation on either backend.
func IsUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// ErrCommitUnknown marks a commit whose outcome is unknown: the commit was
// sent but its answer was lost (the connection broke, the context ended),
// so the write may or may not have been stored. It is not transient: a
// retry could write twice. InTx wraps such a commit error with it (use
// errors.Is); the original error stays in the chain.
var ErrCommitUnknown = errors.New("commit outcome unknown: the write may or may not have been stored")

// commitErr wraps an error returned by a transaction's commit: one the
// server or SQLite reported (the transaction did not commit) stays as it
// is, anything else means the outcome is unknown.
func commitErr(err error) error {
	var pgErr *pgconn.PgError
	var se *sqlite.Error
	switch {
	case errors.As(err, &pgErr), errors.Is(err, pgx.ErrTxCommitRollback), errors.Is(err, sql.ErrTxDone):
		// The server answered, or the transaction had already ended: it
		// rolled back.
		return fmt.Errorf("commit: %w", err)
	case errors.As(err, &se) && (se.Code()&0xff == sqlite3.SQLITE_BUSY || se.Code()&0xff == sqlite3.SQLITE_LOCKED):
		// SQLite could not take the lock to commit: nothing was written.
		return fmt.Errorf("commit: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
}

// IsTransient reports whether err is a connectivity or contention failure:
// the same statement may succeed later. Constraint violations, syntax
// errors, ended contexts (canceled or past their deadline) and commits of
// unknown outcome (ErrCommitUnknown) are not transient.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrCommitUnknown) {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case len(pgErr.Code) == 5 && pgErr.Code[:2] == "08": // connection exception
			return true
		case pgErr.Code == "40001", pgErr.Code == "40P01": // serialization failure, deadlock
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // shutdown, cannot connect now
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL:
			return true
		}
	}
	return false
}

// Err converts a backend error into a domain error: transient failures and
// commits of unknown outcome become apierr.ErrUnavailable (the cause is
// logged; the client decides whether to retry, the store never does),
// context errors pass through, and anything else stays an internal error
// wrapped with op.
func Err(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case isDomain(err):
		// Already a domain error (NotFound from a transaction body, ...).
		return err
	case IsTransient(err), errors.Is(err, ErrCommitUnknown):
		return apierr.Unavailable("database", err)
	}
	return &opError{op: op, err: err}
}

type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return "store: " + e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

func isDomain(err error) bool {
	var de *apierr.Error
	var inv *apierr.InvalidError
	return errors.As(err, &de) || errors.As(err, &inv)
}
