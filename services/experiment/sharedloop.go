package experiment

import (
	"context"
	"sync"
)

// sharedLoop runs one background loop while at least one stream needs it:
// the first join starts it, the last leave stops it and waits for it to
// return. WatchModel's revision poller and WatchABTests' feeder are such
// loops.
type sharedLoop struct {
	mu      sync.Mutex
	streams int
	stop    context.CancelFunc // stops the running loop
	stopped chan struct{}      // closed when the running loop returns
}

// join registers a stream, starting run in a goroutine for the first one.
// Call the returned function when the stream ends.
func (l *sharedLoop) join(run func(ctx context.Context)) (leave func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.streams++
	if l.streams == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		l.stop, l.stopped = cancel, stopped
		go func() {
			defer close(stopped)
			run(ctx)
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.streams--
			if l.streams > 0 {
				l.mu.Unlock()
				return
			}
			stop, stopped := l.stop, l.stopped
			l.stop, l.stopped = nil, nil
			l.mu.Unlock()
			stop()
			<-stopped
		})
	}
}
