package regime

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// SQLStore implements Store on SQLite and PostgreSQL.
type SQLStore struct {
	db *store.DB

	mu   sync.Mutex
	full map[insert]*sql.Stmt // SQLite: each insert's full chunk, prepared once
}

var _ Store = (*SQLStore)(nil)

// NewSQLStore returns a store on db, migrated with Migrations.
func NewSQLStore(db *store.DB) *SQLStore { return &SQLStore{db: db} }

// rowsPerInsert bounds a multi-row INSERT (7 parameters a row).
const rowsPerInsert = 500

// placeholder returns the i-th (0-based) parameter of the dialect:
// anonymous on SQLite (numbered names are looked up linearly there), $n on
// PostgreSQL.
func (s *SQLStore) placeholder(i int) string {
	if s.db.Dialect() == store.SQLite {
		return "?"
	}
	return fmt.Sprintf("$%d", i+1)
}

// insert is a multi-row INSERT: prefix VALUES (...), (...) suffix, width
// values a row.
type insert struct {
	prefix, suffix string
	width          int
}

var (
	barsInsert   = insert{`INSERT INTO regime_bars (symbol, bar_time, open, high, low, close, volume) VALUES `, ``, 7}
	statesInsert = insert{`INSERT INTO regime_states (sequence, symbol, state) VALUES `, ``, 3}
	latestInsert = insert{`INSERT INTO regime_latest (symbol, sequence, state) VALUES `,
		` ON CONFLICT (symbol) DO UPDATE SET sequence = excluded.sequence, state = excluded.state`, 3}
)

// query is the statement for n rows.
func (s *SQLStore) query(ins insert, n int) string {
	var b strings.Builder
	b.WriteString(ins.prefix)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range ins.width {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(s.placeholder(i*ins.width + j))
		}
		b.WriteByte(')')
	}
	b.WriteString(ins.suffix)
	return b.String()
}

// prepare prepares, on SQLite, the full-chunk statement of each insert
// that will need one, so a message's bulk rows are not parsed again per
// commit. Call it outside a write transaction: the SQLite writer has one
// connection, which the transaction holds.
func (s *SQLStore) prepare(ctx context.Context, inserts map[insert]int) error {
	if s.db.Dialect() != store.SQLite {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ins, rows := range inserts {
		if rows < rowsPerInsert || s.full[ins] != nil {
			continue
		}
		stmt, err := s.db.PrepareWrite(ctx, s.query(ins, rowsPerInsert))
		if err != nil {
			return err
		}
		if s.full == nil {
			s.full = map[insert]*sql.Stmt{}
		}
		s.full[ins] = stmt
	}
	return nil
}

// fullStmt returns the prepared full-chunk statement of ins, or nil.
func (s *SQLStore) fullStmt(ins insert) *sql.Stmt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.full[ins]
}

