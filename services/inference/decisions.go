package inference

import (
	"context"
	"database/sql"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

//go:embed migrations
var migrationFiles embed.FS

// Migrations is the schema of the inference service's tables.
func Migrations() store.MigrationSet { return store.Embedded("inference", migrationFiles) }

// DecisionQuery selects a page of decisions.
type DecisionQuery struct {
	// Start and End bound decision_time: Start <= t < End; zero means
	// unbounded.
	Start, End time.Time
	Symbol     string
	ModelName  string
	// ModelVersion 0 means every version.
	ModelVersion int64
	OldestFirst  bool
	// After continues after this (time, id) in the query's order.
	After *DecisionCursor
	Limit int
}

// DecisionCursor is the position of a decision in a listing.
type DecisionCursor struct {
	TimeUS int64  `json:"t"`
	ID     string `json:"i"`
}

// DecisionStore persists decisions. Methods return apierr errors.
type DecisionStore interface {
	// InsertDecisions stores decisions in one transaction, skipping those
	// already stored (by time and id). It returns how many were new.
	InsertDecisions(ctx context.Context, ds []*inferencev1.Decision, persisted time.Time) (int, error)
	// GetDecision reads one decision; NotFound when it is not stored.
	GetDecision(ctx context.Context, id string) (*inferencev1.Decision, error)
	// ListDecisions reads a page.
	ListDecisions(ctx context.Context, q DecisionQuery) ([]*inferencev1.Decision, error)
}

// SQLDecisions implements DecisionStore on SQLite and PostgreSQL.
type SQLDecisions struct {
	db *store.DB
}

var _ DecisionStore = (*SQLDecisions)(nil)

// NewSQLDecisions returns a store on db, which must be migrated with
// Migrations.
func NewSQLDecisions(db *store.DB) *SQLDecisions { return &SQLDecisions{db: db} }

var decisionColumns = []string{"decision_id", "decision_time", "request_id", "client_time", "model_name", "model_version", "alias", "symbol",
	"unit_id", "features", "action", "p_buy", "p_hold", "p_sell", "confidence", "latency_ms", "ab_test_id", "arm", "shadow", "pinned", "persisted_time"}

func decisionRow(d *inferencev1.Decision, persisted int64) []any {
	var client any
	if d.GetClientTime() != nil {
		client = d.GetClientTime().AsTime().UnixMicro()
	}
	p := d.GetProbabilities()
	return []any{d.GetDecisionId(), d.GetDecisionTime().AsTime().UnixMicro(), d.GetRequestId(), client, d.GetModelName(), d.GetModelVersion(),
		d.GetAlias(), d.GetSymbol(), d.GetUnitId(), packFloats(d.GetFeatures()), int16(d.GetAction()), p.GetBuy(), p.GetHold(), p.GetSell(),
		d.GetConfidence(), d.GetLatencyMs(), d.GetAbTestId(), int16(d.GetArm()), d.GetShadow(), d.GetPinned(), persisted}
}

// sqliteDecisionsPerInsert bounds one multi-row INSERT on SQLite.
const sqliteDecisionsPerInsert = 100

// InsertDecisions implements DecisionStore. On PostgreSQL the batch is
// copied (COPY); a batch that was partly stored before (a redelivery)
// fails the copy on the key and is inserted again skipping what exists.
func (s *SQLDecisions) InsertDecisions(ctx context.Context, ds []*inferencev1.Decision, persisted time.Time) (n int, err error) {
	if len(ds) == 0 {
		return 0, nil
	}
	ctx, end := s.db.StartBatch(ctx, "decisions", len(ds))
	defer func() { end(err) }()
	at := persisted.UnixMicro()
	if s.db.Dialect() == store.Postgres {
		err := pgx.BeginFunc(ctx, s.db.Pool(), func(tx pgx.Tx) error {
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"decisions"}, decisionColumns, pgx.CopyFromSlice(len(ds), func(i int) ([]any, error) {
				return decisionRow(ds[i], at), nil
			}))
			return err
		})
		if err == nil {
			return len(ds), nil
		}
		if !store.IsUniqueViolation(err) {
			return 0, store.Err("insert decisions", err)
		}
		// A redelivered batch: insert what is new.
	}
	inserted := 0
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		inserted = 0
		for start := 0; start < len(ds); start += sqliteDecisionsPerInsert {
			chunk := ds[start:min(start+sqliteDecisionsPerInsert, len(ds))]
			var b strings.Builder
			b.WriteString(`INSERT INTO decisions (` + strings.Join(decisionColumns, ", ") + `) VALUES `)
			args := make([]any, 0, len(chunk)*len(decisionColumns))
			for i, d := range chunk {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteByte('(')
				for j := range decisionColumns {
					if j > 0 {
						b.WriteString(", ")
					}
					if s.db.Dialect() == store.Postgres {
						fmt.Fprintf(&b, "$%d", len(args)+j+1)
					} else {
						b.WriteByte('?')
					}
				}
				b.WriteByte(')')
				args = append(args, decisionRow(d, at)...)
			}
			b.WriteString(` ON CONFLICT (decision_time, decision_id) DO NOTHING`)
			res, err := tx.ExecContext(ctx, b.String(), args...)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			inserted += int(n)
		}
		return nil
	})
	return inserted, store.Err("insert decisions", err)
}

