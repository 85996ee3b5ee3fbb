package metacontroller

import (
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"

	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/backtest"
	"github.com/quantmesh/quantmesh/pkg/hrl"
	"github.com/quantmesh/quantmesh/pkg/strategy"
)

// regimeModel is what allocation needs of a RegimeService model: the
// strategy each regime maps to and the regimes' labels.
type regimeModel struct {
	id      string
	labels  []string
	mapping []int
}

func newRegimeModel(m *regimev1.Model, strats []strategy.Strategy) *regimeModel {
	rm := &regimeModel{id: m.GetModelId()}
	regs := make([]backtest.Regime, len(m.GetRegimes()))
	for i, r := range m.GetRegimes() {
		regs[i] = backtest.Regime{Weight: r.GetWeight(), Volatility: r.GetVolatility(), MeanReturn: r.GetMeanReturn()}
		rm.labels = append(rm.labels, r.GetLabel())
	}
	rm.mapping = backtest.RegimeStrategies(regs, strats)
	return rm
}

// loadedPolicy is a registry version of the policy.
type loadedPolicy struct {
	p     *hrl.Policy
	model *metacontrollerv1.PolicyModel
	// incompatible says why the version cannot serve this service's
	// strategies; empty when it can.
	incompatible string
}

// symbolState is one symbol's allocation state.
type symbolState struct {
	regime  *regimev1.RegimeState
	model   *regimeModel // nil when the regime model could not be read
	modelEr string
	runner  *hrl.Runner
	runnerP *loadedPolicy // the policy runner belongs to
	last    *metacontrollerv1.Allocation
	// resync accepts the next regime state whatever its sequence: the
	// regime stream restarted on a new history.
	resync bool
}

// allocator computes allocations. Not safe for concurrent use (the server
// holds its work lock).
type allocator struct {
	strats  []strategy.Strategy
	names   []string
	symbols map[string]*symbolState
	policy  *loadedPolicy
	// policyDetail says why no policy is loaded.
	policyDetail string
	regimeDown   bool
	regimeDetail string
}

func newAllocator(strats []strategy.Strategy) allocator {
	names := make([]string, len(strats))
	for i, s := range strats {
		names[i] = s.Name
	}
	return allocator{strats: strats, names: names, symbols: map[string]*symbolState{}, policyDetail: "no policy version loaded yet"}
}

func (a *allocator) state(symbol string) *symbolState {
	st := a.symbols[symbol]
	if st == nil {
		st = &symbolState{}
		a.symbols[symbol] = st
	}
	return st
}

// setPolicy installs a version (nil: none, with detail saying why).
func (a *allocator) setPolicy(p *loadedPolicy, detail string) {
	a.policy = p
	a.policyDetail = detail
	if p != nil {
		switch {
		case !slices.Equal(p.p.Strategies, a.names):
			p.incompatible = fmt.Sprintf("version %d allocates across %v, this service across %v", p.model.GetVersion(), p.p.Strategies, a.names)
		case p.p.StateDim != backtest.StateDim(len(a.names)):
			p.incompatible = fmt.Sprintf("version %d takes %d state values, this service gives %d", p.model.GetVersion(), p.p.StateDim, backtest.StateDim(len(a.names)))
		}
	}
}

// onRegime computes the allocation of a regime update; nil when the state
// is not newer than the one already applied for its symbol.
func (a *allocator) onRegime(rs *regimev1.RegimeState, model *regimeModel, modelErr string) *metacontrollerv1.Allocation {
	st := a.state(rs.GetSymbol())
	if st.regime != nil && !st.resync && rs.GetSequence() <= st.regime.GetSequence() {
		return nil
	}
	st.regime, st.model, st.modelEr, st.resync = rs, model, modelErr, false
	return a.allocate(rs.GetSymbol(), st, true)
}

// resetSequences makes every symbol accept its next regime state, whatever
// its sequence: RegimeService's history was reset, and the new one numbers
// its states from the start again.
func (a *allocator) resetSequences() {
	for _, st := range a.symbols {
		st.resync = true
	}
}

