package experiment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
)

// metricWriter commits StreamMetrics messages. One goroutine takes every
// message waiting in its queue, up to writerMaxRows points, and writes them
// in one transaction (COPY on PostgreSQL, multi-row INSERTs on SQLite), so
// hundreds of concurrent streams share a few commits a second. A message is
// acknowledged only after its transaction committed.
//
// Deduplication: metric_streams records the last stored sequence of each
// stream id. A write transaction reads it (on PostgreSQL, locks the rows)
// and decides each message from it, so processes sharing a database, and
// retries of a write whose outcome was unknown, store a message once. The
// writer's cache of it only answers duplicates early.
type metricWriter struct {
	st  *SQLStore
	db  *store.DB
	log *slog.Logger
	ins *instruments

	queue  chan *pendingAppend
	stop   chan struct{}
	exited chan struct{}
	// closeMu orders appends before close: an append holds it shared while
	// it enqueues, close takes it exclusively to mark the writer closed.
	closeMu sync.RWMutex
	closed  bool

	// seqs caches metric_streams.last_sequence by stream id, never ahead of
	// the table; owned by the writer goroutine.
	seqs *lru.Cache[string, uint64]
}

type pendingAppend struct {
	StreamMessage
	done chan AppendResult // buffered: the writer never blocks on it
	// span is the appending call's span context, which the batch span
	// links to when it is sampled.
	span trace.SpanContext
}

// Writer bounds.
const (
	// writerQueue is how many messages may wait for the writer; appends
	// block beyond it (backpressure to the streams, then to the clients
	// through gRPC flow control).
	writerQueue = 256
	// writerMaxRows bounds the points of one transaction.
	writerMaxRows = 50_000
	// writerStreamCache is how many stream ids keep their last sequence in
	// memory.
	writerStreamCache = 100_000
	writerAttempts    = 3
	// maxBatchLinks bounds the links of a batch span to the appending
	// calls (the SDK's default limit).
	maxBatchLinks = 128
	writerTimeout = 30 * time.Second
)

// errWriterClosed is returned for appends after Close.
var errWriterClosed = apierr.Unavailable("metric store", errors.New("the metric writer is closed"))

func newMetricWriter(st *SQLStore, log *slog.Logger, ins *instruments, queue int) *metricWriter {
	seqs, err := lru.New[string, uint64](writerStreamCache)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	w := &metricWriter{
		st:     st,
		db:     st.db,
		log:    log,
		ins:    ins,
		queue:  make(chan *pendingAppend, queue),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
		seqs:   seqs,
	}
	go w.run()
	return w
}

