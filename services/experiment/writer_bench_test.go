package experiment

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// BenchmarkAppend measures the metric writer alone: 16 goroutines append
// 500-point messages to their own runs; ns/op is per point.
func BenchmarkAppend(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			var db *store.DB
			if backend == "sqlite" {
				db = storetest.SQLite(b, Migrations())
			} else {
				db = storetest.Postgres(b, Migrations())
			}
			st := NewSQLStore(db)
			defer st.Close()
			ctx := context.Background()
			const writers, per = 16, 500
			exp := &Experiment{ID: uuid.Must(uuid.NewV7()).String(), Name: "bench", Stage: StageActive}
			if err := st.CreateExperiment(ctx, exp); err != nil {
				b.Fatal(err)
			}
			keys := make([]int64, writers)
			for w := range keys {
				r := &Run{ID: uuid.Must(uuid.NewV7()).String(), ExperimentID: exp.ID, Name: "r", Status: StatusRunning, Stage: StageActive}
				if err := st.CreateRun(ctx, r); err != nil {
					b.Fatal(err)
				}
				keys[w] = r.Key
			}
			names := make([]string, 10)
			for i := range names {
				names[i] = "train/metric_" + strconv.Itoa(i)
			}
			msgs := b.N/per + 1
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					var pending []<-chan AppendResult
					for m := w; m < msgs; m += writers {
						pts := make([]Point, per)
						for i := range pts {
							pts[i] = Point{Key: names[i%10], Value: float64(i), Step: int64(m*per + i), Time: 1}
						}
						done, err := st.Append(ctx, StreamMessage{RunKey: keys[w], Points: pts})
						if err != nil {
							b.Error(err)
							return
						}
						pending = append(pending, done)
						if len(pending) > 8 {
							if r := <-pending[0]; r.Err != nil {
								b.Error(r.Err)
							}
							pending = pending[1:]
						}
					}
					for _, p := range pending {
						if r := <-p; r.Err != nil {
							b.Error(r.Err)
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
