package bus

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

// Kafka defaults.
const (
	// DefaultKafkaVersion is the protocol version used when
	// KafkaConfig.Version is empty: sarama's fully covered version, and
	// one that kfake (the test broker) serves.
	DefaultKafkaVersion = "2.8.0"
	// DefaultKafkaClientID names the process to the brokers when
	// KafkaConfig.ClientID is empty.
	DefaultKafkaClientID = "quantmesh"
	// DefaultSessionTimeout is the consumer group session timeout used when
	// KafkaConfig.SessionTimeout is 0.
	DefaultSessionTimeout = 10 * time.Second
	// DefaultHeartbeatInterval is the consumer group heartbeat used when
	// KafkaConfig.HeartbeatInterval is 0.
	DefaultHeartbeatInterval = 3 * time.Second
)

// Values of KafkaConfig.InitialOffset.
const (
	// OffsetOldest starts a group with no committed offset at the oldest
	// retained message.
	OffsetOldest = "oldest"
	// OffsetNewest starts a group with no committed offset at the next
	// message published.
	OffsetNewest = "newest"
)

// minKafkaVersion is the oldest protocol with idempotent producers.
var minKafkaVersion = sarama.V0_11_0_0

// KafkaConfig configures the Kafka bus.
type KafkaConfig struct {
	// Brokers are the bootstrap brokers, as host:port. Required.
	Brokers []string
	// ClientID names this process in the brokers' logs and quotas; empty
	// means DefaultKafkaClientID.
	ClientID string
	// Version is the oldest Kafka version among the brokers, such as
	// "3.6.0"; it selects the protocol versions spoken. Empty means
	// DefaultKafkaVersion. At least 0.11.0 (idempotent producer).
	Version string
	// TLS, when set, encrypts connections to the brokers.
	TLS *tls.Config
	// SessionTimeout is how long the group coordinator waits for a
	// consumer's heartbeat before it moves the consumer's partitions to
	// others. 0 means DefaultSessionTimeout; brokers bound it (Kafka's
	// group.min.session.timeout.ms, 6s by default).
	SessionTimeout time.Duration
	// HeartbeatInterval is how often consumers heartbeat; below
	// SessionTimeout. 0 means DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// InitialOffset is where a group with no committed offset starts:
	// OffsetOldest (the default when empty) or OffsetNewest.
	InitialOffset string
	// ReplicationFactor is used by EnsureTopics; 0 means the brokers'
	// default.replication.factor (needs Version 2.4.0 or later, else 1).
	ReplicationFactor int16
	// Backoff paces redelivery of a batch whose handler failed.
	Backoff Backoff
	// Logger receives the bus's logs; nil means slog.Default().
	Logger *slog.Logger
	// Tune, when set, adjusts the sarama configuration after the bus has
	// applied its own settings, for options not mapped here (SASL, fetch
	// sizes, ...). The idempotent producer settings must stay: NewKafka
	// rejects a Tune that changes them.
	Tune func(*sarama.Config)
}

// Validate reports the first invalid field of c, by name.
func (c KafkaConfig) Validate() error {
	_, err := c.sarama()
	return err
}

