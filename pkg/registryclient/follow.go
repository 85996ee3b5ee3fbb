// Package registryclient follows the model registry from a client: it keeps
// an ExperimentService.WatchModel stream open across server restarts and
// network failures, resuming from the last revision it applied, so a
// consumer (InferenceService hot-swapping weights, for one) sees every
// state of an alias it has not applied yet, each once, in revision order.
package registryclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
)

// Defaults of the reconnect backoff.
const (
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
)

// Option changes how FollowAlias behaves.
type Option func(*follower)

// StartAfter resumes from a revision applied earlier (for example one the
// consumer persisted): only newer states are delivered. The default is 0,
// which delivers the alias's current state first.
func StartAfter(revision uint64) Option {
	return func(f *follower) { f.after = revision }
}

// WithBackoff sets the reconnect delay: initial after the first failure,
// doubling on each consecutive failure up to max, with jitter (each wait
// is between half and all of the current delay). A stream that delivered
// something resets it.
func WithBackoff(initial, max time.Duration) Option {
	return func(f *follower) {
		if initial > 0 {
			f.initial = initial
		}
		if max >= f.initial {
			f.max = max
		}
	}
}

// OnRetry sets a function called each time the stream failed and is about
// to be opened again after delay (0 when it reopens at once), with the
// error that ended it: for logs and metrics. It runs on FollowAlias's
// goroutine and must not block.
func OnRetry(fn func(err error, delay time.Duration)) Option {
	return func(f *follower) { f.onRetry = fn }
}

type follower struct {
	after        uint64
	initial, max time.Duration
	onRetry      func(error, time.Duration)
}

// applyError marks an error returned by the consumer's apply function.
type applyError struct{ err error }

func (e *applyError) Error() string { return e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

// FollowAlias calls apply with the state of model's alias (the version it
// points to, weights included, or its deletion) now and on every change,
// until ctx ends, apply fails, or the server rejects the request for good.
//
// Revisions passed to apply only grow. When the stream fails (the server
// drains, restarts, or the network drops) FollowAlias reopens it with
// backoff, passing the last revision apply accepted, so nothing is applied
// twice and whatever changed meanwhile arrives once, as the alias's latest
// state. It reconnects on any error except:
//
//   - InvalidArgument, PermissionDenied, Unauthenticated, Unimplemented:
//     returned, since retrying cannot help;
//   - OutOfRange (the server's registry is older than the last revision
//     applied, say a restored backup): it starts again from revision 0, so
//     the next state applied may carry a lower revision than the last one.
//
// NotFound (the model does not exist, or was deleted while the stream was
// down) is retried with backoff: the consumer keeps what it has until the
// model is registered again. A deletion seen while connected arrives as a
// message with Deleted set.
//
// An error from apply is returned wrapped; the revision it failed on is
// not counted as applied. FollowAlias returns ctx.Err() when ctx ends.
//
// Messages carry the weights: the client's connection must accept messages
// that large (grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(n)); gRPC's
// default is 4 MiB). A larger message fails the stream with
// ResourceExhausted, which is retried with backoff and shows in OnRetry.
func FollowAlias(ctx context.Context, client experimentv1.ExperimentServiceClient, model, alias string,
	apply func(*experimentv1.WatchModelResponse) error, opts ...Option) error {
	f := &follower{initial: DefaultInitialBackoff, max: DefaultMaxBackoff}
	for _, o := range opts {
		o(f)
	}
	delay := f.initial
	for {
		progressed, err := f.session(ctx, client, model, alias, apply)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if ae := (*applyError)(nil); errors.As(err, &ae) {
			return err
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented:
			return err
		case codes.OutOfRange:
			f.after = 0
			f.retry(err, 0)
			continue
		}
		if progressed {
			delay = f.initial
		}
		wait := delay/2 + rand.N(delay/2+1)
		f.retry(err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, f.max)
	}
}

func (f *follower) retry(err error, delay time.Duration) {
	if f.onRetry != nil {
		f.onRetry(err, delay)
	}
}

// session runs one stream until it fails, applying what it receives. It
// reports whether anything was applied.
func (f *follower) session(ctx context.Context, client experimentv1.ExperimentServiceClient, model, alias string,
	apply func(*experimentv1.WatchModelResponse) error) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchModel(ctx, &experimentv1.WatchModelRequest{ModelName: model, Alias: alias, AfterRevision: f.after})
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return progressed, err
		}
		if msg.GetRevision() <= f.after {
			continue // never apply a state twice
		}
		if err := apply(msg); err != nil {
			return progressed, &applyError{err: fmt.Errorf("apply revision %d of %s@%s: %w", msg.GetRevision(), model, alias, err)}
		}
		f.after = msg.GetRevision()
		progressed = true
	}
}