// reallocate recomputes every symbol's allocation after a change of the
// policy or of the regime stream, without a new bar.
func (a *allocator) reallocate() []*metacontrollerv1.Allocation {
	var out []*metacontrollerv1.Allocation
	keys := make([]string, 0, len(a.symbols))
	for k := range a.symbols {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, sym := range keys {
		out = append(out, a.allocate(sym, a.symbols[sym], false))
	}
	return out
}

// allocate computes a symbol's allocation. step says whether a new bar
// arrived (the policy advances) or only the circumstances changed.
func (a *allocator) allocate(symbol string, st *symbolState, step bool) *metacontrollerv1.Allocation {
	n := len(a.strats)
	out := &metacontrollerv1.Allocation{Symbol: symbol, ComputeTime: timestamppb.Now()}
	if a.policy != nil {
		out.Model = a.policy.model
	}
	weights, target := make([]float64, n), make([]float64, n)
	fallback := func(reason metacontrollerv1.FallbackReason, detail string) {
		out.Fallback, out.FallbackReason, out.FallbackDetail = true, reason, detail
		out.Option = nil
		if st.regime == nil || st.model == nil {
			backtest.Equal(weights)
			out.Policy = metacontrollerv1.PolicyKind_POLICY_KIND_EQUAL_WEIGHT
		} else {
			a.proportional(st, weights)
			out.Policy = metacontrollerv1.PolicyKind_POLICY_KIND_REGIME_PROPORTIONAL
		}
		copy(target, weights)
	}
	switch {
	case st.regime == nil:
		fallback(metacontrollerv1.FallbackReason_FALLBACK_REASON_NO_REGIME, "no regime received for the symbol yet")
	case st.model == nil:
		fallback(metacontrollerv1.FallbackReason_FALLBACK_REASON_NO_REGIME, "regime model unreadable: "+st.modelEr)
	case a.regimeDown:
		fallback(metacontrollerv1.FallbackReason_FALLBACK_REASON_REGIME_STREAM_UNAVAILABLE, a.regimeDetail)
	case a.policy == nil:
		fallback(metacontrollerv1.FallbackReason_FALLBACK_REASON_POLICY_NOT_LOADED, a.policyDetail)
	case a.policy.incompatible != "":
		fallback(metacontrollerv1.FallbackReason_FALLBACK_REASON_POLICY_INCOMPATIBLE, a.policy.incompatible)
	default:
		if err := a.hrlStep(st, step, weights, target); err != nil {
			fallback(metacontrollerv1.FallbackReason_FALLBACK_REASON_POLICY_ERROR, err.Error())
			break
		}
		out.Policy = metacontrollerv1.PolicyKind_POLICY_KIND_HRL
		os := st.runner.Option()
		out.Option = &metacontrollerv1.OptionState{
			Option: int32(os.Option), TerminationProbability: os.Termination, OptionProbabilities: os.OptionProbs,
			OptionBars: os.Bars, Switched: os.Switched,
		}
	}
	for i, name := range a.names {
		out.Weights = append(out.Weights, &metacontrollerv1.StrategyWeight{Strategy: name, Weight: weights[i], TargetWeight: target[i]})
	}
	if st.regime != nil {
		out.Regime = a.regimeInput(st)
	}
	if st.last != nil {
		prev := make([]float64, n)
		for i, w := range st.last.GetWeights() {
			prev[i] = w.GetWeight()
		}
		out.Churn = math.Min(1, backtest.Churn(weights, prev))
	}
	st.last = out
	return out
}

// hrlStep runs the policy on the symbol's regime state. Without a new bar
// (step false) a runner of the current policy keeps its weights; a new
// policy starts a runner from the current state.
func (a *allocator) hrlStep(st *symbolState, step bool, weights, target []float64) error {
	if st.runner == nil || st.runnerP != a.policy {
		st.runner, st.runnerP = a.policy.p.NewRunner(), a.policy
		step = true
	}
	if !step {
		if w := st.runner.Weights(); w != nil {
			copy(weights, w)
			copy(target, w)
			return nil
		}
	}
	prop := make([]float64, len(a.strats))
	a.proportional(st, prop)
	state := backtest.StateVector(prop, st.regime.GetEntropy(), len(st.regime.GetSmoothedProbabilities()))
	runner := st.runner.Clone()
	if err := runner.Step(state, weights, target); err != nil {
		return err
	}
	for _, w := range weights {
		if !(w >= 0 && w <= 1) {
			return fmt.Errorf("policy produced weight %v", w)
		}
	}
	st.runner = runner
	return nil
}

// proportional writes the regime-proportional weights of the symbol's
// last regime state.
func (a *allocator) proportional(st *symbolState, dst []float64) {
	probs := st.regime.GetSmoothedProbabilities()
	if len(probs) != len(st.model.mapping) {
		backtest.Equal(dst)
		return
	}
	backtest.ProportionalWeights(probs, st.model.mapping, dst)
}

func (a *allocator) regimeInput(st *symbolState) *metacontrollerv1.RegimeInput {
	rs := st.regime
	in := &metacontrollerv1.RegimeInput{
		RegimeModelId: rs.GetModelId(), RegimeSequence: rs.GetSequence(), BarTime: rs.GetBarTime(),
		DominantRegime: rs.GetDominantRegime(), Entropy: rs.GetEntropy(), Stale: a.regimeDown,
	}
	for i, p := range rs.GetSmoothedProbabilities() {
		rp := &metacontrollerv1.RegimeProbability{RegimeIndex: int32(i), Probability: p}
		if st.model != nil && i < len(st.model.mapping) {
			rp.Label = st.model.labels[i]
			rp.Strategy = a.names[st.model.mapping[i]]
		}
		in.Probabilities = append(in.Probabilities, rp)
	}
	return in
}
