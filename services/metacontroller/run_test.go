package metacontroller

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
)

// regimeSession scripts one WatchRegimes call: the states to send, then
// the error to end with (none: wait for the client to leave).
type regimeSession struct {
	send []*regimev1.RegimeState
	end  error
}

// fakeRegime is a RegimeService whose WatchRegimes plays sessions in order
// and records each call's after_sequence; after the last session it waits
// for the client to leave.
type fakeRegime struct {
	regimev1.UnimplementedRegimeServiceServer

	mu       sync.Mutex
	sessions []regimeSession
	afters   []uint64
}

func (f *fakeRegime) GetModel(context.Context, *regimev1.GetModelRequest) (*regimev1.GetModelResponse, error) {
	return &regimev1.GetModelResponse{Model: testRegimeModel}, nil
}

func (f *fakeRegime) WatchRegimes(req *regimev1.WatchRegimesRequest, stream grpc.ServerStreamingServer[regimev1.WatchRegimesResponse]) error {
	f.mu.Lock()
	f.afters = append(f.afters, req.GetAfterSequence())
	var s *regimeSession
	if len(f.sessions) > 0 {
		s = &f.sessions[0]
		f.sessions = f.sessions[1:]
	}
	f.mu.Unlock()
	if s == nil {
		s = &regimeSession{}
	}
	for _, rs := range s.send {
		msg := &regimev1.WatchRegimesResponse{Kind: regimev1.WatchEventKind_WATCH_EVENT_KIND_UPDATE, Sequence: rs.GetSequence(), State: rs}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	if s.end == nil {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	return s.end
}

// After RegimeService's history is reset (OutOfRange on resuming), the
// new history's states are applied although their sequences are below
// those applied before.
func TestRegimeHistoryReset(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.ReconnectBackoff = time.Millisecond
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRegime{sessions: []regimeSession{
		{send: []*regimev1.RegimeState{regimeState("DAX", 7, 0.6, 0.3, 0.1), regimeState("SMI", 8, 0.6, 0.3, 0.1)}, end: status.Error(codes.Unavailable, "restarting")},
		{end: status.Error(codes.OutOfRange, "after_sequence 8 is beyond the newest, 0")},
		{send: []*regimev1.RegimeState{regimeState("DAX", 1, 0.1, 0.1, 0.8)}},
	}}
	conn := serveFake(t, func(gs *grpc.Server) { regimev1.RegisterRegimeServiceServer(gs, f) })
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		s.followRegimes(ctx, regimev1.NewRegimeServiceClient(conn))
	}()
	defer func() { cancel(); <-followed }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.RLock()
		a := s.latest["DAX"]
		s.mu.RUnlock()
		if a.GetRegime().GetRegimeSequence() == 1 {
			if a.GetRegime().GetStale() || a.GetRegime().GetDominantRegime() != 2 {
				t.Fatalf("allocation of the new history: %v", a.GetRegime())
			}
			break
		}
		if time.Now().After(deadline) {
			f.mu.Lock()
			afters := f.afters
			f.mu.Unlock()
			t.Fatalf("DAX still allocated from regime sequence %d after the history reset (stream resumed after %v)", a.GetRegime().GetRegimeSequence(), afters)
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.mu.Lock()
	afters := slices.Clone(f.afters)
	f.mu.Unlock()
	if !slices.Equal(afters, []uint64{0, 8, 0}) {
		t.Errorf("resumed after %v, want 0, 8, then 0 from the new history's start", afters)
	}
}
