package bus_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/bus/bustest"
)

// recorder is a tracer provider that samples every trace (or none) and
// keeps the ended spans.
func recorder(t *testing.T, sampler sdktrace.Sampler) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

func traced(b bus.Bus, tp trace.TracerProvider, system string) bus.Bus {
	return bus.WithTracing(b, bus.Tracing{TracerProvider: tp, Propagator: propagation.TraceContext{}, System: system})
}

// delivery is what a consumer saw: the messages of the first batch and the
// span its handler ran in.
type delivery struct {
	msgs []bus.Message
	span trace.SpanContext
}

// consumeOne runs a consumer of group on topic until it has handled n
// messages (in one or more batches, the first fail times failing), and
// returns every successful delivery.
func consumeOne(t *testing.T, b bus.Bus, group, topic string, n, fail int) []delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		got  []delivery
		seen int
	)
	err := b.Consume(ctx, bus.ConsumerConfig{Group: group, Topics: []string{topic}, MaxWait: 20 * time.Millisecond}, func(hctx context.Context, msgs []bus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if fail > 0 {
			fail--
			return errors.New("handler failed on purpose")
		}
		got = append(got, delivery{msgs: append([]bus.Message(nil), msgs...), span: trace.SpanContextFromContext(hctx)})
		if seen += len(msgs); seen >= n {
			cancel()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	if seen < n {
		t.Fatalf("consumed %d messages, want %d", seen, n)
	}
	return got
}

func spansNamed(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key string) (string, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String(), true
		}
	}
	return "", false
}

// testTraceCrossesBus publishes one message inside a request span and
// checks that the trace reaches the consumer through the headers.
func testTraceCrossesBus(t *testing.T, raw bus.Bus, system string) {
	tp, rec := recorder(t, sdktrace.AlwaysSample())
	b := traced(raw, tp, system)
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")
	in := bus.Message{Topic: "events", Key: []byte("k"), Value: []byte("v"), Headers: map[string]string{"content-type": "proto"}}
	if err := b.Publish(ctx, in); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	req.End()
	if len(in.Headers) != 1 {
		t.Errorf("Publish changed the caller's headers: %v", in.Headers)
	}

	got := consumeOne(t, b, "g", "events", 1, 0)
	m := got[0].msgs[0]
	if m.Headers["traceparent"] == "" || m.Headers["content-type"] != "proto" {
		t.Errorf("delivered headers %v, want traceparent and content-type", m.Headers)
	}
	tid := req.SpanContext().TraceID()
	if m.SpanContext.TraceID() != tid {
		t.Errorf("delivered SpanContext in trace %s, want the request's %s", m.SpanContext.TraceID(), tid)
	}

	sends := spansNamed(rec, "send events")
	procs := spansNamed(rec, "process events")
	if len(sends) != 1 || len(procs) != 1 {
		t.Fatalf("%d send and %d process spans, want 1 each (spans: %d)", len(sends), len(procs), len(rec.Ended()))
	}
	send, proc := sends[0], procs[0]
	if send.SpanKind() != trace.SpanKindProducer || proc.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("span kinds %v and %v, want producer and consumer", send.SpanKind(), proc.SpanKind())
	}
	if send.Parent().SpanID() != req.SpanContext().SpanID() {
		t.Errorf("send span's parent %s, want the request span %s", send.Parent().SpanID(), req.SpanContext().SpanID())
	}
	if proc.SpanContext().TraceID() != tid || proc.Parent().SpanID() != send.SpanContext().SpanID() {
		t.Errorf("process span in trace %s under %s, want trace %s under the send span %s",
			proc.SpanContext().TraceID(), proc.Parent().SpanID(), tid, send.SpanContext().SpanID())
	}
	if got[0].span.SpanID() != proc.SpanContext().SpanID() {
		t.Errorf("handler ran in span %s, want the process span %s", got[0].span.SpanID(), proc.SpanContext().SpanID())
	}
	for _, s := range []sdktrace.ReadOnlySpan{send, proc} {
		if v, _ := attr(s, "messaging.system"); v != system {
			t.Errorf("%s: messaging.system %q, want %q", s.Name(), v, system)
		}
		if v, _ := attr(s, "messaging.destination.name"); v != "events" {
			t.Errorf("%s: messaging.destination.name %q, want events", s.Name(), v)
		}
		if v, _ := attr(s, "messaging.batch.message_count"); v != "1" {
			t.Errorf("%s: messaging.batch.message_count %q, want 1", s.Name(), v)
		}
	}
	if v, _ := attr(proc, "messaging.consumer.group.name"); v != "g" {
		t.Errorf("process span: consumer group %q, want g", v)
	}
}

func TestTracingInProc(t *testing.T) {
	t.Parallel()
	testTraceCrossesBus(t, openInProc(t, 0), bus.SystemInProc)
}

