package risk

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// SQLStore implements Store on SQLite and PostgreSQL. One writer goroutine
// commits submitted units in order, as many per transaction as are waiting
// (group commit), so a burst of checks pays for one durable commit.
type SQLStore struct {
	db  *store.DB
	log *slog.Logger

	queue  chan *pending
	stop   chan struct{}
	exited chan struct{}
	// closeMu orders submits before Close: a submit holds it shared while
	// it enqueues, Close takes it exclusively to mark the store closed.
	closeMu sync.RWMutex
	closed  bool

	hookMu sync.Mutex
	hook   func([]*riskv1.RiskEvent)

	nextSeq uint64 // owned by the writer
	// seqUnsure is set, by the writer, when a transaction that numbered
	// events failed: it may have committed all the same (an error after
	// the server committed, such as commitTimeout), so nextSeq is read
	// again from the store before it numbers more events.
	seqUnsure bool
	stmts     map[string]*sql.Stmt // prepared write statements, owned by the writer
}

var _ Store = (*SQLStore)(nil)

type pending struct {
	u      *unit
	done   chan error  // buffered: the writer never blocks on it
	onFail func(error) // SubmitAsync only
}

// finish reports the outcome of p (the writer only). A failure fails the
// rest of p's chain.
func (p *pending) finish(err error) {
	if c := p.u.chain; err != nil && c != nil && c.err == nil {
		c.err = err
	}
	if p.done != nil {
		p.done <- err
	}
	if err != nil && p.onFail != nil {
		p.onFail(err)
	}
}

// Group commit bounds.
const (
	maxGroup      = 512
	commitTimeout = 10 * time.Second
	// maxCommitLinks bounds the links of a commit's span to the requests
	// whose units it writes (the SDK's default limit).
	maxCommitLinks = 128
)

// errStoreClosed is returned for units submitted after Close.
var errStoreClosed = errors.New("risk store is closed")

// NewSQLStore starts the writer on db, which must be migrated with
// Migrations.
func NewSQLStore(ctx context.Context, db *store.DB, log *slog.Logger) (*SQLStore, error) {
	last, err := lastSequence(ctx, db)
	if err != nil {
		return nil, err
	}
	s := &SQLStore{
		db:      db,
		log:     log,
		queue:   make(chan *pending, 8192),
		stop:    make(chan struct{}),
		exited:  make(chan struct{}),
		nextSeq: last + 1,
	}
	go s.writer()
	return s, nil
}

// lastSequence reads the sequence of the newest stored event (0 when there
// is none).
func lastSequence(ctx context.Context, db *store.DB) (uint64, error) {
	var last sql.NullInt64
	if err := db.Reader().QueryRowContext(ctx, `SELECT MAX(sequence) FROM risk_events`).Scan(&last); err != nil {
		return 0, store.Err("read last risk event", err)
	}
	return uint64(last.Int64), nil
}

// OnCommit implements Store.
func (s *SQLStore) OnCommit(fn func([]*riskv1.RiskEvent)) {
	s.hookMu.Lock()
	s.hook = fn
	s.hookMu.Unlock()
}

// Submit implements Store.
func (s *SQLStore) Submit(u *unit) <-chan error {
	done := make(chan error, 1)
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		done <- errStoreClosed
		return done
	}
	// The writer runs until Close, which waits for this read lock: the
	// send cannot be stranded in a queue nobody reads.
	s.queue <- &pending{u: u, done: done}
	return done
}

// errQueueFull is passed to SubmitAsync's onFail when the queue is full.
var errQueueFull = errors.New("risk store queue is full")

// SubmitAsync implements Store.
func (s *SQLStore) SubmitAsync(u *unit, onFail func(error)) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		onFail(errStoreClosed)
		return
	}
	select {
	case s.queue <- &pending{u: u, onFail: onFail}:
	default:
		onFail(errQueueFull)
	}
}

