package store_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// Processes starting together on a fresh database race to create the
// extension; the ones that lose still find it installed and use it. hstore
// stands in for timescaledb, which this test server may not have.
func TestTimescaleAutoCreateRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for round := range 5 {
		u := storetest.NewPostgresDatabase(t)
		cfg := store.WithTimescaleExtension(store.Config{URL: u, MaxConns: 2, Timescale: store.TimescaleAuto}, "hstore")
		var wg sync.WaitGroup
		start := make(chan struct{})
		on := make([]bool, 8)
		errs := make([]error, len(on))
		for i := range on {
			wg.Go(func() {
				<-start
				db, err := store.Open(ctx, cfg)
				if err != nil {
					errs[i] = err
					return
				}
				defer db.Close()
				on[i] = db.Timescale()
			})
		}
		close(start)
		wg.Wait()
		for i := range on {
			if errs[i] != nil {
				t.Fatalf("round %d: open: %v", round, errs[i])
			}
			if !on[i] {
				t.Fatalf("round %d: process %d runs without the extension another process created at the same time", round, i)
			}
		}
	}
}

// Without TimescaleDB, a database migrated with the TimescaleDB variants is
// refused with an error naming --timescale.
func TestPlainModeRefusesTimescaleSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := storetest.NewPostgresDatabase(t)
	db, err := store.Open(ctx, store.Config{URL: u, Timescale: store.TimescaleOff})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Migrate(ctx, widgets(t)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	// Plain variants only: both modes that end up plain open it.
	for _, mode := range []string{store.TimescaleOff, store.TimescaleAuto} {
		db, err := store.Open(ctx, store.Config{URL: u, Timescale: mode})
		if err != nil {
			t.Fatalf("timescale=%s on a plain schema: %v", mode, err)
		}
		db.Close()
	}
	direct, err := store.Open(ctx, store.Config{URL: u, Timescale: store.TimescaleOff})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if _, err := direct.Exec(ctx, `UPDATE schema_migrations SET name = '0002_widgets_name.timescale.sql' WHERE version = 2`); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{store.TimescaleOff, store.TimescaleAuto} {
		db, err := store.Open(ctx, store.Config{URL: u, Timescale: mode})
		if err == nil {
			db.Close()
			t.Errorf("timescale=%s on a schema migrated for TimescaleDB: opened, want an error", mode)
			continue
		}
		if !strings.Contains(err.Error(), "--timescale") || !strings.Contains(err.Error(), "0002_widgets_name.timescale.sql") {
			t.Errorf("timescale=%s: error = %v, want one naming --timescale and the migration", mode, err)
		}
	}
}
