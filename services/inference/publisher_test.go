package inference_test

import (
	"context"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

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
		if p.Record(context.Background(), decision(i, time.Now())) {
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
		if !p.Record(context.Background(), decision(i, time.Now())) {
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

// capture is a bus that keeps what is published.
type capture struct {
	mu   sync.Mutex
	msgs []bus.Message
}

func (c *capture) Publish(_ context.Context, msgs ...bus.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, msgs...)
	return nil
}

// A decision recorded inside a sampled span is published with that span's
// context; one recorded outside a span, or in an unsampled one, without.
func TestPublisherKeepsTraceContext(t *testing.T) {
	t.Parallel()
	c := &capture{}
	p, err := inference.NewDecisionPublisher(c, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	sampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	ctx, span := sampled.Tracer("test").Start(context.Background(), "Predict")
	uctx, uspan := unsampled.Tracer("test").Start(context.Background(), "Predict")
	p.Record(ctx, decision(0, time.Now()))
	p.Record(context.Background(), decision(1, time.Now()))
	p.Record(uctx, decision(2, time.Now()))
	span.End()
	uspan.End()
	p.Close(context.Background())

	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) != 3 {
		t.Fatalf("%d messages published, want 3", len(c.msgs))
	}
	if got := c.msgs[0].SpanContext; !got.Equal(span.SpanContext()) {
		t.Errorf("decision 0 published with span context %v, want the request's %v", got, span.SpanContext())
	}
	for _, m := range c.msgs[1:] {
		if m.SpanContext.IsValid() {
			t.Errorf("decision %s published with span context %v, want none", m.Key, m.SpanContext)
		}
	}
}

// BenchmarkRecord is the cost a prediction pays to hand its decision to the
// publisher: outside a span, in an unsampled span and in a sampled one. The
// bus holds the publisher's first batch until the end, so encoding and
// publishing stay out of the measurement; each run records fewer decisions
// than the queue holds, so none is dropped.
func BenchmarkRecord(b *testing.B) {
	sampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	sctx, sspan := sampled.Tracer("bench").Start(context.Background(), "Predict")
	defer sspan.End()
	uctx, uspan := unsampled.Tracer("bench").Start(context.Background(), "Predict")
	defer uspan.End()
	d := decision(0, time.Now())
	for _, bc := range []struct {
		name string
		ctx  context.Context
	}{{"no-span", context.Background()}, {"unsampled", uctx}, {"sampled", sctx}} {
		b.Run(bc.name, func(b *testing.B) {
			stuck := stuckBus{release: make(chan struct{})}
			p, err := inference.NewDecisionPublisher(stuck, quiet, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close(context.Background())
			defer close(stuck.release)
			if b.N > 60_000 {
				b.Skip("more decisions than the queue holds")
			}
			b.ReportAllocs()
			for range b.N {
				if !p.Record(bc.ctx, d) {
					b.Fatal("dropped")
				}
			}
			b.StopTimer() // before the deferred Close publishes the queue
		})
	}
}
