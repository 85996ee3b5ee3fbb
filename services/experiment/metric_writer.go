package experiment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
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
// Deduplication: the writer alone records the last stored sequence of each
// stream id (table metric_streams, cached), so checking a message against
// it and storing it happen in one order, the queue's.
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

	// seqs caches metric_streams.last_sequence by stream id; owned by the
	// writer goroutine.
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

// commit writes a group. If the transaction fails for a reason other than
// a transient one, each message is written alone, so that one bad message
// cannot fail the others.
func (w *metricWriter) commit(group []*pendingAppend) {
	err := w.commitOnce(group)
	if err == nil || len(group) == 1 || store.IsTransient(err) {
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

// commitOnce decides duplicates, writes the group (retrying transient
// failures) and answers every message it could decide on its own
// (duplicates, sequence gaps). It returns the write's error for the rest.
func (w *metricWriter) commitOnce(group []*pendingAppend) error {
	ctx, cancel := context.WithTimeout(context.Background(), writerTimeout)
	defer cancel()
	last, err := w.lastSequences(ctx, group)
	if err != nil {
		return err
	}
	var (
		rows     []pointRow
		accepted []*pendingAppend
	)
	for _, p := range group {
		if p.done == nil {
			continue
		}
		if p.StreamID != "" {
			prev := last[p.StreamID]
			switch {
			case p.Sequence <= prev:
				w.ins.duplicates.Add(ctx, int64(len(p.Points)))
				p.done <- AppendResult{Duplicate: true}
				p.done = nil
				continue
			case p.Sequence != prev+1:
				p.done <- AppendResult{Err: apierr.FailedPrecondition("STREAM_SEQUENCE_GAP",
					"stream %q: sequence %d does not follow the last stored sequence %d; resend from %d", p.StreamID, p.Sequence, prev, prev+1)}
				p.done = nil
				continue
			}
			last[p.StreamID] = p.Sequence
		}
		accepted = append(accepted, p)
		for _, pt := range p.Points {
			rows = append(rows, pointRow{runKey: p.RunKey, Point: pt})
		}
	}
	if len(accepted) == 0 {
		return nil
	}
	streams := make(map[string]uint64)
	for _, p := range accepted {
		if p.StreamID != "" {
			streams[p.StreamID] = p.Sequence
		}
	}
	var links []trace.Link
	for _, p := range accepted {
		if p.span.IsSampled() && len(links) < maxBatchLinks && (len(links) == 0 || !links[len(links)-1].SpanContext.Equal(p.span)) {
			links = append(links, trace.Link{SpanContext: p.span})
		}
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err = w.write(ctx, rows, streams, links)
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
		return err
	}
	w.ins.written(ctx, "stream", len(rows), time.Since(start))
	for id, seq := range streams {
		w.seqs.Add(id, seq)
	}
	for _, p := range accepted {
		p.done <- AppendResult{}
		p.done = nil
	}
	return nil
}

// lastSequences returns the last stored sequence of every stream id in
// group, from the cache or the table.
func (w *metricWriter) lastSequences(ctx context.Context, group []*pendingAppend) (map[string]uint64, error) {
	last := make(map[string]uint64)
	var missing []any
	for _, p := range group {
		if p.StreamID == "" {
			continue
		}
		if _, seen := last[p.StreamID]; seen {
			continue
		}
		if seq, ok := w.seqs.Get(p.StreamID); ok {
			last[p.StreamID] = seq
			continue
		}
		last[p.StreamID] = 0
		missing = append(missing, p.StreamID)
	}
	for start := 0; start < len(missing); start += 500 {
		chunk := missing[start:min(start+500, len(missing))]
		in := make([]string, len(chunk))
		for i := range chunk {
			in[i] = fmt.Sprintf("$%d", i+1)
		}
		rows, err := w.db.Reader().QueryContext(ctx,
			`SELECT stream_id, last_sequence FROM metric_streams WHERE stream_id IN (`+strings.Join(in, ", ")+`)`, chunk...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var (
				id  string
				seq int64
			)
			if err := rows.Scan(&id, &seq); err != nil {
				rows.Close()
				return nil, err
			}
			last[id] = uint64(seq)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return last, nil
}

const upsertStreams = ` ON CONFLICT (stream_id) DO UPDATE SET last_sequence = excluded.last_sequence, update_time = excluded.update_time
	WHERE excluded.last_sequence > metric_streams.last_sequence`

// write stores rows and the streams' new last sequences in one transaction.
func (w *metricWriter) write(ctx context.Context, rows []pointRow, streams map[string]uint64, links []trace.Link) (err error) {
	ctx, end := w.db.StartBatch(ctx, "metrics", len(rows), links...)
	defer func() { end(err) }()
	now := time.Now().UnixMilli()
	latest := latestOf(rows)
	if w.db.Dialect() == store.Postgres {
		return pgx.BeginFunc(ctx, w.db.Pool(), func(tx pgx.Tx) error {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"metrics"}, []string{"run_key", "key", "step", "ts", "value"}, &copyRows{rows: rows, i: -1}); err != nil {
				return err
			}
			runs, keys, steps, times, values := pointColumns(latest)
			if _, err := tx.Exec(ctx, upsertLatestPG, runs, keys, steps, times, values); err != nil {
				return err
			}
			if len(streams) == 0 {
				return nil
			}
			ids := make([]string, 0, len(streams))
			seqs := make([]int64, 0, len(streams))
			for id, seq := range streams {
				ids = append(ids, id)
				seqs = append(seqs, int64(seq))
			}
			_, err := tx.Exec(ctx, `INSERT INTO metric_streams (stream_id, last_sequence, update_time)
				SELECT id, seq, $3 FROM unnest($1::text[], $2::bigint[]) AS t (id, seq)`+upsertStreams, ids, seqs, now)
			return err
		})
	}
	if err := w.st.preparePoints(ctx); err != nil {
		return err
	}
	return w.db.InTx(ctx, func(tx *sql.Tx) error {
		if err := w.st.writePointsSQLite(ctx, tx, rows, latest); err != nil {
			return err
		}
		for id, seq := range streams {
			if _, err := tx.ExecContext(ctx, `INSERT INTO metric_streams (stream_id, last_sequence, update_time) VALUES ($1, $2, $3)`+upsertStreams,
				id, int64(seq), now); err != nil {
				return err
			}
		}
		return nil
	})
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