// GetDecision implements DecisionStore.
func (s *SQLDecisions) GetDecision(ctx context.Context, id string) (*inferencev1.Decision, error) {
	row := s.db.Reader().QueryRowContext(ctx, `SELECT `+strings.Join(decisionColumns, ", ")+` FROM decisions WHERE decision_id = $1 LIMIT 1`, id)
	d, err := scanDecision(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.NotFound("decision", id)
	}
	return d, store.Err("get decision", err)
}

// ListDecisions implements DecisionStore.
func (s *SQLDecisions) ListDecisions(ctx context.Context, q DecisionQuery) ([]*inferencev1.Decision, error) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if !q.Start.IsZero() {
		where = append(where, `decision_time >= `+arg(q.Start.UnixMicro()))
	}
	if !q.End.IsZero() {
		where = append(where, `decision_time < `+arg(q.End.UnixMicro()))
	}
	if q.Symbol != "" {
		where = append(where, `symbol = `+arg(q.Symbol))
	}
	if q.ModelName != "" {
		where = append(where, `model_name = `+arg(q.ModelName))
	}
	if q.ModelVersion != 0 {
		where = append(where, `model_version = `+arg(q.ModelVersion))
	}
	order, cmp := `DESC`, `<`
	if q.OldestFirst {
		order, cmp = `ASC`, `>`
	}
	if q.After != nil {
		where = append(where, `(decision_time, decision_id) `+cmp+` (`+arg(q.After.TimeUS)+`, `+arg(q.After.ID)+`)`)
	}
	query := `SELECT ` + strings.Join(decisionColumns, ", ") + ` FROM decisions`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	query += ` ORDER BY decision_time ` + order + `, decision_id ` + order + ` LIMIT ` + arg(q.Limit)
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, store.Err("list decisions", err)
	}
	defer rows.Close()
	var out []*inferencev1.Decision
	for rows.Next() {
		d, err := scanDecision(rows)
		if err != nil {
			return nil, store.Err("list decisions", err)
		}
		out = append(out, d)
	}
	return out, store.Err("list decisions", rows.Err())
}

type scanner interface{ Scan(dest ...any) error }

func scanDecision(r scanner) (*inferencev1.Decision, error) {
	var (
		d                        inferencev1.Decision
		at, persisted            int64
		client                   sql.NullInt64
		features                 []byte
		action, arm              int64
		pBuy, pHold, pSell       float64
		requestID, alias, symbol string
		unit, test               string
	)
	err := r.Scan(&d.DecisionId, &at, &requestID, &client, &d.ModelName, &d.ModelVersion, &alias, &symbol, &unit, &features,
		&action, &pBuy, &pHold, &pSell, &d.Confidence, &d.LatencyMs, &test, &arm, &d.Shadow, &d.Pinned, &persisted)
	if err != nil {
		return nil, err
	}
	d.DecisionTime = timestamppb.New(time.UnixMicro(at))
	if client.Valid {
		d.ClientTime = timestamppb.New(time.UnixMicro(client.Int64))
	}
	d.RequestId, d.Alias, d.Symbol, d.UnitId, d.AbTestId = requestID, alias, symbol, unit, test
	if d.Features, err = unpackFloats(features); err != nil {
		return nil, fmt.Errorf("decision %s: %w", d.DecisionId, err)
	}
	d.Action, d.Arm = inferencev1.Action(action), inferencev1.Arm(arm)
	d.Probabilities = &inferencev1.ActionProbabilities{Buy: pBuy, Hold: pHold, Sell: pSell}
	return &d, nil
}

// packFloats encodes xs as little-endian float64s.
func packFloats(xs []float64) []byte {
	b := make([]byte, 8*len(xs))
	for i, x := range xs {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	return b
}

func unpackFloats(b []byte) ([]float64, error) {
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("features: %d bytes is not a whole number of float64s", len(b))
	}
	out := make([]float64, len(b)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out, nil
}