func (w *metricWriter) append(ctx context.Context, m StreamMessage) (<-chan AppendResult, error) {
	done := make(chan AppendResult, 1)
	p := &pendingAppend{StreamMessage: m, done: done, span: trace.SpanContextFromContext(ctx)}
	w.closeMu.RLock()
	defer w.closeMu.RUnlock()
	if w.closed {
		return nil, errWriterClosed
	}
	select {
	case w.queue <- p: // the writer owns p from here
		return done, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// close writes what was appended and stops the writer.
func (w *metricWriter) close() {
	w.closeMu.Lock()
	if !w.closed {
		w.closed = true
		close(w.stop)
	}
	w.closeMu.Unlock()
	<-w.exited
}

func (w *metricWriter) run() {
	defer close(w.exited)
	var group []*pendingAppend
	for {
		select {
		case first := <-w.queue:
			group = w.fill(append(group[:0], first))
		case <-w.stop:
			// Appends finished before close marked the writer closed;
			// write what they queued.
			for {
				if group = w.fill(group[:0]); len(group) == 0 {
					return
				}
				w.commit(group)
			}
		}
		w.commit(group)
	}
}

// fill adds what waits in the queue to group, up to writerMaxRows points.
func (w *metricWriter) fill(group []*pendingAppend) []*pendingAppend {
	rows := 0
	for _, p := range group {
		rows += len(p.Points)
	}
	for rows < writerMaxRows {
		select {
		case p := <-w.queue:
			group = append(group, p)
			rows += len(p.Points)
		default:
			return group
		}
	}
	return group
}

// commit writes a group. If the transaction fails because of one of its
// messages, each message is written alone, so that one bad message cannot
// fail the others. A transient failure, a commit of unknown outcome (a
// message without a stream id, written again, would be stored twice) and
// an ended context (each message would wait out the timeout again) answer
// the whole group with the error.
func (w *metricWriter) commit(group []*pendingAppend) {
	err := w.commitOnce(group)
	if err == nil || len(group) == 1 || store.IsTransient(err) || errors.Is(err, store.ErrCommitUnknown) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		if err != nil {
			w.ins.storeError("stream metrics")
			w.log.Error("metric write failed", "messages", len(group), "err", err)
			err = store.Err("stream metrics", err)
		}
		for _, p := range group {
			if p.done != nil {
				p.done <- AppendResult{Err: err}
				p.done = nil
			}
		}
		return
	}
	for _, p := range group {
		w.commit([]*pendingAppend{p})
	}
}

// commitOnce writes a group (retrying transient failures) and answers
// every message once its outcome is known. It returns the write's error
// and leaves the messages it did not answer to the caller.
func (w *metricWriter) commitOnce(group []*pendingAppend) error {
	ctx, cancel := context.WithTimeout(context.Background(), writerTimeout)
	defer cancel()
	// A sequence at or below the cached one is a duplicate for certain: the
	// cache holds only values read from metric_streams or committed to it,
	// and a stream's last_sequence never decreases. Everything else is
	// decided in the write transaction from the stored value, which may be
	// ahead of the cache (another process wrote the stream, or a commit's
	// outcome was unknown).
	var pending []*pendingAppend
	for _, p := range group {
		if p.done == nil {
			continue
		}
		if seq, ok := w.cached(p.StreamID); ok && p.Sequence <= seq {
			w.ins.duplicates.Add(ctx, int64(len(p.Points)))
			p.done <- AppendResult{Duplicate: true}
			p.done = nil
			continue
		}
		pending = append(pending, p)
	}
	if len(pending) == 0 {
		return nil
	}
	var links []trace.Link
	for _, p := range pending {
		if p.span.IsSampled() && len(links) < maxBatchLinks && (len(links) == 0 || !links[len(links)-1].SpanContext.Equal(p.span)) {
			links = append(links, trace.Link{SpanContext: p.span})
		}
	}
	start := time.Now()
	var (
		plan *streamPlan
		err  error
	)
	for attempt := 1; ; attempt++ {
		// Each attempt decides again: a failed attempt may have committed.
		plan, err = w.write(ctx, pending, links)
		if err == nil || !store.IsTransient(err) || attempt == writerAttempts {
			break
		}
		w.log.Warn("metric write retried", "attempt", attempt, "err", err)
		select {
		case <-time.After(time.Duration(attempt*attempt) * 50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if err != nil {
		// The write may have committed all the same. Drop the streams'
		// cached sequences: their next messages are decided from the
		// table alone.
		for _, p := range pending {
			if p.StreamID != "" {
				w.seqs.Remove(p.StreamID)
			}
		}
		return err
	}
	if len(plan.rows) > 0 {
		w.ins.written(ctx, "stream", len(plan.rows), time.Since(start))
	}
	for id, seq := range plan.last {
		w.seqs.Add(id, seq)
	}
	for i, p := range pending {
		if plan.results[i].Duplicate {
			w.ins.duplicates.Add(ctx, int64(len(p.Points)))
		}
		p.done <- plan.results[i]
		p.done = nil
	}
	return nil
}

// cached returns the cached last sequence of a stream id.
func (w *metricWriter) cached(streamID string) (uint64, bool) {
	if streamID == "" {
		return 0, false
	}
	return w.seqs.Get(streamID)
}

// streamPlan is what one write does with its messages, decided in its
// transaction.
type streamPlan struct {
	// results are the messages' answers once the write commits, in the
	// messages' order.
	results []AppendResult
	// rows are the points of the messages written.
	rows []pointRow
	// raised holds the new last sequence of each stream written.
	raised map[string]uint64
	// last holds the last sequence of every stream of the group as the
	// write leaves it.
	last map[string]uint64
}

// planStreams decides each message from stored, the last stored sequence
// of each stream: at or below it, a duplicate; the next one, written;
// beyond it, a gap. A message repeating one accepted earlier in the group
// (a client's retry that caught up with its original) is answered with
// the original's outcome: a duplicate if the write commits, its error if
// it fails (then no result is delivered).
func planStreams(msgs []*pendingAppend, stored map[string]uint64) *streamPlan {
	pl := &streamPlan{results: make([]AppendResult, len(msgs)), raised: map[string]uint64{}, last: map[string]uint64{}}
	for id, seq := range stored {
		pl.last[id] = seq
	}
	for i, p := range msgs {
		if p.StreamID != "" {
			prev := pl.last[p.StreamID]
			switch {
			case p.Sequence <= prev:
				pl.results[i] = AppendResult{Duplicate: true}
				continue
			case p.Sequence != prev+1:
				pl.results[i] = AppendResult{Err: apierr.FailedPrecondition("STREAM_SEQUENCE_GAP",
					"stream %q: sequence %d does not follow the last stored sequence %d; resend from %d", p.StreamID, p.Sequence, prev, prev+1)}
				continue
			}
			pl.last[p.StreamID] = p.Sequence
			pl.raised[p.StreamID] = p.Sequence
		}
		for _, pt := range p.Points {
			pl.rows = append(pl.rows, pointRow{runKey: p.RunKey, Point: pt})
		}
	}
	return pl
}

// streamIDs returns the distinct stream ids of msgs, sorted (the order in
// which their rows are locked).
func streamIDs(msgs []*pendingAppend) []string {
	var ids []string
	for _, p := range msgs {
		if p.StreamID != "" {
			ids = append(ids, p.StreamID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

const upsertStreams = ` ON CONFLICT (stream_id) DO UPDATE SET last_sequence = excluded.last_sequence, update_time = excluded.update_time
	WHERE excluded.last_sequence > metric_streams.last_sequence`

// write reads the last stored sequences of the messages' streams, decides
// each message from them, and stores the points and the streams' new last
// sequences, all in one transaction. Several processes may write one
// database: on PostgreSQL the streams' rows are locked (created first when
// missing, so that there is a row to lock) until the commit; SQLite has
// one writer, so the transaction's read is enough.
func (w *metricWriter) write(ctx context.Context, msgs []*pendingAppend, links []trace.Link) (plan *streamPlan, err error) {
	// The span counts the points offered; the transaction may find some
	// of them stored already, and then sets the count it writes.
	offered := 0
	for _, p := range msgs {
		offered += len(p.Points)
	}
	ctx, end := w.db.StartBatch(ctx, "metrics", offered, links...)
	defer func() {
		if plan != nil && len(plan.rows) != offered {
			trace.SpanFromContext(ctx).SetAttributes(store.AttrBatchRows.Int(len(plan.rows)))
		}
		end(err)
	}()
	now := time.Now().UnixMilli()
	ids := streamIDs(msgs)
	if w.db.Dialect() == store.Postgres {
		err := w.db.PgxTx(ctx, func(tx pgx.Tx) error {
			stored := make(map[string]uint64, len(ids))
			if len(ids) > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO metric_streams (stream_id, last_sequence, update_time)
					SELECT id, 0, $2 FROM unnest($1::text[]) AS t (id) ORDER BY id ON CONFLICT (stream_id) DO NOTHING`, ids, now); err != nil {
					return err
				}
				rows, err := tx.Query(ctx, `SELECT stream_id, last_sequence FROM metric_streams
					WHERE stream_id = ANY($1) ORDER BY stream_id FOR UPDATE`, ids)
				if err != nil {
					return err
				}
				err = scanStreams(rows, stored)
				rows.Close()
				if err != nil {
					return err
				}
				if err := rows.Err(); err != nil {
					return err
				}
			}
			plan = planStreams(msgs, stored)
			// A message may hold no points: its sequence is still recorded.
			if len(plan.rows) > 0 {
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{"metrics"}, []string{"run_key", "key", "step", "ts", "value"}, &copyRows{rows: plan.rows, i: -1}); err != nil {
					return err
				}
				runs, keys, steps, times, values := pointColumns(latestOf(plan.rows))
				if _, err := tx.Exec(ctx, upsertLatestPG, runs, keys, steps, times, values); err != nil {
					return err
				}
			}
			if len(plan.raised) == 0 {
				return nil
			}
			ids := make([]string, 0, len(plan.raised))
			seqs := make([]int64, 0, len(plan.raised))
			for id, seq := range plan.raised {
				ids = append(ids, id)
				seqs = append(seqs, int64(seq))
			}
			_, err := tx.Exec(ctx, `INSERT INTO metric_streams (stream_id, last_sequence, update_time)
				SELECT id, seq, $3 FROM unnest($1::text[], $2::bigint[]) AS t (id, seq)`+upsertStreams, ids, seqs, now)
			return err
		})
		return plan, err
	}
	if err := w.st.preparePoints(ctx); err != nil {
		return nil, err
	}
	err = w.db.InTx(ctx, func(tx *sql.Tx) error {
		stored, err := readStreams(ctx, tx, ids)
		if err != nil {
			return err
		}
		plan = planStreams(msgs, stored)
		// A message may hold no points: its sequence is still recorded.
		if len(plan.rows) > 0 {
			if err := w.st.writePointsSQLite(ctx, tx, plan.rows, latestOf(plan.rows)); err != nil {
				return err
			}
		}
		for id, seq := range plan.raised {
			if _, err := tx.ExecContext(ctx, `INSERT INTO metric_streams (stream_id, last_sequence, update_time) VALUES ($1, $2, $3)`+upsertStreams,
				id, int64(seq), now); err != nil {
				return err
			}
		}
		return nil
	})
	return plan, err
}

// scanStreams reads rows of (stream_id, last_sequence) into stored; the
// caller closes rows (pgx's or database/sql's).
func scanStreams(rows interface {
	Next() bool
	Scan(...any) error
}, stored map[string]uint64) error {
	for rows.Next() {
		var (
			id  string
			seq int64
		)
		if err := rows.Scan(&id, &seq); err != nil {
			return err
		}
		stored[id] = uint64(seq)
	}
	return nil
}

// readStreams reads the last stored sequence of each stream id (0 for a
// stream without a row).
func readStreams(ctx context.Context, tx *sql.Tx, ids []string) (map[string]uint64, error) {
	stored := make(map[string]uint64, len(ids))
	for chunk := range slices.Chunk(ids, 500) {
		args := make([]any, len(chunk))
		in := make([]string, len(chunk))
		for i, id := range chunk {
			args[i] = id
			in[i] = fmt.Sprintf("$%d", i+1)
		}
		rows, err := tx.QueryContext(ctx, `SELECT stream_id, last_sequence FROM metric_streams WHERE stream_id IN (`+strings.Join(in, ", ")+`)`, args...)
		if err != nil {
			return nil, err
		}
		err = scanStreams(rows, stored)
		rows.Close()
		if err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return stored, nil
}

// copyRows feeds rows to CopyFrom, reusing one values slice (CopyFrom
// encodes each row before asking for the next).
type copyRows struct {
	rows []pointRow
	i    int
	vals [5]any
}

func (c *copyRows) Next() bool { c.i++; return c.i < len(c.rows) }

func (c *copyRows) Values() ([]any, error) {
	r := &c.rows[c.i]
	c.vals[0], c.vals[1], c.vals[2], c.vals[3], c.vals[4] = r.runKey, r.Key, r.Step, r.Time, r.Value
	return c.vals[:], nil
}

func (c *copyRows) Err() error { return nil }
