package experiment

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
	"github.com/quantmesh/quantmesh/pkg/stream"
)

// DefaultABPollInterval is how often a process with WatchABTests streams
// reads the A/B revision, to notice changes committed by other processes
// sharing its database.
const DefaultABPollInterval = time.Second

// abRing is how many test changes the broker keeps for streams catching up.
const abRing = 256

// WithABPollInterval sets how often the A/B revision is polled while
// WatchABTests streams are open (default DefaultABPollInterval). Changes
// made through this server reach its streams at once either way.
func WithABPollInterval(d time.Duration) ServerOption {
	return func(s *Server) {
		if d > 0 {
			s.ab.interval = d
		}
	}
}

// abEvent is a test's state at the revision of its latest change.
type abEvent struct{ t *ABTest }

func (e abEvent) GetSequence() uint64 { return e.t.Revision }

// abHub feeds committed test changes to WatchABTests streams through a
// stream.Broker. One feeder per process reads the store for changes after
// the last it published, in revision order: at once when this process
// commits a change (kick), and every interval otherwise (changes of other
// processes). Revisions are taken under the counter's row lock and commit
// in order, so a read never later finds a smaller revision appearing
// behind one it has published. The feeder runs only while a stream is
// open. The zero value is ready to use.
type abHub struct {
	interval time.Duration // 0: DefaultABPollInterval

	once   sync.Once
	broker *stream.Broker[abEvent]
	kickc  chan struct{}

	loop sharedLoop
}

func (h *abHub) init() {
	h.once.Do(func() {
		h.broker = stream.NewBroker[abEvent](0, abRing)
		h.kickc = make(chan struct{}, 1)
	})
}

// kick asks the feeder, if one runs, to read the store now.
func (h *abHub) kick() {
	h.init()
	select {
	case h.kickc <- struct{}{}:
	default:
	}
}

type abChangeReader interface {
	ABTestChanges(ctx context.Context, after uint64, activeOnly bool) ([]*ABTest, uint64, error)
}

// join registers a stream, starting the feeder for the first one; call
// leave when the stream ends.
func (h *abHub) join(st abChangeReader, log *slog.Logger) (leave func()) {
	h.init()
	interval := h.interval
	if interval <= 0 {
		interval = DefaultABPollInterval
	}
	return h.loop.join(func(ctx context.Context) { h.feed(ctx, st, log, interval) })
}

func (h *abHub) feed(ctx context.Context, st abChangeReader, log *slog.Logger, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		tests, _, err := st.ABTestChanges(ctx, h.broker.Last(), false)
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				log.Warn("A/B test change read failed; WatchABTests streams are delayed", "err", err)
			}
			failing = true
		case err == nil:
			if failing {
				log.Info("A/B test change read recovered")
				failing = false
			}
			events := make([]abEvent, len(tests))
			for i, t := range tests {
				events[i] = abEvent{t}
			}
			h.broker.Publish(events)
		}
		select {
		case <-ctx.Done():
			return
		case <-h.kickc:
		case <-t.C:
		}
	}
}

// abWrite runs a test write and wakes the feeder when it committed.
func (s *Server) abWrite(write func() (*ABTest, error)) error {
	_, err := write()
	if err == nil {
		s.ab.kick()
	}
	return err
}

// WatchABTests implements ExperimentServiceServer. A client without a
// revision (or with one this database never reached) gets a snapshot of
// the tests not stopped, then SNAPSHOT_END, then every change. A client
// resuming from a revision gets each test changed since, in its state as of
// the change's revision (a test changed twice comes once, at its latest),
// so it converges without gaps. Response headers are sent once the stream
// watches.
func (s *Server) WatchABTests(req *experimentv1.WatchABTestsRequest, srv grpc.ServerStreamingServer[experimentv1.WatchABTestsResponse]) error {
	ctx := srv.Context()
	model := req.GetModelName()
	if model != "" {
		var v apierr.Violations
		naming.ModelName(&v, "model_name", model)
		if err := v.Err(); err != nil {
			return err
		}
	}
	leave := s.ab.join(s.store, s.log)
	defer leave()
	if err := srv.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	matches := func(t *ABTest) bool { return model == "" || t.Model == model }
	after := req.GetAfterRevision()
	latest, err := s.store.ABRevision(ctx)
	if err != nil {
		return err
	}
	if after == 0 || after > latest {
		tests, rev, err := s.store.ABTestChanges(ctx, 0, true)
		if err != nil {
			return err
		}
		for _, t := range tests {
			if !matches(t) {
				continue
			}
			if err := srv.Send(&experimentv1.WatchABTestsResponse{AbTest: abTestToProto(t), Revision: rev, Kind: experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT}); err != nil {
				return err
			}
		}
		if err := srv.Send(&experimentv1.WatchABTestsResponse{Revision: rev, Kind: experimentv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END}); err != nil {
			return err
		}
		after = rev
	}
	update := func(t *ABTest) error {
		if !matches(t) {
			return nil
		}
		return srv.Send(&experimentv1.WatchABTestsResponse{AbTest: abTestToProto(t), Revision: t.Revision, Kind: experimentv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE})
	}
	for {
		msgs, covered, _, wait := s.ab.broker.Since(after)
		if !covered {
			tests, rev, err := s.store.ABTestChanges(ctx, after, false)
			if err != nil {
				return err
			}
			for _, t := range tests {
				if err := update(t); err != nil {
					return err
				}
			}
			after = max(after, rev)
			continue
		}
		for _, m := range msgs {
			if err := update(m.t); err != nil {
				return err
			}
			after = m.t.Revision
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