// insertRows inserts rows in chunks of at most rowsPerInsert.
func (s *SQLStore) insertRows(ctx context.Context, tx *sql.Tx, ins insert, rows [][]any) error {
	args := make([]any, 0, min(len(rows), rowsPerInsert)*ins.width)
	for start := 0; start < len(rows); start += rowsPerInsert {
		chunk := rows[start:min(start+rowsPerInsert, len(rows))]
		args = args[:0]
		for _, r := range chunk {
			args = append(args, r...)
		}
		var err error
		if stmt := s.fullStmt(ins); stmt != nil && len(chunk) == rowsPerInsert {
			_, err = tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, s.query(ins, len(chunk)), args...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Commit implements Store.
func (s *SQLStore) Commit(ctx context.Context, w Write) (err error) {
	if len(w.Bars) == 0 && len(w.States) == 0 {
		return nil
	}
	ctx, end := s.db.StartBatch(ctx, "regime", len(w.Bars)+len(w.States))
	defer func() { end(err) }()
	bars := make([][]any, len(w.Bars))
	for i, b := range w.Bars {
		var vol any
		if b.HasVolume {
			vol = b.Volume
		}
		bars[i] = []any{b.Symbol, b.Time.UnixMicro(), b.Open, b.High, b.Low, b.Close, vol}
	}
	states := make([][]any, len(w.States))
	latest := map[string][]any{}
	for i, st := range w.States {
		blob, err := proto.Marshal(st)
		if err != nil {
			return fmt.Errorf("encode state: %w", err)
		}
		states[i] = []any{int64(st.GetSequence()), st.GetSymbol(), blob}
		latest[st.GetSymbol()] = states[i]
	}
	latestRows := make([][]any, 0, len(latest))
	for _, r := range latest {
		latestRows = append(latestRows, []any{r[1], r[0], r[2]})
	}
	if err := s.prepare(ctx, map[insert]int{barsInsert: len(bars), statesInsert: len(states), latestInsert: len(latestRows)}); err != nil {
		return store.Err("commit bars", err)
	}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		if err := s.insertRows(ctx, tx, barsInsert, bars); err != nil {
			return err
		}
		if err := s.insertRows(ctx, tx, statesInsert, states); err != nil {
			return err
		}
		return s.insertRows(ctx, tx, latestInsert, latestRows)
	})
	return store.Err("commit bars", err)
}

const barColumns = `symbol, bar_time, open, high, low, close, volume`

func scanBars(rows *sql.Rows) ([]Bar, error) {
	defer rows.Close()
	var out []Bar
	for rows.Next() {
		var (
			b   Bar
			t   int64
			vol sql.NullFloat64
		)
		if err := rows.Scan(&b.Symbol, &t, &b.Open, &b.High, &b.Low, &b.Close, &vol); err != nil {
			return nil, err
		}
		b.Time = time.UnixMicro(t).UTC()
		b.Volume, b.HasVolume = vol.Float64, vol.Valid
		out = append(out, b)
	}
	return out, rows.Err()
}

// LastBars implements Store.
func (s *SQLStore) LastBars(ctx context.Context, symbol string, n int) ([]Bar, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+barColumns+` FROM regime_bars WHERE symbol = $1 ORDER BY bar_time DESC LIMIT $2`, symbol, n)
	if err != nil {
		return nil, store.Err("last bars", err)
	}
	bars, err := scanBars(rows)
	if err != nil {
		return nil, store.Err("last bars", err)
	}
	for i, j := 0, len(bars)-1; i < j; i, j = i+1, j-1 {
		bars[i], bars[j] = bars[j], bars[i]
	}
	return bars, nil
}

// MaxClose implements Store.
func (s *SQLStore) MaxClose(ctx context.Context, symbol string) (float64, error) {
	var high sql.NullFloat64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT MAX(close) FROM regime_bars WHERE symbol = $1`, symbol).Scan(&high)
	return high.Float64, store.Err("max close", err)
}

// BarAt implements Store.
func (s *SQLStore) BarAt(ctx context.Context, symbol string, t time.Time) (*Bar, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+barColumns+` FROM regime_bars WHERE symbol = $1 AND bar_time = $2`, symbol, t.UnixMicro())
	if err != nil {
		return nil, store.Err("bar", err)
	}
	bars, err := scanBars(rows)
	if err != nil || len(bars) == 0 {
		return nil, store.Err("bar", err)
	}
	return &bars[0], nil
}

// Bars implements Store.
func (s *SQLStore) Bars(ctx context.Context, symbol string, start, end time.Time) ([]Bar, error) {
	q := `SELECT ` + barColumns + ` FROM regime_bars WHERE symbol = $1`
	args := []any{symbol}
	if !start.IsZero() {
		args = append(args, start.UnixMicro())
		q += fmt.Sprintf(` AND bar_time >= $%d`, len(args))
	}
	if !end.IsZero() {
		args = append(args, end.UnixMicro())
		q += fmt.Sprintf(` AND bar_time < $%d`, len(args))
	}
	rows, err := s.db.Reader().QueryContext(ctx, q+` ORDER BY bar_time`, args...)
	if err != nil {
		return nil, store.Err("bars", err)
	}
	bars, err := scanBars(rows)
	return bars, store.Err("bars", err)
}

// CreateModel implements Store.
func (s *SQLStore) CreateModel(ctx context.Context, m StoredModel, activate []string, at time.Time) error {
	blob, err := proto.Marshal(m.Model)
	if err != nil {
		return fmt.Errorf("encode model: %w", err)
	}
	meta, err := json.Marshal(m.Meta)
	if err != nil {
		return fmt.Errorf("encode model meta: %w", err)
	}
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO regime_models (model_id, create_time, model, mixture, meta) VALUES ($1, $2, $3, $4, $5)`,
			m.Model.GetModelId(), m.Model.GetCreateTime().AsTime().UnixMicro(), blob, m.Mixture, string(meta)); err != nil {
			return err
		}
		return s.activate(ctx, tx, m.Model.GetModelId(), activate, at)
	})
	return store.Err("create model", err)
}

