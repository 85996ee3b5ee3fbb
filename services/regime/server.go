// Package regime implements RegimeService: bars in, causal features,
// Dirichlet-process Gaussian mixture regimes out, raw and smoothed.
//
// The Engine (engine.go) holds the live state: per-symbol feature windows
// (an LRU of symbols, rebuilt from stored bars on a miss), the active
// models, the smoothing filters and the latest state of every symbol. Bars
// arrive through IngestBars or the bus topic market.bars; each message is
// validated as a whole, applied in memory and committed with its regime
// states in one transaction before the states are published to
// WatchRegimes.
package regime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/bus"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/server"
)

// Server implements regimev1.RegimeServiceServer.
type Server struct {
	regimev1.UnimplementedRegimeServiceServer

	engine *Engine
	log    *slog.Logger
	// forward, when set, receives the bars IngestBars stores (topic
	// market.bars).
	forward bus.Publisher
}

var _ regimev1.RegimeServiceServer = (*Server)(nil)

// Option configures a Server.
type Option func(*Server)

// WithBarForwarding puts the bars IngestBars stores on the bus topic
// market.bars, marked with HeaderForwarded, so that every consumer of the
// feed (the online learner, say) sees them as it sees bars published
// there. The server's own ConsumeBars skips them: they are stored already.
// A bar that cannot be forwarded is logged and counted
// (quantmesh_regime_bars_forwarded_total{result="failed"}); IngestBars
// still answers, since the bars are stored.
func WithBarForwarding(pub bus.Publisher) Option {
	return func(s *Server) { s.forward = pub }
}

// HeaderForwarded marks a market.bars message that RegimeService forwarded
// from IngestBars.
const HeaderForwarded = "quantmesh-forwarded-by"

// forwardedBy is HeaderForwarded's value.
const forwardedBy = "regime.IngestBars"

// New returns a server on engine.
func New(engine *Engine, log *slog.Logger, opts ...Option) *Server {
	s := &Server{engine: engine, log: log}
	for _, o := range opts {
		o(s)
	}
	return s
}

// forwardBars puts stored bars on market.bars (WithBarForwarding).
func (s *Server) forwardBars(ctx context.Context, bars []*regimev1.Bar) {
	if s.forward == nil || len(bars) == 0 {
		return
	}
	msgs := make([]bus.Message, 0, len(bars))
	headers := map[string]string{HeaderForwarded: forwardedBy} // shared: buses copy what they change
	for _, b := range bars {
		v, err := proto.Marshal(b)
		if err != nil { // a validated bar always marshals
			s.log.Error("market.bars: bar not forwarded", "symbol", b.GetSymbol(), "err", err)
			continue
		}
		msgs = append(msgs, bus.Message{Topic: bus.TopicMarketBars, Key: []byte(b.GetSymbol()), Value: v, Headers: headers})
	}
	err := s.forward.Publish(ctx, msgs...)
	s.engine.ins.forwarded(ctx, len(msgs), err == nil)
	if err != nil {
		s.log.Error("market.bars: stored bars not forwarded", "bars", len(msgs), "err", err)
	}
}

// Registration describes the service to the server bootstrap.
func (s *Server) Registration() server.Registration {
	return server.Registration{
		Desc: &regimev1.RegimeService_ServiceDesc,
		Impl: s,
		Gateway: func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			return regimev1.RegisterRegimeServiceHandler(ctx, mux, conn)
		},
		Roles: Roles(),
	}
}

// Roles is the method policy of RegimeService.
func Roles() auth.Policy {
	svc := regimev1.File_quantmesh_regime_v1_regime_proto.Services().ByName("RegimeService")
	return auth.PolicyFor(svc,
		[]auth.Role{auth.RoleTrader, auth.RoleResearcher},
		[]auth.Role{auth.RoleResearcher},
		map[string][]auth.Role{
			// Market data feeders run with the trader role.
			"IngestBars": {auth.RoleTrader, auth.RoleResearcher},
		})
}

// Request limits.
const (
	maxBarsPerMessage = 10_000
	maxSymbols        = 1000
	maxVectors        = 10_000
)

var symbolPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func validSymbol(v *apierr.Violations, field, sym string, star bool) {
	if star && sym == DefaultSymbol {
		return
	}
	if !symbolPattern.MatchString(sym) {
		v.Add(field, "%q is not a symbol: 1 to 64 ASCII letters, digits, '.', '_' or '-'", truncate(sym))
	}
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// barFromProto validates one bar (fields only; ordering is the engine's).
func barFromProto(v *apierr.Violations, field string, b *regimev1.Bar, now time.Time) Bar {
	validSymbol(v, field+".symbol", b.GetSymbol(), false)
	out := Bar{Symbol: b.GetSymbol(), Open: b.GetOpen(), High: b.GetHigh(), Low: b.GetLow(), Close: b.GetClose()}
	if b.GetTime() == nil {
		v.Add(field+".time", "required")
	} else if err := b.GetTime().CheckValid(); err != nil {
		v.Add(field+".time", "invalid timestamp: %v", err)
	} else if t := b.GetTime().AsTime(); t.After(now.Add(marketdata.MaxBarLead)) {
		v.Add(field+".time", "%s is more than %s ahead of the server's clock", t.Format(time.RFC3339), marketdata.MaxBarLead)
	} else {
		out.Time = t.Truncate(time.Microsecond).UTC()
	}
	ok := true
	for _, p := range []struct {
		name string
		x    float64
	}{{"open", b.GetOpen()}, {"high", b.GetHigh()}, {"low", b.GetLow()}, {"close", b.GetClose()}} {
		if !finite(p.x) || p.x <= 0 {
			v.Add(field+"."+p.name, "must be finite and positive, got %v", p.x)
			ok = false
		}
	}
	if ok {
		switch {
		case b.GetLow() > min(b.GetOpen(), b.GetClose()):
			v.Add(field+".low", "must be at most open and close, got %v", b.GetLow())
		case b.GetHigh() < max(b.GetOpen(), b.GetClose()):
			v.Add(field+".high", "must be at least open and close, got %v", b.GetHigh())
		}
	}
	if b.Volume != nil {
		if !finite(b.GetVolume()) || b.GetVolume() < 0 {
			v.Add(field+".volume", "must be finite and not negative, got %v", b.GetVolume())
		}
		out.Volume, out.HasVolume = b.GetVolume(), true
	}
	return out
}

// IngestBars implements RegimeServiceServer.
func (s *Server) IngestBars(stream grpc.ClientStreamingServer[regimev1.IngestBarsRequest, regimev1.IngestBarsResponse]) error {
	ctx := stream.Context()
	resp := &regimev1.IngestBarsResponse{}
	perSymbol := map[string]*regimev1.SymbolIngestSummary{}
	for n := 0; ; n++ {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		resp.MessagesReceived++
		resp.BarsReceived += int64(len(req.GetBars()))
		bars, err := barsFromProto(req.GetBars(), s.engine.now())
		if err == nil {
			var res IngestResult
			res, err = s.engine.Ingest(ctx, bars)
			if err == nil {
				s.forwardBars(ctx, req.GetBars())
				resp.BarsAccepted += int64(res.Accepted)
				resp.BarsDuplicate += int64(res.Duplicate)
				resp.RegimesUpdated += int64(len(res.States))
				counted := map[string]bool{}
				for _, b := range bars {
					sum := perSymbol[b.Symbol]
					if sum == nil {
						sum = &regimev1.SymbolIngestSummary{Symbol: b.Symbol}
						perSymbol[b.Symbol] = sum
					}
					if !counted[b.Symbol] {
						counted[b.Symbol] = true
						last := res.Last[b.Symbol]
						if !last.BarTime.IsZero() {
							sum.LastBarTime = timestamppb.New(last.BarTime)
						}
						sum.LastSequence = last.Sequence
					}
				}
				for sym, c := range res.PerSymbol {
					perSymbol[sym].BarsAccepted += int64(c.Accepted)
					perSymbol[sym].BarsDuplicate += int64(c.Duplicate)
				}
				continue
			}
		}
		var inv *apierr.InvalidError
		if errors.As(err, &inv) {
			for i := range inv.Violations {
				inv.Violations[i].Description = fmt.Sprintf("message %d: %s", n, inv.Violations[i].Description)
			}
		}
		return err
	}
	for _, sym := range sortedSummaryKeys(perSymbol) {
		resp.Symbols = append(resp.Symbols, perSymbol[sym])
	}
	return stream.SendAndClose(resp)
}

func sortedSummaryKeys(m map[string]*regimev1.SymbolIngestSummary) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// barsFromProto validates a message's bars.
func barsFromProto(in []*regimev1.Bar, now time.Time) ([]Bar, error) {
	var v apierr.Violations
	switch {
	case len(in) == 0:
		v.Add("bars", "at least one bar per message")
	case len(in) > maxBarsPerMessage:
		v.Add("bars", "at most %d bars per message, got %d", maxBarsPerMessage, len(in))
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	out := make([]Bar, len(in))
	for i, b := range in {
		out[i] = barFromProto(&v, fmt.Sprintf("bars[%d]", i), b, now)
	}
	return out, v.Err()
}

// GetRegime implements RegimeServiceServer.
func (s *Server) GetRegime(ctx context.Context, req *regimev1.GetRegimeRequest) (*regimev1.GetRegimeResponse, error) {
	var v apierr.Violations
	validSymbol(&v, "symbol", req.GetSymbol(), false)
	if err := v.Err(); err != nil {
		return nil, err
	}
	if st := s.engine.Latest(req.GetSymbol()); st != nil {
		return &regimev1.GetRegimeResponse{State: st}, nil
	}
	return nil, s.engine.Readiness(ctx, req.GetSymbol())
}

// watchPage bounds the states read from the store at a time.
const watchPage = 1000

// WatchRegimes implements RegimeServiceServer.
func (s *Server) WatchRegimes(req *regimev1.WatchRegimesRequest, stream grpc.ServerStreamingServer[regimev1.WatchRegimesResponse]) error {
	ctx := stream.Context()
	var v apierr.Violations
	if len(req.GetSymbols()) > maxSymbols {
		v.Add("symbols", "at most %d symbols, got %d", maxSymbols, len(req.GetSymbols()))
	}
	want := map[string]bool{}
	for i, sym := range req.GetSymbols() {
		validSymbol(&v, fmt.Sprintf("symbols[%d]", i), sym, false)
		want[sym] = true
	}
	if err := v.Err(); err != nil {
		return err
	}
	symbols := sortedKeys(want)
	b := s.engine.broker
	after := req.GetAfterSequence()
	snapshot := after == 0
	if !snapshot {
		if last := b.Last(); after > last {
			return status.Errorf(codes.OutOfRange, "after_sequence %d is beyond the newest state %d: the server's history was reset; resubscribe with 0", after, last)
		}
		first, err := s.engine.st.FirstSequence(ctx)
		if err != nil {
			return err
		}
		if _, covered, _, _ := b.Since(after); !covered && (first == 0 || first > after+1) {
			snapshot = true // the history no longer reaches back that far
		}
	}
	if snapshot {
		states, last := s.engine.Snapshot(want)
		for _, st := range states {
			if err := stream.Send(&regimev1.WatchRegimesResponse{Kind: regimev1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT, Sequence: st.GetSequence(), State: st}); err != nil {
				return err
			}
		}
		if err := stream.Send(&regimev1.WatchRegimesResponse{Kind: regimev1.WatchEventKind_WATCH_EVENT_KIND_SNAPSHOT_END, Sequence: last}); err != nil {
			return err
		}
		after = last
	}
	send := func(st *regimev1.RegimeState) error {
		if len(want) > 0 && !want[st.GetSymbol()] {
			return nil
		}
		return stream.Send(&regimev1.WatchRegimesResponse{Kind: regimev1.WatchEventKind_WATCH_EVENT_KIND_UPDATE, Sequence: st.GetSequence(), State: st})
	}
	for {
		states, covered, last, wait := b.Since(after)
		if !covered {
			var err error
			if states, err = s.engine.st.States(ctx, after, symbols, watchPage); err != nil {
				return err
			}
			if len(states) == 0 {
				// Nothing stored after it for these symbols: skip to
				// just before the ring's oldest state.
				if first := b.First(); first > after+1 {
					after = first - 1
					continue
				}
				after = max(after, last)
				continue
			}
		}
		for _, st := range states {
			if err := send(st); err != nil {
				return err
			}
			after = st.GetSequence()
		}
		if covered {
			after = max(after, last)
			select {
			case <-wait:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// ConsumeBars feeds the bus topic market.bars (regimev1.Bar messages) into
// the ingest path until ctx ends. A batch is applied as one message; a
// batch with invalid bars is applied without them (they are logged and
// counted), since a bus cannot refuse them.
func (s *Server) ConsumeBars(ctx context.Context, c bus.Consumer) error {
	return c.Consume(ctx, bus.ConsumerConfig{Group: "regime", Topics: []string{bus.TopicMarketBars}, MaxBatch: maxBarsPerMessage},
		func(ctx context.Context, msgs []bus.Message) error {
			var bars []Bar
			for _, m := range msgs {
				if m.Headers[HeaderForwarded] == forwardedBy {
					continue // IngestBars stored it
				}
				pb := &regimev1.Bar{}
				var v apierr.Violations
				if err := proto.Unmarshal(m.Value, pb); err != nil {
					s.log.Error("market.bars: undecodable bar skipped", "partition", m.Partition, "offset", m.Offset, "err", err)
					continue
				}
				b := barFromProto(&v, "bar", pb, s.engine.now())
				if err := v.Err(); err != nil {
					s.log.Error("market.bars: invalid bar skipped", "partition", m.Partition, "offset", m.Offset, "err", err)
					continue
				}
				bars = append(bars, b)
			}
			if len(bars) == 0 {
				return nil
			}
			_, err := s.engine.Ingest(ctx, bars)
			var inv *apierr.InvalidError
			if errors.As(err, &inv) {
				// Out-of-order bars, or bars whose features overflow:
				// apply the batch without them.
				bad := map[int]bool{}
				for _, viol := range inv.Violations {
					var i int
					if _, serr := fmt.Sscanf(viol.Field, "bars[%d]", &i); serr == nil {
						bad[i] = true
					}
				}
				s.log.Error("market.bars: rejected bars skipped", "bars", len(bad), "err", err)
				var keep []Bar
				for i, b := range bars {
					if !bad[i] {
						keep = append(keep, b)
					}
				}
				if len(keep) == 0 {
					return nil
				}
				_, err = s.engine.Ingest(ctx, keep)
				if errors.As(err, &inv) {
					s.log.Error("market.bars: batch skipped", "err", err)
					return nil
				}
			}
			return err
		})
}
