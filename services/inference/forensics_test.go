package inference_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/inference"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func decision(i int, at time.Time) *inferencev1.Decision {
	return &inferencev1.Decision{
		DecisionId:    uuid.Must(uuid.NewV7()).String(),
		DecisionTime:  timestamppb.New(at.Truncate(time.Microsecond)),
		RequestId:     fmt.Sprintf("req-%d", i),
		ClientTime:    timestamppb.New(at.Add(-time.Second).Truncate(time.Microsecond)),
		ModelName:     "policy",
		ModelVersion:  int64(1 + i%2),
		Alias:         "production",
		Symbol:        []string{"DAX", "SMI", "CAC"}[i%3],
		UnitId:        fmt.Sprintf("acct-%d", i%5),
		Features:      []float64{float64(i), -0.5, 1e-9},
		Action:        inferencev1.Action_ACTION_BUY,
		Probabilities: &inferencev1.ActionProbabilities{Buy: 0.5, Hold: 0.3, Sell: 0.2},
		Confidence:    0.5,
		LatencyMs:     0.123,
		Arm:           inferencev1.Arm_ARM_CONTROL,
		AbTestId:      "ab-1",
		Shadow:        i%2 == 0,
	}
}

func migrated(t *testing.T, fn func(t *testing.T, db *store.DB)) {
	t.Parallel()
	storetest.Run(t, []store.MigrationSet{experiment.Migrations(), inference.Migrations()}, fn)
}

func TestDecisionStore(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		st := inference.NewSQLDecisions(db)
		base := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
		var all []*inferencev1.Decision
		for i := range 30 {
			all = append(all, decision(i, base.Add(time.Duration(i)*time.Second)))
		}
		n, err := st.InsertDecisions(ctx, all[:20], time.Now())
		if err != nil || n != 20 {
			t.Fatalf("insert: %d, %v", n, err)
		}
		// A redelivered batch overlapping what is stored adds only the new.
		n, err = st.InsertDecisions(ctx, all[10:], time.Now())
		if err != nil || n != 10 {
			t.Fatalf("redelivered insert: %d new, %v; want 10", n, err)
		}
		got, err := st.GetDecision(ctx, all[7].GetDecisionId())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(all[7], got, protocmp.Transform()); diff != "" {
			t.Errorf("get (-stored +read):\n%s", diff)
		}
		if _, err := st.GetDecision(ctx, uuid.NewString()); err == nil {
			t.Error("unknown decision found")
		}
		list, err := st.ListDecisions(ctx, inference.DecisionQuery{Symbol: "SMI", ModelName: "policy", ModelVersion: 2, Start: base.Add(5 * time.Second), Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range list {
			ids = append(ids, d.GetRequestId())
		}
		// SMI is i%3 == 1, version 2 is i odd, i >= 5: 7, 13, 19, 25; newest first.
		if diff := cmp.Diff([]string{"req-25", "req-19", "req-13", "req-7"}, ids); diff != "" {
			t.Errorf("filtered list (-want +got):\n%s", diff)
		}
	})
}

// runForensics consumes b into st until the returned stop is called.
func runForensics(t *testing.T, b bus.Bus, st inference.DecisionStore) (stop func()) {
	t.Helper()
	f, err := inference.NewForensics(b, st, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, inference.ForensicsConfig{MaxBatch: 50}) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("forensics: %v", err)
		}
	}
}

func publishDecisions(t *testing.T, b bus.Bus, ds []*inferencev1.Decision) {
	t.Helper()
	for _, d := range ds {
		v, err := proto.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(context.Background(), bus.Message{Topic: bus.TopicDecisions, Key: []byte(d.GetDecisionId()), Value: v}); err != nil {
			t.Fatal(err)
		}
	}
}

// countStored counts stored decisions and how many ids appear more than
// once.
func countStored(t *testing.T, db *store.DB) (rows, duplicated int) {
	t.Helper()
	if err := db.Reader().QueryRowContext(context.Background(),
		`SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT decision_id) FROM decisions`).Scan(&rows, &duplicated); err != nil {
		t.Fatal(err)
	}
	return rows, duplicated
}

