package bus

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Values of Tracing.System (messaging.system).
const (
	// SystemInProc is the messaging.system of the in-process bus.
	SystemInProc = "quantmesh.inproc"
	// SystemKafka is the messaging.system of the Kafka bus.
	SystemKafka = "kafka"
)

// maxLinks bounds the links of one batch span (the SDK's default limit).
const maxLinks = 128

// Tracing says how WithTracing records spans.
type Tracing struct {
	// TracerProvider records the spans; nil means no tracing.
	TracerProvider trace.TracerProvider
	// Propagator writes trace context into message headers and reads it
	// back; nil means W3C trace context (traceparent, tracestate).
	Propagator propagation.TextMapPropagator
	// System is the messaging.system attribute: SystemKafka or
	// SystemInProc.
	System string
}

// WithTracing returns b with OpenTelemetry tracing, following the messaging
// semantic conventions:
//
//   - Publish records one producer span, "send <topic>", for the call and
//     writes a trace context into each message's Headers: the message's own
//     SpanContext when it has a sampled one (set by publishers that batch
//     messages of several requests, so each message stays in the trace of
//     the request that made it), otherwise the send span's. The caller's
//     messages are not modified.
//   - Consume reads each delivered message's trace context back from its
//     Headers into Message.SpanContext and records one consumer span,
//     "process <topic>", per handler call (a redelivered batch gets a span
//     per attempt), which the handler's ctx carries.
//
// A batch span's parent is the span in ctx when there is one; otherwise,
// when every message with a sampled context belongs to one trace, that
// message's context, so a batch of one request's messages joins its trace;
// otherwise the span starts a trace. It links to each distinct message
// context that is not its parent (up to 128).
//
// Only sampled contexts are written into headers: a message of an unsampled
// request carries none, and costs nothing to trace. Close and the other
// methods of b are b's own; Unwrap returns b.
func WithTracing(b Bus, t Tracing) Bus {
	if t.TracerProvider == nil {
		return b
	}
	if t.Propagator == nil {
		t.Propagator = propagation.TraceContext{}
	}
	system := attribute.String(string(semconv.MessagingSystemKey), t.System)
	return &tracedBus{
		Bus:    b,
		tracer: t.TracerProvider.Tracer("github.com/quantmesh/quantmesh/pkg/bus"),
		prop:   t.Propagator,
		fields: t.Propagator.Fields(),
		system: system,
	}
}

type tracedBus struct {
	Bus
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	fields []string // the header keys the propagator reads and writes
	system attribute.KeyValue
}

// Unwrap returns the bus being traced.
func (b *tracedBus) Unwrap() Bus { return b.Bus }

// Publish implements Publisher.
func (b *tracedBus) Publish(ctx context.Context, msgs ...Message) error {
	if len(msgs) == 0 {
		return b.Bus.Publish(ctx, msgs...)
	}
	ctx, span := b.start(ctx, msgs, "send", trace.SpanKindProducer, semconv.MessagingOperationTypeSend)
	err := b.Bus.Publish(ctx, b.inject(ctx, msgs)...)
	end(span, err)
	return err
}

// start begins the span of operation op ("send" or "process") on a batch
// of one topic: a child of the batch's common parent, linked to the other
// messages' contexts (batchParent).
func (b *tracedBus) start(ctx context.Context, msgs []Message, op string, kind trace.SpanKind, opType attribute.KeyValue, extra ...attribute.KeyValue) (context.Context, trace.Span) {
	topic := msgs[0].Topic
	parent, links := batchParent(ctx, msgs)
	attrs := append([]attribute.KeyValue{
		b.system,
		opType,
		semconv.MessagingOperationName(op),
		semconv.MessagingDestinationName(topic),
		semconv.MessagingBatchMessageCount(len(msgs)),
	}, extra...)
	return b.tracer.Start(parent, op+" "+topic, trace.WithSpanKind(kind), trace.WithLinks(links...), trace.WithAttributes(attrs...))
}