func TestTracingKafka(t *testing.T) {
	t.Parallel()
	testTraceCrossesBus(t, openKafka(t, "events"), bus.SystemKafka)
}

// TestTracingBatchOfRequests publishes, outside any span, messages that
// carry the contexts of two requests (what a batching publisher does): each
// message keeps its request's trace, and the batch spans link to both.
func TestTracingBatchOfRequests(t *testing.T) {
	t.Parallel()
	tp, rec := recorder(t, sdktrace.AlwaysSample())
	b := traced(openInProc(t, 0), tp, bus.SystemInProc)
	_, r1 := tp.Tracer("test").Start(context.Background(), "request 1")
	_, r2 := tp.Tracer("test").Start(context.Background(), "request 2")
	r1.End()
	r2.End()
	msgs := []bus.Message{
		{Topic: "events", Value: []byte("a"), SpanContext: r1.SpanContext()},
		{Topic: "events", Value: []byte("b"), SpanContext: r2.SpanContext()},
		{Topic: "events", Value: []byte("c"), SpanContext: r2.SpanContext()},
	}
	if err := b.Publish(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	got := consumeOne(t, b, "g", "events", 3, 0)
	var delivered []bus.Message
	for _, d := range got {
		delivered = append(delivered, d.msgs...)
	}
	for i, m := range delivered {
		if want := msgs[i].SpanContext; m.SpanContext.TraceID() != want.TraceID() || m.SpanContext.SpanID() != want.SpanID() {
			t.Errorf("message %d delivered with context %s/%s, want its request's %s/%s",
				i, m.SpanContext.TraceID(), m.SpanContext.SpanID(), want.TraceID(), want.SpanID())
		}
	}
	linked := func(s sdktrace.ReadOnlySpan) map[trace.SpanID]bool {
		out := map[trace.SpanID]bool{}
		for _, l := range s.Links() {
			out[l.SpanContext.SpanID()] = true
		}
		return out
	}
	sends := spansNamed(rec, "send events")
	if len(sends) != 1 {
		t.Fatalf("%d send spans, want 1", len(sends))
	}
	if l := linked(sends[0]); sends[0].Parent().IsValid() || !l[r1.SpanContext().SpanID()] || !l[r2.SpanContext().SpanID()] || len(l) != 2 {
		t.Errorf("send span: parent %v, links %v; want a new trace linked to both requests", sends[0].Parent(), l)
	}
	for _, p := range spansNamed(rec, "process events") {
		if len(p.Links()) == 0 && !p.Parent().IsValid() {
			t.Errorf("process span of %v is neither linked nor parented to a request", p.Attributes())
		}
	}
	if len(got) == 1 {
		p := spansNamed(rec, "process events")[0]
		if l := linked(p); !l[r1.SpanContext().SpanID()] || !l[r2.SpanContext().SpanID()] {
			t.Errorf("process span of the whole batch links %v, want both requests", l)
		}
	}
}

// TestTracingOneRequestBatch: a batch whose messages all come from one
// request joins that request's trace.
func TestTracingOneRequestBatch(t *testing.T) {
	t.Parallel()
	tp, rec := recorder(t, sdktrace.AlwaysSample())
	b := traced(openInProc(t, 0), tp, bus.SystemInProc)
	_, r := tp.Tracer("test").Start(context.Background(), "request")
	r.End()
	if err := b.Publish(context.Background(), bus.Message{Topic: "events", SpanContext: r.SpanContext()}); err != nil {
		t.Fatal(err)
	}
	consumeOne(t, b, "g", "events", 1, 0)
	for _, name := range []string{"send events", "process events"} {
		s := spansNamed(rec, name)
		if len(s) != 1 || s[0].Parent().SpanID() != r.SpanContext().SpanID() {
			t.Fatalf("%s: %d spans, want one child of the request", name, len(s))
		}
	}
}

// TestTracingUnsampled: an unsampled request adds no headers and no spans.
func TestTracingUnsampled(t *testing.T) {
	t.Parallel()
	tp, rec := recorder(t, sdktrace.NeverSample())
	b := traced(openInProc(t, 0), tp, bus.SystemInProc)
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")
	defer req.End()
	if err := b.Publish(ctx, bus.Message{Topic: "events", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	got := consumeOne(t, b, "g", "events", 1, 0)
	if h := got[0].msgs[0].Headers; len(h) != 0 {
		t.Errorf("unsampled message delivered with headers %v", h)
	}
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("%d spans recorded, want none", n)
	}
}

// TestTracingHandlerError: a failed handler call is a process span with an
// error status; the redelivery gets a span of its own.
func TestTracingHandlerError(t *testing.T) {
	t.Parallel()
	tp, rec := recorder(t, sdktrace.AlwaysSample())
	b := traced(openInProc(t, 0), tp, bus.SystemInProc)
	if err := b.Publish(context.Background(), bus.Message{Topic: "events"}); err != nil {
		t.Fatal(err)
	}
	consumeOne(t, b, "g", "events", 1, 1)
	procs := spansNamed(rec, "process events")
	if len(procs) != 2 {
		t.Fatalf("%d process spans, want 2 (failed, then redelivered)", len(procs))
	}
	if procs[0].Status().Code != codes.Error || procs[1].Status().Code == codes.Error {
		t.Errorf("statuses %v, %v; want error then ok", procs[0].Status(), procs[1].Status())
	}
	if procs[0].Parent().SpanID() != procs[1].Parent().SpanID() || !procs[0].Parent().IsValid() {
		t.Errorf("the two attempts have parents %s and %s, want the send span for both", procs[0].Parent().SpanID(), procs[1].Parent().SpanID())
	}
}

func TestTracingWithoutProvider(t *testing.T) {
	t.Parallel()
	raw := openInProc(t, 0)
	if b := bus.WithTracing(raw, bus.Tracing{}); b != bus.Bus(raw) {
		t.Errorf("WithTracing without a provider returned %T, want the bus itself", b)
	}
}

// The traced bus keeps the bus contract. (Sampled, it adds trace headers,
// which the contract's exact comparison of delivered messages would not
// allow.)
func TestTracedInProcContract(t *testing.T) {
	t.Parallel()
	tp, _ := recorder(t, sdktrace.NeverSample())
	bustest.Run(t, bustest.Factory{
		Open: func(t *testing.T, _ ...string) bus.Bus { return traced(openInProc(t, 0), tp, bus.SystemInProc) },
		OpenBounded: func(t *testing.T, capacity int, _ ...string) bus.Bus {
			return traced(openInProc(t, capacity), tp, bus.SystemInProc)
		},
		Timeout: 10 * time.Second,
	})
}

// discard is a bus that accepts every publish and delivers nothing: the
// benchmarks measure the tracing wrapper alone.
type discard struct{}

func (discard) Publish(context.Context, ...bus.Message) error { return nil }
func (discard) Consume(ctx context.Context, _ bus.ConsumerConfig, _ bus.BatchHandler) error {
	<-ctx.Done()
	return nil
}
func (discard) Close() error { return nil }

// BenchmarkPublish publishes 500-message batches, as the decision
// publisher does, through the bare bus and through WithTracing; ns/op is
// per batch.
func BenchmarkPublish(b *testing.B) {
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	always := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	_, req := always.Tracer("bench").Start(context.Background(), "request")
	req.End()
	batch := func(sc trace.SpanContext) []bus.Message {
		msgs := make([]bus.Message, 500)
		for i := range msgs {
			msgs[i] = bus.Message{Topic: "decisions", Key: []byte("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"), Value: make([]byte, 200), SpanContext: sc}
		}
		return msgs
	}
	for _, bc := range []struct {
		name string
		b    bus.Bus
		msgs []bus.Message
	}{
		{"bare", discard{}, batch(trace.SpanContext{})},
		{"traced/unsampled", traced(discard{}, never, bus.SystemInProc), batch(trace.SpanContext{})},
		{"traced/sampled-batch", traced(discard{}, always, bus.SystemInProc), batch(trace.SpanContext{})},
		{"traced/sampled-requests", traced(discard{}, always, bus.SystemInProc), batch(req.SpanContext())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.b.Publish(ctx, bc.msgs...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTracingCarriesBaggage: with a propagator that writes baggage, the
// publishing request's baggage goes with the messages it publishes.
func TestTracingCarriesBaggage(t *testing.T) {
	t.Parallel()
	tp, _ := recorder(t, sdktrace.AlwaysSample())
	b := bus.WithTracing(openInProc(t, 0), bus.Tracing{
		TracerProvider: tp,
		Propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		System:         bus.SystemInProc,
	})
	member, err := baggage.NewMember("tenant", "desk-7")
	if err != nil {
		t.Fatal(err)
	}
	bag, err := baggage.New(member)
	if err != nil {
		t.Fatal(err)
	}
	ctx, req := tp.Tracer("test").Start(baggage.ContextWithBaggage(context.Background(), bag), "request")
	defer req.End()
	if err := b.Publish(ctx, bus.Message{Topic: "events"}); err != nil {
		t.Fatal(err)
	}
	got := consumeOne(t, b, "g", "events", 1, 0)
	if h := got[0].msgs[0].Headers; h["baggage"] != "tenant=desk-7" || h["traceparent"] == "" {
		t.Errorf("delivered headers %v, want traceparent and baggage tenant=desk-7", h)
	}
}