func waitStored(t *testing.T, db *store.DB, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		rows, _ := countStored(t, db)
		if rows >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d decisions stored after 20s", rows, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestForensicsExactlyOnce drives the decisions path on both buses: every
// decision published is stored exactly once, also when the consumer stops
// mid-stream and a new one takes over.
func TestForensicsExactlyOnce(t *testing.T) {
	t.Parallel()
	buses := map[string]func(t *testing.T) bus.Bus{
		"inproc": func(t *testing.T) bus.Bus { return bus.NewInProc(bus.InProcConfig{Logger: quiet}) },
		"kafka": func(t *testing.T) bus.Bus {
			cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, bus.TopicDecisions))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cluster.Close)
			k, err := bus.NewKafka(bus.KafkaConfig{Brokers: cluster.ListenAddrs(), ClientID: "forensics-test", Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			return k
		},
	}
	for name, open := range buses {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, []store.MigrationSet{inference.Migrations()}, func(t *testing.T, db *store.DB) {
				b := open(t)
				defer b.Close()
				st := inference.NewSQLDecisions(db)
				const total = 600
				var ds []*inferencev1.Decision
				now := time.Now()
				for i := range total {
					ds = append(ds, decision(i, now.Add(time.Duration(i)*time.Microsecond)))
				}
				var wg sync.WaitGroup
				wg.Go(func() { publishDecisions(t, b, ds) })
				stop := runForensics(t, b, st)
				waitStored(t, db, 100)
				stop() // mid-stream
				stop = runForensics(t, b, st)
				wg.Wait()
				waitStored(t, db, total)
				stop()
				rows, dup := countStored(t, db)
				if rows != total || dup != 0 {
					t.Errorf("stored %d rows with %d duplicated ids, want %d and 0", rows, dup, total)
				}
			})
		})
	}
}

type failingStore struct{ inference.DecisionStore }

func (failingStore) InsertDecisions(context.Context, []*inferencev1.Decision, time.Time) (int, error) {
	return 0, fmt.Errorf("database down")
}

// TestForensicsReportsBacklog: a consumer that cannot store reports the
// decisions waiting and a lag that grows, so alerts see a stuck consumer.
func TestForensicsReportsBacklog(t *testing.T) {
	t.Parallel()
	b := bus.NewInProc(bus.InProcConfig{Logger: quiet, Backoff: bus.Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond}})
	defer b.Close()
	f, err := inference.NewForensics(b, failingStore{}, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ds []*inferencev1.Decision
	for i := range 30 {
		ds = append(ds, decision(i, time.Now()))
	}
	publishDecisions(t, b, ds)
	if lag, backlog := f.Lag(); lag != 0 || backlog != 0 {
		t.Errorf("before consuming: lag %v backlog %d", lag, backlog)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, inference.ForensicsConfig{MaxBatch: 10}) }()
	deadline := time.Now().Add(10 * time.Second)
	var lag1 time.Duration
	for {
		lag, backlog := f.Lag()
		if backlog == 30 && lag > 0 {
			lag1 = lag
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag %v backlog %d, want 30 waiting", lag, backlog)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if lag2, _ := f.Lag(); lag2 <= lag1 {
		t.Errorf("lag of a stuck consumer did not grow: %v then %v", lag1, lag2)
	}
	cancel()
	<-done
}

// scriptedConsumer hands one batch of partition 1, then reassigns the
// member to partition 0 only, as a Kafka rebalance does.
type scriptedConsumer struct{ batch []bus.Message }

func (c scriptedConsumer) Consume(ctx context.Context, cfg bus.ConsumerConfig, h bus.BatchHandler) error {
	cfg.Assigned(map[string][]int32{bus.TopicDecisions: {0, 1}})
	if err := h(ctx, c.batch); err != nil {
		return err
	}
	cfg.Assigned(map[string][]int32{bus.TopicDecisions: {0}})
	return nil
}

// A partition taken away by a rebalance no longer counts in the lag: its
// new owner reports it, and here it would only grow.
func TestForensicsForgetsRevokedPartitions(t *testing.T) {
	migrated(t, func(t *testing.T, db *store.DB) {
		d := decision(1, time.Now())
		v, err := proto.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		// The last message of the batch has 5 more behind it.
		c := scriptedConsumer{batch: []bus.Message{{Topic: bus.TopicDecisions, Partition: 1, Offset: 9, Value: v, Time: time.Now().Add(-time.Minute), Behind: 5}}}
		f, err := inference.NewForensics(c, inference.NewSQLDecisions(db), quiet, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Run(context.Background(), inference.ForensicsConfig{}); err != nil {
			t.Fatal(err)
		}
		if lag, backlog := f.Lag(); lag != 0 || backlog != 0 {
			t.Errorf("lag %s, backlog %d after partition 1 was revoked; want 0, 0", lag, backlog)
		}
	})
}
