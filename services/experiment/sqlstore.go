package experiment

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// SQLStore implements Store on SQLite and PostgreSQL.
type SQLStore struct {
	db  *store.DB
	log *slog.Logger
	ins *instruments

	writerOnce sync.Once
	writer     *metricWriter // started by the first Append
	queueSize  int           // of the writer's queue
	closeOnce  sync.Once

	stmtMu     sync.Mutex
	chunkStmts [2]*sql.Stmt // prepared full-chunk point inserts on SQLite
}

var _ Store = (*SQLStore)(nil)

// Option configures a SQLStore.
type Option func(*SQLStore)

// WithLogger sets the store's logger (the default discards).
func WithLogger(log *slog.Logger) Option { return func(s *SQLStore) { s.log = log } }

// WithMeter sets the meter of the store's instruments (the default is a
// no-op meter).
func WithMeter(m metric.Meter) Option {
	return func(s *SQLStore) {
		ins, err := newInstruments(m)
		if err == nil {
			s.ins = ins
		} else {
			s.log.Error("experiment store instruments", "err", err)
		}
	}
}

// NewSQLStore returns a store on db, which must be migrated with
// Migrations. Close it to flush streamed metrics.
func NewSQLStore(db *store.DB, opts ...Option) *SQLStore {
	s := &SQLStore{db: db, log: slog.New(slog.DiscardHandler), queueSize: writerQueue}
	for _, o := range opts {
		o(s)
	}
	if s.ins == nil {
		s.ins, _ = newInstruments(nil) // a no-op meter never fails
	}
	return s
}

// err converts a backend error with store.Err and counts it when it is a
// failure of the store rather than a domain answer (NotFound, ...).
func (s *SQLStore) err(op string, err error) error {
	err = store.Err(op, err)
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !isDomainAnswer(err) {
		s.ins.storeError(op)
	}
	return err
}

// isDomainAnswer reports whether err is an answer about the request's
// resources (not found, already exists, failed precondition, invalid)
// rather than a failure of the store.
func isDomainAnswer(err error) bool {
	for _, kind := range []error{apierr.ErrNotFound, apierr.ErrAlreadyExists, apierr.ErrFailedPrecondition, apierr.ErrInvalidArgument, apierr.ErrAborted} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}

// Append implements RunStore.
func (s *SQLStore) Append(ctx context.Context, m StreamMessage) (<-chan AppendResult, error) {
	s.writerOnce.Do(func() { s.writer = newMetricWriter(s, s.log, s.ins, s.queueSize) })
	if s.writer == nil { // closed before any append
		return nil, errWriterClosed
	}
	return s.writer.append(ctx, m)
}

// Close writes the metric points appended so far and stops the writer.
// Later appends fail with Unavailable. The database stays open.
func (s *SQLStore) Close() error {
	s.closeOnce.Do(func() {
		s.writerOnce.Do(func() {}) // no writer is started after Close
		if s.writer != nil {
			s.writer.close()
		}
		s.stmtMu.Lock()
		for i, stmt := range s.chunkStmts {
			if stmt != nil {
				stmt.Close()
				s.chunkStmts[i] = nil
			}
		}
		s.stmtMu.Unlock()
	})
	return nil
}

const experimentColumns = `experiment_id, name, description, artifact_location, lifecycle_stage, tags, create_time, update_time, delete_time`

// CreateExperiment implements Store.
func (s *SQLStore) CreateExperiment(ctx context.Context, e *Experiment) error {
	tags, err := json.Marshal(nonNil(e.Tags))
	if err != nil {
		return fmt.Errorf("encode tags: %w", err)
	}
	_, err = s.db.Exec(ctx,
		`INSERT INTO experiments (`+experimentColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		e.ID, e.Name, e.Description, e.ArtifactLocation, string(e.Stage), string(tags),
		millis(e.CreateTime), millis(e.UpdateTime), nullMillis(e.DeleteTime))
	if store.IsUniqueViolation(err) {
		hint := ""
		if existing, gerr := s.GetExperimentByName(ctx, e.Name); gerr == nil && existing.Stage == StageDeleted {
			hint = fmt.Sprintf("a deleted experiment (%s) has this name; restore it or choose another name", existing.ID)
		}
		return apierr.AlreadyExists("experiment", e.Name, hint)
	}
	return s.err("create experiment", err)
}

