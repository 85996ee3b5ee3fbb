package experiment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// The A/B tests' SQL. Locks, when several are taken, are taken in one
// order: the test's row, the ab_revision counter, then (a promotion) the
// registry's locks in their own order.

const abColumns = `ab_test_id, name, model_name, control_version, treatment_version, treatment_bps, mode, salt, state,
	max_latency_p95_ratio, min_agreement_rate, min_observations, outcome, description,
	create_time, start_time, stop_time, promoted, revision, split_time`

func errABTestNotFound(id string) error { return apierr.NotFound("ab_test", id) }

func errSecondRunning(model string) error {
	return &apierr.Error{
		Kind:     apierr.ErrFailedPrecondition,
		Reason:   "AB_TEST_ALREADY_RUNNING",
		Message:  fmt.Sprintf("model_name %q already has a running A/B test; pause or stop it first", model),
		Metadata: map[string]string{"model_name": model},
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// CreateABTest implements ABTestStore.
func (s *SQLStore) CreateABTest(ctx context.Context, t *ABTest) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		rev, err := nextABRevision(ctx, tx)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO ab_tests (`+abColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
			abArgs(t, rev)...)
		if store.IsUniqueViolation(err) {
			if t.State == experimentv1.ABTestState_AB_TEST_STATE_RUNNING {
				return errSecondRunning(t.Model)
			}
			return apierr.AlreadyExists("ab_test", t.ID, "")
		}
		if err != nil {
			return err
		}
		t.Revision = rev
		return nil
	})
	return s.err("create ab test", err)
}

func abArgs(t *ABTest, rev uint64) []any {
	return []any{t.ID, t.Name, t.Model, t.ControlVersion, t.TreatmentVersion, t.TreatmentBPS,
		t.Mode.String(), t.Salt, t.State.String(),
		t.MaxLatencyP95Ratio, t.MinAgreementRate, t.MinObservations, t.Outcome.String(), t.Description,
		millis(t.CreateTime), nullMillis(t.StartTime), nullMillis(t.StopTime), boolInt(t.Promoted), int64(rev), nullMillis(t.SplitTime)}
}

func nextABRevision(ctx context.Context, tx *sql.Tx) (uint64, error) {
	var rev int64
	if err := tx.QueryRowContext(ctx, `UPDATE ab_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("next ab revision: %w", err)
	}
	return uint64(rev), nil
}

// GetABTest implements ABTestStore.
func (s *SQLStore) GetABTest(ctx context.Context, id string) (*ABTest, error) {
	t, err := scanABTest(s.db.Reader().QueryRowContext(ctx, `SELECT `+abColumns+` FROM ab_tests WHERE ab_test_id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errABTestNotFound(id)
	}
	if err != nil {
		return nil, s.err("get ab test", err)
	}
	return t, nil
}

// ListABTests implements ABTestStore.
func (s *SQLStore) ListABTests(ctx context.Context, q ABListQuery) ([]*ABTest, error) {
	query := `SELECT ` + abColumns + ` FROM ab_tests WHERE 1 = 1`
	var args []any
	if q.Model != "" {
		args = append(args, q.Model)
		query += fmt.Sprintf(` AND model_name = $%d`, len(args))
	}
	if q.State != experimentv1.ABTestState_AB_TEST_STATE_UNSPECIFIED {
		args = append(args, q.State.String())
		query += fmt.Sprintf(` AND state = $%d`, len(args))
	}
	if q.AfterID != "" {
		args = append(args, q.AfterID)
		query += fmt.Sprintf(` AND ab_test_id < $%d`, len(args))
	}
	args = append(args, q.Limit)
	query += fmt.Sprintf(` ORDER BY ab_test_id DESC LIMIT $%d`, len(args))
	out, err := queryABTests(ctx, s.db.Reader(), query, args...)
	if err != nil {
		return nil, s.err("list ab tests", err)
	}
	return out, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func queryABTests(ctx context.Context, q querier, query string, args ...any) ([]*ABTest, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*ABTest
	for rows.Next() {
		t, err := scanABTest(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// UpdateABTest implements ABTestStore.
func (s *SQLStore) UpdateABTest(ctx context.Context, id string, mutate func(*ABTest) (*AliasMove, error)) (*ABTest, error) {
	var out *ABTest
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		t, err := scanABTest(tx.QueryRowContext(ctx, `SELECT `+abColumns+` FROM ab_tests WHERE ab_test_id = $1`+s.lockRow(), id))
		if errors.Is(err, sql.ErrNoRows) {
			return errABTestNotFound(id)
		}
		if err != nil {
			return err
		}
		move, err := mutate(t)
		if err != nil {
			return err
		}
		rev, err := nextABRevision(ctx, tx)
		if err != nil {
			return err
		}
		args := abArgs(t, rev)
		_, err = tx.ExecContext(ctx, `UPDATE ab_tests SET name = $2, model_name = $3, control_version = $4, treatment_version = $5,
			treatment_bps = $6, mode = $7, salt = $8, state = $9, max_latency_p95_ratio = $10, min_agreement_rate = $11,
			min_observations = $12, outcome = $13, description = $14, create_time = $15, start_time = $16, stop_time = $17,
			promoted = $18, revision = $19, split_time = $20 WHERE ab_test_id = $1`, args...)
		if store.IsUniqueViolation(err) {
			return errSecondRunning(t.Model)
		}
		if err != nil {
			return err
		}
		if move != nil {
			if _, err := s.setAliasTx(ctx, tx, *move); err != nil {
				return err
			}
		}
		t.Revision = rev
		out = t
		return nil
	})
	if err != nil {
		return nil, s.err("update ab test", err)
	}
	return out, nil
}

// ABTestChanges implements ABTestStore.
func (s *SQLStore) ABTestChanges(ctx context.Context, after uint64, activeOnly bool) ([]*ABTest, uint64, error) {
	var (
		out []*ABTest
		rev uint64
	)
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var r int64
		if err := tx.QueryRowContext(ctx, `SELECT revision FROM ab_revision WHERE id = 1`).Scan(&r); err != nil {
			return err
		}
		rev = uint64(r)
		query := `SELECT ` + abColumns + ` FROM ab_tests WHERE revision > $1`
		args := []any{int64(after)}
		if activeOnly {
			query += ` AND state <> $2`
			args = append(args, experimentv1.ABTestState_AB_TEST_STATE_STOPPED.String())
		}
		var err error
		out, err = queryABTests(ctx, tx, query+` ORDER BY revision`, args...)
		return err
	})
	if err != nil {
		return nil, 0, s.err("read ab test changes", err)
	}
	return out, rev, nil
}

// ABRevision implements ABTestStore.
func (s *SQLStore) ABRevision(ctx context.Context) (uint64, error) {
	var rev int64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT revision FROM ab_revision WHERE id = 1`).Scan(&rev); err != nil {
		return 0, s.err("read ab revision", err)
	}
	return uint64(rev), nil
}

func scanABTest(r scanner) (*ABTest, error) {
	var (
		t                    ABTest
		mode, state, outcome string
		created              int64
		started, stopped     sql.NullInt64
		split                sql.NullInt64
		promoted             int64
		rev                  int64
	)
	if err := r.Scan(&t.ID, &t.Name, &t.Model, &t.ControlVersion, &t.TreatmentVersion, &t.TreatmentBPS, &mode, &t.Salt, &state,
		&t.MaxLatencyP95Ratio, &t.MinAgreementRate, &t.MinObservations, &outcome, &t.Description,
		&created, &started, &stopped, &promoted, &rev, &split); err != nil {
		return nil, err
	}
	t.Mode = experimentv1.ABTestMode(experimentv1.ABTestMode_value[mode])
	t.State = experimentv1.ABTestState(experimentv1.ABTestState_value[state])
	t.Outcome = experimentv1.ABOutcome(experimentv1.ABOutcome_value[outcome])
	t.CreateTime = time.UnixMilli(created).UTC()
	if started.Valid {
		t.StartTime = time.UnixMilli(started.Int64).UTC()
	}
	if stopped.Valid {
		t.StopTime = time.UnixMilli(stopped.Int64).UTC()
	}
	if split.Valid {
		t.SplitTime = time.UnixMilli(split.Int64).UTC()
	}
	t.Promoted = promoted != 0
	t.Revision = uint64(rev)
	return &t, nil
}

// observationChunk rows go in one INSERT (14 parameters each; far below
// both backends' parameter limits).
const observationChunk = 200

type rollupKey struct {
	test   string
	minute int64
	arm    experimentv1.ABArm
}

type rollup struct {
	requests, buy, hold, sell         int64
	confidence, latency               float64
	paired, agreements                int64
	shadowBuy, shadowHold, shadowSell int64
	shadowConfidence, shadowLatency   float64
	pairedConfidence                  float64
}

func (r *rollup) add(o *ABObservation) {
	r.requests++
	countAction(o.Action, &r.buy, &r.hold, &r.sell)
	r.confidence += o.Confidence
	r.latency += o.LatencyMS
	if o.Paired {
		r.paired++
		r.pairedConfidence += o.Confidence
		if o.Action == o.ShadowAction {
			r.agreements++
		}
		countAction(o.ShadowAction, &r.shadowBuy, &r.shadowHold, &r.shadowSell)
		r.shadowConfidence += o.ShadowConfidence
		r.shadowLatency += o.ShadowLatencyMS
	}
}

const observationInsert = `INSERT INTO ab_observations (ab_test_id, observation_id, unit_id, arm, model_version, action, confidence,
	latency_ms, paired, shadow_action, shadow_confidence, shadow_latency_ms, observe_time) VALUES `

func observationArgs(o *ABObservation) []any {
	return []any{o.TestID, o.ID, o.Unit, int32(o.Arm), o.ModelVersion, int32(o.Action), o.Confidence,
		o.LatencyMS, boolInt(o.Paired), int32(o.ShadowAction), o.ShadowConfidence, o.ShadowLatencyMS, millis(o.Time)}
}

// insertObservationsEach inserts one row per statement execution (SQLite:
// no round trips, and a prepared statement beats binding thousands of
// parameters at once), calling stored for each new row.
func insertObservationsEach(ctx context.Context, tx *sql.Tx, obs []*ABObservation, stored func(*ABObservation)) error {
	stmt, err := tx.PrepareContext(ctx, observationInsert+
		`($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (ab_test_id, observation_id) DO NOTHING`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, o := range obs {
		res, err := stmt.ExecContext(ctx, observationArgs(o)...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 1 {
			stored(o)
		}
	}
	return nil
}

// insertObservationsChunked inserts many rows per statement (PostgreSQL:
// one round trip per chunk), calling stored for each new row.
// With TimescaleDB the observations' key also holds observe_time (a
// hypertable's unique keys must hold its time column; see migration 0009).
func insertObservationsChunked(ctx context.Context, tx *sql.Tx, timescale bool, obs []*ABObservation, stored func(*ABObservation)) error {
	conflict := ` ON CONFLICT (ab_test_id, observation_id) DO NOTHING RETURNING ab_test_id, observation_id`
	if timescale {
		conflict = ` ON CONFLICT (ab_test_id, observation_id, observe_time) DO NOTHING RETURNING ab_test_id, observation_id`
	}
	for start := 0; start < len(obs); start += observationChunk {
		chunk := obs[start:min(start+observationChunk, len(obs))]
		var (
			b    strings.Builder
			args = make([]any, 0, len(chunk)*13)
			byID = make(map[[2]string]*ABObservation, len(chunk))
		)
		b.WriteString(observationInsert)
		for i, o := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&b, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d)",
				n+1, n+2, n+3, n+4, n+5, n+6, n+7, n+8, n+9, n+10, n+11, n+12, n+13)
			args = append(args, observationArgs(o)...)
			byID[[2]string{o.TestID, o.ID}] = o
		}
		b.WriteString(conflict)
		rows, err := tx.QueryContext(ctx, b.String(), args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k [2]string
			if err := rows.Scan(&k[0], &k[1]); err != nil {
				rows.Close()
				return err
			}
			if o := byID[k]; o != nil {
				delete(byID, k) // a duplicate inside the chunk counts once
				stored(o)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

func countAction(a experimentv1.TradeAction, buy, hold, sell *int64) {
	switch a {
	case experimentv1.TradeAction_TRADE_ACTION_BUY:
		*buy++
	case experimentv1.TradeAction_TRADE_ACTION_HOLD:
		*hold++
	case experimentv1.TradeAction_TRADE_ACTION_SELL:
		*sell++
	}
}

// RecordABObservations implements ABTestStore.
func (s *SQLStore) RecordABObservations(ctx context.Context, obs []*ABObservation) (_ int64, err error) {
	if len(obs) == 0 {
		return 0, nil
	}
	ctx, end := s.db.StartBatch(ctx, "ab_observations", len(obs))
	defer func() { end(err) }()
	var stored int64
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		stored = 0
		// Unknown tests are an error for the whole batch: nothing is
		// written.
		tests := map[string]bool{}
		for _, o := range obs {
			if tests[o.TestID] {
				continue
			}
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM ab_tests WHERE ab_test_id = $1`, o.TestID).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return errABTestNotFound(o.TestID)
			}
			if err != nil {
				return err
			}
			tests[o.TestID] = true
		}
		rollups := map[rollupKey]*rollup{}
		add := func(o *ABObservation) {
			stored++
			if s.db.Timescale() {
				return // the continuous aggregate ab_rollups_cagg rolls them up
			}
			key := rollupKey{o.TestID, o.Time.Truncate(time.Minute).UnixMilli(), o.Arm}
			r := rollups[key]
			if r == nil {
				r = &rollup{}
				rollups[key] = r
			}
			r.add(o)
		}
		var err error
		if s.db.Dialect() == store.Postgres {
			err = insertObservationsChunked(ctx, tx, s.db.Timescale(), obs, add)
		} else {
			err = insertObservationsEach(ctx, tx, obs, add)
		}
		if err != nil {
			return err
		}
		for k, r := range rollups {
			if _, err := tx.ExecContext(ctx, `INSERT INTO ab_rollups (ab_test_id, minute, arm, requests, buy, hold, sell,
				confidence_sum, latency_sum_ms, paired, agreements, shadow_buy, shadow_hold, shadow_sell,
				shadow_confidence_sum, shadow_latency_sum_ms, paired_confidence_sum)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
				ON CONFLICT (ab_test_id, minute, arm) DO UPDATE SET
					requests = ab_rollups.requests + excluded.requests,
					buy = ab_rollups.buy + excluded.buy,
					hold = ab_rollups.hold + excluded.hold,
					sell = ab_rollups.sell + excluded.sell,
					confidence_sum = ab_rollups.confidence_sum + excluded.confidence_sum,
					latency_sum_ms = ab_rollups.latency_sum_ms + excluded.latency_sum_ms,
					paired = ab_rollups.paired + excluded.paired,
					agreements = ab_rollups.agreements + excluded.agreements,
					shadow_buy = ab_rollups.shadow_buy + excluded.shadow_buy,
					shadow_hold = ab_rollups.shadow_hold + excluded.shadow_hold,
					shadow_sell = ab_rollups.shadow_sell + excluded.shadow_sell,
					shadow_confidence_sum = ab_rollups.shadow_confidence_sum + excluded.shadow_confidence_sum,
					shadow_latency_sum_ms = ab_rollups.shadow_latency_sum_ms + excluded.shadow_latency_sum_ms,
					paired_confidence_sum = ab_rollups.paired_confidence_sum + excluded.paired_confidence_sum`,
				k.test, k.minute, int32(k.arm), r.requests, r.buy, r.hold, r.sell, r.confidence, r.latency,
				r.paired, r.agreements, r.shadowBuy, r.shadowHold, r.shadowSell, r.shadowConfidence, r.shadowLatency, r.pairedConfidence); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, s.err("record ab observations", err)
	}
	return stored, nil
}

// rollupsTable names the per-minute rollups ABStats reads: the continuous
// aggregate with TimescaleDB (migrations 0009–0011), else the table
// RecordABObservations maintains. Both have the same columns.
func (s *SQLStore) rollupsTable() string {
	if s.db.Timescale() {
		return "ab_rollups_cagg"
	}
	return "ab_rollups"
}

// ABStats implements ABTestStore.
func (s *SQLStore) ABStats(ctx context.Context, testID string, srmSince time.Time) (*ABStats, error) {
	var out *ABStats
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		st := &ABStats{}
		rows, err := tx.QueryContext(ctx, `SELECT arm, SUM(requests), SUM(buy), SUM(hold), SUM(sell), SUM(confidence_sum),
			SUM(paired), SUM(agreements), SUM(shadow_buy), SUM(shadow_hold), SUM(shadow_sell), SUM(shadow_confidence_sum),
			SUM(paired_confidence_sum)
			FROM `+s.rollupsTable()+` WHERE ab_test_id = $1 GROUP BY arm`, testID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var (
				arm                    int32
				a, sh                  ABArmAgg
				paired, agreements     int64
				shadowConf, pairedConf float64
			)
			if err := rows.Scan(&arm, &a.Requests, &a.Buy, &a.Hold, &a.Sell, &a.ConfidenceSum, &paired, &agreements,
				&sh.Buy, &sh.Hold, &sh.Sell, &shadowConf, &pairedConf); err != nil {
				rows.Close()
				return err
			}
			into := &st.Control
			if experimentv1.ABArm(arm) == armTreatment {
				into = &st.Treatment
			}
			into.Requests += a.Requests
			into.Buy += a.Buy
			into.Hold += a.Hold
			into.Sell += a.Sell
			into.ConfidenceSum += a.ConfidenceSum
			// Shadow runs of treatment ride on control's answers.
			st.Treatment.Requests += paired
			st.Treatment.Buy += sh.Buy
			st.Treatment.Hold += sh.Hold
			st.Treatment.Sell += sh.Sell
			st.Treatment.ConfidenceSum += shadowConf
			st.Paired += paired
			st.Agreements += agreements
			st.ConfidenceDeltaSum += shadowConf - pairedConf
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		const (
			control   = `SELECT latency_ms AS v, unit_id, observe_time FROM ab_observations WHERE ab_test_id = $1 AND arm = 1`
			treatment = `SELECT latency_ms AS v, unit_id, observe_time FROM ab_observations WHERE ab_test_id = $1 AND arm = 2
				UNION ALL SELECT shadow_latency_ms AS v, unit_id, observe_time FROM ab_observations WHERE ab_test_id = $1 AND paired = 1`
			pairedControl   = `SELECT latency_ms AS v FROM ab_observations WHERE ab_test_id = $1 AND arm = 1 AND paired = 1`
			pairedTreatment = `SELECT shadow_latency_ms AS v FROM ab_observations WHERE ab_test_id = $1 AND paired = 1`
		)
		for _, q := range []struct {
			from            string
			n               int64
			units, srmUnits *int64
			p50, p95        *float64
		}{
			{control, st.Control.Requests, &st.Control.Units, &st.SRMControlUnits, &st.Control.LatencyP50MS, &st.Control.LatencyP95MS},
			{treatment, st.Treatment.Requests, &st.Treatment.Units, &st.SRMTreatmentUnits, &st.Treatment.LatencyP50MS, &st.Treatment.LatencyP95MS},
			{pairedControl, st.Paired, nil, nil, &st.PairedControlP50MS, &st.PairedControlP95MS},
			{pairedTreatment, st.Paired, nil, nil, &st.PairedTreatmentP50MS, &st.PairedTreatmentP95MS},
		} {
			if q.units != nil {
				// Units in all, and since the split changed (all of them when
				// it never did: the zero time is before every observation).
				if err := tx.QueryRowContext(ctx, `SELECT COUNT(DISTINCT unit_id), COUNT(DISTINCT CASE WHEN observe_time >= $2 THEN unit_id END) FROM (`+q.from+`) x`,
					testID, millis(srmSince)).Scan(q.units, q.srmUnits); err != nil {
					return err
				}
			}
			if *q.p50, err = percentile(ctx, tx, q.from, testID, q.n, 50); err != nil {
				return err
			}
			if *q.p95, err = percentile(ctx, tx, q.from, testID, q.n, 95); err != nil {
				return err
			}
		}
		out = st
		return nil
	})
	if err != nil {
		return nil, s.err("read ab stats", err)
	}
	return out, nil
}

// percentile reads the nearest-rank pct-th percentile of the n values v
// selected by from: the value at rank ceil(pct·n/100), in integers.
func percentile(ctx context.Context, tx *sql.Tx, from, testID string, n, pct int64) (float64, error) {
	if n == 0 {
		return 0, nil
	}
	rank := max((pct*n+99)/100, 1)
	var v float64
	err := tx.QueryRowContext(ctx, `SELECT v FROM (`+from+`) x ORDER BY v LIMIT 1 OFFSET $2`, testID, rank-1).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return v, err
}
