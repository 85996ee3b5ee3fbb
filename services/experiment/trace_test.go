package experiment

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// TestMetricWriteSpan: a batch of the metric writer is one span with its
// row count, linked to the span of the call that appended the points.
func TestMetricWriteSpan(t *testing.T) {
	t.Parallel()
	db, tp, rec := storetest.TracedSQLite(t, Migrations())
	ctx := context.Background()
	st := NewSQLStore(db)
	defer st.Close()
	exp := &Experiment{ID: uuid.Must(uuid.NewV7()).String(), Name: "trace", Stage: StageActive}
	if err := st.CreateExperiment(ctx, exp); err != nil {
		t.Fatal(err)
	}
	r := &Run{ID: uuid.Must(uuid.NewV7()).String(), ExperimentID: exp.ID, Name: "r", Status: StatusRunning, Stage: StageActive}
	if err := st.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}

	sctx, call := tp.Tracer("test").Start(ctx, "StreamMetrics")
	done, err := st.Append(sctx, StreamMessage{RunKey: r.Key, Points: []Point{
		{Key: "loss", Value: 1, Step: 1, Time: 1}, {Key: "loss", Value: 0.5, Step: 2, Time: 2}, {Key: "acc", Value: 0.7, Step: 2, Time: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.Err != nil {
		t.Fatal(res.Err)
	}
	call.End()

	var found bool
	for _, s := range rec.Ended() {
		if s.Name() != "write metrics" {
			continue
		}
		found = true
		rows := ""
		for _, kv := range s.Attributes() {
			if kv.Key == store.AttrBatchRows {
				rows = kv.Value.String()
			}
		}
		linked := len(s.Links()) == 1 && s.Links()[0].SpanContext.SpanID() == call.SpanContext().SpanID()
		if rows != "3" || !linked {
			t.Errorf("write metrics span: rows %q, links %v; want 3 rows and a link to the appending call", rows, s.Links())
		}
	}
	if !found {
		t.Error("no write metrics span")
	}
}
