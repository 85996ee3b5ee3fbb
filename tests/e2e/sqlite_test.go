package e2e

import (
	"context"

	"github.com/quantmesh/quantmesh/pkg/store"
)

// makeConflictingSQLite creates a SQLite file whose experiments table is
// not the one the migrations create, so the first migration fails.
func makeConflictingSQLite(path string) error {
	ctx := context.Background()
	db, err := store.Open(ctx, store.Config{URL: path})
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(ctx, `CREATE TABLE experiments (x INTEGER)`)
	return err
}
