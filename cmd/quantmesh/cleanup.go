package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/services/experiment"
)

// cleanupFlags are the settings of `quantmesh cleanup`.
type cleanupFlags struct {
	target     string
	apiKey     string
	experiment string
	metric     string
	goal       string
	keepBest   int
	keepDays   int
	dryRun     bool
	json       bool
	timeout    time.Duration
}

func (f *cleanupFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.target, "target", "127.0.0.1:50051", "host:port of the mesh's gRPC server (plaintext)")
	fs.StringVar(&f.apiKey, "api-key", "", "API key of a researcher or admin, when the mesh requires one (prefer "+envName("api-key")+": a flag shows in process listings)")
	fs.StringVar(&f.experiment, "experiment", "all", "experiment id or name to clean; all cleans every experiment, deleted ones included, one at a time")
	fs.StringVar(&f.metric, "metric", "", "metric to rank checkpoints by, for example val_loss (required); checkpoints logged with another metric rank last")
	fs.StringVar(&f.goal, "goal", "min", "min when a smaller metric is better (losses), max when a larger one is (returns, accuracy)")
	fs.IntVar(&f.keepBest, "keep-best", experiment.DefaultKeepBest, "keep the best N checkpoints of each experiment; 0 keeps none by rank")
	fs.IntVar(&f.keepDays, "keep-days", experiment.DefaultKeepDays, "keep every checkpoint logged in the last D days; 0 keeps none by age")
	fs.BoolVar(&f.dryRun, "dry-run", false, "report what would be deleted, delete nothing")
	fs.BoolVar(&f.json, "json", false, "print one JSON object instead of the summary table")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Minute, "time limit of each call to the mesh (one experiment's cleanup is one call)")
}

func cleanupUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: quantmesh cleanup --metric <key> [flags]

Applies the checkpoint retention policy of a running mesh, one experiment
at a time: keeps each experiment's best --keep-best checkpoints by --metric,
everything logged in the last --keep-days days, and every checkpoint whose
model version has an alias or a production tag; deletes the rest, and the
files of deleted file:// checkpoints under the mesh's artifact root.
Progress goes to stderr, the summary to stdout.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// cleanupTarget is one experiment to clean.
type cleanupTarget struct {
	id, name string
}

// cleanupRow is one experiment's outcome in the summary.
type cleanupRow struct {
	ExperimentID string              `json:"experiment_id"`
	Name         string              `json:"name"`
	Kept         int64               `json:"kept"`
	Deleted      int64               `json:"deleted"`
	BytesFreed   int64               `json:"bytes_freed"`
	Truncated    bool                `json:"truncated"`
	Checkpoints  []cleanupCheckpoint `json:"deleted_checkpoints"`
}

// cleanupCheckpoint is a deleted checkpoint in the JSON summary.
type cleanupCheckpoint struct {
	CheckpointID string  `json:"checkpoint_id"`
	RunID        string  `json:"run_id"`
	Step         int64   `json:"step"`
	URI          string  `json:"uri"`
	SizeBytes    int64   `json:"size_bytes"`
	MetricKey    string  `json:"metric_key"`
	MetricValue  float64 `json:"metric_value"`
	ModelName    string  `json:"model_name,omitempty"`
	ModelVersion int64   `json:"model_version,omitempty"`
	CreateTime   string  `json:"create_time"`
}

// cleanupReport is the JSON summary.
type cleanupReport struct {
	Target      string       `json:"target"`
	DryRun      bool         `json:"dry_run"`
	Metric      string       `json:"metric"`
	Goal        string       `json:"goal"`
	KeepBest    int          `json:"keep_best"`
	KeepDays    int          `json:"keep_days"`
	Experiments []cleanupRow `json:"experiments"`
	Total       struct {
		Experiments int   `json:"experiments"`
		Kept        int64 `json:"kept"`
		Deleted     int64 `json:"deleted"`
		BytesFreed  int64 `json:"bytes_freed"`
	} `json:"total"`
	// Error is set when a call failed and the report covers the
	// experiments before it.
	Error string `json:"error,omitempty"`
}

func runCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh cleanup", flag.ContinueOnError)
	var f cleanupFlags
	f.register(fs)
	if err := parseFlags(fs, args, io.Discard); err != nil {
		if errors.Is(err, errHelp) {
			cleanupUsage(stdout, fs)
		}
		return err
	}
	if fs.NArg() > 0 {
		return usagef("cleanup takes no arguments, got %q (see 'quantmesh cleanup -h')", fs.Args())
	}
	if _, _, err := net.SplitHostPort(f.target); err != nil {
		return usagef("invalid --target %q: want host:port", f.target)
	}
	if strings.TrimSpace(f.metric) == "" {
		return usagef("--metric is required: the metric to rank checkpoints by, for example --metric val_loss")
	}
	var goal experimentv1.MetricGoal
	switch strings.ToLower(f.goal) {
	case "min", "minimize":
		goal, f.goal = experimentv1.MetricGoal_METRIC_GOAL_MINIMIZE, "min"
	case "max", "maximize":
		goal, f.goal = experimentv1.MetricGoal_METRIC_GOAL_MAXIMIZE, "max"
	default:
		return usagef("invalid --goal %q: want min or max", f.goal)
	}
	if f.keepBest < 0 || f.keepBest > 1<<31-1 {
		return usagef("invalid --keep-best %d: want 0 or more", f.keepBest)
	}
	if f.keepDays < 0 || f.keepDays > 1<<31-1 {
		return usagef("invalid --keep-days %d: want 0 or more", f.keepDays)
	}
	if f.timeout <= 0 {
		return usagef("invalid --timeout %s: must be positive", f.timeout)
	}

	conn, err := dialMesh(f.target, f.apiKey)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := experimentv1.NewExperimentServiceClient(conn)

	rep := &cleanupReport{Target: f.target, DryRun: f.dryRun, Metric: f.metric, Goal: f.goal, KeepBest: f.keepBest, KeepDays: f.keepDays,
		Experiments: []cleanupRow{}}
	targets, err := cleanupTargets(ctx, client, f)
	if err == nil {
		err = cleanupEach(ctx, client, f, goal, targets, rep, stderr)
	}
	if err != nil {
		err = cleanupError(err, f.apiKey != "")
		if rep.Total.Experiments == 0 {
			return err
		}
		rep.Error = err.Error()
	}
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if werr := enc.Encode(rep); werr != nil {
			return fmt.Errorf("write report: %w", werr)
		}
	} else if werr := writeCleanupTable(stdout, rep); werr != nil {
		return fmt.Errorf("write report: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("%w (the summary covers the experiments before it; running cleanup again is safe)", err)
	}
	if f.dryRun && rep.Total.Deleted > 0 {
		fmt.Fprintf(stderr, "dry run: %s (%s) would be deleted; run without --dry-run to delete them\n",
			checkpoints(rep.Total.Deleted), humanBytes(rep.Total.BytesFreed))
	}
	return nil
}

