// Package bustest is the behavioural contract of bus.Bus. Every
// implementation runs the same suite:
//
//	func TestContract(t *testing.T) {
//		bustest.Run(t, bustest.Factory{Open: ...})
//	}
package bustest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/quantmesh/quantmesh/pkg/bus"
)

// Factory opens the buses the suite runs against.
type Factory struct {
	// Open returns a new, empty bus on which topics exist. Open registers
	// the bus's Close (and anything else to release) with t.Cleanup; the
	// suite may also close it itself, so Close must be idempotent. Handler
	// redelivery backoff should be short (tens of milliseconds).
	Open func(t *testing.T, topics ...string) bus.Bus
	// OpenBounded is like Open for a bus whose topics hold at most capacity
	// unconsumed messages, so that Publish applies backpressure. Nil skips
	// the backpressure tests (Kafka's limits are the brokers' retention).
	OpenBounded func(t *testing.T, capacity int, topics ...string) bus.Bus
	// Timeout bounds each wait of the suite; 0 means 20s.
	Timeout time.Duration
}

// Run runs the contract suite against f, each test in parallel on its own
// bus.
func Run(t *testing.T, f Factory) {
	if f.Timeout == 0 {
		f.Timeout = 20 * time.Second
	}
	tests := []struct {
		name    string
		run     func(*testing.T, Factory)
		bounded bool // needs OpenBounded; not part of the contract otherwise
	}{
		{"DeliversOncePerGroupInOrderPerKey", testInOrderPerKey, false},
		{"TwoGroupsEachSeeEverything", testTwoGroups, false},
		{"HandlerErrorRedeliversSameBatch", testRedelivery, false},
		{"NewConsumerResumesFromCommit", testResume, false},
		{"HeadersRoundTrip", testHeaders, false},
		{"BatchesRespectMaxBatch", testMaxBatch, false},
		{"PartialBatchAfterMaxWait", testMaxWait, false},
		{"ConsumeReturnsNilOnCancel", testCancel, false},
		{"ClosedBusRefuses", testClosed, false},
		{"CloseLetsInFlightBatchFinish", testCloseInFlight, false},
		{"InvalidArguments", testInvalid, false},
		{"PublishHonoursContextUnderBackpressure", testBackpressure, true},
		{"CloseReleasesBlockedPublish", testCloseReleasesPublisher, true},
	}
	for _, tc := range tests {
		if tc.bounded && f.OpenBounded == nil {
			// A bus without bounded topics (Kafka keeps everything on disk)
			// has no backpressure to test.
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, f)
		})
	}
}

// recorder keeps the batches a handler committed (returned nil for), in
// the order the handler saw them.
type recorder struct {
	mu      sync.Mutex
	batches [][]bus.Message
	count   map[string]int // value → committed deliveries
}

func newRecorder() *recorder { return &recorder{count: make(map[string]int)} }

func (r *recorder) handle(_ context.Context, msgs []bus.Message) error {
	r.add(msgs)
	return nil
}

func (r *recorder) add(msgs []bus.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, slices.Clone(msgs))
	for _, m := range msgs {
		r.count[string(m.Value)]++
	}
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.count)
}

func (r *recorder) snapshot() ([][]bus.Message, map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts := make(map[string]int, len(r.count))
	for k, v := range r.count {
		counts[k] = v
	}
	return slices.Clone(r.batches), counts
}

// messages returns every committed message in delivery order.
func (r *recorder) messages() []bus.Message {
	batches, _ := r.snapshot()
	return slices.Concat(batches...)
}

// running is one Consume call in its own goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func consume(t *testing.T, b bus.Bus, cfg bus.ConsumerConfig, h bus.BatchHandler) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = b.Consume(ctx, cfg, h)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// wait returns Consume's result, failing the test if it takes longer than
// timeout.
func (r *running) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(timeout):
		t.Fatalf("Consume did not return within %s", timeout)
		return nil
	}
}

