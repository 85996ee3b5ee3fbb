// Package bus carries events between quantmesh components: market bars in,
// decisions and A/B observations out. Two implementations share one contract:
// an in-process bus for the embedded default and Kafka (sarama) for
// production.
//
// Delivery is at least once. A consumer's position is committed only after
// its handler returns nil for a batch, so a crash replays the uncommitted
// tail; handlers make writes idempotent (by decision id, observation id, ...).
package bus

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Topics used by the mesh.
const (
	TopicMarketBars     = "market.bars"
	TopicDecisions      = "decisions"
	TopicABObservations = "abtest.observations"
)

// ErrClosed is returned by operations on a closed bus.
var ErrClosed = errors.New("bus: closed")

// Message is one record on a topic.
type Message struct {
	// Topic the message is published to. Required.
	Topic string
	// Key orders messages: messages with the same key are delivered in
	// publish order. May be empty.
	Key []byte
	// Value is the payload (a serialized protobuf message in the mesh).
	Value []byte
	// Headers carry metadata such as trace context.
	Headers map[string]string
	// SpanContext is the trace context the message belongs to. It is not
	// sent as such: a bus made by WithTracing writes it into Headers on
	// publish (see there) and reads it back on delivery; other buses
	// ignore it and deliver it unset.
	SpanContext trace.SpanContext

	// Set on delivery.

	// Partition the message was read from (0 on the in-process bus).
	Partition int32
	// Offset of the message within its partition.
	Offset int64
	// Time the message was appended to the topic.
	Time time.Time
	// Behind is how many messages followed this one on its partition when
	// it was delivered: the consumer group's backlog there, at that time.
	Behind int64
}

// BatchHandler processes a batch of delivered messages, in order per
// partition. Returning nil commits the batch. Returning an error redelivers
// the same batch after a backoff: nothing is skipped.
type BatchHandler func(ctx context.Context, msgs []Message) error

// ConsumerConfig says what to consume and how to batch it.
type ConsumerConfig struct {
	// Group is the consumer group: each group sees every message once (at
	// least once across crashes); consumers in one group share the topic.
	Group string
	// Topics to consume.
	Topics []string
	// MaxBatch is the largest batch handed to the handler; 0 means 500.
	MaxBatch int
	// MaxWait is how long a partial batch waits for more messages before it
	// is handed over; 0 means 50ms.
	MaxWait time.Duration
	// Assigned, when set, is called with the partitions of each topic this
	// member reads, before their first batch: on Kafka at every rebalance,
	// in process once (partition 0 of every topic). A member that keeps
	// state per partition drops what it no longer reads.
	Assigned func(partitions map[string][]int32)
}

// Publisher appends messages to topics.
type Publisher interface {
	// Publish returns nil only when every message is durably accepted by the
	// bus (Kafka: acknowledged by all in-sync replicas). It blocks while the
	// bus applies backpressure, until ctx is done.
	Publish(ctx context.Context, msgs ...Message) error
}

// Consumer reads topics as a member of a consumer group.
type Consumer interface {
	// Consume delivers batches to h until ctx is done (then it returns nil
	// after the in-flight batch) or the bus fails. Offsets are committed
	// after h returns nil.
	Consume(ctx context.Context, cfg ConsumerConfig, h BatchHandler) error
}

// Bus is a publisher and consumer that must be closed. Close flushes
// anything buffered and waits for consumers to stop.
type Bus interface {
	Publisher
	Consumer
	Close() error
}