// sarama validates c and builds the sarama configuration for it.
func (c KafkaConfig) sarama() (*sarama.Config, error) {
	if len(c.Brokers) == 0 {
		return nil, errors.New("bus: kafka config: Brokers is empty")
	}
	for i, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return nil, fmt.Errorf("bus: kafka config: Brokers[%d] %q: %w", i, b, err)
		}
	}
	vs := cmp.Or(c.Version, DefaultKafkaVersion)
	version, err := sarama.ParseKafkaVersion(vs)
	if err != nil {
		return nil, fmt.Errorf("bus: kafka config: Version %q: %w", vs, err)
	}
	if !version.IsAtLeast(minKafkaVersion) {
		return nil, fmt.Errorf("bus: kafka config: Version %q: idempotent producer needs at least %s", vs, minKafkaVersion)
	}
	switch {
	case c.SessionTimeout < 0:
		return nil, fmt.Errorf("bus: kafka config: SessionTimeout %s: must not be negative", c.SessionTimeout)
	case c.HeartbeatInterval < 0:
		return nil, fmt.Errorf("bus: kafka config: HeartbeatInterval %s: must not be negative", c.HeartbeatInterval)
	case c.ReplicationFactor < 0:
		return nil, fmt.Errorf("bus: kafka config: ReplicationFactor %d: must not be negative", c.ReplicationFactor)
	}
	session := cmp.Or(c.SessionTimeout, DefaultSessionTimeout)
	heartbeat := cmp.Or(c.HeartbeatInterval, DefaultHeartbeatInterval)
	if heartbeat >= session {
		return nil, fmt.Errorf("bus: kafka config: HeartbeatInterval %s: must be below SessionTimeout %s", heartbeat, session)
	}
	initial := sarama.OffsetOldest
	switch c.InitialOffset {
	case "", OffsetOldest:
	case OffsetNewest:
		initial = sarama.OffsetNewest
	default:
		return nil, fmt.Errorf("bus: kafka config: InitialOffset %q: want %q or %q", c.InitialOffset, OffsetOldest, OffsetNewest)
	}
	if err := c.Backoff.Validate(); err != nil {
		return nil, fmt.Errorf("bus: kafka config: %w", err)
	}

	sc := sarama.NewConfig()
	sc.ClientID = cmp.Or(c.ClientID, DefaultKafkaClientID)
	sc.Version = version
	if c.TLS != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = c.TLS
	}
	// Idempotent producer: no duplicates or reordering from the producer's
	// own retries. It needs acks from all in-sync replicas and one request
	// in flight per broker connection.
	sc.Producer.Idempotent = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Net.MaxOpenRequests = 1
	sc.Producer.Retry.Max = 5
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	// Offsets are committed by the bus, synchronously, after a handler
	// succeeds; never on a timer.
	sc.Consumer.Offsets.AutoCommit.Enable = false
	sc.Consumer.Offsets.Initial = initial
	sc.Consumer.Return.Errors = true
	sc.Consumer.Group.Session.Timeout = session
	sc.Consumer.Group.Heartbeat.Interval = heartbeat

	if c.Tune != nil {
		c.Tune(sc)
		if !sc.Producer.Idempotent || sc.Producer.RequiredAcks != sarama.WaitForAll ||
			sc.Net.MaxOpenRequests != 1 || sc.Consumer.Offsets.AutoCommit.Enable {
			return nil, errors.New("bus: kafka config: Tune: must keep Producer.Idempotent, RequiredAcks=WaitForAll, Net.MaxOpenRequests=1 and AutoCommit off")
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("bus: kafka config: %w", err)
	}
	return sc, nil
}

// Kafka is the Bus on Apache Kafka, through sarama.
//
// Publishing goes through one idempotent producer: Publish returns once
// every message is acknowledged by all in-sync replicas. A message's Key
// picks its partition by hash, so messages with one key stay in order;
// messages without a key are spread at random.
//
// Each Consume call is one member of its consumer group, with its own
// connections: run several (in one process or many) to share a topic's
// partitions. A member batches each partition it is assigned separately
// (up to MaxBatch messages, MaxWait for a partial batch) and calls the
// handler for one batch at a time (never concurrently within one Consume
// call). Once the handler returns nil the batch's offset is marked and
// committed in the background, coalescing commits; every marked offset is
// committed before the member leaves its group (on ctx cancel, Close or a
// rebalance), so only a crash replays handled batches. A failed batch is
// redelivered after a backoff until it succeeds, the member stops, or a
// rebalance takes the partition away (the new owner then starts from the
// last commit); meanwhile the member's other partitions wait. Handlers
// receive the ctx passed to Consume, so a rebalance or Close lets the
// in-flight batch finish and commit. Messages of an uncommitted batch are
// never skipped: Kafka offsets are only ever committed past handled
// messages.
type Kafka struct {
	cfg      KafkaConfig
	sc       *sarama.Config
	log      *slog.Logger
	producer sarama.AsyncProducer
	acked    chan struct{} // closed when dispatch has returned

	closing   context.Context // done once Close starts
	stopAll   context.CancelFunc
	sending   sync.WaitGroup // Publish calls handing messages to the producer
	consumers sync.WaitGroup

	mu     sync.Mutex
	closed bool
}

var _ Bus = (*Kafka)(nil)

