package metacontroller

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

const maxWatchSymbols = 1000

// GetAllocation implements MetaControllerServiceServer.
func (s *Server) GetAllocation(_ context.Context, req *metacontrollerv1.GetAllocationRequest) (*metacontrollerv1.GetAllocationResponse, error) {
	if !validSymbol(req.GetSymbol()) {
		return nil, apierr.Invalid("symbol", "must be 1 to 64 characters of ASCII letters, digits, '.', '_' and '-'")
	}
	s.mu.RLock()
	a := s.latest[req.GetSymbol()]
	s.mu.RUnlock()
	if a == nil {
		return nil, apierr.NotFound("allocation", req.GetSymbol())
	}
	return &metacontrollerv1.GetAllocationResponse{Allocation: a}, nil
}

// snapshot returns the latest allocation of every wanted symbol (all when
// want is empty), by symbol, and the newest sequence.
func (s *Server) snapshot(want map[string]bool) ([]*metacontrollerv1.Allocation, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*metacontrollerv1.Allocation
	for sym, a := range s.latest {
		if len(want) == 0 || want[sym] {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b *metacontrollerv1.Allocation) int {
		switch {
		case a.GetSymbol() < b.GetSymbol():
			return -1
		case a.GetSymbol() > b.GetSymbol():
			return 1
		}
		return 0
	})
	return out, s.seq
}

func (s *Server) newest() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.seq
}

// WatchAllocations implements MetaControllerServiceServer.
func (s *Server) WatchAllocations(req *metacontrollerv1.WatchAllocationsRequest, stream grpc.ServerStreamingServer[metacontrollerv1.WatchAllocationsResponse]) error {
	ctx := stream.Context()
	var v apierr.Violations
	if len(req.GetSymbols()) > maxWatchSymbols {
		v.Add("symbols", "at most %d symbols, got %d", maxWatchSymbols, len(req.GetSymbols()))
	}
	want := map[string]bool{}
	for i, sym := range req.GetSymbols() {
		if !validSymbol(sym) {
			v.Add(fmt.Sprintf("symbols[%d]", i), "must be 1 to 64 characters of ASCII letters, digits, '.', '_' and '-'")
		}
		want[sym] = true
	}
	if err := v.Err(); err != nil {
		return err
	}
	after := req.GetAfterSequence()
	snapshot := after == 0
	if !snapshot {
		if last := s.newest(); after > last {
			return status.Errorf(codes.OutOfRange, "after_sequence %d is beyond the newest allocation %d: the server's history was reset; resubscribe with 0", after, last)
		}
		if _, covered, _, _ := s.broker.Since(after); !covered {
			snapshot = true // the retained history no longer reaches back that far
		}
	}
	if snapshot {
		allocs, last := s.snapshot(want)
		for _, a := range allocs {
			if err := stream.Send(&metacontrollerv1.WatchAllocationsResponse{Kind: metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT, Sequence: a.GetSequence(), Allocation: a}); err != nil {
				return err
			}
		}
		if err := stream.Send(&metacontrollerv1.WatchAllocationsResponse{Kind: metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END, Sequence: last}); err != nil {
			return err
		}
		after = last
	}
	for {
		msgs, covered, _, wait := s.broker.Since(after)
		if !covered {
			// Fell behind the ring while sending: start over with a
			// snapshot rather than leave a silent gap.
			return status.Error(codes.Aborted, "the stream fell behind the retained history; resubscribe with the last sequence applied")
		}
		for _, a := range msgs {
			after = a.GetSequence()
			if len(want) > 0 && !want[a.GetSymbol()] {
				continue
			}
			if err := stream.Send(&metacontrollerv1.WatchAllocationsResponse{Kind: metacontrollerv1.WatchEventKind_WATCH_EVENT_KIND_UPDATE, Sequence: a.GetSequence(), Allocation: a}); err != nil {
				return err
			}
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