// stop cancels Consume's ctx and requires it to return nil.
func (r *running) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	r.cancel()
	if err := r.wait(t, timeout); err != nil {
		t.Fatalf("Consume after cancel = %v, want nil", err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// keyed builds n messages over keys k0..k(keys-1), round robin; values are
// "<key>/<seq within key>" with a zero-padded seq starting at from/keys.
func keyed(topic string, from, n, keys int) []bus.Message {
	msgs := make([]bus.Message, 0, n)
	for i := from; i < from+n; i++ {
		key := fmt.Sprintf("k%d", i%keys)
		msgs = append(msgs, bus.Message{
			Topic: topic,
			Key:   []byte(key),
			Value: fmt.Appendf(nil, "%s/%04d", key, i/keys),
		})
	}
	return msgs
}

func publish(t *testing.T, b bus.Bus, msgs []bus.Message, chunk int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for c := range slices.Chunk(msgs, chunk) {
		if err := b.Publish(ctx, c...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
}

func values(msgs []bus.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Value)
	}
	return out
}

// checkOrder requires every key's values to arrive with consecutive
// sequence numbers starting at first[key] (0 when absent), and offsets to
// increase within each partition.
func checkOrder(t *testing.T, msgs []bus.Message, first map[string]int) {
	t.Helper()
	next := make(map[string]int)
	for k, v := range first {
		next[k] = v
	}
	lastOffset := make(map[string]int64)
	for _, m := range msgs {
		var seq int
		key, seqs, ok := strings.Cut(string(m.Value), "/")
		if !ok {
			t.Fatalf("unexpected value %q", m.Value)
		}
		if _, err := fmt.Sscanf(seqs, "%d", &seq); err != nil {
			t.Fatalf("unexpected value %q: %v", m.Value, err)
		}
		if string(m.Key) != key {
			t.Errorf("message %q has key %q, want %q", m.Value, m.Key, key)
		}
		if seq != next[key] {
			t.Errorf("key %s: got seq %d, want %d (order broken or message lost/duplicated)", key, seq, next[key])
		}
		next[key] = seq + 1
		pk := fmt.Sprintf("%s/%d", m.Topic, m.Partition)
		if last, ok := lastOffset[pk]; ok && m.Offset <= last {
			t.Errorf("partition %s: offset %d after %d", pk, m.Offset, last)
		}
		lastOffset[pk] = m.Offset
	}
}

func requireOnce(t *testing.T, counts map[string]int, want []bus.Message) {
	t.Helper()
	for _, m := range want {
		if n := counts[string(m.Value)]; n != 1 {
			t.Errorf("message %q committed %d times, want 1", m.Value, n)
		}
	}
	if len(counts) != len(want) {
		t.Errorf("committed %d distinct messages, want %d", len(counts), len(want))
	}
}

func testInOrderPerKey(t *testing.T, f Factory) {
	const topic = "orders"
	b := f.Open(t, topic)
	msgs := keyed(topic, 0, 200, 5)
	publish(t, b, msgs, 20)

	rec := newRecorder()
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: 16}, rec.handle)
	waitFor(t, f.Timeout, "200 messages", func() bool { return rec.distinct() == len(msgs) })
	c.stop(t, f.Timeout)

	_, counts := rec.snapshot()
	requireOnce(t, counts, msgs)
	got := rec.messages()
	checkOrder(t, got, nil)
	for _, m := range got {
		if m.Topic != topic {
			t.Fatalf("delivered Topic = %q, want %q", m.Topic, topic)
		}
	}
}

func testTwoGroups(t *testing.T, f Factory) {
	const topic = "fanout"
	b := f.Open(t, topic)
	msgs := keyed(topic, 0, 100, 3)
	publish(t, b, msgs[:50], 10)

	// Neither group commits before both have had a batch, so both have
	// subscribed before any message could be released on one group's
	// account (a bus may drop what every subscribed group has committed).
	recs := []*recorder{newRecorder(), newRecorder()}
	started := []chan struct{}{make(chan struct{}), make(chan struct{})}
	var onces [2]sync.Once
	var handlers []bus.BatchHandler
	for i := range 2 {
		handlers = append(handlers, func(ctx context.Context, msgs []bus.Message) error {
			onces[i].Do(func() { close(started[i]) })
			select {
			case <-started[1-i]:
			case <-ctx.Done():
				return ctx.Err()
			}
			return recs[i].handle(ctx, msgs)
		})
	}
	var cs []*running
	for i, h := range handlers {
		cs = append(cs, consume(t, b, bus.ConsumerConfig{Group: fmt.Sprintf("g%d", i), Topics: []string{topic}, MaxBatch: 8}, h))
	}
	publish(t, b, msgs[50:], 10)
	for i, rec := range recs {
		waitFor(t, f.Timeout, fmt.Sprintf("group g%d to see 100 messages", i), func() bool { return rec.distinct() == len(msgs) })
	}
	for i, rec := range recs {
		cs[i].stop(t, f.Timeout)
		_, counts := rec.snapshot()
		requireOnce(t, counts, msgs)
		checkOrder(t, rec.messages(), nil)
	}
}

