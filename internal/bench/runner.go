package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Defaults of a run.
const (
	// DefaultDuration is the measured window when none is given.
	DefaultDuration = 10 * time.Second
	// DefaultConcurrency is the number of workers when none is given.
	DefaultConcurrency = 16
	// MaxConcurrency bounds the number of workers.
	MaxConcurrency = 10_000
	// maxWarmup bounds the default warm-up.
	maxWarmup = time.Second
	// preflightTimeout bounds the first Health/Check.
	preflightTimeout = 5 * time.Second
	// overrun is how long operations started in the window may take after
	// it ends before they are cancelled (and counted as errors).
	overrun = 10 * time.Second
	// finishTimeout bounds Finisher.Finish.
	finishTimeout = 2 * time.Minute
)

// DefaultWarmup returns the warm-up used for a measured window d when none
// is given: a tenth of it, at most one second.
func DefaultWarmup(d time.Duration) time.Duration {
	return min(d/10, maxWarmup)
}

// Runner drives one scenario. Its zero value is not valid: set Duration and
// Concurrency (Warmup may be 0).
type Runner struct {
	// Duration is the measured window, after the warm-up. Must be positive.
	Duration time.Duration
	// Warmup runs the workload unrecorded before the window. Must not be
	// negative.
	Warmup time.Duration
	// Concurrency is the number of workers, 1 to MaxConcurrency.
	Concurrency int
	// Progress, when set, receives a line every ProgressEvery: elapsed
	// time, operations so far and the current throughput.
	Progress io.Writer
	// ProgressEvery is the progress interval; 0 means one second.
	ProgressEvery time.Duration
	// Log receives diagnostics; nil means slog.Default().
	Log *slog.Logger
}

// Validate reports the first invalid setting, naming its flag.
func (r Runner) Validate() error {
	switch {
	case r.Duration <= 0:
		return fmt.Errorf("--duration %s: must be positive", r.Duration)
	case r.Warmup < 0:
		return fmt.Errorf("--warmup %s: must not be negative", r.Warmup)
	case r.Concurrency <= 0:
		return fmt.Errorf("--concurrency %d: must be positive", r.Concurrency)
	case r.Concurrency > MaxConcurrency:
		return fmt.Errorf("--concurrency %d: must be at most %d", r.Concurrency, MaxConcurrency)
	}
	return nil
}

// worker is one load goroutine's private state.
type worker struct {
	id       int
	sc       Scenario
	health   healthpb.HealthClient
	req      *healthpb.HealthCheckRequest
	latency  *hdrhistogram.Histogram
	baseline *hdrhistogram.Histogram
	errors   int64
	baseErrs int64
	rec      *recorder
	errs     *errorLog
	ops      *atomic.Int64 // successful measured scenario ops, for progress
	failed   *atomic.Int64 // failed measured scenario ops, for progress
	// parentCtx is the caller's context: when it is done, failures are the
	// interrupt's, not the target's.
	parentCtx context.Context
}

// Run drives sc through env.Conn for the warm-up and the measured window and
// returns the report. It fails before any load when the target does not
// answer Health/Check or Setup fails. When ctx is cancelled during the run,
// the workers stop and the report covers what was measured, with Interrupted
// set. Env.Concurrency, Env.Duration and Env.Log are filled from r.
func (r Runner) Run(ctx context.Context, env Env, sc Scenario) (*Report, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if env.Conn == nil {
		return nil, errors.New("bench: no client connection")
	}
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	env.Concurrency, env.Duration, env.Log = r.Concurrency, r.Duration, log
	if env.Store == "" {
		env.Store = "unknown"
	}
	health := healthpb.NewHealthClient(env.Conn)
	if err := preflight(ctx, health); err != nil {
		return nil, fmt.Errorf("target %s: %w", env.Target, err)
	}
	if c, ok := sc.(Cleaner); ok {
		// Also after a failed Setup (it may have changed the target before
		// failing) and an interrupt, with a context of its own.
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
			defer cancel()
			if err := c.Cleanup(cctx); err != nil {
				log.Warn("bench: cleanup of the target failed; undo it by hand", "scenario", sc.Name(), "err", err)
			}
		}()
	}
	if err := sc.Setup(ctx, env); err != nil {
		return nil, fmt.Errorf("setup %s: %w", sc.Name(), err)
	}

	start := time.Now()
	measureStart := start.Add(r.Warmup)
	end := measureStart.Add(r.Duration)
	runCtx, cancel := context.WithDeadline(ctx, end.Add(overrun))
	defer cancel()

	var (
		ops, failed atomic.Int64
		errs        errorLog
		wg          sync.WaitGroup
	)
	workers := make([]*worker, r.Concurrency)
	for i := range workers {
		w := &worker{
			id: i, sc: sc, health: health, req: &healthpb.HealthCheckRequest{},
			latency: newHistogram(), baseline: newHistogram(), rec: newRecorder(),
			errs: &errs, ops: &ops, failed: &failed, parentCtx: ctx,
		}
		workers[i] = w
		wg.Go(func() { w.loop(runCtx, measureStart, end) })
	}
	stopProgress := r.progress(sc.Name(), measureStart, &ops, &failed)
	wg.Wait()
	stopProgress()
	elapsed := max(0, time.Since(measureStart))

	rep := &Report{
		Scenario:    sc.Name(),
		Target:      env.Target,
		InProcess:   env.InProcess,
		Store:       env.Store,
		Concurrency: r.Concurrency,
		Warmup:      r.Warmup,
		Elapsed:     elapsed,
		Latency:     newHistogram(),
		Baseline:    newHistogram(),
		Timings:     map[string]*hdrhistogram.Histogram{},
		Counters:    map[string]int64{},
		GOMAXPROCS:  runtime.GOMAXPROCS(0),
		Interrupted: ctx.Err() != nil,
	}
	for _, w := range workers {
		rep.Latency.Merge(w.latency)
		rep.Baseline.Merge(w.baseline)
		rep.Errors += w.errors
		rep.BaselineErrors += w.baseErrs
		for name, h := range w.rec.timings {
			if rep.Timings[name] == nil {
				rep.Timings[name] = newHistogram()
			}
			rep.Timings[name].Merge(h)
		}
		for name, n := range w.rec.counters {
			rep.Counters[name] += n
		}
	}
	rep.ErrorSamples = errs.list()

	if m, ok := sc.(Measurer); ok && !rep.Interrupted {
		m.Measured(rep.Counters, elapsed)
	}
	if f, ok := sc.(Finisher); ok && !rep.Interrupted {
		fctx, fcancel := context.WithTimeout(ctx, finishTimeout)
		err := f.Finish(fctx)
		fcancel()
		if err != nil {
			return nil, fmt.Errorf("finish %s: %w", sc.Name(), err)
		}
	}
	rep.Fields = sc.Fields()
	if err := rep.check(); err != nil {
		return nil, err
	}
	return rep, nil
}

