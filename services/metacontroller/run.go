package metacontroller

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/registryclient"
)

// Run follows the policy's registry alias and RegimeService's regime
// stream until ctx ends. Either client may be nil (the service is not
// reachable from this process): allocations then fall back and say so.
func (s *Server) Run(ctx context.Context, regime regimev1.RegimeServiceClient, registry experimentv1.ExperimentServiceClient) {
	s.clientsMu.Lock()
	s.regime, s.registry = regime, registry
	s.clientsMu.Unlock()
	done := make(chan struct{})
	if registry != nil {
		go func() {
			defer close(done)
			err := registryclient.FollowAlias(ctx, registry, s.cfg.ModelName, s.cfg.Alias, s.applyVersion,
				registryclient.OnRetry(func(err error, delay time.Duration) {
					if status.Code(err) == codes.NotFound {
						// No policy is registered yet (a fresh mesh) or it was
						// deleted: allocations fall back, and this is not an
						// outage.
						s.log.Debug("policy model not registered; waiting", "model", s.cfg.ModelName, "delay", delay)
						return
					}
					s.log.Warn("policy registry stream failed; reconnecting", "err", err, "delay", delay)
				}))
			if err != nil && ctx.Err() == nil {
				s.log.Error("policy registry stream stopped", "err", err)
				s.setPolicy(nil, fmt.Sprintf("registry stream stopped: %v", err))
			}
		}()
	} else {
		close(done)
		s.setPolicy(nil, "ExperimentService is not reachable from this process")
	}
	if regime != nil {
		s.followRegimes(ctx, regime)
	} else {
		s.setRegimeDown(true, "RegimeService is not reachable from this process")
		<-ctx.Done()
	}
	<-done
}

// applyVersion installs a registry state of the alias.
func (s *Server) applyVersion(msg *experimentv1.WatchModelResponse) error {
	if msg.GetDeleted() || msg.GetModelVersion() == nil {
		s.setPolicy(nil, fmt.Sprintf("alias %s of %s points to no version", s.cfg.Alias, s.cfg.ModelName))
		return nil
	}
	mv := msg.GetModelVersion()
	pm := &metacontrollerv1.PolicyModel{ModelName: mv.GetModelName(), Version: mv.GetVersion(), Alias: msg.GetAlias()}
	p, err := hrl.Unmarshal(mv.GetWeights())
	if err != nil {
		// Keep serving (in fallback) rather than stop following: a later
		// version may be good.
		s.log.Error("policy version unreadable", "model", mv.GetModelName(), "version", mv.GetVersion(), "err", err)
		s.setPolicy(nil, fmt.Sprintf("version %d of %s is unreadable: %v", mv.GetVersion(), mv.GetModelName(), err))
		return nil
	}
	s.log.Info("policy version loaded", "model", mv.GetModelName(), "version", mv.GetVersion(), "alias", msg.GetAlias())
	s.setPolicy(&loadedPolicy{p: p, model: pm}, "")
	return nil
}

func (s *Server) setPolicy(p *loadedPolicy, detail string) {
	s.work.Lock()
	defer s.work.Unlock()
	s.alloc.setPolicy(p, detail)
	s.publish(s.alloc.reallocate())
}

func (s *Server) setRegimeDown(down bool, detail string) {
	s.work.Lock()
	defer s.work.Unlock()
	if s.alloc.regimeDown == down && s.alloc.regimeDetail == detail {
		return
	}
	was := s.alloc.regimeDown
	s.alloc.regimeDown, s.alloc.regimeDetail = down, detail
	if down || was {
		// Fallback entered (or its detail changed), or left: every
		// symbol's allocation changes policy.
		s.publish(s.alloc.reallocate())
	}
}