// end records err on span and ends it.
func end(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// inject returns msgs with their trace context in Headers (see
// WithTracing): msgs itself when no message gets one, else a copy. ctx
// holds the send span (and the caller's baggage, which goes with the
// messages that get the send span's context).
func (b *tracedBus) inject(ctx context.Context, msgs []Message) []Message {
	send := trace.SpanContextFromContext(ctx)
	if !send.IsSampled() && !anySampled(msgs) {
		return msgs
	}
	out := make([]Message, len(msgs))
	var (
		last    trace.SpanContext
		carrier propagation.MapCarrier
	)
	for i := range msgs {
		out[i] = msgs[i]
		sc := msgs[i].SpanContext
		if !sc.IsSampled() {
			sc = send
		}
		if !sc.IsSampled() {
			continue
		}
		if carrier == nil || !sc.Equal(last) {
			carrier = propagation.MapCarrier{}
			from := ctx
			if !sc.Equal(send) {
				from = trace.ContextWithSpanContext(context.Background(), sc)
			}
			b.prop.Inject(from, carrier)
			last = sc
		}
		out[i].SpanContext = sc
		if len(msgs[i].Headers) == 0 {
			// Shared by the messages of one context: both buses copy
			// headers on publish.
			out[i].Headers = carrier
			continue
		}
		h := make(map[string]string, len(msgs[i].Headers)+len(carrier))
		for k, v := range msgs[i].Headers {
			h[k] = v
		}
		for k, v := range carrier {
			h[k] = v
		}
		out[i].Headers = h
	}
	return out
}

func anySampled(msgs []Message) bool {
	for i := range msgs {
		if msgs[i].SpanContext.IsSampled() {
			return true
		}
	}
	return false
}

// Consume implements Consumer.
func (b *tracedBus) Consume(ctx context.Context, cfg ConsumerConfig, h BatchHandler) error {
	if h == nil {
		return b.Bus.Consume(ctx, cfg, nil) // the bus reports it
	}
	group := semconv.MessagingConsumerGroupName(cfg.Group)
	return b.Bus.Consume(ctx, cfg, func(hctx context.Context, msgs []Message) error {
		if len(msgs) == 0 {
			return h(hctx, msgs)
		}
		b.extract(msgs)
		sctx, span := b.start(hctx, msgs, "process", trace.SpanKindConsumer, semconv.MessagingOperationTypeProcess,
			semconv.MessagingDestinationPartitionID(strconv.Itoa(int(msgs[0].Partition))), group)
		err := h(sctx, msgs)
		end(span, err)
		return err
	})
}

// extract sets each message's SpanContext from its Headers. Consecutive
// messages with the same trace headers are parsed once.
func (b *tracedBus) extract(msgs []Message) {
	var prev *Message
	for i := range msgs {
		m := &msgs[i]
		if len(m.Headers) == 0 {
			m.SpanContext = trace.SpanContext{}
			continue
		}
		if prev != nil && b.sameTraceHeaders(prev.Headers, m.Headers) {
			m.SpanContext = prev.SpanContext
			continue
		}
		ctx := b.prop.Extract(context.Background(), propagation.MapCarrier(m.Headers))
		m.SpanContext = trace.SpanContextFromContext(ctx)
		prev = m
	}
}

func (b *tracedBus) sameTraceHeaders(x, y map[string]string) bool {
	for _, f := range b.fields {
		if x[f] != y[f] {
			return false
		}
	}
	return true
}

// batchParent returns the context a span over msgs starts from, and its
// links; see WithTracing.
func batchParent(ctx context.Context, msgs []Message) (context.Context, []trace.Link) {
	parent := trace.SpanContextFromContext(ctx)
	if !parent.IsValid() {
		for i := range msgs {
			sc := msgs[i].SpanContext
			if !sc.IsSampled() {
				continue
			}
			if !parent.IsValid() {
				parent = sc
			} else if sc.TraceID() != parent.TraceID() {
				parent = trace.SpanContext{}
				break
			}
		}
		if parent.IsValid() {
			ctx = trace.ContextWithSpanContext(ctx, parent)
		}
	}
	var (
		links []trace.Link
		seen  map[trace.SpanID]bool
	)
	for i := range msgs {
		sc := msgs[i].SpanContext
		if !sc.IsSampled() || sc.SpanID() == parent.SpanID() {
			continue
		}
		if len(links) > 0 && links[len(links)-1].SpanContext.SpanID() == sc.SpanID() {
			continue
		}
		if seen == nil {
			seen = make(map[trace.SpanID]bool)
		}
		if seen[sc.SpanID()] {
			continue
		}
		seen[sc.SpanID()] = true
		links = append(links, trace.Link{SpanContext: sc})
		if len(links) == maxLinks {
			break
		}
	}
	return ctx, links
}