// cleanupTargets resolves --experiment: every experiment (deleted ones
// included, since their checkpoints still take space), or one by id or
// name.
func cleanupTargets(ctx context.Context, client experimentv1.ExperimentServiceClient, f cleanupFlags) ([]cleanupTarget, error) {
	callCtx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if f.experiment != "" && f.experiment != "all" {
		var (
			e   *experimentv1.Experiment
			err error
		)
		if _, perr := uuid.Parse(f.experiment); perr == nil && len(f.experiment) == 36 {
			var resp *experimentv1.GetExperimentResponse
			resp, err = client.GetExperiment(callCtx, &experimentv1.GetExperimentRequest{ExperimentId: f.experiment})
			e = resp.GetExperiment()
		} else {
			var resp *experimentv1.GetExperimentByNameResponse
			resp, err = client.GetExperimentByName(callCtx, &experimentv1.GetExperimentByNameRequest{Name: f.experiment})
			e = resp.GetExperiment()
		}
		if err != nil {
			return nil, fmt.Errorf("experiment %q: %w", f.experiment, err)
		}
		return []cleanupTarget{{id: e.GetExperimentId(), name: e.GetName()}}, nil
	}
	var out []cleanupTarget
	req := &experimentv1.ListExperimentsRequest{PageSize: 1000, View: experimentv1.ViewType_VIEW_TYPE_ALL}
	for {
		resp, err := client.ListExperiments(callCtx, req)
		if err != nil {
			return nil, fmt.Errorf("list experiments: %w", err)
		}
		for _, e := range resp.GetExperiments() {
			out = append(out, cleanupTarget{id: e.GetExperimentId(), name: e.GetName()})
		}
		if resp.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// cleanupEach applies the policy to each experiment in turn, printing a
// progress line per experiment, and stops at the first error.
func cleanupEach(ctx context.Context, client experimentv1.ExperimentServiceClient, f cleanupFlags, goal experimentv1.MetricGoal,
	targets []cleanupTarget, rep *cleanupReport, stderr io.Writer) error {
	verb, freed := "to delete", ""
	if !f.dryRun {
		verb, freed = "deleted", " freed"
	}
	for i, t := range targets {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted after %d of %d experiments", i, len(targets))
		}
		callCtx, cancel := context.WithTimeout(ctx, f.timeout)
		resp, err := client.ApplyRetentionPolicy(callCtx, &experimentv1.ApplyRetentionPolicyRequest{
			ExperimentId: t.id,
			MetricKey:    f.metric,
			Goal:         goal,
			KeepBest:     proto.Int32(int32(f.keepBest)),
			KeepDays:     proto.Int32(int32(f.keepDays)),
			DryRun:       f.dryRun,
		})
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "[%d/%d] %s: failed: %s\n", i+1, len(targets), t.name, status.Convert(err).Message())
			return fmt.Errorf("experiment %s (%s): %w", t.name, t.id, err)
		}
		total := resp.GetKept() + resp.GetDeletedCount()
		rep.Total.Experiments++
		if total == 0 {
			fmt.Fprintf(stderr, "[%d/%d] %s: no checkpoints\n", i+1, len(targets), t.name)
			continue
		}
		fmt.Fprintf(stderr, "[%d/%d] %s: %d of %s %s, %s%s\n", i+1, len(targets), t.name,
			resp.GetDeletedCount(), checkpoints(total), verb, humanBytes(resp.GetBytesFreed()), freed)
		row := cleanupRow{
			ExperimentID: t.id, Name: t.name, Kept: resp.GetKept(), Deleted: resp.GetDeletedCount(),
			BytesFreed: resp.GetBytesFreed(), Truncated: resp.GetTruncated(), Checkpoints: []cleanupCheckpoint{},
		}
		for _, c := range resp.GetDeleted() {
			row.Checkpoints = append(row.Checkpoints, cleanupCheckpoint{
				CheckpointID: c.GetCheckpointId(), RunID: c.GetRunId(), Step: c.GetStep(), URI: c.GetUri(),
				SizeBytes: c.GetSizeBytes(), MetricKey: c.GetMetricKey(), MetricValue: c.GetMetricValue(),
				ModelName: c.GetModelName(), ModelVersion: c.GetModelVersion(),
				CreateTime: c.GetCreateTime().AsTime().Format(time.RFC3339Nano),
			})
		}
		rep.Experiments = append(rep.Experiments, row)
		rep.Total.Kept += row.Kept
		rep.Total.Deleted += row.Deleted
		rep.Total.BytesFreed += row.BytesFreed
	}
	return nil
}

// cleanupError turns a gRPC error into one line, with a hint when the
// mesh wants a key.
func cleanupError(err error, haveKey bool) error {
	switch status.Code(err) {
	case codes.Unauthenticated:
		if !haveKey {
			return fmt.Errorf("%w: the mesh requires authentication: set %s (or --api-key) to a researcher's or admin's key", err, envName("api-key"))
		}
	case codes.PermissionDenied:
		return fmt.Errorf("%w: cleanup needs a researcher's or admin's key", err)
	}
	return err
}

// writeCleanupTable prints one row per experiment that has checkpoints,
// and the total: names aligned left, numbers right.
func writeCleanupTable(w io.Writer, rep *cleanupReport) error {
	dry := "no"
	if rep.DryRun {
		dry = "yes"
	}
	rows := [][]string{{"experiment", "kept", "deleted", "bytes freed", "dry run"}}
	for _, r := range rep.Experiments {
		rows = append(rows, []string{r.Name, fmt.Sprint(r.Kept), fmt.Sprint(r.Deleted), humanBytes(r.BytesFreed), dry})
	}
	rows = append(rows, []string{fmt.Sprintf("total (%d experiments)", rep.Total.Experiments),
		fmt.Sprint(rep.Total.Kept), fmt.Sprint(rep.Total.Deleted), humanBytes(rep.Total.BytesFreed), dry})
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		fmt.Fprintf(&b, "%-*s", widths[0], row[0])
		for i, cell := range row[1:] {
			fmt.Fprintf(&b, "  %*s", widths[i+1], cell)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// checkpoints says "1 checkpoint" or "n checkpoints".
func checkpoints(n int64) string {
	if n == 1 {
		return "1 checkpoint"
	}
	return fmt.Sprintf("%d checkpoints", n)
}

// humanBytes prints a size in decimal units: 512 B, 2.0 kB, 1.2 GB.
func humanBytes(n int64) string {
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, unit := range []string{"kB", "MB", "GB", "TB", "PB"} {
		v /= 1000
		if v < 999.95 || unit == "PB" {
			return fmt.Sprintf("%.1f %s", v, unit)
		}
	}
	return fmt.Sprintf("%d B", n) // not reached
}
