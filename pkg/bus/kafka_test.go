package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/bus/bustest"
)

// startKfake runs a single-broker Kafka-protocol cluster on loopback for
// the test.
func startKfake(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// openKafka starts a kfake cluster and a Kafka bus on it with topics of
// three partitions, created through EnsureTopics.
func openKafka(t *testing.T, topics ...string) *bus.Kafka {
	t.Helper()
	c := startKfake(t)
	k, err := bus.NewKafka(bus.KafkaConfig{
		Brokers:           c.ListenAddrs(),
		ClientID:          "bustest",
		SessionTimeout:    6 * time.Second, // kfake's minimum
		HeartbeatInterval: 500 * time.Millisecond,
		Backoff:           bus.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		Logger:            testLogger(t),
	})
	if err != nil {
		t.Fatalf("NewKafka: %v", err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.EnsureTopics(ctx, topics, 3); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	return k
}

func TestKafkaContract(t *testing.T) {
	t.Parallel()
	bustest.Run(t, bustest.Factory{
		Open:    func(t *testing.T, topics ...string) bus.Bus { return openKafka(t, topics...) },
		Timeout: 20 * time.Second,
	})
}

func TestKafkaEnsureTopicsIsIdempotent(t *testing.T) {
	t.Parallel()
	c := startKfake(t)
	k, err := bus.NewKafka(bus.KafkaConfig{Brokers: c.ListenAddrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := k.Close(); err != nil {
			t.Error(err)
		}
	}()
	ctx := context.Background()
	topics := []string{bus.TopicDecisions, bus.TopicABObservations}
	for range 2 {
		if err := k.EnsureTopics(ctx, topics, 4); err != nil {
			t.Fatalf("EnsureTopics: %v", err)
		}
	}
	// An existing topic keeps its partitions.
	if err := k.EnsureTopics(ctx, topics[:1], 8); err != nil {
		t.Fatalf("EnsureTopics on an existing topic: %v", err)
	}
	for _, topic := range topics {
		if n := len(c.PartitionInfos(topic)); n != 4 {
			t.Errorf("topic %s has %d partitions, want 4", topic, n)
		}
	}

	tests := []struct {
		name       string
		topics     []string
		partitions int32
		want       string
	}{
		{"no partitions", []string{"x"}, 0, "partitions 0"},
		{"empty name", []string{"x", ""}, 1, "topics[1] is empty"},
	}
	for _, tc := range tests {
		err := k.EnsureTopics(ctx, tc.topics, tc.partitions)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: EnsureTopics = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if err := k.EnsureTopics(ctx, []string{"x"}, 1); err != nil {
		t.Fatal(err)
	}
}

func TestKafkaConfigValidate(t *testing.T) {
	t.Parallel()
	ok := bus.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}}
	with := func(f func(*bus.KafkaConfig)) bus.KafkaConfig {
		c := ok
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  bus.KafkaConfig
		want string // substring of the error; "" means valid
	}{
		{"minimal", ok, ""},
		{"full", with(func(c *bus.KafkaConfig) {
			c.ClientID = "quantmesh-inference"
			c.Version = "3.6.0"
			c.SessionTimeout = 30 * time.Second
			c.HeartbeatInterval = time.Second
			c.InitialOffset = bus.OffsetNewest
			c.ReplicationFactor = 3
		}), ""},
		{"no brokers", bus.KafkaConfig{}, "Brokers is empty"},
		{"broker without port", with(func(c *bus.KafkaConfig) { c.Brokers = []string{"kafka"} }), "Brokers[0]"},
		{"bad version", with(func(c *bus.KafkaConfig) { c.Version = "three" }), "Version"},
		{"version too old", with(func(c *bus.KafkaConfig) { c.Version = "0.10.2.0" }), "Version"},
		{"negative session", with(func(c *bus.KafkaConfig) { c.SessionTimeout = -time.Second }), "SessionTimeout"},
		{"heartbeat not below session", with(func(c *bus.KafkaConfig) {
			c.SessionTimeout = 6 * time.Second
			c.HeartbeatInterval = 6 * time.Second
		}), "HeartbeatInterval"},
		{"bad initial offset", with(func(c *bus.KafkaConfig) { c.InitialOffset = "latest" }), "InitialOffset"},
		{"negative replication", with(func(c *bus.KafkaConfig) { c.ReplicationFactor = -1 }), "ReplicationFactor"},
		{"bad backoff", with(func(c *bus.KafkaConfig) { c.Backoff = bus.Backoff{Min: time.Minute, Max: time.Second} }), "Backoff.Min"},
		{"bad client id", with(func(c *bus.KafkaConfig) {
			c.Version = "0.11.0.0"
			c.ClientID = "has spaces"
		}), "ClientID"},
		{"tune drops idempotence", with(func(c *bus.KafkaConfig) {
			c.Tune = func(sc *sarama.Config) { sc.Producer.Idempotent = false }
		}), "Tune"},
		{"tune turns on auto-commit", with(func(c *bus.KafkaConfig) {
			c.Tune = func(sc *sarama.Config) { sc.Consumer.Offsets.AutoCommit.Enable = true }
		}), "Tune"},
		{"tune sets fetch size", with(func(c *bus.KafkaConfig) {
			c.Tune = func(sc *sarama.Config) { sc.Consumer.Fetch.Default = 4 << 20 }
		}), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestNewKafkaRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	_, err := bus.NewKafka(bus.KafkaConfig{})
	if err == nil || !strings.Contains(err.Error(), "Brokers") {
		t.Fatalf("NewKafka(empty) = %v, want an error naming Brokers", err)
	}
}

// Publish waits for the acknowledgement and reports where the record went.
func TestKafkaPublishIsAcknowledged(t *testing.T) {
	t.Parallel()
	c := startKfake(t)
	k, err := bus.NewKafka(bus.KafkaConfig{Brokers: c.ListenAddrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := k.Close(); err != nil {
			t.Error(err)
		}
	}()
	ctx := context.Background()
	if err := k.EnsureTopics(ctx, []string{"acks"}, 2); err != nil {
		t.Fatal(err)
	}
	msgs := make([]bus.Message, 10)
	for i := range msgs {
		msgs[i] = bus.Message{Topic: "acks", Key: []byte("same-key"), Value: []byte{byte(i)}}
	}
	if err := k.Publish(ctx, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// Acknowledged means stored: the partitions' high watermarks add up.
	var stored int64
	for _, p := range c.PartitionInfos("acks") {
		stored += p.HighWatermark
	}
	if stored != int64(len(msgs)) {
		t.Errorf("brokers hold %d records after Publish returned, want %d", stored, len(msgs))
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := k.Publish(cctx, msgs[0]); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled ctx = %v, want context.Canceled", err)
	}
}

// The producer is idempotent on the wire: it asks for a producer id, and
// every produce request waits for all in-sync replicas and carries that id
// with sequence numbers.
func TestKafkaProducerIsIdempotent(t *testing.T) {
	t.Parallel()
	c := startKfake(t)
	var (
		mu        sync.Mutex
		initPIDs  int
		produces  int
		problems  []string
		producers = make(map[int64]bool)
	)
	c.ControlKey(int16(kmsg.InitProducerID), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		initPIDs++
		if r := req.(*kmsg.InitProducerIDRequest); r.TransactionalID != nil {
			problems = append(problems, "InitProducerID with a transactional id")
		}
		return nil, nil, false // observe only
	})
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		r := req.(*kmsg.ProduceRequest)
		produces++
		if r.Acks != -1 {
			problems = append(problems, fmt.Sprintf("produce with acks=%d, want -1 (all)", r.Acks))
		}
		for _, topic := range r.Topics {
			for _, p := range topic.Partitions {
				var rb kmsg.RecordBatch
				if err := rb.ReadFrom(p.Records); err != nil {
					problems = append(problems, fmt.Sprintf("unreadable record batch: %v", err))
					continue
				}
				if rb.ProducerID < 0 || rb.FirstSequence < 0 {
					problems = append(problems, fmt.Sprintf("record batch without idempotence: producer id %d, sequence %d", rb.ProducerID, rb.FirstSequence))
				}
				producers[rb.ProducerID] = true
			}
		}
		return nil, nil, false
	})

	k, err := bus.NewKafka(bus.KafkaConfig{Brokers: c.ListenAddrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := k.EnsureTopics(ctx, []string{"idem"}, 3); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		msg := bus.Message{Topic: "idem", Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")}
		if err := k.Publish(ctx, msg, msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	if initPIDs == 0 {
		t.Error("the producer never asked for a producer id")
	}
	if produces == 0 {
		t.Error("no produce request seen")
	}
	if len(producers) != 1 {
		t.Errorf("record batches carry producer ids %v, want one", producers)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// A second member joining a group mid-stream triggers a rebalance: the
// partitions are shared, nothing is lost, and because the first member
// commits what it handled before it rejoins, nothing is handled twice.
func TestKafkaRebalanceSharesPartitions(t *testing.T) {
	t.Parallel()
	k := openKafka(t, "rebalance")
	ctx := context.Background()
	var msgs []bus.Message
	for i := range 300 {
		msgs = append(msgs, bus.Message{Topic: "rebalance", Key: fmt.Appendf(nil, "k%d", i%6), Value: fmt.Appendf(nil, "%d", i)})
	}
	if err := k.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}

	var (
		mu     sync.Mutex
		counts = make(map[string]int)
		byMem  = make(map[string]int)
	)
	handler := func(member string) bus.BatchHandler {
		last := make(map[int32]int64)
		return func(_ context.Context, batch []bus.Message) error {
			time.Sleep(10 * time.Millisecond) // slow enough for the rebalance to land mid-stream
			mu.Lock()
			defer mu.Unlock()
			for _, m := range batch {
				if l, ok := last[m.Partition]; ok && m.Offset <= l {
					t.Errorf("member %s: partition %d went back from %d to %d", member, m.Partition, l, m.Offset)
				}
				last[m.Partition] = m.Offset
				counts[string(m.Value)]++
				byMem[member]++
			}
			return nil
		}
	}
	assigned := map[string][]int32{} // member → its latest partitions
	start := func(member string) (context.CancelFunc, chan error) {
		cfg := bus.ConsumerConfig{Group: "g", Topics: []string{"rebalance"}, MaxBatch: 2,
			Assigned: func(p map[string][]int32) {
				mu.Lock()
				defer mu.Unlock()
				assigned[member] = slices.Sorted(slices.Values(p["rebalance"]))
			}}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- k.Consume(cctx, cfg, handler(member)) }()
		return cancel, done
	}
	stopA, doneA := start("a")
	defer stopA()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitUntil("member a to start", func() bool { return byMem["a"] > 0 })
	stopB, doneB := start("b")
	defer stopB()
	waitUntil("every message", func() bool { return len(counts) == len(msgs) })
	// Each member was told its partitions: between them, all three.
	waitUntil("both members assigned", func() bool {
		all := slices.Sorted(slices.Values(append(slices.Clone(assigned["a"]), assigned["b"]...)))
		return len(assigned["b"]) > 0 && slices.Equal(all, []int32{0, 1, 2})
	})
	stopA()
	stopB()
	for _, done := range []chan error{doneA, doneB} {
		if err := <-done; err != nil {
			t.Errorf("Consume = %v", err)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if byMem["b"] == 0 {
		t.Errorf("member b handled nothing: partitions were not shared (a handled %d)", byMem["a"])
	}
	dups := 0
	for _, n := range counts {
		dups += n - 1
	}
	t.Logf("member a handled %d, member b %d, duplicates %d", byMem["a"], byMem["b"], dups)
	if dups != 0 {
		t.Errorf("%d messages handled twice across a clean rebalance, want 0", dups)
	}
}
