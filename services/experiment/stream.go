package experiment

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"

	"google.golang.org/grpc"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/naming"
)

// streamInFlight bounds the messages of one stream queued for the writer
// and not yet durable. With the writer's bounded queue it keeps a stream's
// memory bounded: a client sending faster than the store commits waits in
// gRPC flow control.
const streamInFlight = 8

// StreamMetrics implements ExperimentServiceServer.
//
// Each message is validated on its own and queued for the metric writer,
// which commits many streams' messages per transaction. The summary is sent
// once every message of the stream is durable. A message that fails
// validation ends the stream with INVALID_ARGUMENT after the messages
// before it are durable; nothing of it is stored.
func (s *Server) StreamMetrics(stream grpc.ClientStreamingServer[experimentv1.StreamMetricsRequest, experimentv1.StreamMetricsResponse]) error {
	ctx := stream.Context()
	var (
		resp     experimentv1.StreamMetricsResponse
		runs     = map[string]int64{} // run id → key, for runs seen active on this stream
		streamID string
		lastSeq  uint64
		pending  []pendingMessage
	)
	// settle waits for pending messages until at most keep remain.
	settle := func(keep int) error {
		for len(pending) > keep {
			p := pending[0]
			var res AppendResult
			select {
			case res = <-p.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			pending = pending[1:]
			if res.Err != nil {
				return res.Err
			}
			if res.Duplicate {
				resp.PointsDuplicate += int64(p.points)
			} else {
				resp.PointsPersisted += int64(p.points)
			}
			if p.sequence > 0 {
				resp.PersistedThroughSequence = p.sequence
			}
		}
		return nil
	}
	for n := 0; ; n++ {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		resp.MessagesReceived++
		resp.PointsReceived += int64(len(req.GetMetrics()))
		msg, err := s.streamMessage(ctx, req, n, streamID, lastSeq, runs)
		if err != nil {
			// Keep the messages before this one: they are durable when
			// the client sees the error.
			if serr := settle(0); serr != nil {
				return serr
			}
			return err
		}
		if n == 0 {
			streamID = msg.StreamID
		}
		lastSeq = msg.Sequence
		done, err := s.store.Append(ctx, msg)
		if err != nil {
			return err
		}
		pending = append(pending, pendingMessage{done: done, points: len(msg.Points), sequence: msg.Sequence})
		if err := settle(streamInFlight); err != nil {
			return err
		}
	}
	if err := settle(0); err != nil {
		return err
	}
	return stream.SendAndClose(&resp)
}

type pendingMessage struct {
	done     <-chan AppendResult
	points   int
	sequence uint64
}

// streamMessage validates message n of a stream and resolves its run.
func (s *Server) streamMessage(ctx context.Context, req *experimentv1.StreamMetricsRequest, n int, streamID string, lastSeq uint64, runs map[string]int64) (StreamMessage, error) {
	var v apierr.Violations
	where := fmt.Sprintf("message %d", n+1)
	if req.GetStreamId() != "" {
		where += fmt.Sprintf(" (sequence %d)", req.GetSequence())
	}
	v.Merge(validateID("run_id", req.GetRunId()))
	if len(req.GetMetrics()) > maxBatchMetrics {
		v.Add("metrics", "at most %d points per message, got %d", maxBatchMetrics, len(req.GetMetrics()))
	}
	switch {
	case n > 0 && req.GetStreamId() != streamID:
		v.Add("stream_id", "must be the same on every message of a stream: %q, then %q", naming.Truncate(streamID), naming.Truncate(req.GetStreamId()))
	case req.GetStreamId() == "":
	case utf8.RuneCountInString(req.GetStreamId()) > maxStreamID || hasControl(req.GetStreamId()):
		v.Add("stream_id", "must be 1 to %d characters without control characters", maxStreamID)
	case req.GetSequence() == 0 || req.GetSequence() > math.MaxInt64:
		v.Add("sequence", "must be from 1 to %d with a stream_id, got %d", int64(math.MaxInt64), req.GetSequence())
	case n > 0 && req.GetSequence() != lastSeq+1:
		v.Add("sequence", "must follow the previous message's %d by 1, got %d", lastSeq, req.GetSequence())
	}
	now := s.now().UnixMilli()
	points := pointsFromProto(&v, "metrics", req.GetMetrics(), now)
	if err := v.Err(); err != nil {
		var inv *apierr.InvalidError
		if errors.As(err, &inv) {
			for i := range inv.Violations {
				inv.Violations[i].Description = where + ": " + inv.Violations[i].Description
			}
		}
		return StreamMessage{}, err
	}
	key, ok := runs[req.GetRunId()]
	if !ok {
		var err error
		if key, err = s.store.ActiveRunKey(ctx, req.GetRunId()); err != nil {
			return StreamMessage{}, err
		}
		runs[req.GetRunId()] = key
	}
	seq := req.GetSequence()
	if req.GetStreamId() == "" {
		seq = 0
	}
	return StreamMessage{RunKey: key, StreamID: req.GetStreamId(), Sequence: seq, Points: points}, nil
}

// maxStreamID bounds a StreamMetrics stream id.
const maxStreamID = 128