// GetExperiment implements Store.
func (s *SQLStore) GetExperiment(ctx context.Context, id string) (*Experiment, error) {
	row := s.db.Reader().QueryRowContext(ctx, `SELECT `+experimentColumns+` FROM experiments WHERE experiment_id = $1`, id)
	e, err := scanExperiment(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.NotFound("experiment", id)
	}
	return e, s.err("get experiment", err)
}

// GetExperimentByName implements Store.
func (s *SQLStore) GetExperimentByName(ctx context.Context, name string) (*Experiment, error) {
	row := s.db.Reader().QueryRowContext(ctx, `SELECT `+experimentColumns+` FROM experiments WHERE name = $1`, name)
	e, err := scanExperiment(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.NotFound("experiment", name)
	}
	return e, s.err("get experiment by name", err)
}

// ListExperiments implements Store.
func (s *SQLStore) ListExperiments(ctx context.Context, q ListQuery) ([]*Experiment, error) {
	query := `SELECT ` + experimentColumns + ` FROM experiments WHERE 1 = 1`
	var args []any
	switch q.View {
	case ViewActive:
		args = append(args, string(StageActive))
		query += fmt.Sprintf(` AND lifecycle_stage = $%d`, len(args))
	case ViewDeleted:
		args = append(args, string(StageDeleted))
		query += fmt.Sprintf(` AND lifecycle_stage = $%d`, len(args))
	}
	if q.AfterID != "" {
		args = append(args, q.AfterID)
		query += fmt.Sprintf(` AND experiment_id < $%d`, len(args))
	}
	args = append(args, q.Limit)
	query += fmt.Sprintf(` ORDER BY experiment_id DESC LIMIT $%d`, len(args))

	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.err("list experiments", err)
	}
	defer rows.Close()
	var out []*Experiment
	for rows.Next() {
		e, err := scanExperiment(rows)
		if err != nil {
			return nil, s.err("list experiments", err)
		}
		out = append(out, e)
	}
	return out, s.err("list experiments", rows.Err())
}

// UpdateExperiment implements Store.
func (s *SQLStore) UpdateExperiment(ctx context.Context, id string, mutate func(*Experiment) error) (*Experiment, error) {
	var out *Experiment
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		q := `SELECT ` + experimentColumns + ` FROM experiments WHERE experiment_id = $1`
		if s.db.Dialect() == store.Postgres {
			q += ` FOR UPDATE`
		}
		e, err := scanExperiment(tx.QueryRowContext(ctx, q, id))
		if errors.Is(err, sql.ErrNoRows) {
			return apierr.NotFound("experiment", id)
		}
		if err != nil {
			return err
		}
		if err := mutate(e); err != nil {
			return err
		}
		tags, err := json.Marshal(nonNil(e.Tags))
		if err != nil {
			return fmt.Errorf("encode tags: %w", err)
		}
		_, err = tx.ExecContext(ctx, `UPDATE experiments SET name = $2, description = $3, artifact_location = $4,
			lifecycle_stage = $5, tags = $6, update_time = $7, delete_time = $8 WHERE experiment_id = $1`,
			e.ID, e.Name, e.Description, e.ArtifactLocation, string(e.Stage), string(tags),
			millis(e.UpdateTime), nullMillis(e.DeleteTime))
		if store.IsUniqueViolation(err) {
			return apierr.AlreadyExists("experiment", e.Name, "")
		}
		if err != nil {
			return err
		}
		out = e
		return nil
	})
	if err != nil {
		return nil, s.err("update experiment", err)
	}
	return out, nil
}

type scanner interface {
	Scan(dest ...any) error
}

func scanExperiment(r scanner) (*Experiment, error) {
	var (
		e                Experiment
		stage, tags      string
		created, updated int64
		deleted          sql.NullInt64
	)
	if err := r.Scan(&e.ID, &e.Name, &e.Description, &e.ArtifactLocation, &stage, &tags, &created, &updated, &deleted); err != nil {
		return nil, err
	}
	e.Stage = Stage(stage)
	if err := json.Unmarshal([]byte(tags), &e.Tags); err != nil {
		return nil, fmt.Errorf("decode tags of experiment %s: %w", e.ID, err)
	}
	e.CreateTime = time.UnixMilli(created).UTC()
	e.UpdateTime = time.UnixMilli(updated).UTC()
	if deleted.Valid {
		e.DeleteTime = time.UnixMilli(deleted.Int64).UTC()
	}
	return &e, nil
}

func millis(t time.Time) int64 { return t.UnixMilli() }

func nullMillis(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMilli(), Valid: true}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