// Close commits what was submitted and stops the writer. Later submits
// fail with errStoreClosed.
func (s *SQLStore) Close() error {
	s.closeMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	s.closeMu.Unlock()
	<-s.exited
	return nil
}

func (s *SQLStore) writer() {
	defer close(s.exited)
	defer func() {
		for _, ps := range s.stmts {
			ps.Close()
		}
	}()
	batch := make([]*pending, 0, maxGroup)
	for {
		var first *pending
		select {
		case first = <-s.queue:
		case <-s.stop:
			// Drain what was submitted before Close.
			for {
				select {
				case p := <-s.queue:
					s.commitGroup([]*pending{p})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxGroup {
			select {
			case p := <-s.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		s.commitGroup(batch)
	}
}

// commitGroup commits a batch in one transaction; if it fails, each unit is
// retried alone so that one bad unit cannot fail the others. A unit whose
// chain failed before it is failed without being written: it carries the
// failed unit's effect (see writeChain).
func (s *SQLStore) commitGroup(batch []*pending) {
	live := batch[:0]
	for _, p := range batch {
		if c := p.u.chain; c != nil && c.err != nil {
			p.finish(fmt.Errorf("an earlier write of the account failed: %w", c.err))
			continue
		}
		live = append(live, p)
	}
	batch = live
	if len(batch) == 0 {
		return
	}
	err := s.commitUnits(batch)
	if err == nil {
		for _, p := range batch {
			p.finish(nil)
		}
		return
	}
	if len(batch) == 1 {
		batch[0].finish(err)
		return
	}
	for _, p := range batch {
		s.commitGroup([]*pending{p})
	}
}

func (s *SQLStore) commitUnits(batch []*pending) error {
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if s.seqUnsure && hasEvents(batch) {
		last, err := lastSequence(ctx, s.db)
		if err != nil {
			return err
		}
		s.nextSeq = max(s.nextSeq, last+1)
		s.seqUnsure = false
	}
	first := s.nextSeq
	var events []*riskv1.RiskEvent
	var w writeBatch
	for _, p := range batch {
		if err := w.add(p.u, &s.nextSeq, &events); err != nil {
			s.rollbackSeq(first, events)
			return err
		}
	}
	if len(w.stmts) == 0 {
		// Nothing to write (units that only wait for the ones before
		// them): durable now, since every earlier unit is finished.
		return nil
	}
	var links []trace.Link
	for _, p := range batch {
		if sc := p.u.span; sc.IsSampled() && len(links) < maxCommitLinks && (len(links) == 0 || !links[len(links)-1].SpanContext.Equal(sc)) {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, end := s.db.StartBatch(ctx, "risk", len(w.stmts), links...)
	var err error
	if pool := s.db.Pool(); pool != nil {
		err = w.sendPG(ctx, pool)
	} else {
		// Statements are prepared before the transaction: SQLite has one
		// writer connection, which the transaction holds.
		if err = s.prepareAll(ctx); err == nil {
			err = s.db.InTx(ctx, func(tx *sql.Tx) error { return w.sendSQL(ctx, tx, s.stmts) })
		}
	}
	end(err)
	if err != nil {
		s.rollbackSeq(first, events)
		// The transaction may have committed although it reported an
		// error; reusing its sequences would then fail every later event
		// on a unique key, kill switch trips included.
		s.seqUnsure = s.seqUnsure || len(events) > 0
		return store.Err("commit risk state", err)
	}
	s.hookMu.Lock()
	hook := s.hook
	s.hookMu.Unlock()
	if hook != nil && len(events) > 0 {
		hook(events)
	}
	return nil
}

func hasEvents(batch []*pending) bool {
	for _, p := range batch {
		if len(p.u.events) > 0 {
			return true
		}
	}
	return false
}

func (s *SQLStore) rollbackSeq(first uint64, events []*riskv1.RiskEvent) {
	s.nextSeq = first
	for _, ev := range events {
		ev.Sequence = 0
	}
}

// writeBatch is a list of statements applied in one transaction.
type writeBatch struct {
	stmts []stmt
}

type stmt struct {
	query string
	args  []any
}

func (w *writeBatch) exec(query string, args ...any) {
	w.stmts = append(w.stmts, stmt{query: query, args: args})
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func nullMicros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

const (
	upsertAccount = `INSERT INTO risk_accounts (account_id, created, limits, kill, cash, day_start, day_equity, high_water)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (account_id) DO UPDATE SET limits = excluded.limits, kill = excluded.kill, cash = excluded.cash,
		day_start = excluded.day_start, day_equity = excluded.day_equity, high_water = excluded.high_water`
	updateAnchors  = `UPDATE risk_accounts SET cash = $2, day_start = $3, day_equity = $4, high_water = $5 WHERE account_id = $1`
	upsertPosition = `INSERT INTO risk_positions (account_id, symbol, qty, avg_price, realized, updated)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (account_id, symbol) DO UPDATE SET qty = excluded.qty, avg_price = excluded.avg_price,
		realized = excluded.realized, updated = excluded.updated`
	upsertReservation = `INSERT INTO risk_reservations (reservation_id, account_id, client_order_id, symbol, side, order_type,
		order_qty, filled_qty, price, state, created, expires, closed, close_reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (reservation_id) DO UPDATE SET filled_qty = excluded.filled_qty, state = excluded.state,
		closed = excluded.closed, close_reason = excluded.close_reason`
	insertFill = `INSERT INTO risk_fills (account_id, fill_id, reservation_id, quantity, price, fee, fill_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`
	upsertPrice = `INSERT INTO risk_prices (symbol, price, price_time) VALUES ($1, $2, $3)
		ON CONFLICT (symbol) DO UPDATE SET price = excluded.price, price_time = excluded.price_time
		WHERE excluded.price_time >= risk_prices.price_time`
	insertEvent = `INSERT INTO risk_events (sequence, account_id, event_type, event_time, payload) VALUES ($1, $2, $3, $4, $5)`
)

// add appends u's statements, numbering its events from *seq.
func (w *writeBatch) add(u *unit, seq *uint64, events *[]*riskv1.RiskEvent) error {
	for _, a := range u.accounts {
		if !a.full {
			w.exec(updateAnchors, a.id, a.cash, micros(a.dayStart), a.dayEquity, a.highWater)
			continue
		}
		limits, err := proto.Marshal(a.limits)
		if err != nil {
			return err
		}
		kill, err := proto.Marshal(a.kill)
		if err != nil {
			return err
		}
		w.exec(upsertAccount, a.id, micros(a.created), limits, kill, a.cash, micros(a.dayStart), a.dayEquity, a.highWater)
	}
	for _, p := range u.positions {
		w.exec(upsertPosition, p.accountID, p.symbol, p.qty, p.avgPrice, p.realized, micros(p.updated))
	}
	for i := range u.reservations {
		r := &u.reservations[i]
		w.exec(upsertReservation, r.id, r.accountID, r.clientOrderID, r.symbol, int64(r.side), int64(r.orderType),
			r.orderQty, r.filledQty, r.price, int64(r.state), micros(r.created), micros(r.expires), nullMicros(r.closed), r.closeReason)
	}
	for _, f := range u.fills {
		w.exec(insertFill, f.accountID, f.fillID, f.reservationID, f.quantity, f.price, f.fee, micros(f.at))
	}
	for _, p := range u.prices {
		w.exec(upsertPrice, p.symbol, p.price, micros(p.at))
	}
	for _, ev := range u.events {
		ev.Sequence = *seq
		*seq++
		payload, err := proto.Marshal(ev)
		if err != nil {
			return err
		}
		w.exec(insertEvent, int64(ev.GetSequence()), ev.GetAccountId(), int64(ev.GetType()), micros(ev.GetEventTime().AsTime()), payload)
		*events = append(*events, ev)
	}
	return nil
}

func (w *writeBatch) sendSQL(ctx context.Context, tx *sql.Tx, prepared map[string]*sql.Stmt) error {
	for _, st := range w.stmts {
		if _, err := tx.StmtContext(ctx, prepared[st.query]).ExecContext(ctx, st.args...); err != nil {
			return err
		}
	}
	return nil
}

// writeQueries are every statement the writer runs.
var writeQueries = []string{upsertAccount, updateAnchors, upsertPosition, upsertReservation, insertFill, upsertPrice, insertEvent}

// prepareAll prepares the writer's statements once (the writer goroutine
// only); a failure is retried at the next commit.
func (s *SQLStore) prepareAll(ctx context.Context) error {
	if s.stmts != nil {
		return nil
	}
	stmts := make(map[string]*sql.Stmt, len(writeQueries))
	for _, q := range writeQueries {
		ps, err := s.db.PrepareWrite(ctx, q)
		if err != nil {
			for _, p := range stmts {
				p.Close()
			}
			return err
		}
		stmts[q] = ps
	}
	s.stmts = stmts
	return nil
}

// sendPG sends every statement in one round trip. PostgreSQL runs a
// pipelined batch as one implicit transaction: all of it commits, or none.
func (w *writeBatch) sendPG(ctx context.Context, pool interface {
	SendBatch(context.Context, *pgx.Batch) pgx.BatchResults
}) error {
	b := &pgx.Batch{}
	for _, st := range w.stmts {
		b.Queue(st.query, st.args...)
	}
	return pool.SendBatch(ctx, b).Close()
}

// Load implements Store.
func (s *SQLStore) Load(ctx context.Context, cutoff time.Time) (*snapshot, error) {
	return s.load(ctx, "", cutoff)
}

// LoadAccount implements Store.
func (s *SQLStore) LoadAccount(ctx context.Context, id string, cutoff time.Time) (*snapshot, error) {
	return s.load(ctx, id, cutoff)
}

func (s *SQLStore) load(ctx context.Context, accountID string, cutoff time.Time) (*snapshot, error) {
	snap := &snapshot{}
	r := s.db.Reader()
	// filter restricts a query to one account when accountID is set.
	filter := func(q string, args ...any) (string, []any) {
		if accountID == "" {
			return q, args
		}
		args = append(args, accountID)
		return q + fmt.Sprintf(" AND account_id = $%d", len(args)), args
	}

	q, args := filter(`SELECT account_id, created, limits, kill, cash, day_start, day_equity, high_water FROM risk_accounts WHERE 1 = 1`)
	rows, err := r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, store.Err("load risk accounts", err)
	}
	for rows.Next() {
		var a accountRow
		var created, dayStart int64
		var limits, kill []byte
		if err := rows.Scan(&a.id, &created, &limits, &kill, &a.cash, &dayStart, &a.dayEquity, &a.highWater); err != nil {
			rows.Close()
			return nil, store.Err("load risk accounts", err)
		}
		a.full, a.created, a.dayStart = true, fromMicros(created), fromMicros(dayStart)
		a.limits, a.kill = &riskv1.Limits{}, &riskv1.KillSwitchState{}
		if err := proto.Unmarshal(limits, a.limits); err != nil {
			rows.Close()
			return nil, fmt.Errorf("risk account %s: limits: %w", a.id, err)
		}
		if err := proto.Unmarshal(kill, a.kill); err != nil {
			rows.Close()
			return nil, fmt.Errorf("risk account %s: kill switch: %w", a.id, err)
		}
		snap.accounts = append(snap.accounts, a)
	}
	if err := closeRows(rows); err != nil {
		return nil, store.Err("load risk accounts", err)
	}

	q, args = filter(`SELECT account_id, symbol, qty, avg_price, realized, updated FROM risk_positions WHERE 1 = 1`)
	rows, err = r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, store.Err("load risk positions", err)
	}
	for rows.Next() {
		var p positionRow
		var updated int64
		if err := rows.Scan(&p.accountID, &p.symbol, &p.qty, &p.avgPrice, &p.realized, &updated); err != nil {
			rows.Close()
			return nil, store.Err("load risk positions", err)
		}
		p.updated = fromMicros(updated)
		snap.positions = append(snap.positions, p)
	}
	if err := closeRows(rows); err != nil {
		return nil, store.Err("load risk positions", err)
	}

	q, args = filter(`SELECT `+reservationColumns+` FROM risk_reservations WHERE ((state = $1 AND expires >= $2) OR created >= $2 OR closed >= $2)`,
		int64(riskv1.ReservationState_RESERVATION_STATE_OPEN), micros(cutoff))
	rows, err = r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, store.Err("load risk reservations", err)
	}
	for rows.Next() {
		res, err := scanReservation(rows)
		if err != nil {
			rows.Close()
			return nil, store.Err("load risk reservations", err)
		}
		snap.reservations = append(snap.reservations, *res)
	}
	if err := closeRows(rows); err != nil {
		return nil, store.Err("load risk reservations", err)
	}

	q, args = filter(`SELECT account_id, fill_id, reservation_id, quantity, price, fee, fill_time FROM risk_fills WHERE fill_time >= $1`, micros(cutoff))
	rows, err = r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, store.Err("load risk fills", err)
	}
	for rows.Next() {
		var f fillRow
		var at int64
		if err := rows.Scan(&f.accountID, &f.fillID, &f.reservationID, &f.quantity, &f.price, &f.fee, &at); err != nil {
			rows.Close()
			return nil, store.Err("load risk fills", err)
		}
		f.at = fromMicros(at)
		snap.fills = append(snap.fills, f)
	}
	if err := closeRows(rows); err != nil {
		return nil, store.Err("load risk fills", err)
	}

	rows, err = r.QueryContext(ctx, `SELECT symbol, price, price_time FROM risk_prices`)
	if err != nil {
		return nil, store.Err("load risk prices", err)
	}
	for rows.Next() {
		var p priceRow
		var at int64
		if err := rows.Scan(&p.symbol, &p.price, &at); err != nil {
			rows.Close()
			return nil, store.Err("load risk prices", err)
		}
		p.at = fromMicros(at)
		snap.prices = append(snap.prices, p)
	}
	if err := closeRows(rows); err != nil {
		return nil, store.Err("load risk prices", err)
	}

	var last sql.NullInt64
	if err := r.QueryRowContext(ctx, `SELECT MAX(sequence) FROM risk_events`).Scan(&last); err != nil {
		return nil, store.Err("load risk events", err)
	}
	snap.lastSequence = uint64(last.Int64)
	return snap, nil
}

func closeRows(rows *sql.Rows) error {
	err := rows.Err()
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	return err
}

const reservationColumns = `reservation_id, account_id, client_order_id, symbol, side, order_type, order_qty, filled_qty, price, state, created, expires, closed, close_reason`

func scanReservation(sc interface{ Scan(...any) error }) (*reservation, error) {
	var r reservation
	var side, typ, state, created, expires int64
	var closed sql.NullInt64
	if err := sc.Scan(&r.id, &r.accountID, &r.clientOrderID, &r.symbol, &side, &typ, &r.orderQty, &r.filledQty,
		&r.price, &state, &created, &expires, &closed, &r.closeReason); err != nil {
		return nil, err
	}
	r.side = sign(side)
	r.orderType = riskv1.OrderType(typ)
	r.state = riskv1.ReservationState(state)
	r.created, r.expires = fromMicros(created), fromMicros(expires)
	if closed.Valid {
		r.closed = fromMicros(closed.Int64)
	}
	return &r, nil
}

// Reservation implements Store.
func (s *SQLStore) Reservation(ctx context.Context, accountID, id string) (*reservation, error) {
	row := s.db.Reader().QueryRowContext(ctx, `SELECT `+reservationColumns+` FROM risk_reservations WHERE reservation_id = $1 AND account_id = $2`, id, accountID)
	r, err := scanReservation(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.NotFound("reservation", id)
	}
	return r, store.Err("read reservation", err)
}

// Fill implements Store.
func (s *SQLStore) Fill(ctx context.Context, accountID, fillID string) (*fillRow, error) {
	f := fillRow{accountID: accountID, fillID: fillID}
	var at int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT reservation_id, quantity, price, fee, fill_time FROM risk_fills WHERE account_id = $1 AND fill_id = $2`,
		accountID, fillID).Scan(&f.reservationID, &f.quantity, &f.price, &f.fee, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.NotFound("fill", fillID)
	}
	if err != nil {
		return nil, store.Err("read fill", err)
	}
	f.at = fromMicros(at)
	return &f, nil
}

// Events implements Store.
func (s *SQLStore) Events(ctx context.Context, after uint64, limit int) ([]*riskv1.RiskEvent, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT payload FROM risk_events WHERE sequence > $1 ORDER BY sequence LIMIT $2`, int64(after), limit)
	if err != nil {
		return nil, store.Err("read risk events", err)
	}
	defer rows.Close()
	var out []*riskv1.RiskEvent
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return nil, store.Err("read risk events", err)
		}
		ev := &riskv1.RiskEvent{}
		if err := proto.Unmarshal(payload, ev); err != nil {
			return nil, fmt.Errorf("decode risk event: %w", err)
		}
		out = append(out, ev)
	}
	return out, store.Err("read risk events", rows.Err())
}

// FirstSequence implements Store.
func (s *SQLStore) FirstSequence(ctx context.Context) (uint64, error) {
	var first sql.NullInt64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT MIN(sequence) FROM risk_events`).Scan(&first); err != nil {
		return 0, store.Err("read risk events", err)
	}
	return uint64(first.Int64), nil
}

// PruneEvents implements Store.
func (s *SQLStore) PruneEvents(ctx context.Context, before time.Time) (int64, error) {
	// The newest event is always kept, so sequences keep increasing across
	// restarts.
	res, err := s.db.Exec(ctx, `DELETE FROM risk_events WHERE event_time < $1
		AND sequence < (SELECT MAX(sequence) FROM risk_events)`, micros(before))
	if err != nil {
		return 0, store.Err("prune risk events", err)
	}
	return res.RowsAffected()
}

// PruneClosed implements Store.
func (s *SQLStore) PruneClosed(ctx context.Context, before time.Time, limit int) (reservations, fills int64, err error) {
	// A reservation stored open is closed once it expires. created is at or
	// before both, so its index narrows the scan.
	cut := micros(before)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT reservation_id FROM risk_reservations
		WHERE created < $1 AND (closed < $1 OR (closed IS NULL AND expires < $1)) ORDER BY created LIMIT $2`, cut, limit)
	if err != nil {
		return 0, 0, store.Err("find closed reservations", err)
	}
	var ids []any
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, 0, store.Err("find closed reservations", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return 0, 0, store.Err("find closed reservations", err)
	}
	if err := rows.Err(); err != nil || len(ids) == 0 {
		return 0, 0, store.Err("find closed reservations", err)
	}
	in := make([]string, len(ids))
	for i := range ids {
		in[i] = "$" + strconv.Itoa(i+1)
	}
	list := strings.Join(in, ", ")
	err = s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM risk_fills WHERE reservation_id IN (`+list+`)`, ids...)
		if err != nil {
			return err
		}
		if fills, err = res.RowsAffected(); err != nil {
			return err
		}
		if res, err = tx.ExecContext(ctx, `DELETE FROM risk_reservations WHERE reservation_id IN (`+list+`)`, ids...); err != nil {
			return err
		}
		reservations, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, 0, store.Err("prune closed reservations", err)
	}
	return reservations, fills, nil
}
