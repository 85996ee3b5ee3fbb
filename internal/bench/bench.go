// Package bench is the machinery of `quantmesh bench`: a registry of load
// scenarios, a Runner that drives one through a real gRPC client connection
// with grpc.health.v1.Health/Check interleaved as the baseline, and a Report
// printed as one JSON object or a table.
//
// # How a run measures
//
// Concurrency workers share one client connection. Each worker loops: one
// scenario operation (Scenario.Op), then one baseline Health/Check, so the
// scenario and the baseline see the same machine, connection and load, and
// the ratio of their percentiles says what the scenario costs beyond the
// transport, the interceptors and the scheduler. Latencies go into HDR
// histograms with microsecond resolution, one per worker, merged at the end.
//
// The first part of the run is a warm-up (connections, caches, the database's
// first pages); operations that start during it are not recorded. Operations
// that start inside the measured window are recorded even when they finish
// just after it, and the window's length is measured up to the moment the
// last worker stopped, so throughput is never overstated.
//
// Ops counts the operations that succeeded; Errors those that failed. A failed
// operation adds no latency sample. The first few distinct error messages are
// kept with their counts.
//
// # Adding a scenario
//
// A scenario is one file in this package: a type implementing Scenario and an
// init function calling Register. Setup receives the Env (the connection and
// what is known of the store); Op does one unit of work and may record named
// sub-latencies and counters with Record and Count, which the report prints
// beside the standard fields. Scenarios that must verify or clean up after the
// window (count stored rows, close streams) also implement Finisher; Fields
// then reports what they computed. Op is called concurrently by different
// workers, never concurrently for the same worker, so per-worker state indexed
// by the worker number needs no locking.
package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Scenario is one load workload.
type Scenario interface {
	// Name is the name given on the command line, such as "experiments".
	Name() string
	// Setup prepares the scenario before any worker starts: clients, seed
	// data, per-worker state sized by env.Concurrency. An error aborts the
	// run.
	Setup(ctx context.Context, env Env) error
	// Op performs one operation for worker (0 to concurrency-1); i counts
	// that worker's operations from 0, warm-up included, so (worker, i) is
	// unique within a run. A nil error is a success. Op must honour ctx.
	Op(ctx context.Context, worker, i int) error
	// Fields returns the scenario's own report fields (JSON names in
	// snake_case, values that encoding/json can marshal). It is called once,
	// after the run and after Finish. Names must not collide with the
	// standard report fields, counters or timings.
	Fields() map[string]any
}

// Finisher is implemented by scenarios with work to do after the measured
// window and before Fields: verifying what was stored, closing streams,
// timing a reference workload. It is skipped when the run was interrupted.
type Finisher interface {
	Finish(ctx context.Context) error
}

// Pacer is implemented by scenarios that hold a rate: the runner calls
// Pace before each operation, outside its timing, so the operation's
// latency is the call's and not the wait for the rate.
type Pacer interface {
	Pace(ctx context.Context) error
}

// Cleaner is implemented by scenarios that change the target (an A/B test
// started on its model, say): Cleanup undoes it once the run is over,
// whether it finished, failed or was interrupted. It must be safe after
// Finish has undone it already.
type Cleaner interface {
	Cleanup(ctx context.Context) error
}

// Measurer is implemented by scenarios whose Finish needs what the measured
// window counted (a reference workload sized like the window, for example).
// Measured is called after the window and before Finish, with the counters
// and the window's length; it is skipped when the run was interrupted.
type Measurer interface {
	Measured(counters map[string]int64, elapsed time.Duration)
}

// Env is what a scenario learns about the mesh it drives.
type Env struct {
	// Conn is the client connection every worker shares.
	Conn *grpc.ClientConn
	// Target is the gRPC address driven.
	Target string
	// InProcess reports whether the bench started the mesh itself (fresh,
	// empty store) rather than driving a running one.
	InProcess bool
	// Store names the mesh's storage mode (sqlite, postgres, timescaledb),
	// or "unknown" for a running mesh whose database was not given.
	Store string
	// DatabaseURL is the mesh's database (a postgres:// URL or a SQLite
	// path), for scenarios that inspect the store directly; empty when not
	// known.
	DatabaseURL string
	// Concurrency is the number of workers.
	Concurrency int
	// Duration is the measured window, warm-up excluded.
	Duration time.Duration
	// Log receives the scenario's diagnostics.
	Log *slog.Logger
	// Size is the scenario's data size from --size (what it means is the
	// scenario's: runs to search, for example); 0 means its default.
	Size int
}

// Spec describes a registered scenario.
type Spec struct {
	// Name is the command-line name; it must equal New().Name().
	Name string
	// Summary is one line for the usage text.
	Summary string
	// New returns a fresh scenario for one run.
	New func() Scenario
	// Concurrency, when not 0, replaces the command's default concurrency
	// for this scenario (an explicit --concurrency still wins).
	Concurrency int
	// Duration, when not 0, replaces the command's default duration for
	// this scenario (an explicit --duration still wins).
	Duration time.Duration
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Spec{}
)

// Register adds a scenario to the registry; scenarios call it from init. It
// panics on an empty or duplicate name or a nil constructor, which are
// programming errors.
func Register(s Spec) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if s.Name == "" || s.New == nil {
		panic("bench: Register needs a name and a constructor")
	}
	if _, dup := registry[s.Name]; dup {
		panic(fmt.Sprintf("bench: scenario %q registered twice", s.Name))
	}
	registry[s.Name] = s
}

// Lookup returns the scenario registered as name.
func Lookup(name string) (Spec, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s, ok := registry[name]
	return s, ok
}

// Specs returns every registered scenario, sorted by name.
func Specs() []Spec {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]Spec, 0, len(registry))
	for _, s := range registry {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Names returns the names of every registered scenario, sorted.
func Names() []string {
	specs := Specs()
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Name
	}
	return out
}