func (s *SQLStore) activate(ctx context.Context, tx *sql.Tx, modelID string, symbols []string, at time.Time) error {
	for _, sym := range symbols {
		if _, err := tx.ExecContext(ctx, `INSERT INTO regime_activations (symbol, model_id, activate_time) VALUES ($1, $2, $3)
			ON CONFLICT (symbol) DO UPDATE SET model_id = excluded.model_id, activate_time = excluded.activate_time`,
			sym, modelID, at.UnixMicro()); err != nil {
			return err
		}
	}
	return nil
}

func scanModel(r interface{ Scan(...any) error }) (StoredModel, error) {
	var (
		blob, mixture []byte
		meta          string
		m             StoredModel
	)
	if err := r.Scan(&blob, &mixture, &meta); err != nil {
		return m, err
	}
	m.Model = &regimev1.Model{}
	if err := proto.Unmarshal(blob, m.Model); err != nil {
		return m, fmt.Errorf("decode model: %w", err)
	}
	m.Mixture = mixture
	if err := json.Unmarshal([]byte(meta), &m.Meta); err != nil {
		return m, fmt.Errorf("decode meta of model %s: %w", m.Model.GetModelId(), err)
	}
	return m, nil
}

// GetModel implements Store.
func (s *SQLStore) GetModel(ctx context.Context, id string) (StoredModel, error) {
	m, err := scanModel(s.db.Reader().QueryRowContext(ctx, `SELECT model, mixture, meta FROM regime_models WHERE model_id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return m, apierr.NotFound("model", id)
	}
	return m, store.Err("get model", err)
}

// ListModels implements Store.
func (s *SQLStore) ListModels(ctx context.Context, before string, limit int, activeOnly bool) ([]StoredModel, error) {
	q := `SELECT model, mixture, meta FROM regime_models m WHERE 1 = 1`
	var args []any
	if before != "" {
		args = append(args, before)
		q += fmt.Sprintf(` AND model_id < $%d`, len(args))
	}
	if activeOnly {
		q += ` AND EXISTS (SELECT 1 FROM regime_activations a WHERE a.model_id = m.model_id)`
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY model_id DESC LIMIT $%d`, len(args))
	rows, err := s.db.Reader().QueryContext(ctx, q, args...)
	if err != nil {
		return nil, store.Err("list models", err)
	}
	defer rows.Close()
	var out []StoredModel
	for rows.Next() {
		m, err := scanModel(rows)
		if err != nil {
			return nil, store.Err("list models", err)
		}
		out = append(out, m)
	}
	return out, store.Err("list models", rows.Err())
}

// Activate implements Store.
func (s *SQLStore) Activate(ctx context.Context, modelID string, symbols []string, at time.Time, states []*regimev1.RegimeState) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM regime_models WHERE model_id = $1`, modelID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
			return apierr.NotFound("model", modelID)
		} else if err != nil {
			return err
		}
		if err := s.activate(ctx, tx, modelID, symbols, at); err != nil {
			return err
		}
		for _, st := range states {
			blob, err := proto.Marshal(st)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO regime_states (sequence, symbol, state) VALUES ($1, $2, $3)`, int64(st.GetSequence()), st.GetSymbol(), blob); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO regime_latest (symbol, sequence, state) VALUES ($1, $2, $3)
				ON CONFLICT (symbol) DO UPDATE SET sequence = excluded.sequence, state = excluded.state`, st.GetSymbol(), int64(st.GetSequence()), blob); err != nil {
				return err
			}
		}
		return nil
	})
	return store.Err("activate model", err)
}

// Symbols implements Store.
func (s *SQLStore) Symbols(ctx context.Context) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT symbol FROM regime_bars ORDER BY symbol`)
	if err != nil {
		return nil, store.Err("symbols", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var sym string
		if err := rows.Scan(&sym); err != nil {
			return nil, store.Err("symbols", err)
		}
		out = append(out, sym)
	}
	return out, store.Err("symbols", rows.Err())
}