// NewKafka validates cfg, connects the producer to the brokers and returns
// the bus. Consumers connect when Consume is called.
func NewKafka(cfg KafkaConfig) (*Kafka, error) {
	sc, err := cfg.sarama()
	if err != nil {
		return nil, err
	}
	p, err := sarama.NewAsyncProducer(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("bus: kafka producer: %w", err)
	}
	closing, stopAll := context.WithCancel(context.Background())
	k := &Kafka{
		cfg:      cfg,
		sc:       sc,
		log:      loggerOr(cfg.Logger),
		producer: p,
		acked:    make(chan struct{}),
		closing:  closing,
		stopAll:  stopAll,
	}
	go k.dispatch()
	return k, nil
}

// dispatch routes the producer's acknowledgements to the Publish calls
// waiting for them. Each message carries its call's result channel, buffered
// for every message of the call, so dispatch never blocks.
func (k *Kafka) dispatch() {
	defer close(k.acked)
	successes, failures := k.producer.Successes(), k.producer.Errors()
	for successes != nil || failures != nil {
		select {
		case m, ok := <-successes:
			if !ok {
				successes = nil
				continue
			}
			m.Metadata.(chan error) <- nil
		case pe, ok := <-failures:
			if !ok {
				failures = nil
				continue
			}
			pe.Msg.Metadata.(chan error) <- pe.Err
		}
	}
}

// Publish sends msgs and waits until the brokers acknowledge all of them.
// It returns the first failure; messages other than the failed ones may be
// published. If ctx is done first it returns an error wrapping ctx.Err();
// messages already handed to the producer may still be published. After
// Close it returns an error wrapping ErrClosed.
func (k *Kafka) Publish(ctx context.Context, msgs ...Message) error {
	if err := validateMessages(msgs); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return fmt.Errorf("bus: publish %s: %w", msgs[0].Topic, ErrClosed)
	}
	k.sending.Add(1)
	k.mu.Unlock()

	results := make(chan error, len(msgs))
	sent := 0
	err := func() error {
		defer k.sending.Done()
		now := time.Now()
		for i := range msgs {
			m := &msgs[i]
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("bus: publish %s: %w", m.Topic, err)
			}
			pm := toSarama(m, now)
			pm.Metadata = results
			select {
			case k.producer.Input() <- pm:
				sent++
			case <-ctx.Done():
				return fmt.Errorf("bus: publish %s: %w", m.Topic, ctx.Err())
			case <-k.closing.Done():
				return fmt.Errorf("bus: publish %s: %w", m.Topic, ErrClosed)
			}
		}
		return nil
	}()
	if err != nil {
		return err
	}
	var first error
	for range sent {
		select {
		case e := <-results:
			if e != nil && first == nil {
				first = e
			}
		case <-ctx.Done():
			return fmt.Errorf("bus: publish %s: %w", msgs[0].Topic, ctx.Err())
		}
	}
	if first != nil {
		return fmt.Errorf("bus: publish %s: %w", msgs[0].Topic, first)
	}
	return nil
}

func toSarama(m *Message, now time.Time) *sarama.ProducerMessage {
	pm := &sarama.ProducerMessage{
		Topic:     m.Topic,
		Value:     sarama.ByteEncoder(m.Value),
		Timestamp: now,
	}
	if len(m.Key) > 0 {
		pm.Key = sarama.ByteEncoder(m.Key)
	}
	if len(m.Headers) > 0 {
		keys := slices.Sorted(maps.Keys(m.Headers))
		pm.Headers = make([]sarama.RecordHeader, 0, len(keys))
		for _, key := range keys {
			pm.Headers = append(pm.Headers, sarama.RecordHeader{Key: []byte(key), Value: []byte(m.Headers[key])})
		}
	}
	return pm
}

func fromSarama(cm *sarama.ConsumerMessage) Message {
	m := Message{
		Topic:     cm.Topic,
		Key:       cm.Key,
		Value:     cm.Value,
		Partition: cm.Partition,
		Offset:    cm.Offset,
		Time:      cm.Timestamp,
	}
	if len(cm.Headers) > 0 {
		m.Headers = make(map[string]string, len(cm.Headers))
		for _, h := range cm.Headers {
			if h != nil {
				m.Headers[string(h.Key)] = string(h.Value)
			}
		}
	}
	return m
}

