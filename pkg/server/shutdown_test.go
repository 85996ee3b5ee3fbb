package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// serveReturned reports, without waiting, whether Serve has returned.
func (h *harness) serveReturned() bool {
	select {
	case err := <-h.served:
		h.served <- err
		return true
	default:
		return false
	}
}

// refusing reports whether nothing accepts connections on addr.
func refusing(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	const shutdownTimeout = 30 * time.Second
	started := make(chan string, 2)
	release := make(chan struct{})
	watchCtxErr := make(chan error, 2)
	fake := &fakeExperiments{
		get: func(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
			started <- req.GetExperimentId()
			<-release // ignores ctx: a call that must be allowed to finish
			return echoGet(ctx, req)
		},
		watch: func(req *experimentv1.WatchModelRequest, ss grpc.ServerStreamingServer[experimentv1.WatchModelResponse]) error {
			if err := ss.Send(&experimentv1.WatchModelResponse{Alias: req.GetAlias(), Revision: 1}); err != nil {
				return err
			}
			<-ss.Context().Done()
			watchCtxErr <- ss.Context().Err()
			return ss.Context().Err()
		},
	}
	cfg := testConfig()
	cfg.ShutdownTimeout = shutdownTimeout
	h := start(t, server.Options{Config: cfg, Services: []server.Registration{registration(fake)}})

	stream, err := h.client().WatchModel(t.Context(), &experimentv1.WatchModelRequest{ModelName: "m", Alias: "production"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("WatchModel first Recv: %v", err)
	}

	// The same stream over REST: newline-delimited JSON.
	restWatch, err := http.Get(h.baseURL + "/v1/models/m/aliases/production:watch")
	if err != nil {
		t.Fatal(err)
	}
	defer restWatch.Body.Close()
	restLines := bufio.NewScanner(restWatch.Body)
	if !restLines.Scan() || !strings.Contains(restLines.Text(), `"result"`) {
		t.Fatalf("REST watch first line = %q, %v; want a result", restLines.Text(), restLines.Err())
	}

	// One slow call over gRPC and one over REST, both in flight.
	type result struct {
		name string
		err  error
	}
	grpcDone := make(chan result, 1)
	go func() {
		resp, err := h.client().GetExperiment(context.Background(), &experimentv1.GetExperimentRequest{ExperimentId: "slow-grpc"})
		grpcDone <- result{resp.GetExperiment().GetExperimentId(), err}
	}()
	restDone := make(chan result, 1)
	go func() {
		resp, err := http.Get(h.baseURL + "/v1/experiments/slow-rest")
		if err != nil {
			restDone <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			restDone <- result{err: err}
			return
		}
		var exp experimentv1.Experiment
		if err := protojson.Unmarshal(body, &exp); err != nil {
			restDone <- result{err: fmt.Errorf("REST body %q: %w", body, err)}
			return
		}
		restDone <- result{name: fmt.Sprintf("%d %s", resp.StatusCode, exp.GetExperimentId())}
	}()
	for range 2 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("slow calls did not start")
		}
	}

	begin := time.Now()
	h.cancel()

	// The open stream ends promptly with Unavailable, its handler's
	// context cancelled, while the slow calls still hold the drain.
	recvErr := make(chan error, 1)
	go func() {
		_, err := stream.Recv()
		recvErr <- err
	}()
	select {
	case err := <-recvErr:
		wantCode(t, "WatchModel after shutdown began", err, codes.Unavailable)
	case <-time.After(5 * time.Second):
		t.Fatalf("WatchModel still open 5s after shutdown began (ShutdownTimeout %v)", shutdownTimeout)
	}
	if elapsed := time.Since(begin); elapsed > shutdownTimeout/10 {
		t.Errorf("stream ended %v after shutdown began, want well before ShutdownTimeout %v", elapsed, shutdownTimeout)
	}
	restEnd := make(chan []string, 1)
	go func() {
		var rest []string
		for restLines.Scan() {
			rest = append(rest, restLines.Text())
		}
		restEnd <- rest
	}()
	select {
	case rest := <-restEnd:
		var frame struct {
			Error struct {
				Code codes.Code `json:"code"`
			} `json:"error"`
		}
		if len(rest) != 1 || json.Unmarshal([]byte(rest[0]), &frame) != nil || frame.Error.Code != codes.Unavailable {
			t.Errorf("REST watch after shutdown began sent %q, want one error frame with code Unavailable", rest)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("REST watch still open 5s after shutdown began")
	}
	for range 2 {
		if err := <-watchCtxErr; err == nil {
			t.Error("WatchModel handler's context was not cancelled")
		}
	}
	select {
	case <-h.srv.Draining():
	default:
		t.Error("Draining() not closed after shutdown began")
	}

	// New connections are refused while in-flight calls drain.
	waitFor(t, "the listeners to close", 5*time.Second, func() bool {
		return refusing(h.srv.GRPCAddr()) && refusing(h.srv.HTTPAddr())
	})
	if h.serveReturned() {
		t.Fatal("Serve returned while calls were in flight")
	}

	close(release)
	for _, c := range []struct {
		done chan result
		want string
	}{{grpcDone, "slow-grpc"}, {restDone, "200 slow-rest"}} {
		select {
		case r := <-c.done:
			if r.err != nil || r.name != c.want {
				t.Errorf("in-flight call during drain = %q, %v; want %q", r.name, r.err, c.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("in-flight call did not complete after release")
		}
	}
	if err := h.stop(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if elapsed := time.Since(begin); elapsed > shutdownTimeout/2 {
		t.Errorf("shutdown took %v", elapsed)
	}
}

// ShutdownTimeout bounds shutdown: calls still running when it passes are
// cut, their clients told Unavailable, and Serve returns, whether or not
// the handler honours the cancellation.
func TestShutdownTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		honours bool
	}{
		{name: "handler honours cancellation", honours: true},
		{name: "handler ignores cancellation", honours: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			started := make(chan struct{})
			stuck := make(chan struct{})
			fake := &fakeExperiments{
				get: func(ctx context.Context, req *experimentv1.GetExperimentRequest) (*experimentv1.GetExperimentResponse, error) {
					close(started)
					if tt.honours {
						<-ctx.Done()
						return nil, ctx.Err()
					}
					<-stuck
					return echoGet(ctx, req)
				},
			}
			cfg := testConfig()
			cfg.ShutdownTimeout = 200 * time.Millisecond
			h := start(t, server.Options{Config: cfg, Services: []server.Registration{registration(fake)}})
			t.Cleanup(func() { close(stuck) }) // runs before the harness's cleanup

			callErr := make(chan error, 1)
			go func() {
				_, err := h.client().GetExperiment(context.Background(), &experimentv1.GetExperimentRequest{ExperimentId: "stuck"})
				callErr <- err
			}()
			<-started

			begin := time.Now()
			h.cancel()
			select {
			case err := <-callErr:
				wantCode(t, "call cut by the shutdown deadline", err, codes.Unavailable)
			case <-time.After(5 * time.Second):
				t.Fatal("the client of the cut call was not told")
			}
			const bound = 3 * time.Second
			waitFor(t, "Serve to return after the shutdown timeout", bound, h.serveReturned)
			elapsed := time.Since(begin)
			if err := h.stop(t); err != nil {
				t.Errorf("Serve = %v, want nil", err)
			}
			if elapsed < cfg.ShutdownTimeout {
				t.Errorf("Serve returned after %v, before the %v drain timeout, with a call in flight", elapsed, cfg.ShutdownTimeout)
			}
			var warned bool
			for _, rec := range h.logs.records(t) {
				if rec["msg"] == "shutdown deadline reached; closing remaining calls" && rec["level"] == "WARN" {
					warned = true
				}
			}
			if !warned {
				t.Error("no warning logged when the shutdown deadline cut calls")
			}
		})
	}
}