func testRedelivery(t *testing.T, f Factory) {
	const topic = "flaky"
	b := f.Open(t, topic)
	msgs := keyed(topic, 0, 60, 4)
	publish(t, b, msgs, 60)

	const failures = 2
	var (
		mu       sync.Mutex
		attempts [][]string // every call's values, successful or not
		failed   []string   // the batch that failed
	)
	rec := newRecorder()
	h := func(ctx context.Context, batch []bus.Message) error {
		mu.Lock()
		attempts = append(attempts, values(batch))
		if len(attempts) <= failures {
			failed = values(batch)
			mu.Unlock()
			return errors.New("bustest: injected failure")
		}
		mu.Unlock()
		rec.add(batch)
		return nil
	}
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: 10}, h)
	waitFor(t, f.Timeout, "60 messages", func() bool { return rec.distinct() == len(msgs) })
	c.stop(t, f.Timeout)

	mu.Lock()
	defer mu.Unlock()
	// The failed batch comes back unchanged, immediately (other partitions
	// wait for the handler), until it succeeds.
	for i := range failures + 1 {
		if diff := cmp.Diff(failed, attempts[i]); diff != "" {
			t.Errorf("attempt %d is not the failed batch (-failed +got):\n%s", i+1, diff)
		}
	}
	_, counts := rec.snapshot()
	requireOnce(t, counts, msgs)
	checkOrder(t, rec.messages(), nil)
	checkContiguous(t, rec)
}

// checkContiguous requires the committed batches of each partition to cover
// its offsets without gaps or overlaps, starting at 0.
func checkContiguous(t *testing.T, rec *recorder) {
	t.Helper()
	batches, _ := rec.snapshot()
	next := make(map[int32]int64)
	for _, batch := range batches {
		for _, m := range batch {
			if m.Offset != next[m.Partition] {
				t.Errorf("partition %d: committed offset %d, want %d (skipped or repeated)", m.Partition, m.Offset, next[m.Partition])
			}
			next[m.Partition] = m.Offset + 1
		}
	}
}

func testResume(t *testing.T, f Factory) {
	const topic = "resume"
	b := f.Open(t, topic)
	msgs := keyed(topic, 0, 100, 6)
	publish(t, b, msgs[:60], 10)

	// The first consumer commits four batches, then is cancelled while the
	// fifth batch fails: that batch is the uncommitted tail.
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	first := newRecorder()
	var (
		mu    sync.Mutex
		tail  = make(map[string]bool)
		calls int
	)
	h1 := func(_ context.Context, batch []bus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls > 4 {
			for _, v := range values(batch) {
				tail[v] = true
			}
			cancel1()
			return errors.New("bustest: stopping")
		}
		first.add(batch)
		return nil
	}
	cfg := bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: 5}
	done1 := make(chan error, 1)
	go func() { done1 <- b.Consume(ctx1, cfg, h1) }()
	select {
	case err := <-done1:
		if err != nil {
			t.Fatalf("first Consume = %v, want nil", err)
		}
	case <-time.After(f.Timeout):
		cancel1()
		<-done1
		t.Fatal("first consumer did not stop")
	}
	_, committed := first.snapshot()
	if len(committed) != 20 {
		t.Fatalf("first consumer committed %d messages, want 4 batches of 5", len(committed))
	}

	publish(t, b, msgs[60:], 10)
	second := newRecorder()
	c2 := consume(t, b, cfg, second.handle)
	waitFor(t, f.Timeout, "the second consumer to cover every message", func() bool {
		_, counts := second.snapshot()
		for _, m := range msgs {
			if counts[string(m.Value)] == 0 && committed[string(m.Value)] == 0 {
				return false
			}
		}
		return true
	})
	c2.stop(t, f.Timeout)

	_, counts := second.snapshot()
	dups := 0
	for v, n := range counts {
		if n != 1 {
			t.Errorf("second consumer committed %q %d times", v, n)
		}
		if committed[v] > 0 {
			t.Errorf("second consumer got %q, which the first one committed", v)
		}
		if tail[v] {
			dups++
		}
	}
	t.Logf("redelivered from the uncommitted tail: %d of %d", dups, len(tail))

	// Per key, the second consumer starts where the first one committed.
	start := make(map[string]int)
	for _, m := range first.messages() {
		key, _, _ := strings.Cut(string(m.Value), "/")
		start[key]++
	}
	checkOrder(t, second.messages(), start)
}

