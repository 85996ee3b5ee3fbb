package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/quantmesh/quantmesh/internal/bench"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

// envBenchAPIKey holds the API key bench sends to a --target mesh that
// requires authentication. It has no flag, so the key never appears in a
// process listing.
const envBenchAPIKey = "QUANTMESH_BENCH_API_KEY"

// benchFlags are the settings of `quantmesh bench`.
type benchFlags struct {
	duration    time.Duration
	warmup      time.Duration
	concurrency int
	databaseURL string
	target      string
	json        bool
	logLevel    string
	size        int
}

func (f *benchFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&f.duration, "duration", bench.DefaultDuration, "measured window, after the warm-up")
	fs.DurationVar(&f.warmup, "warmup", 0, "unrecorded warm-up before the window (default a tenth of --duration, at most 1s)")
	fs.IntVar(&f.concurrency, "concurrency", bench.DefaultConcurrency, "workers, each alternating one scenario operation and one baseline Health/Check")
	fs.StringVar(&f.databaseURL, "database-url", "", "postgres://... runs the in-process mesh on PostgreSQL (empty: SQLite in a temporary directory); with --target, names the target's database for the report")
	fs.StringVar(&f.target, "target", "", "host:port of a running mesh to drive (plaintext gRPC); empty starts an in-process mesh on loopback")
	fs.BoolVar(&f.json, "json", false, "print one JSON object instead of progress lines and a table")
	fs.IntVar(&f.size, "size", 0, "scenario data size (tracking-search: runs to search); 0 means the scenario's default")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the bench and its in-process mesh: debug, info, warn or error")
}

func benchUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: quantmesh bench <scenario> [flags]

Drives a scenario through a real gRPC client and, interleaved on the same
connection, grpc.health.v1.Health/Check as the baseline: each worker
alternates one scenario operation and one Check. Reports throughput, latency
percentiles of both and their ratios. Without --target it starts an
in-process mesh on loopback (free ports, temporary data directory).