// Consume joins consumer group cfg.Group and delivers batches of the
// partitions assigned to it until ctx is done; then it lets the in-flight
// batch finish, leaves the group and returns nil. If the bus is closed it
// returns an error wrapping ErrClosed, after the same clean exit. Failed
// group sessions (broker or coordinator unavailable) are retried with
// backoff and logged.
func (k *Kafka) Consume(ctx context.Context, cfg ConsumerConfig, h BatchHandler) error {
	cfg, err := cfg.normalize()
	if err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("bus: consume %s: nil handler", cfg.Group)
	}
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return fmt.Errorf("bus: consume %s: %w", cfg.Group, ErrClosed)
	}
	k.consumers.Add(1)
	k.mu.Unlock()
	defer k.consumers.Done()

	stop, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(k.closing, cancel)()

	group, err := sarama.NewConsumerGroup(k.cfg.Brokers, cfg.Group, k.sc)
	if err != nil {
		return fmt.Errorf("bus: consume %s: %w", cfg.Group, err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for err := range group.Errors() {
			k.log.LogAttrs(ctx, slog.LevelWarn, "bus: consumer group error",
				slog.String("group", cfg.Group), slog.Any("error", err))
		}
	}()
	defer func() {
		if err := group.Close(); err != nil {
			k.log.LogAttrs(ctx, slog.LevelWarn, "bus: consumer group close failed",
				slog.String("group", cfg.Group), slog.Any("error", err))
		}
		<-drained
	}()

	gh := &groupHandler{
		cfg:  cfg,
		h:    h,
		hctx: ctx,
		r:    newRedeliverer(k.cfg.Backoff, k.log, cfg.Group),
		turn: make(chan struct{}, 1),
		log:  k.log,
	}
	backoff := k.cfg.Backoff.withDefaults()
	for failures := 0; stop.Err() == nil; {
		err := group.Consume(stop, cfg.Topics, gh)
		if stop.Err() != nil {
			break
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			return fmt.Errorf("bus: consume %s: %w", cfg.Group, err)
		}
		if err == nil {
			failures = 0 // a rebalance ended the session; join again
			continue
		}
		failures++
		wait := backoff.delay(failures)
		k.log.LogAttrs(ctx, slog.LevelWarn, "bus: consumer group session failed; rejoining",
			slog.String("group", cfg.Group),
			slog.Int("attempt", failures),
			slog.Duration("backoff", wait),
			slog.Any("error", err))
		sleepCtx(stop, wait)
	}
	if k.closing.Err() != nil {
		return fmt.Errorf("bus: consume %s: %w", cfg.Group, ErrClosed)
	}
	return nil
}

// groupHandler is the sarama.ConsumerGroupHandler of one Consume call.
//
// Commits are asynchronous: after a batch succeeds its claim marks the
// offset and wakes the session's committer, which sends one OffsetCommit
// for everything marked so far. A broker answers a connection's requests in
// order, so a commit waits behind the consumer's long-polling fetch
// (Consumer.MaxWaitTime); committing beside the claims keeps that wait off
// the delivery path. Cleanup flushes the last marks before the member leaves
// the group, so a clean stop or rebalance commits every handled batch; a
// crash may lose the last commit, and those batches are redelivered.
type groupHandler struct {
	cfg  ConsumerConfig
	h    BatchHandler
	hctx context.Context // the Consume caller's ctx, handed to h
	r    *redeliverer
	turn chan struct{} // one handler call at a time across claims
	log  *slog.Logger

	// The current session's committer; sessions do not overlap.
	kick        chan struct{}
	stopCommits chan struct{}
	committed   chan struct{}
}

// Setup logs the partitions assigned by a rebalance and starts the
// session's committer.
func (g *groupHandler) Setup(sess sarama.ConsumerGroupSession) error {
	g.log.LogAttrs(g.hctx, slog.LevelDebug, "bus: partitions assigned",
		slog.String("group", g.cfg.Group),
		slog.String("member", sess.MemberID()),
		slog.Int("generation", int(sess.GenerationID())),
		slog.Any("claims", sess.Claims()))
	if g.cfg.Assigned != nil {
		g.cfg.Assigned(sess.Claims())
	}
	g.kick = make(chan struct{}, 1)
	g.stopCommits = make(chan struct{})
	g.committed = make(chan struct{})
	go g.commitLoop(sess, g.kick, g.stopCommits, g.committed)
	return nil
}

func (g *groupHandler) commitLoop(sess sarama.ConsumerGroupSession, kick, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-kick:
			sess.Commit()
		case <-stop:
			sess.Commit()
			return
		}
	}
}