// Client streams are not cut by the drain: they end when their client
// closes them, within the shutdown timeout.
func TestShutdownLetsClientStreamsFinish(t *testing.T) {
	t.Parallel()
	received := make(chan struct{}, 4)
	var messages atomic.Int64
	fake := &fakeExperiments{
		stream: func(ss grpc.ClientStreamingServer[experimentv1.StreamMetricsRequest, experimentv1.StreamMetricsResponse]) error {
			for {
				_, err := ss.Recv()
				if err == io.EOF {
					return ss.SendAndClose(&experimentv1.StreamMetricsResponse{MessagesReceived: messages.Load()})
				}
				if err != nil {
					return err
				}
				messages.Add(1)
				received <- struct{}{}
			}
		},
	}
	h := start(t, server.Options{Services: []server.Registration{registration(fake)}})

	stream, err := h.client().StreamMetrics(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&experimentv1.StreamMetricsRequest{RunId: "r1"}); err != nil {
		t.Fatal(err)
	}
	<-received

	h.cancel()
	<-h.srv.Draining()
	if err := stream.Send(&experimentv1.StreamMetricsRequest{RunId: "r1"}); err != nil {
		t.Fatalf("Send during the drain: %v", err)
	}
	select {
	case <-received:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not receive a message sent during the drain")
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetMessagesReceived() != 2 {
		t.Fatalf("CloseAndRecv = %v, %v; want 2 messages received", resp, err)
	}
	if err := h.stop(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestServeCancelledContext(t *testing.T) {
	t.Parallel()
	srv, err := server.New(t.Context(), server.Options{Config: testConfig(), Services: []server.Registration{registration(&fakeExperiments{})}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve(cancelled) = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve(cancelled) did not return")
	}
	if !refusing(srv.GRPCAddr()) || !refusing(srv.HTTPAddr()) {
		t.Error("listeners still open after Serve returned")
	}
}

// A REST call whose body is still arriving when shutdown starts is served:
// REST drains before gRPC stops, so the gateway can still reach gRPC.
func TestShutdownServesRESTUploadInFlight(t *testing.T) {
	t.Parallel()
	fake := &fakeExperiments{
		create: func(_ context.Context, req *experimentv1.CreateExperimentRequest) (*experimentv1.CreateExperimentResponse, error) {
			return &experimentv1.CreateExperimentResponse{Experiment: &experimentv1.Experiment{ExperimentId: "e1", Name: req.GetName()}}, nil
		},
	}
	cfg := testConfig()
	cfg.ShutdownTimeout = 10 * time.Second
	h := start(t, server.Options{Config: cfg, Services: []server.Registration{registration(fake)}})
	pr, pw := io.Pipe()
	wrote := make(chan struct{})
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{WroteHeaders: func() { close(wrote) }})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.baseURL+"/v1/experiments", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(b), err}
	}()
	if _, err := io.WriteString(pw, `{"name":"up`); err != nil {
		t.Fatal(err)
	}
	<-wrote
	time.Sleep(100 * time.Millisecond) // the server reads the headers: the request is in flight
	h.cancel()
	for !refusing(h.srv.GRPCAddr()) { // shutdown has begun
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := io.WriteString(pw, `load"}`); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	r := <-done
	if r.err != nil || r.code != http.StatusOK || !strings.Contains(r.body, `"upload"`) {
		t.Fatalf("REST call during shutdown: %d %s %v; want it served", r.code, r.body, r.err)
	}
	if err := h.stop(t); err != nil {
		t.Errorf("Serve returned %v", err)
	}
}
