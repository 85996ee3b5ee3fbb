package risk

import (
	"sync"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
)

// broker fans committed events out to live streams. It keeps the most
// recent events in a ring so that a stream switching from the store to
// live delivery misses nothing; older events are read from the store.
type broker struct {
	mu     sync.Mutex
	last   uint64 // highest committed sequence published
	ring   []*riskv1.RiskEvent
	next   int // ring write position
	size   int
	notify chan struct{} // closed and replaced on every publish
}

const ringSize = 4096

func newBroker(last uint64) *broker {
	return &broker{last: last, ring: make([]*riskv1.RiskEvent, ringSize), notify: make(chan struct{})}
}

// publish appends committed events, which carry their sequence numbers. The
// store's writer calls it after each commit, so events arrive in sequence
// order.
func (b *broker) publish(events []*riskv1.RiskEvent) {
	if len(events) == 0 {
		return
	}
	b.mu.Lock()
	for _, ev := range events {
		if ev.GetSequence() <= b.last {
			continue
		}
		b.last = ev.GetSequence()
		b.ring[b.next] = ev
		b.next = (b.next + 1) % len(b.ring)
		if b.size < len(b.ring) {
			b.size++
		}
	}
	close(b.notify)
	b.notify = make(chan struct{})
	b.mu.Unlock()
}

// since returns the retained events with sequence > after, whether the ring
// still covers everything after it (otherwise read the store first), the
// last sequence published, and a channel closed at the next publish.
func (b *broker) since(after uint64) (events []*riskv1.RiskEvent, covered bool, last uint64, wait <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	last, wait = b.last, b.notify
	if after >= b.last {
		return nil, true, last, wait
	}
	start := (b.next - b.size + len(b.ring)) % len(b.ring)
	if b.size == 0 || b.ring[start].GetSequence() > after+1 {
		return nil, false, last, wait
	}
	for i := 0; i < b.size; i++ {
		if ev := b.ring[(start+i)%len(b.ring)]; ev.GetSequence() > after {
			events = append(events, ev)
		}
	}
	return events, true, last, wait
}

// lastSequence returns the highest published sequence.
func (b *broker) lastSequence() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}