// loop runs operation pairs (scenario op, baseline check) until the window
// ends or ctx is done.
func (w *worker) loop(ctx context.Context, measureStart, end time.Time) {
	opCtx := context.WithValue(ctx, recorderKey{}, w.rec)
	pacer, _ := w.sc.(Pacer)
	for i := 0; ; i++ {
		if pacer != nil && pacer.Pace(ctx) != nil {
			return // ctx is done
		}
		now := time.Now()
		if !now.Before(end) || ctx.Err() != nil {
			return
		}
		measuring := !now.Before(measureStart)
		w.rec.measuring = measuring

		err := w.sc.Op(opCtx, w.id, i)
		d := time.Since(now)
		w.note(measuring, false, d, err)

		t := time.Now()
		err = w.check(ctx)
		w.note(measuring, true, time.Since(t), err)
	}
}

// check is the baseline operation: Health/Check of the whole server, which
// must answer SERVING.
func (w *worker) check(ctx context.Context) error {
	resp, err := w.health.Check(ctx, w.req)
	if err != nil {
		return err
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health status %s", s)
	}
	return nil
}

// note records one finished operation.
func (w *worker) note(measuring, baseline bool, d time.Duration, err error) {
	if !measuring {
		return
	}
	if err != nil {
		// An operation cut short because the run was interrupted is not a
		// failure of the target.
		if w.parentCtx.Err() != nil {
			return
		}
		if baseline {
			w.baseErrs++
		} else {
			w.errors++
			w.failed.Add(1)
		}
		w.errs.add(baseline, err)
		return
	}
	if baseline {
		recordLatency(w.baseline, d)
		return
	}
	recordLatency(w.latency, d)
	w.ops.Add(1)
}

// preflight checks that the target answers before any load.
func preflight(ctx context.Context, health healthpb.HealthClient) error {
	ctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("grpc.health.v1.Health/Check failed: %s", describe(err))
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc.health.v1.Health/Check answered %s", s)
	}
	return nil
}

// progress prints a line every interval until the returned function is
// called.
func (r Runner) progress(name string, measureStart time.Time, ops, failed *atomic.Int64) (stop func()) {
	if r.Progress == nil {
		return func() {}
	}
	every := r.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		if r.Warmup > 0 {
			fmt.Fprintf(r.Progress, "bench %s: warming up for %s\n", name, r.Warmup)
		}
		// Tick on whole intervals of the measured window.
		select {
		case <-done:
			return
		case <-time.After(time.Until(measureStart)):
		}
		t := time.NewTicker(every)
		defer t.Stop()
		lastOps, lastAt := int64(0), measureStart
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				n := ops.Load()
				rate := 0.0
				if dt := now.Sub(lastAt).Seconds(); dt > 0 {
					rate = float64(n-lastOps) / dt
				}
				lastOps, lastAt = n, now
				fmt.Fprintf(r.Progress, "bench %s: %s/%s  ops %d  errors %d  %.0f ops/s\n", name,
					now.Sub(measureStart).Round(100*time.Millisecond), r.Duration, n, failed.Load(), rate)
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
