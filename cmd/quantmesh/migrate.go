package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/pkg/store"
)

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh migrate", flag.ContinueOnError)
	var f meshFlags
	f.register(fs, false)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("migrate takes no arguments, got %q (the database is --database-url)", fs.Arg(0))
	}
	cfg, _, err := f.config(mesh.Runnable())
	if err != nil {
		return err
	}
	db, err := store.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	defer db.Close()
	res, err := db.Migrate(ctx, mesh.MigrationSets()...)
	if err != nil {
		return err
	}
	for _, m := range res.Applied {
		fmt.Fprintf(stdout, "applied %s/%s\n", m.Component, m.Name)
	}
	fmt.Fprintf(stdout, "%s: %d migrations applied, %d already in place (mode %s)\n", db, len(res.Applied), res.Current, db.Mode())
	return nil
}