Scenarios:
`)
	for _, s := range bench.Specs() {
		fmt.Fprintf(w, "  %-14s %s\n", s.Name, s.Summary)
	}
	fmt.Fprintf(w, "\nFlags:\n")
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nA --target mesh that requires authentication needs an API key in %s.\n", envBenchAPIKey)
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh bench", flag.ContinueOnError)
	var f benchFlags
	f.register(fs)

	// The scenario may come first (bench health --json): the flag package
	// stops at the first argument that is not a flag.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	// The flag package's own messages are dropped: a bad flag gets the one
	// line run prints, and -h the usage on stdout.
	if err := parseFlags(fs, args, io.Discard); err != nil {
		if errors.Is(err, errHelp) {
			fs.SetOutput(stdout)
			benchUsage(stdout, fs)
		}
		return err
	}
	rest := fs.Args()
	if name == "" && len(rest) > 0 {
		name, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 {
		return usagef("bench takes one scenario, got extra arguments %q", rest)
	}
	known := strings.Join(bench.Names(), ", ")
	if name == "" {
		return usagef("bench needs a scenario: one of %s", known)
	}
	spec, ok := bench.Lookup(name)
	if !ok {
		return usagef("unknown bench scenario %q: want one of %s", name, known)
	}

	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if !set["duration"] && spec.Duration > 0 {
		f.duration = spec.Duration
	}
	if !set["concurrency"] && spec.Concurrency > 0 {
		f.concurrency = spec.Concurrency
	}
	if !set["warmup"] {
		f.warmup = bench.DefaultWarmup(f.duration)
	}
	runner := bench.Runner{Duration: f.duration, Warmup: f.warmup, Concurrency: f.concurrency}
	if err := runner.Validate(); err != nil {
		return usagef("invalid %v", err)
	}
	if f.size < 0 {
		return usagef("invalid --size %d: must not be negative", f.size)
	}
	if f.target != "" {
		if _, _, err := net.SplitHostPort(f.target); err != nil {
			return usagef("invalid --target %q: want host:port", f.target)
		}
	}
	if strings.Contains(f.databaseURL, "://") && !store.IsPostgresURL(f.databaseURL) {
		return usagef("invalid --database-url: want postgres://... (or a SQLite path, or empty)")
	}
	// Logs, progress lines and the error summary share stderr.
	stderr = &lockedWriter{w: stderr}
	log, err := telemetry.NewLogger(stderr, telemetry.LogConfig{Level: f.logLevel})
	if err != nil {
		return usagef("invalid --log-level: %v", err)
	}
	runner.Log = log
	if !f.json {
		runner.Progress = stderr
	}

	env := bench.Env{Target: f.target, DatabaseURL: f.databaseURL, Store: storeName(f.databaseURL), Size: f.size}
	if f.target == "" {
		m, dbURL, stop, err := startBenchMesh(ctx, f, log)
		if err != nil {
			return err
		}
		defer stop()
		env.Target, env.InProcess, env.Store, env.DatabaseURL = m.Server.GRPCTarget(), true, m.DB.Mode(), dbURL
	}

	apiKey := os.Getenv(envBenchAPIKey)
	conn, err := dialMesh(env.Target, apiKey)
	if err != nil {
		return err
	}
	defer conn.Close()
	env.Conn = conn

	rep, err := runner.Run(ctx, env, spec.New())
	if err != nil {
		return err
	}
	if f.json {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return benchOutcome(rep, f.json, apiKey != "", stderr)
}

// benchOutcome reports failed operations on stderr and turns a run without
// a single success, or an interrupted one, into an error.
func benchOutcome(rep *bench.Report, jsonOut, haveKey bool, stderr io.Writer) error {
	if jsonOut && (rep.Errors > 0 || rep.BaselineErrors > 0) {
		fmt.Fprintf(stderr, "quantmesh: bench %s: %d operations and %d baseline checks failed; first distinct errors:\n",
			rep.Scenario, rep.Errors, rep.BaselineErrors)
		for _, s := range rep.ErrorSamples {
			fmt.Fprintf(stderr, "  %d× %s\n", s.Count, s.Message)
		}
	}
	if !haveKey {
		for _, s := range rep.ErrorSamples {
			if strings.Contains(s.Message, "Unauthenticated:") {
				fmt.Fprintf(stderr, "quantmesh: the target requires authentication: set %s to one of its API keys\n", envBenchAPIKey)
				break
			}
		}
	}
	switch {
	case rep.Interrupted:
		return errors.New("bench interrupted: the report covers part of the window")
	case rep.Ops() == 0 && rep.Errors > 0:
		return fmt.Errorf("bench %s: every operation failed (%d errors); first: %s",
			rep.Scenario, rep.Errors, rep.ErrorSamples[0].Message)
	case rep.Ops() == 0:
		return fmt.Errorf("bench %s: no operation completed in %s", rep.Scenario, rep.Elapsed)
	}
	return nil
}

// lockedWriter serializes writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// storeName labels the store of a --target mesh from its database URL.
func storeName(databaseURL string) string {
	switch {
	case databaseURL == "":
		return "unknown"
	case store.IsPostgresURL(databaseURL):
		return string(store.Postgres)
	default:
		return string(store.SQLite)
	}
}

// startBenchMesh starts every service on loopback with free ports, a
// temporary data directory and authentication off, and serves it until
// stop is called; dbURL is its database. stop shuts the mesh down and
// removes the directory.
func startBenchMesh(ctx context.Context, f benchFlags, log *slog.Logger) (_ *mesh.Mesh, dbURL string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "quantmesh-bench-")
	if err != nil {
		return nil, "", nil, fmt.Errorf("temporary data directory: %w", err)
	}
	cleanups := []func(){func() {
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("remove bench data directory", "dir", dir, "error", err)
		}
	}}
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup() // the returned stop is nil on error
		}
	}()

	// Every mesh flag at its default, then the bench's own settings.
	var mf meshFlags
	mf.register(flag.NewFlagSet("bench", flag.ContinueOnError), false)
	mf.grpcAddr, mf.httpAddr, mf.dataDir, mf.databaseURL = "127.0.0.1:0", "127.0.0.1:0", dir, f.databaseURL
	mf.shutdownTimeout, mf.logLevel, mf.bootstrapModel = 5*time.Second, f.logLevel, false
	cfg, _, err := mf.config(mesh.Runnable())
	if err != nil {
		return nil, "", nil, err
	}
	// The bench's own mesh runs without authentication, as `quantmesh up`
	// does on loopback, whatever QUANTMESH_API_KEYS says.
	cfg.Keys = auth.Keys{}

	tel, err := telemetry.Setup(ctx, telemetry.Config{Version: version})
	if err != nil {
		return nil, "", nil, fmt.Errorf("telemetry: %w", err)
	}
	cleanups = append(cleanups, func() {
		if err := tel.Shutdown(context.WithoutCancel(ctx)); err != nil {
			log.Warn("telemetry shutdown", "error", err)
		}
	})
	m, err := mesh.Start(ctx, cfg, log, tel)
	if err != nil {
		var se *mesh.StartError
		if errors.As(err, &se) && se.Step == "config" {
			return nil, "", nil, usagef("%v", err)
		}
		return nil, "", nil, fmt.Errorf("in-process mesh: %w", err)
	}
	// The mesh outlives an interrupt of ctx until the workers have stopped.
	serveCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- m.Serve(serveCtx) }()
	cleanups = append(cleanups, func() {
		cancel()
		if err := <-served; err != nil {
			log.Warn("in-process mesh shutdown", "error", err)
		}
	})
	log.Info("bench mesh started", "grpc", m.Server.GRPCTarget(), "store", m.DB.Mode(), "data_dir", dir)
	return m, cfg.Store.URL, cleanup, nil
}
