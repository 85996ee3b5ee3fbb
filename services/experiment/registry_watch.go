package experiment

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultAliasPollInterval is how often a process with WatchModel streams
// reads the registry revision, to notice alias changes committed by other
// processes sharing its database.
const DefaultAliasPollInterval = time.Second

// WithAliasPollInterval sets how often the registry revision is polled
// while WatchModel streams are open (default DefaultAliasPollInterval).
// Changes made through this server wake its streams at once either way.
func WithAliasPollInterval(d time.Duration) ServerOption {
	return func(s *Server) {
		if d > 0 {
			s.aliases.interval = d
		}
	}
}

// revisionReader is what the hub's poller reads.
type revisionReader interface {
	RegistryRevision(ctx context.Context) (uint64, error)
}

// aliasHub wakes WatchModel streams when an alias may have changed: at once
// when this process commits a change (changed), and otherwise when a poll
// of the registry's revision counter sees it move (a change committed by
// another process). A wake-up carries no data: each stream re-reads its own
// alias, so a missed or spurious wake-up costs a query, never a message.
//
// One poller serves every stream of the process; it runs only while at
// least one stream is open. The zero value is ready to use.
type aliasHub struct {
	interval time.Duration // 0: DefaultAliasPollInterval

	mu   sync.Mutex
	wake chan struct{} // closed by the next change; nil until asked for
	loop sharedLoop
}

// wait returns a channel closed at the next change. Take it before reading
// the state it guards, so a change committed after the read is never
// missed.
func (h *aliasHub) wait() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.wake == nil {
		h.wake = make(chan struct{})
	}
	return h.wake
}

// changed wakes every stream waiting.
func (h *aliasHub) changed() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.wake != nil {
		close(h.wake)
		h.wake = nil
	}
}

// join registers a stream, starting the poller for the first one. Call
// the returned function when the stream ends: the last one out stops the
// poller and waits for it to return.
func (h *aliasHub) join(st revisionReader, log *slog.Logger) (leave func()) {
	interval := h.interval
	if interval <= 0 {
		interval = DefaultAliasPollInterval
	}
	return h.loop.join(func(ctx context.Context) { h.poll(ctx, st, log, interval) })
}

// poll reads the revision counter every interval and wakes the streams
// when it moved, and after its first read (whatever was committed before
// the poller started and after a stream's first read is then seen).
// Revisions only grow, so any commit is followed by a read that differs
// from the one before it.
func (h *aliasHub) poll(ctx context.Context, st revisionReader, log *slog.Logger, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var (
		last    uint64
		read    bool
		failing bool
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rev, err := st.RegistryRevision(ctx)
		if err != nil {
			if ctx.Err() == nil && !failing {
				log.Warn("registry revision poll failed; cross-process alias changes are delayed", "err", err)
			}
			failing = true
			continue
		}
		if failing {
			log.Info("registry revision poll recovered")
			failing = false
		}
		if !read || rev != last {
			h.changed()
		}
		last, read = rev, true
	}
}
