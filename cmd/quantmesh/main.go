// Command quantmesh runs the quantmesh mesh and its tools.
//
//	quantmesh up        every service in one process, embedded defaults
//	quantmesh serve     a subset of services, reaching the others over gRPC
//	quantmesh migrate   apply the database migrations and exit
//	quantmesh bench     load-test a scenario and print latency and ratios
//	quantmesh cleanup   apply the checkpoint retention policy of a running mesh
//	quantmesh train     train the trading policy network and register it
//	quantmesh learn     online learning with EWC; the forgetting benchmark
//	quantmesh backtest  compare allocation policies walk-forward, offline
//	quantmesh version   print the build version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a bad flag, variable or argument: one line, exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

const usage = `quantmesh is the decision layer of an ML trading platform.

Usage:
  quantmesh up       [flags]   run every service in one process
  quantmesh serve    [flags]   run the services named by --services
  quantmesh migrate  [flags]   apply database migrations and exit
  quantmesh bench <scenario> [flags]
                               load-test a scenario ('quantmesh bench -h' lists them)
  quantmesh cleanup --metric <key> [--dry-run] [flags]
                               delete checkpoints outside the retention policy
  quantmesh train --data <csv|bundled> [--model policy] [--seed S] [--promote]
                               train the policy network, register the version
  quantmesh learn --replay <data> | --kafka-brokers <brokers> | --forgetting-benchmark
                               online learning with EWC; the forgetting benchmark
  quantmesh backtest --data <csv|eustock> [--policy hrl|naive|proportional|equal|all] [--json]
                               compare allocation policies walk-forward, offline
  quantmesh version            print the version

Every flag can also be set as QUANTMESH_<FLAG> (for example
QUANTMESH_DATABASE_URL); a flag on the command line wins.
Run 'quantmesh <command> -h' for the flags of a command.
`

// run executes one command and returns the process exit status. It is
// main without the process: tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "up":
		err = runUp(ctx, rest, stdout, stderr)
	case "serve":
		err = runServe(ctx, rest, stdout, stderr)
	case "migrate":
		err = runMigrate(ctx, rest, stdout, stderr)
	case "bench":
		err = runBench(ctx, rest, stdout, stderr)
	case "cleanup":
		err = runCleanup(ctx, rest, stdout, stderr)
	case "train":
		err = runTrain(ctx, rest, stdout, stderr)
	case "learn":
		err = runLearn(ctx, rest, stdout, stderr)
	case "backtest":
		err = runBacktest(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "quantmesh: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "quantmesh: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "quantmesh: %v\n", err)
		return exitFailure
	}
}
