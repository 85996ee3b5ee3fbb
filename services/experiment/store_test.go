package experiment_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
)

// The store contract: every test runs on SQLite and on PostgreSQL.

func newExperiment(name string) *experiment.Experiment {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &experiment.Experiment{
		ID:               uuid.Must(uuid.NewV7()).String(),
		Name:             name,
		Description:      "d",
		ArtifactLocation: "file:///a",
		Stage:            experiment.StageActive,
		Tags:             map[string]string{"k": "v"},
		CreateTime:       now,
		UpdateTime:       now,
	}
}

func runStore(t *testing.T, fn func(t *testing.T, st experiment.Store)) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{experiment.Migrations()}, func(t *testing.T, db *store.DB) {
		fn(t, experiment.NewSQLStore(db))
	})
}

func TestStoreCreateGet(t *testing.T) {
	runStore(t, func(t *testing.T, st experiment.Store) {
		ctx := context.Background()
		e := newExperiment("alpha")
		if err := st.CreateExperiment(ctx, e); err != nil {
			t.Fatal(err)
		}
		got, err := st.GetExperiment(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(e, got); diff != "" {
			t.Errorf("GetExperiment (-want +got):\n%s", diff)
		}
		byName, err := st.GetExperimentByName(ctx, "alpha")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(e, byName); diff != "" {
			t.Errorf("GetExperimentByName (-want +got):\n%s", diff)
		}
		if _, err := st.GetExperiment(ctx, uuid.Must(uuid.NewV7()).String()); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("unknown id: error = %v, want not found", err)
		}
		if _, err := st.GetExperimentByName(ctx, "nope"); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("unknown name: error = %v, want not found", err)
		}
	})
}

func TestStoreNameIsUnique(t *testing.T) {
	runStore(t, func(t *testing.T, st experiment.Store) {
		ctx := context.Background()
		first := newExperiment("dup")
		if err := st.CreateExperiment(ctx, first); err != nil {
			t.Fatal(err)
		}
		if err := st.CreateExperiment(ctx, newExperiment("dup")); !errors.Is(err, apierr.ErrAlreadyExists) {
			t.Fatalf("second create: error = %v, want already exists", err)
		}
		// Renaming another experiment onto the name fails too, and writes
		// nothing.
		other := newExperiment("other")
		if err := st.CreateExperiment(ctx, other); err != nil {
			t.Fatal(err)
		}
		_, err := st.UpdateExperiment(ctx, other.ID, func(e *experiment.Experiment) error {
			e.Name = "dup"
			e.Description = "changed"
			return nil
		})
		if !errors.Is(err, apierr.ErrAlreadyExists) {
			t.Fatalf("rename onto taken name: error = %v, want already exists", err)
		}
		got, err := st.GetExperiment(ctx, other.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "other" || got.Description != "d" {
			t.Errorf("after failed rename: %+v, want it unchanged", got)
		}
	})
}

func TestStoreUpdateAbortsOnMutateError(t *testing.T) {
	runStore(t, func(t *testing.T, st experiment.Store) {
		ctx := context.Background()
		e := newExperiment("x")
		if err := st.CreateExperiment(ctx, e); err != nil {
			t.Fatal(err)
		}
		boom := apierr.FailedPrecondition("NOPE", "no")
		_, err := st.UpdateExperiment(ctx, e.ID, func(e *experiment.Experiment) error {
			e.Description = "should not be written"
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("error = %v, want the mutate error", err)
		}
		got, _ := st.GetExperiment(ctx, e.ID)
		if got.Description != "d" {
			t.Errorf("description = %q: a failed update wrote", got.Description)
		}
		if _, err := st.UpdateExperiment(ctx, uuid.Must(uuid.NewV7()).String(), func(*experiment.Experiment) error { return nil }); !errors.Is(err, apierr.ErrNotFound) {
			t.Errorf("update unknown: error = %v, want not found", err)
		}
	})
}

func TestStoreUpdateRoundTrip(t *testing.T) {
	runStore(t, func(t *testing.T, st experiment.Store) {
		ctx := context.Background()
		e := newExperiment("x")
		if err := st.CreateExperiment(ctx, e); err != nil {
			t.Fatal(err)
		}
		later := e.UpdateTime.Add(time.Second)
		updated, err := st.UpdateExperiment(ctx, e.ID, func(e *experiment.Experiment) error {
			e.Name = "y"
			e.Description = "new"
			e.Tags = map[string]string{"a": "1", "b": "2"}
			e.Stage = experiment.StageDeleted
			e.DeleteTime = later
			e.UpdateTime = later
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := st.GetExperiment(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(updated, got); diff != "" {
			t.Errorf("read after update (-returned +read):\n%s", diff)
		}
		if got.Stage != experiment.StageDeleted || !got.DeleteTime.Equal(later) || got.Name != "y" {
			t.Errorf("got %+v", got)
		}
	})
}

func TestStoreListPagesAndViews(t *testing.T) {
	runStore(t, func(t *testing.T, st experiment.Store) {
		ctx := context.Background()
		for i := range 7 {
			e := newExperiment(fmt.Sprintf("e%d", i))
			if i%3 == 0 {
				e.Stage = experiment.StageDeleted
				e.DeleteTime = e.CreateTime
			}
			if err := st.CreateExperiment(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		collect := func(v experiment.View, limit int) []string {
			var out []string
			after := ""
			for {
				page, err := st.ListExperiments(ctx, experiment.ListQuery{View: v, AfterID: after, Limit: limit})
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range page {
					out = append(out, e.Name)
				}
				if len(page) < limit {
					return out
				}
				after = page[len(page)-1].ID
			}
		}
		tests := []struct {
			view experiment.View
			want []string
		}{
			{experiment.ViewActive, []string{"e5", "e4", "e2", "e1"}},
			{experiment.ViewDeleted, []string{"e6", "e3", "e0"}},
			{experiment.ViewAll, []string{"e6", "e5", "e4", "e3", "e2", "e1", "e0"}},
		}
		for _, tt := range tests {
			for _, limit := range []int{1, 2, 100} {
				if diff := cmp.Diff(tt.want, collect(tt.view, limit)); diff != "" {
					t.Errorf("view %d limit %d (-want +got):\n%s", tt.view, limit, diff)
				}
			}
		}
	})
}

func TestStoreConcurrentUpdatesAreSerialised(t *testing.T) {
	runStore(t, func(t *testing.T, st experiment.Store) {
		ctx := context.Background()
		e := newExperiment("counter")
		e.Tags = map[string]string{"n": "0"}
		if err := st.CreateExperiment(ctx, e); err != nil {
			t.Fatal(err)
		}
		const n = 20
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := st.UpdateExperiment(ctx, e.ID, func(e *experiment.Experiment) error {
					var v int
					fmt.Sscan(e.Tags["n"], &v)
					e.Tags = map[string]string{"n": fmt.Sprint(v + 1)}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		got, err := st.GetExperiment(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Tags["n"] != fmt.Sprint(n) {
			t.Errorf("counter = %s after %d read-modify-write updates: an update was lost", got.Tags["n"], n)
		}
	})
}
