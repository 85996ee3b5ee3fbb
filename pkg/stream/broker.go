// Package stream holds what resumable server streams share: a broker that
// fans committed, sequence-numbered messages out to live streams and keeps
// the most recent in a ring, so a stream that switches from reading the
// store to live delivery misses nothing.
package stream

import "sync"

// Sequenced is a message with a stream-wide sequence number.
type Sequenced interface {
	GetSequence() uint64
}

// Broker fans committed messages out to live streams. Messages older than
// the ring are read from the store by the stream.
type Broker[T Sequenced] struct {
	mu     sync.Mutex
	last   uint64 // highest committed sequence published
	ring   []T
	next   int // ring write position
	size   int
	notify chan struct{} // closed and replaced on every publish
}

// NewBroker returns a broker whose last published sequence is last and
// whose ring holds size messages.
func NewBroker[T Sequenced](last uint64, size int) *Broker[T] {
	return &Broker[T]{last: last, ring: make([]T, size), notify: make(chan struct{})}
}

// Publish appends committed messages, in sequence order; messages at or
// below the last published sequence are ignored.
func (b *Broker[T]) Publish(msgs []T) {
	if len(msgs) == 0 {
		return
	}
	b.mu.Lock()
	for _, m := range msgs {
		if m.GetSequence() <= b.last {
			continue
		}
		b.last = m.GetSequence()
		b.ring[b.next] = m
		b.next = (b.next + 1) % len(b.ring)
		if b.size < len(b.ring) {
			b.size++
		}
	}
	close(b.notify)
	b.notify = make(chan struct{})
	b.mu.Unlock()
}

// Since returns the retained messages with sequence > after, whether the
// ring still covers everything after it (otherwise read the store first),
// the last sequence published, and a channel closed at the next publish.
func (b *Broker[T]) Since(after uint64) (msgs []T, covered bool, last uint64, wait <-chan struct{}) {
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
		if m := b.ring[(start+i)%len(b.ring)]; m.GetSequence() > after {
			msgs = append(msgs, m)
		}
	}
	return msgs, true, last, wait
}

// First returns the sequence of the oldest retained message, 0 when none.
func (b *Broker[T]) First() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.size == 0 {
		return 0
	}
	return b.ring[(b.next-b.size+len(b.ring))%len(b.ring)].GetSequence()
}

// Last returns the highest published sequence.
func (b *Broker[T]) Last() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}