func testHeaders(t *testing.T, f Factory) {
	const topic = "headers"
	b := f.Open(t, topic)
	want := []bus.Message{
		{Topic: topic, Key: []byte("k"), Value: []byte("with"), Headers: map[string]string{
			"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"empty":       "",
		}},
		{Topic: topic, Key: []byte("k"), Value: []byte("without")},
	}
	before := time.Now().Add(-time.Second)
	publish(t, b, want, 2)
	after := time.Now().Add(time.Second)

	rec := newRecorder()
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}}, rec.handle)
	waitFor(t, f.Timeout, "2 messages", func() bool { return rec.distinct() == 2 })
	c.stop(t, f.Timeout)

	got := rec.messages()
	opts := []cmp.Option{
		// SpanContext is derived from the headers by a traced bus.
		cmpopts.IgnoreFields(bus.Message{}, "Partition", "Offset", "Time", "Behind", "SpanContext"),
		cmpopts.EquateEmpty(),
	}
	if diff := cmp.Diff(want, got, opts...); diff != "" {
		t.Errorf("delivered messages (-want +got):\n%s", diff)
	}
	// Both were on the partition before the group consumed: the first had
	// one message behind it, the second none.
	if len(got) == 2 && (got[0].Behind != 1 || got[1].Behind != 0) {
		t.Errorf("Behind = %d, %d, want 1, 0", got[0].Behind, got[1].Behind)
	}
	for _, m := range got {
		if m.Time.Before(before) || m.Time.After(after) {
			t.Errorf("message %q Time = %v, want between %v and %v", m.Value, m.Time, before, after)
		}
	}
}

func testMaxBatch(t *testing.T, f Factory) {
	const topic = "batches"
	b := f.Open(t, topic)
	msgs := keyed(topic, 0, 100, 1)
	publish(t, b, msgs, 100)

	const maxBatch = 7
	rec := newRecorder()
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: maxBatch, MaxWait: 200 * time.Millisecond}, rec.handle)
	waitFor(t, f.Timeout, "100 messages", func() bool { return rec.distinct() == len(msgs) })
	c.stop(t, f.Timeout)

	batches, counts := rec.snapshot()
	requireOnce(t, counts, msgs)
	full := 0
	for i, batch := range batches {
		if len(batch) == 0 || len(batch) > maxBatch {
			t.Errorf("batch %d has %d messages, want 1..%d", i, len(batch), maxBatch)
		}
		if len(batch) == maxBatch {
			full++
		}
	}
	if full == 0 {
		t.Errorf("no batch of %d among %d batches: messages are not batched", maxBatch, len(batches))
	}
}

func testMaxWait(t *testing.T, f Factory) {
	const topic = "partial"
	b := f.Open(t, topic)
	rec := newRecorder()
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: 1000, MaxWait: 20 * time.Millisecond}, rec.handle)
	msgs := keyed(topic, 0, 3, 1)
	publish(t, b, msgs, 3)
	// Far fewer than MaxBatch: handed over once MaxWait has passed.
	waitFor(t, f.Timeout, "a partial batch", func() bool { return rec.distinct() == len(msgs) })
	c.stop(t, f.Timeout)
	_, counts := rec.snapshot()
	requireOnce(t, counts, msgs)
}

func testCancel(t *testing.T, f Factory) {
	const topic = "idle"
	b := f.Open(t, topic)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(ctx, bus.ConsumerConfig{Group: "g", Topics: []string{topic}}, func(context.Context, []bus.Message) error { return nil })
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Consume after cancel = %v, want nil", err)
		}
	case <-time.After(f.Timeout):
		t.Fatal("Consume did not return after cancel")
	}
}

func testClosed(t *testing.T, f Factory) {
	const topic = "closed"
	b := f.Open(t, topic)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	err := b.Publish(context.Background(), bus.Message{Topic: topic, Value: []byte("late")})
	if !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	err = b.Consume(context.Background(), bus.ConsumerConfig{Group: "g", Topics: []string{topic}},
		func(context.Context, []bus.Message) error { return nil })
	if !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Consume after Close = %v, want ErrClosed", err)
	}
}

