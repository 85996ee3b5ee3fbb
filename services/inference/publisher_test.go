package inference_test

import (
	"context"
	"testing"
	"time"

	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/services/inference"
)

// stuckBus accepts nothing until released.
type stuckBus struct{ release chan struct{} }

func (b stuckBus) Publish(ctx context.Context, _ ...bus.Message) error {
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestPublisherNeverBlocks(t *testing.T) {
	t.Parallel()
	b := stuckBus{release: make(chan struct{})}
	p, err := inference.NewDecisionPublisher(b, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	accepted, dropped := 0, 0
	for i := range 70_000 {
		if p.Record(decision(i, time.Now())) {
			accepted++
		} else {
			dropped++
		}
	}
	// The queue holds 65536 and the publisher took one batch out of it.
	if dropped == 0 || accepted < 65536 || accepted > 65536+500 {
		t.Errorf("accepted %d, dropped %d while the bus was stuck", accepted, dropped)
	}
	close(b.release)
	// A bound on liveness, not a timing goal: 65,536 decisions to encode
	// under -race on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p.Close(ctx)
	if ctx.Err() != nil {
		t.Error("close did not finish publishing")
	}
}

func TestPublisherDeliversEverything(t *testing.T) {
	t.Parallel()
	b := bus.NewInProc(bus.InProcConfig{Logger: quiet})
	defer b.Close()
	if err := b.Subscribe("count", bus.TopicDecisions); err != nil {
		t.Fatal(err)
	}
	p, err := inference.NewDecisionPublisher(b, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2500
	for i := range n {
		if !p.Record(decision(i, time.Now())) {
			t.Fatal("dropped with a working bus")
		}
	}
	p.Close(context.Background())
	got := 0
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_ = b.Consume(ctx, bus.ConsumerConfig{Group: "count", Topics: []string{bus.TopicDecisions}}, func(_ context.Context, msgs []bus.Message) error {
			got += len(msgs)
			if got >= n {
				cancel()
			}
			return nil
		})
	}()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%d of %d decisions on the bus", got, n)
	}
}