// followRegimes keeps a WatchRegimes stream open, resuming after the last
// state applied, until ctx ends.
func (s *Server) followRegimes(ctx context.Context, client regimev1.RegimeServiceClient) {
	var after uint64
	models := map[string]*regimeModel{}
	delay := s.cfg.ReconnectBackoff
	for ctx.Err() == nil {
		progressed, err := s.regimeSession(ctx, client, &after, models)
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.OutOfRange {
			// RegimeService's history was reset: follow the new one from
			// its start, whose sequences may be below those applied.
			after = 0
			s.resetRegimeSequences()
		}
		s.setRegimeDown(true, fmt.Sprintf("regime stream: %v", err))
		if progressed {
			delay = s.cfg.ReconnectBackoff
		}
		wait := delay/2 + time.Duration(rand.Int64N(int64(delay/2)+1))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (s *Server) regimeSession(ctx context.Context, client regimev1.RegimeServiceClient, after *uint64, models map[string]*regimeModel) (progressed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchRegimes(sctx, &regimev1.WatchRegimesRequest{AfterSequence: *after})
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return progressed, err
		}
		progressed = true
		s.setRegimeDown(false, "")
		*after = max(*after, msg.GetSequence())
		rs := msg.GetState()
		if rs == nil {
			continue
		}
		model, modelErr := s.regimeModel(ctx, client, rs.GetModelId(), models)
		s.onRegime(rs, model, modelErr)
	}
}

func (s *Server) resetRegimeSequences() {
	s.work.Lock()
	defer s.work.Unlock()
	s.alloc.resetSequences()
}

// onRegime allocates for a regime update.
func (s *Server) onRegime(rs *regimev1.RegimeState, model *regimeModel, modelErr string) {
	s.work.Lock()
	defer s.work.Unlock()
	if a := s.alloc.onRegime(rs, model, modelErr); a != nil {
		s.publish([]*metacontrollerv1.Allocation{a})
	}
}

// regimeModel returns the cached description of a regime model, reading
// it from RegimeService the first time.
func (s *Server) regimeModel(ctx context.Context, client regimev1.RegimeServiceClient, id string, cache map[string]*regimeModel) (*regimeModel, string) {
	if m, ok := cache[id]; ok {
		return m, ""
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := client.GetModel(cctx, &regimev1.GetModelRequest{ModelId: id, View: regimev1.ModelView_MODEL_VIEW_BASIC})
	if err != nil {
		return nil, fmt.Sprintf("GetModel %s: %v", id, err)
	}
	m := newRegimeModel(resp.GetModel(), s.strats)
	cache[id] = m
	return m, ""
}

// resolvePolicy reads a registered version of the policy: by version, or
// through an alias (production by default), once.
func (s *Server) resolvePolicy(ctx context.Context, field string, pm *metacontrollerv1.PolicyModel) (*hrl.Policy, *metacontrollerv1.PolicyModel, error) {
	registry, _ := s.clients()
	if registry == nil {
		return nil, nil, apierr.Unavailable("ExperimentService", errors.New("not reachable from this process"))
	}
	name := pm.GetModelName()
	if name == "" {
		name = s.cfg.ModelName
	}
	if pm.GetVersion() < 0 {
		return nil, nil, apierr.Invalid(field+".version", "must not be negative, got %d", pm.GetVersion())
	}
	var mv *experimentv1.ModelVersion
	out := &metacontrollerv1.PolicyModel{ModelName: name}
	if pm.GetVersion() > 0 {
		resp, err := registry.GetModelVersion(ctx, &experimentv1.GetModelVersionRequest{ModelName: name, Version: pm.GetVersion(), View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL})
		if err != nil {
			return nil, nil, registryErr(field, err)
		}
		mv = resp.GetModelVersion()
	} else {
		alias := pm.GetAlias()
		if alias == "" {
			alias = s.cfg.Alias
		}
		resp, err := registry.GetModelVersionByAlias(ctx, &experimentv1.GetModelVersionByAliasRequest{ModelName: name, Alias: alias, View: experimentv1.ModelVersionView_MODEL_VERSION_VIEW_FULL})
		if err != nil {
			return nil, nil, registryErr(field, err)
		}
		mv = resp.GetModelVersion()
		out.Alias = alias
	}
	out.Version = mv.GetVersion()
	p, err := hrl.Unmarshal(mv.GetWeights())
	if err != nil {
		return nil, nil, apierr.Invalid(field, "version %d of %s is not a policy: %v", mv.GetVersion(), name, err)
	}
	return p, out, nil
}

func registryErr(field string, err error) error {
	switch status.Code(err) {
	case codes.NotFound, codes.InvalidArgument:
		return apierr.Invalid(field, "%s", status.Convert(err).Message())
	case codes.Unavailable, codes.DeadlineExceeded:
		return apierr.Unavailable("ExperimentService", err)
	}
	return err
}
