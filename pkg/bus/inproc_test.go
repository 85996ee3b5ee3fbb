package bus_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/bus/bustest"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func openInProc(t *testing.T, capacity int) *bus.InProc {
	b := bus.NewInProc(bus.InProcConfig{
		Capacity: capacity,
		Backoff:  bus.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		Logger:   testLogger(t),
	})
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

func TestInProcContract(t *testing.T) {
	t.Parallel()
	bustest.Run(t, bustest.Factory{
		Open: func(t *testing.T, _ ...string) bus.Bus { return openInProc(t, 0) },
		OpenBounded: func(t *testing.T, capacity int, _ ...string) bus.Bus {
			return openInProc(t, capacity)
		},
		Timeout: 10 * time.Second,
	})
}

func TestInProcConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     bus.InProcConfig
		wantErr bool
	}{
		{"zero value", bus.InProcConfig{}, false},
		{"explicit", bus.InProcConfig{Capacity: 10, Backoff: bus.Backoff{Min: time.Millisecond, Max: time.Second}}, false},
		{"negative capacity", bus.InProcConfig{Capacity: -1}, true},
		{"negative backoff", bus.InProcConfig{Backoff: bus.Backoff{Min: -time.Second}}, true},
		{"min above max", bus.InProcConfig{Backoff: bus.Backoff{Min: time.Minute, Max: time.Second}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if err := tc.cfg.Validate(); (err != nil) != tc.wantErr {
				t.Errorf("Validate() = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}

// A second consumer of a group waits until the first one leaves, then
// resumes from the first one's commits.
func TestInProcOneConsumerPerGroup(t *testing.T) {
	t.Parallel()
	b := openInProc(t, 0)
	ctx := context.Background()
	cfg := bus.ConsumerConfig{Group: "g", Topics: []string{"t"}, MaxWait: time.Millisecond}

	got1 := make(chan string, 10)
	ctx1, cancel1 := context.WithCancel(ctx)
	done1 := make(chan error, 1)
	go func() {
		done1 <- b.Consume(ctx1, cfg, func(_ context.Context, msgs []bus.Message) error {
			for _, m := range msgs {
				got1 <- string(m.Value)
			}
			return nil
		})
	}()
	if err := b.Publish(ctx, bus.Message{Topic: "t", Value: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	if v := <-got1; v != "a" {
		t.Fatalf("first consumer got %q, want a", v)
	}

	got2 := make(chan string, 10)
	ctx2, cancel2 := context.WithCancel(ctx)
	defer cancel2()
	done2 := make(chan error, 1)
	go func() {
		done2 <- b.Consume(ctx2, cfg, func(_ context.Context, msgs []bus.Message) error {
			for _, m := range msgs {
				got2 <- string(m.Value)
			}
			return nil
		})
	}()
	time.Sleep(20 * time.Millisecond) // let the second consumer start waiting
	if err := b.Publish(ctx, bus.Message{Topic: "t", Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if v := <-got1; v != "b" {
		t.Fatalf("first consumer got %q, want b", v)
	}
	select {
	case v := <-got2:
		t.Fatalf("second consumer got %q while the first was active", v)
	default:
	}

	cancel1()
	if err := <-done1; err != nil {
		t.Fatalf("first Consume = %v", err)
	}
	if err := b.Publish(ctx, bus.Message{Topic: "t", Value: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got2:
		if v != "c" {
			t.Fatalf("second consumer got %q, want c (resume after the first's commits)", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second consumer did not take over")
	}
	cancel2()
	if err := <-done2; err != nil {
		t.Fatalf("second Consume = %v", err)
	}
}

// Messages stay until every subscribed group has committed them: a group
// that stopped consuming holds the topic, and publishers block at capacity.
func TestInProcRetentionFollowsSlowestGroup(t *testing.T) {
	t.Parallel()
	b := openInProc(t, 3)
	ctx := context.Background()
	noop := func(context.Context, []bus.Message) error { return nil }

	// Group "slow" subscribes, then stops before anything is published.
	slowCtx, stopSlow := context.WithCancel(ctx)
	stopSlow()
	if err := b.Consume(slowCtx, bus.ConsumerConfig{Group: "slow", Topics: []string{"t"}}, noop); err != nil {
		t.Fatalf("Consume slow: %v", err)
	}

	seen := make(chan int, 10)
	fastCtx, stopFast := context.WithCancel(ctx)
	defer stopFast()
	fastDone := make(chan error, 1)
	go func() {
		fastDone <- b.Consume(fastCtx, bus.ConsumerConfig{Group: "fast", Topics: []string{"t"}, MaxWait: time.Millisecond},
			func(_ context.Context, msgs []bus.Message) error {
				seen <- len(msgs)
				return nil
			})
	}()
	for i := range 3 {
		if err := b.Publish(ctx, bus.Message{Topic: "t", Value: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for n := 0; n < 3; {
		n += <-seen
	}
	// "fast" has committed all three, "slow" none: the topic is still full.
	tctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	err := b.Publish(tctx, bus.Message{Topic: "t", Value: []byte("x")})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish = %v, want DeadlineExceeded while group slow holds the topic", err)
	}

	// Once "slow" catches up, space frees.
	slowCtx, stopSlow = context.WithCancel(ctx)
	defer stopSlow()
	slowDone := make(chan error, 1)
	go func() {
		slowDone <- b.Consume(slowCtx, bus.ConsumerConfig{Group: "slow", Topics: []string{"t"}, MaxWait: time.Millisecond}, noop)
	}()
	pctx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if err := b.Publish(pctx, bus.Message{Topic: "t", Value: []byte("y")}); err != nil {
		t.Fatalf("Publish after slow group caught up: %v", err)
	}
	stopSlow()
	stopFast()
	if err := <-slowDone; err != nil {
		t.Error(err)
	}
	if err := <-fastDone; err != nil {
		t.Error(err)
	}
}

// Consume serves several topics of a group round-robin, one topic per
// batch.
func TestInProcMultipleTopics(t *testing.T) {
	t.Parallel()
	b := openInProc(t, 0)
	ctx := context.Background()
	for _, topic := range []string{"a", "b"} {
		for i := range 10 {
			if err := b.Publish(ctx, bus.Message{Topic: topic, Value: []byte{byte(i)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	type batch struct {
		topic string
		n     int
	}
	got := make(chan batch, 100)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(cctx, bus.ConsumerConfig{Group: "g", Topics: []string{"a", "b", "a"}, MaxBatch: 5},
			func(_ context.Context, msgs []bus.Message) error {
				for _, m := range msgs[1:] {
					if m.Topic != msgs[0].Topic {
						t.Errorf("batch mixes topics %s and %s", msgs[0].Topic, m.Topic)
					}
				}
				got <- batch{msgs[0].Topic, len(msgs)}
				return nil
			})
	}()
	var order []string
	total := 0
	for total < 20 {
		bt := <-got
		order = append(order, bt.topic)
		total += bt.n
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "b", "a", "b"}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("topic order %v, want round-robin %v", order, want)
		}
	}
}

// A group registered with Subscribe keeps messages that other groups have
// already committed.
func TestInProcSubscribe(t *testing.T) {
	t.Parallel()
	b := openInProc(t, 0)
	ctx := context.Background()
	if err := b.Subscribe("late", "t"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := b.Subscribe("late", "t"); err != nil {
		t.Fatalf("Subscribe twice: %v", err)
	}
	for i := range 5 {
		if err := b.Publish(ctx, bus.Message{Topic: "t", Value: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, group := range []string{"early", "late"} {
		got := 0
		cctx, cancel := context.WithCancel(ctx)
		err := b.Consume(cctx, bus.ConsumerConfig{Group: group, Topics: []string{"t"}, MaxWait: time.Millisecond},
			func(_ context.Context, msgs []bus.Message) error {
				got += len(msgs)
				if got == 5 {
					cancel()
				}
				return nil
			})
		cancel()
		if err != nil || got != 5 {
			t.Fatalf("group %s: Consume = %v after %d messages, want nil after 5", group, err, got)
		}
	}

	tests := []struct {
		name   string
		group  string
		topics []string
	}{
		{"no group", "", []string{"t"}},
		{"no topics", "g", nil},
		{"empty topic", "g", []string{""}},
	}
	for _, tc := range tests {
		if err := b.Subscribe(tc.group, tc.topics...); err == nil {
			t.Errorf("%s: Subscribe = nil, want an error", tc.name)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("g", "t"); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
}

// The in-process bus tells a member its partitions once: partition 0 of
// every topic.
func TestInProcAssigned(t *testing.T) {
	t.Parallel()
	b := bus.NewInProc(bus.InProcConfig{})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var got map[string][]int32
	calls := 0
	if err := b.Publish(ctx, bus.Message{Topic: "a", Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	err := b.Consume(ctx, bus.ConsumerConfig{Group: "g", Topics: []string{"a", "b"},
		Assigned: func(p map[string][]int32) { got, calls = p, calls+1 }},
		func(context.Context, []bus.Message) error { cancel(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 || len(got) != 2 || !slices.Equal(got["a"], []int32{0}) || !slices.Equal(got["b"], []int32{0}) {
		t.Errorf("Assigned called %d times with %v; want once with partition 0 of a and b", calls, got)
	}
}
