package experiment

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// TestAppendBackpressure stalls the database and checks that appends stop
// being accepted once the writer's queue is full (memory stays bounded),
// then that everything accepted is written once the database moves again.
func TestAppendBackpressure(t *testing.T) {
	t.Parallel()
	db := storetest.SQLite(t, Migrations())
	st := NewSQLStore(db)
	st.queueSize = 8
	defer st.Close()
	ctx := context.Background()
	run := streamRun(t, st)

	// Hold SQLite's only writer connection.
	held, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = db.InTx(ctx, func(*sql.Tx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held

	const points = 5000 // so one write group holds at most writerMaxRows/points messages
	msg := StreamMessage{RunKey: run.Key, Points: make([]Point, points)}
	for i := range msg.Points {
		msg.Points[i] = Point{Key: "m", Value: float64(i), Step: int64(i), Time: 1}
	}
	var accepted []<-chan AppendResult
	bound := st.queueSize + writerMaxRows/points + 1
	for len(accepted) <= bound+10 {
		actx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		done, err := st.Append(actx, msg)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, done)
	}
	if len(accepted) > bound {
		t.Fatalf("%d messages accepted while the database was stalled; the queue should hold at most %d", len(accepted), bound)
	}
	close(release)
	for i, done := range accepted {
		if r := <-done; r.Err != nil || r.Duplicate {
			t.Fatalf("message %d: %+v", i, r)
		}
	}
	n, err := st.CountMetric(ctx, run.Key, "m")
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(len(accepted) * points); n != want {
		t.Errorf("stored %d points, want %d", n, want)
	}

	// After Close, what was appended is durable and appends are refused.
	last, err := st.Append(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-last; r.Err != nil {
		t.Fatalf("append before close: %v", r.Err)
	}
	if _, err := st.Append(ctx, msg); !errors.Is(err, apierr.ErrUnavailable) {
		t.Errorf("append after close: %v, want Unavailable", err)
	}
}

func TestLTTB(t *testing.T) {
	t.Parallel()
	var pts []Point
	for i := range 100 {
		pts = append(pts, Point{Step: int64(i), Value: float64(i % 10)})
	}
	pts[42].Value = -50
	for _, n := range []int{3, 10, 37, 99} {
		got := lttb(pts, n)
		if len(got) != n || got[0] != pts[0] || got[n-1] != pts[99] {
			t.Fatalf("lttb(%d): %d points, first %v last %v", n, len(got), got[0], got[len(got)-1])
		}
		min := false
		for i, p := range got {
			if i > 0 && p.Step <= got[i-1].Step {
				t.Fatalf("lttb(%d): not increasing at %d", n, i)
			}
			min = min || p.Value == -50
		}
		if !min {
			t.Errorf("lttb(%d) lost the trough", n)
		}
	}
	if got := lttb(pts, 200); len(got) != 100 {
		t.Errorf("lttb above the length: %d points", len(got))
	}
	if got := lttb(pts, 2); len(got) != 2 || got[1] != pts[99] {
		t.Errorf("lttb(2) = %v", got)
	}
}

// streamRun creates an experiment and a running run for streamed metrics.
func streamRun(t *testing.T, st *SQLStore) *Run {
	t.Helper()
	ctx := context.Background()
	exp := &Experiment{ID: uuid.Must(uuid.NewV7()).String(), Name: "stream-" + uuid.NewString(), Stage: StageActive}
	if err := st.CreateExperiment(ctx, exp); err != nil {
		t.Fatal(err)
	}
	run := &Run{ID: uuid.Must(uuid.NewV7()).String(), ExperimentID: exp.ID, Name: "r", Status: StatusRunning, Stage: StageActive}
	if err := st.CreateRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	return run
}

// streamMsg is message seq of stream id, one point of metric "m" valued v.
func streamMsg(run *Run, id string, seq uint64, v float64) StreamMessage {
	return StreamMessage{RunKey: run.Key, StreamID: id, Sequence: seq, Points: []Point{{Key: "m", Value: v, Step: int64(seq), Time: 1}}}
}

func appendAndWait(t *testing.T, st *SQLStore, m StreamMessage) AppendResult {
	t.Helper()
	done, err := st.Append(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return <-done
}

// TestStreamDedupAcrossProcesses: two processes (two stores, each with its
// own writer and cache) on one database. A stream that moves from one to
// the other and back is decided from the stored sequence, not from a
// cache the other process made stale; and a message sent to both at once
// is stored once.
func TestStreamDedupAcrossProcesses(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		a, b := NewSQLStore(db), NewSQLStore(db)
		defer a.Close()
		defer b.Close()
		run := streamRun(t, a)
		for _, step := range []struct {
			st   *SQLStore
			seq  uint64
			want AppendResult
		}{
			{a, 1, AppendResult{}}, {a, 2, AppendResult{}}, // a caches 2
			{b, 3, AppendResult{}}, {b, 4, AppendResult{}}, // the stream moves to b
			{a, 5, AppendResult{}},                // back on a: follows 4
			{a, 3, AppendResult{Duplicate: true}}, // a resend is stored already
			{a, 4, AppendResult{Duplicate: true}},
			{b, 5, AppendResult{Duplicate: true}},
		} {
			if got := appendAndWait(t, step.st, streamMsg(run, "moving", step.seq, float64(step.seq))); got != step.want {
				t.Errorf("seq %d: %+v, want %+v", step.seq, got, step.want)
			}
		}
		if n, err := a.CountMetric(ctx, run.Key, "m"); err != nil || n != 5 {
			t.Errorf("stored %d points (%v), want 5", n, err)
		}

		// Every message of another stream goes to both processes at once.
		const msgs = 30
		for seq := uint64(1); seq <= msgs; seq++ {
			m := streamMsg(run, "both", seq, float64(seq))
			m.Points[0].Key = "both"
			da, err := a.Append(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			dbb, err := b.Append(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			ra, rb := <-da, <-dbb
			if ra.Err != nil || rb.Err != nil || ra.Duplicate == rb.Duplicate {
				t.Fatalf("seq %d: a %+v, b %+v; want one stored and one duplicate", seq, ra, rb)
			}
		}
		if n, err := a.CountMetric(ctx, run.Key, "both"); err != nil || n != msgs {
			t.Errorf("stored %d points (%v), want %d", n, err, msgs)
		}
	})
}

// TestStreamCopyWaitsForItsOriginal: a copy of a message (a client's
// retry) that lands in the write group of its original is answered with
// the original's outcome, not as a duplicate before anything is stored;
// and a failed write leaves no cached sequence behind.
func TestStreamCopyWaitsForItsOriginal(t *testing.T) {
	t.Parallel()
	db := storetest.SQLite(t, Migrations())
	st := NewSQLStore(db)
	defer st.Close()
	ctx := context.Background()
	run := streamRun(t, st)
	// Points valued 666 fail to insert.
	if _, err := db.Exec(ctx, `CREATE TRIGGER fail_666 BEFORE INSERT ON metrics WHEN NEW.value = 666
		BEGIN SELECT RAISE(ABORT, 'write failed'); END`); err != nil {
		t.Fatal(err)
	}
	// Hold SQLite's only writer connection so that the messages queue up
	// and are written as one group.
	group := func(msgs ...StreamMessage) []AppendResult {
		t.Helper()
		held, release := make(chan struct{}), make(chan struct{})
		go func() {
			_ = db.InTx(ctx, func(*sql.Tx) error {
				close(held)
				<-release
				return nil
			})
		}()
		<-held
		// The writer takes the first message alone while the database is
		// held, then the rest as one group.
		first, err := st.Append(ctx, StreamMessage{RunKey: run.Key, Points: []Point{{Key: "other", Value: 1, Time: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		var dones []<-chan AppendResult
		for _, m := range msgs {
			d, err := st.Append(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			dones = append(dones, d)
		}
		close(release)
		if r := <-first; r.Err != nil {
			t.Fatal(r.Err)
		}
		var out []AppendResult
		for _, d := range dones {
			out = append(out, <-d)
		}
		return out
	}

	got := group(streamMsg(run, "s", 1, 666), streamMsg(run, "s", 1, 666))
	if got[0].Err == nil || got[1].Err == nil || got[1].Duplicate {
		t.Errorf("original %+v, copy %+v; want both failed", got[0], got[1])
	}
	if _, ok := st.writer.seqs.Peek("s"); ok {
		t.Error("a failed write left the stream's sequence cached")
	}
	got = group(streamMsg(run, "s", 1, 1), streamMsg(run, "s", 1, 1))
	if got[0] != (AppendResult{}) || got[1] != (AppendResult{Duplicate: true}) {
		t.Errorf("original %+v, copy %+v; want stored and duplicate", got[0], got[1])
	}
	if n, err := st.CountMetric(ctx, run.Key, "m"); err != nil || n != 1 {
		t.Errorf("stored %d points (%v), want 1", n, err)
	}
}

// A stream message without points (the API allows one) still records its
// sequence: the stream's next message follows it.
func TestStreamMessageWithoutPoints(t *testing.T) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{Migrations()}, func(t *testing.T, db *store.DB) {
		st := NewSQLStore(db)
		defer st.Close()
		ctx := context.Background()
		run := streamRun(t, st)
		send := func(seq uint64, points []Point) AppendResult {
			t.Helper()
			done, err := st.Append(ctx, StreamMessage{RunKey: run.Key, StreamID: "s", Sequence: seq, Points: points})
			if err != nil {
				t.Fatal(err)
			}
			return <-done
		}
		pt := []Point{{Key: "m", Value: 1, Step: 1, Time: 1}}
		for seq, points := range [][]Point{pt, nil, pt} {
			if r := send(uint64(seq+1), points); r.Err != nil || r.Duplicate {
				t.Fatalf("sequence %d (%d points): %+v", seq+1, len(points), r)
			}
		}
		var stored int64
		if err := db.Reader().QueryRowContext(ctx, `SELECT last_sequence FROM metric_streams WHERE stream_id = 's'`).Scan(&stored); err != nil || stored != 3 {
			t.Errorf("stored last sequence %d (%v), want 3", stored, err)
		}
	})
}