// Cleanup runs once every claim of the session has returned: it stops the
// committer after a last, synchronous commit.
func (g *groupHandler) Cleanup(sarama.ConsumerGroupSession) error {
	if g.stopCommits != nil {
		close(g.stopCommits)
		<-g.committed
		g.stopCommits = nil
	}
	return nil
}

// ConsumeClaim batches one partition and hands each batch to the handler,
// committing after success. It returns, leaving the uncommitted tail to the
// partition's next owner, when the session ends.
func (g *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	sctx := sess.Context()
	in := claim.Messages()
	timer := time.NewTimer(g.cfg.MaxWait)
	timer.Stop()
	defer timer.Stop()
	for {
		var last *sarama.ConsumerMessage
		batch := make([]Message, 0, min(g.cfg.MaxBatch, 64))
		select {
		case cm, ok := <-in:
			if !ok {
				return nil
			}
			last = cm
			batch = append(batch, fromSarama(cm))
			batch[len(batch)-1].Behind = max(0, claim.HighWaterMarkOffset()-cm.Offset-1)
		case <-sctx.Done():
			return nil
		}
		timer.Reset(g.cfg.MaxWait)
	fill:
		for len(batch) < g.cfg.MaxBatch {
			select {
			case cm, ok := <-in:
				if !ok {
					return nil
				}
				last = cm
				batch = append(batch, fromSarama(cm))
				batch[len(batch)-1].Behind = max(0, claim.HighWaterMarkOffset()-cm.Offset-1)
			case <-timer.C:
				break fill
			case <-sctx.Done():
				return nil
			}
		}
		timer.Stop()

		select {
		case g.turn <- struct{}{}:
		case <-sctx.Done():
			return nil
		}
		ok := g.r.deliver(sctx, g.hctx, g.h, batch)
		<-g.turn
		if !ok {
			return nil
		}
		sess.MarkMessage(last, "")
		select {
		case g.kick <- struct{}{}:
		default: // a commit is already due; it will include this mark
		}
	}
}

// EnsureTopics creates the topics that do not exist yet, each with
// partitions partitions and the configured replication factor. Existing
// topics are left as they are, whatever their partition count.
func (k *Kafka) EnsureTopics(ctx context.Context, topics []string, partitions int32) error {
	if partitions < 1 {
		return fmt.Errorf("bus: ensure topics: partitions %d: must be at least 1", partitions)
	}
	for i, t := range topics {
		if t == "" {
			return fmt.Errorf("bus: ensure topics: topics[%d] is empty", i)
		}
	}
	rf := k.cfg.ReplicationFactor
	if rf == 0 {
		rf = 1
		if k.sc.Version.IsAtLeast(sarama.V2_4_0_0) {
			rf = -1 // the brokers' default.replication.factor
		}
	}
	admin, err := sarama.NewClusterAdmin(k.cfg.Brokers, k.sc)
	if err != nil {
		return fmt.Errorf("bus: ensure topics: %w", err)
	}
	defer func() {
		if err := admin.Close(); err != nil {
			k.log.LogAttrs(ctx, slog.LevelWarn, "bus: cluster admin close failed", slog.Any("error", err))
		}
	}()
	for _, t := range topics {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("bus: ensure topic %s: %w", t, err)
		}
		err := admin.CreateTopic(t, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: rf}, false)
		switch {
		case err == nil:
			k.log.LogAttrs(ctx, slog.LevelInfo, "bus: topic created",
				slog.String("topic", t), slog.Int("partitions", int(partitions)))
		case errors.Is(err, sarama.ErrTopicAlreadyExists):
		default:
			return fmt.Errorf("bus: ensure topic %s: %w", t, err)
		}
	}
	return nil
}

// Close stops the bus: Publish and Consume return ErrClosed from now on.
// Running consumers finish their in-flight batch, commit it and leave their
// groups; then the producer flushes what it holds and Close returns once
// every pending Publish has its answer. Closing twice is a no-op.
func (k *Kafka) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.mu.Unlock()
	k.stopAll()
	k.sending.Wait()
	k.consumers.Wait()
	err := k.producer.Close()
	<-k.acked
	if err != nil {
		return fmt.Errorf("bus: close producer: %w", err)
	}
	return nil
}
