package inference

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	"github.com/quantmesh/quantmesh/pkg/policy"
	"github.com/quantmesh/quantmesh/pkg/registryclient"
)

// ModelSpec names a served model and the registry alias it follows.
type ModelSpec struct {
	Name  string
	Alias string
}

// FeaturesTag is the model version tag listing the feature names in
// vector order, comma-separated (set by `quantmesh train`).
const FeaturesTag = "features"

// loaded is one version's weights, ready to answer. It never changes once
// built, so requests share it without locks.
type loaded struct {
	version  int64
	revision uint64
	net      *policy.Network
	format   string
	checksum string
	names    []string
	at       time.Time
}

// served is one served model: the version answering unrouted requests,
// swapped atomically, and the state of its registry subscription.
type served struct {
	spec    ModelSpec
	current atomic.Pointer[loaded]
	ab      atomic.Pointer[abRoute] // the model's A/B test; nil when none

	mu        sync.Mutex
	state     inferencev1.ModelSourceState
	stateTime time.Time
	lastErr   string
}

func newServed(spec ModelSpec, now time.Time) *served {
	return &served{spec: spec, state: inferencev1.ModelSourceState_MODEL_SOURCE_STATE_NEVER_LOADED, stateTime: now,
		lastErr: fmt.Sprintf("waiting for the registry: alias %q of model %q has not been received yet", spec.Alias, spec.Name)}
}

// setState records the subscription's state. With nothing loaded the
// state is NEVER_LOADED whatever happened.
func (m *served) setState(st inferencev1.ModelSourceState, lastErr string, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.current.Load() == nil {
		st = inferencev1.ModelSourceState_MODEL_SOURCE_STATE_NEVER_LOADED
	}
	if st != m.state {
		m.stateTime = now
	}
	m.state, m.lastErr = st, lastErr
}

// apply loads what the registry says the alias points to. A version that
// cannot be loaded leaves the current one answering (LOAD_FAILED); it is
// not an error for the subscription, which goes on to the next change.
func (m *served) apply(msg *experimentv1.WatchModelResponse, now time.Time, log *slog.Logger) {
	if msg.GetDeleted() {
		m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_WATCHING,
			fmt.Sprintf("alias %q was deleted at revision %d; serving the last loaded version until it is set again", m.spec.Alias, msg.GetRevision()), now)
		log.Warn("model alias deleted; keeping the loaded version", "model", m.spec.Name, "alias", m.spec.Alias, "revision", msg.GetRevision())
		return
	}
	lv, err := load(msg, now)
	if err != nil {
		m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_LOAD_FAILED, err.Error(), now)
		log.Error("model version not loaded", "model", m.spec.Name, "version", msg.GetModelVersion().GetVersion(), "err", err)
		return
	}
	prev := m.current.Swap(lv)
	m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_WATCHING, "", now)
	from := int64(0)
	if prev != nil {
		from = prev.version
	}
	log.Info("model version swapped in", "model", m.spec.Name, "alias", m.spec.Alias, "from", from, "to", lv.version, "revision", lv.revision)
}

// load checks and decodes a version's weights.
func load(msg *experimentv1.WatchModelResponse, now time.Time) (*loaded, error) {
	mv := msg.GetModelVersion()
	if mv.GetFormat() != policy.Format {
		return nil, fmt.Errorf("version %d has weights format %q; this service serves %s", mv.GetVersion(), mv.GetFormat(), policy.Format)
	}
	sum := sha256.Sum256(mv.GetWeights())
	checksum := hex.EncodeToString(sum[:])
	if want := strings.ToLower(mv.GetChecksumSha256()); want != "" && want != checksum {
		return nil, fmt.Errorf("version %d: weights checksum %s does not match the registry's %s", mv.GetVersion(), checksum, want)
	}
	net, err := policy.Unmarshal(mv.GetWeights())
	if err != nil {
		return nil, fmt.Errorf("version %d: %w", mv.GetVersion(), err)
	}
	lv := &loaded{version: mv.GetVersion(), revision: msg.GetRevision(), net: net, format: mv.GetFormat(), checksum: checksum, at: now}
	if tag := mv.GetTags()[FeaturesTag]; tag != "" {
		if names := strings.Split(tag, ","); len(names) == net.Inputs() {
			lv.names = names
		}
	}
	return lv, nil
}

// follow keeps m's alias applied until ctx ends.
func (m *served) follow(ctx context.Context, client experimentv1.ExperimentServiceClient, now func() time.Time, log *slog.Logger) {
	for {
		err := registryclient.FollowAlias(ctx, client, m.spec.Name, m.spec.Alias,
			func(msg *experimentv1.WatchModelResponse) error {
				m.apply(msg, now(), log)
				return nil
			},
			registryclient.StartAfter(m.revision()),
			registryclient.OnRetry(func(err error, delay time.Duration) {
				if status.Code(err) == codes.NotFound {
					// The model is not registered (yet): a first start, or
					// it was deleted. Not an outage.
					m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_WATCHING,
						fmt.Sprintf("model %q is not registered; waiting for it", m.spec.Name), now())
					log.Debug("served model not registered; waiting", "model", m.spec.Name, "delay", delay)
					return
				}
				m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_DISCONNECTED,
					fmt.Sprintf("registry unreachable (%v); reconnecting", err), now())
				log.Warn("model registry stream failed; reconnecting", "model", m.spec.Name, "delay", delay, "err", err)
			}))
		if ctx.Err() != nil {
			return
		}
		// A permanent refusal (authentication, a malformed name): keep
		// serving what is loaded and try again later, loudly.
		m.setState(inferencev1.ModelSourceState_MODEL_SOURCE_STATE_DISCONNECTED, fmt.Sprintf("registry refused the subscription: %v", err), now())
		log.Error("model registry refused the subscription", "model", m.spec.Name, "alias", m.spec.Alias, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}

// revision is the alias revision of the loaded version (0 when none).
func (m *served) revision() uint64 {
	if lv := m.current.Load(); lv != nil {
		return lv.revision
	}
	return 0
}

func (m *served) status() *inferencev1.ModelStatus {
	m.mu.Lock()
	st := &inferencev1.ModelStatus{
		ModelName: m.spec.Name, Alias: m.spec.Alias, SourceState: m.state,
		SourceStateTime: timestamppb.New(m.stateTime), LastError: m.lastErr,
	}
	m.mu.Unlock()
	if lv := m.current.Load(); lv != nil {
		st.LoadedVersion, st.AliasRevision, st.LoadTime = lv.version, lv.revision, timestamppb.New(lv.at)
		st.FeatureCount, st.FeatureNames, st.Format, st.ChecksumSha256 = int32(lv.net.Inputs()), lv.names, lv.format, lv.checksum
	}
	if r := m.ab.Load(); r != nil {
		st.AbTest = r.status()
	}
	return st
}
