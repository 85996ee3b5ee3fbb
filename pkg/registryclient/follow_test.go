package registryclient_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/registryclient"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// session scripts one WatchModel call: the messages to send, then the
// error to end with.
type session struct {
	send []*experimentv1.WatchModelResponse
	end  error
}

// fake is an ExperimentService whose WatchModel plays sessions in order
// and records the requests; after the last session it waits for the
// client to leave.
type fake struct {
	experimentv1.UnimplementedExperimentServiceServer

	mu       sync.Mutex
	sessions []session
	requests []*experimentv1.WatchModelRequest
}

func (f *fake) WatchModel(req *experimentv1.WatchModelRequest, stream grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error {
	f.mu.Lock()
	f.requests = append(f.requests, req)
	var s *session
	if len(f.sessions) > 0 {
		s = &f.sessions[0]
		f.sessions = f.sessions[1:]
	}
	f.mu.Unlock()
	if s == nil {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	for _, msg := range s.send {
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return s.end
}

func (f *fake) afterRevisions() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for _, r := range f.requests {
		out = append(out, r.GetAfterRevision())
	}
	return out
}

func serve(t *testing.T, f *fake) experimentv1.ExperimentServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	experimentv1.RegisterExperimentServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }() // returns when stopped
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return experimentv1.NewExperimentServiceClient(conn)
}

func at(rev uint64, version int64) *experimentv1.WatchModelResponse {
	return &experimentv1.WatchModelResponse{Revision: rev, Alias: "production", ModelVersion: &experimentv1.ModelVersion{Version: version}}
}

var fast = registryclient.WithBackoff(time.Millisecond, 5*time.Millisecond)

// follow runs FollowAlias until apply has seen n messages, then cancels
// it, and returns what was applied and what FollowAlias returned.
func follow(t *testing.T, client experimentv1.ExperimentServiceClient, n int, opts ...registryclient.Option) ([]uint64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got []uint64
	err := registryclient.FollowAlias(ctx, client, "m", "production", func(msg *experimentv1.WatchModelResponse) error {
		got = append(got, msg.GetRevision())
		if len(got) == n {
			cancel()
		}
		return nil
	}, append([]registryclient.Option{fast}, opts...)...)
	return got, err
}

func TestFollowAliasResumesFromTheLastApplied(t *testing.T) {
	t.Parallel()
	f := &fake{sessions: []session{
		{send: []*experimentv1.WatchModelResponse{at(3, 1), at(5, 2)}, end: status.Error(codes.Unavailable, "draining")},
		{end: status.Error(codes.Internal, "boom")},
		// A server may repeat what was applied; it is not applied twice.
		{send: []*experimentv1.WatchModelResponse{at(5, 2), at(8, 3)}, end: status.Error(codes.NotFound, "model deleted")},
		{send: []*experimentv1.WatchModelResponse{at(9, 1)}},
	}}
	got, err := follow(t, serve(t, f), 4)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("FollowAlias: %v, want context.Canceled", err)
	}
	if want := []uint64{3, 5, 8, 9}; !slices.Equal(got, want) {
		t.Errorf("applied revisions %v, want %v", got, want)
	}
	if want := []uint64{0, 5, 5, 8}; !slices.Equal(f.afterRevisions(), want) {
		t.Errorf("after_revision of each call %v, want %v", f.afterRevisions(), want)
	}
}

func TestFollowAliasStartAfter(t *testing.T) {
	t.Parallel()
	f := &fake{sessions: []session{{send: []*experimentv1.WatchModelResponse{at(12, 4)}}}}
	got, err := follow(t, serve(t, f), 1, registryclient.StartAfter(11))
	if !errors.Is(err, context.Canceled) || !slices.Equal(got, []uint64{12}) {
		t.Fatalf("applied %v, %v", got, err)
	}
	if want := []uint64{11}; !slices.Equal(f.afterRevisions(), want) {
		t.Errorf("after_revision %v, want %v", f.afterRevisions(), want)
	}
}

func TestFollowAliasRestartsFromZeroWhenOutOfRange(t *testing.T) {
	t.Parallel()
	f := &fake{sessions: []session{
		{end: status.Error(codes.OutOfRange, "after_revision is beyond the registry")},
		{send: []*experimentv1.WatchModelResponse{at(2, 1)}},
	}}
	got, err := follow(t, serve(t, f), 1, registryclient.StartAfter(40))
	if !errors.Is(err, context.Canceled) || !slices.Equal(got, []uint64{2}) {
		t.Fatalf("applied %v, %v", got, err)
	}
	if want := []uint64{40, 0}; !slices.Equal(f.afterRevisions(), want) {
		t.Errorf("after_revision %v, want %v", f.afterRevisions(), want)
	}
}

func TestFollowAliasReturnsPermanentErrors(t *testing.T) {
	t.Parallel()
	for _, code := range []codes.Code{codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented} {
		f := &fake{sessions: []session{{end: status.Error(code, "no")}}}
		_, err := follow(t, serve(t, f), 1)
		if status.Code(err) != code {
			t.Errorf("%v: FollowAlias returned %v", code, err)
		}
		if n := len(f.afterRevisions()); n != 1 {
			t.Errorf("%v: %d calls, want 1 (no retry)", code, n)
		}
	}
}

func TestFollowAliasReturnsApplyErrors(t *testing.T) {
	t.Parallel()
	f := &fake{sessions: []session{{send: []*experimentv1.WatchModelResponse{at(1, 1), at(2, 2)}}}}
	bad := errors.New("weights do not load")
	var got []uint64
	err := registryclient.FollowAlias(context.Background(), serve(t, f), "m", "production", func(msg *experimentv1.WatchModelResponse) error {
		got = append(got, msg.GetRevision())
		if msg.GetRevision() == 2 {
			return bad
		}
		return nil
	}, fast)
	if !errors.Is(err, bad) {
		t.Fatalf("FollowAlias: %v, want the apply error", err)
	}
	if !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("applied %v", got)
	}
}