// Activations implements Store.
func (s *SQLStore) Activations(ctx context.Context) (map[string]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT symbol, model_id FROM regime_activations`)
	if err != nil {
		return nil, store.Err("activations", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var sym, id string
		if err := rows.Scan(&sym, &id); err != nil {
			return nil, store.Err("activations", err)
		}
		out[sym] = id
	}
	return out, store.Err("activations", rows.Err())
}

func scanStates(rows *sql.Rows) ([]*regimev1.RegimeState, error) {
	defer rows.Close()
	var out []*regimev1.RegimeState
	for rows.Next() {
		var blob []byte
		if err := rows.Scan(&blob); err != nil {
			return nil, err
		}
		st := &regimev1.RegimeState{}
		if err := proto.Unmarshal(blob, st); err != nil {
			return nil, fmt.Errorf("decode state: %w", err)
		}
		out = append(out, st)
	}
	return out, rows.Err()
}

// Latest implements Store.
func (s *SQLStore) Latest(ctx context.Context) (map[string]*regimev1.RegimeState, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT state FROM regime_latest`)
	if err != nil {
		return nil, store.Err("latest states", err)
	}
	list, err := scanStates(rows)
	if err != nil {
		return nil, store.Err("latest states", err)
	}
	out := make(map[string]*regimev1.RegimeState, len(list))
	for _, st := range list {
		out[st.GetSymbol()] = st
	}
	return out, nil
}

// LastSequence implements Store.
func (s *SQLStore) LastSequence(ctx context.Context) (uint64, error) {
	var a, b sql.NullInt64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT (SELECT MAX(sequence) FROM regime_states), (SELECT MAX(sequence) FROM regime_latest)`).Scan(&a, &b)
	return uint64(max(a.Int64, b.Int64)), store.Err("last sequence", err)
}

// FirstSequence implements Store.
func (s *SQLStore) FirstSequence(ctx context.Context) (uint64, error) {
	var a sql.NullInt64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT MIN(sequence) FROM regime_states`).Scan(&a)
	return uint64(a.Int64), store.Err("first sequence", err)
}

// States implements Store.
func (s *SQLStore) States(ctx context.Context, after uint64, symbols []string, limit int) ([]*regimev1.RegimeState, error) {
	q := `SELECT state FROM regime_states WHERE sequence > $1`
	args := []any{int64(after)}
	if len(symbols) > 0 {
		in := make([]string, len(symbols))
		for i, sym := range symbols {
			args = append(args, sym)
			in[i] = fmt.Sprintf("$%d", len(args))
		}
		q += ` AND symbol IN (` + strings.Join(in, ", ") + `)`
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY sequence LIMIT $%d`, len(args))
	rows, err := s.db.Reader().QueryContext(ctx, q, args...)
	if err != nil {
		return nil, store.Err("states", err)
	}
	out, err := scanStates(rows)
	return out, store.Err("states", err)
}

// PruneStates implements Store.
func (s *SQLStore) PruneStates(ctx context.Context, upTo uint64) error {
	_, err := s.db.Exec(ctx, `DELETE FROM regime_states WHERE sequence <= $1`, int64(upTo))
	return store.Err("prune states", err)
}
