package experiment

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/quantmesh/quantmesh/pkg/apierr"
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
	exp := &Experiment{ID: uuid.Must(uuid.NewV7()).String(), Name: "bp", Stage: StageActive}
	if err := st.CreateExperiment(ctx, exp); err != nil {
		t.Fatal(err)
	}
	run := &Run{ID: uuid.Must(uuid.NewV7()).String(), ExperimentID: exp.ID, Name: "r", Status: StatusRunning, Stage: StageActive}
	if err := st.CreateRun(ctx, run); err != nil {
		t.Fatal(err)
	}

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