func testCloseInFlight(t *testing.T, f Factory) {
	const topic = "inflight"
	b := f.Open(t, topic)
	publish(t, b, keyed(topic, 0, 3, 1), 3)

	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	var finished sync.WaitGroup
	finished.Add(1)
	h := func(context.Context, []bus.Message) error {
		first := false
		once.Do(func() { first = true })
		if first {
			defer finished.Done()
			close(entered)
			<-release
		}
		return nil
	}
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}}, h)
	select {
	case <-entered:
	case <-time.After(f.Timeout):
		t.Fatal("handler not called")
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a handler was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(f.Timeout):
		t.Fatal("Close did not return after the handler finished")
	}
	finished.Wait()
	if err := c.wait(t, f.Timeout); err != nil && !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Consume after Close = %v, want nil or ErrClosed", err)
	}
}

func testInvalid(t *testing.T, f Factory) {
	const topic = "invalid"
	b := f.Open(t, topic)
	ok := func(context.Context, []bus.Message) error { return nil }
	tests := []struct {
		name string
		call func() error
	}{
		{"publish without topic", func() error {
			return b.Publish(context.Background(), bus.Message{Value: []byte("x")})
		}},
		{"consume without group", func() error {
			return b.Consume(context.Background(), bus.ConsumerConfig{Topics: []string{topic}}, ok)
		}},
		{"consume without topics", func() error {
			return b.Consume(context.Background(), bus.ConsumerConfig{Group: "g"}, ok)
		}},
		{"consume empty topic name", func() error {
			return b.Consume(context.Background(), bus.ConsumerConfig{Group: "g", Topics: []string{""}}, ok)
		}},
		{"consume negative MaxBatch", func() error {
			return b.Consume(context.Background(), bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: -1}, ok)
		}},
		{"consume negative MaxWait", func() error {
			return b.Consume(context.Background(), bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxWait: -time.Second}, ok)
		}},
		{"consume nil handler", func() error {
			return b.Consume(context.Background(), bus.ConsumerConfig{Group: "g", Topics: []string{topic}}, nil)
		}},
	}
	for _, tc := range tests {
		if err := tc.call(); err == nil || errors.Is(err, bus.ErrClosed) {
			t.Errorf("%s: error = %v, want a validation error", tc.name, err)
		}
	}
}

func testBackpressure(t *testing.T, f Factory) {
	const topic = "bounded"
	b := f.OpenBounded(t, 4, topic)
	msgs := keyed(topic, 0, 6, 1)
	// Kept before any group subscribes, up to capacity.
	publish(t, b, msgs[:4], 4)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := b.Publish(ctx, bus.Message{Topic: topic, Key: []byte("k0"), Value: []byte("timed out")})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish on a full topic = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("Publish on a full topic returned after %s, before its deadline", d)
	}

	blocked := make(chan error, 1)
	go func() { blocked <- b.Publish(context.Background(), msgs[4:]...) }()
	select {
	case err := <-blocked:
		t.Fatalf("Publish on a full topic returned %v without waiting", err)
	case <-time.After(50 * time.Millisecond):
	}

	rec := newRecorder()
	c := consume(t, b, bus.ConsumerConfig{Group: "g", Topics: []string{topic}, MaxBatch: 2}, rec.handle)
	select {
	case err := <-blocked:
		if err != nil {
			t.Fatalf("blocked Publish = %v, want nil once space frees", err)
		}
	case <-time.After(f.Timeout):
		t.Fatal("blocked Publish did not resume after the consumer committed")
	}
	waitFor(t, f.Timeout, "6 messages", func() bool { return rec.distinct() == len(msgs) })
	c.stop(t, f.Timeout)
	_, counts := rec.snapshot()
	requireOnce(t, counts, msgs)
	checkOrder(t, rec.messages(), nil)
}

func testCloseReleasesPublisher(t *testing.T, f Factory) {
	const topic = "bounded"
	b := f.OpenBounded(t, 1, topic)
	publish(t, b, keyed(topic, 0, 1, 1), 1)
	blocked := make(chan error, 1)
	go func() { blocked <- b.Publish(context.Background(), keyed(topic, 1, 1, 1)...) }()
	time.Sleep(20 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-blocked:
		if !errors.Is(err, bus.ErrClosed) {
			t.Errorf("blocked Publish after Close = %v, want ErrClosed", err)
		}
	case <-time.After(f.Timeout):
		t.Fatal("Close did not release a blocked Publish")
	}
}
