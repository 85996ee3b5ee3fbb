package regime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/protobuf/types/known/timestamppb"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/regimefilter"
	"github.com/quantmesh/quantmesh/pkg/stream"
)

// DefaultSymbol names the default model's activation: the model of every
// symbol without its own.
const DefaultSymbol = "*"

// Engine is RegimeService's live state: per-symbol feature windows and
// smoothing filters, the active models, the latest regime state of every
// symbol and the stream of states. Ingest and activation are serialised by
// one lock (their effects are ordered by the service-wide sequence);
// classification is in memory and the write of each ingest message is one
// transaction. Reads of the latest states (GetRegime, snapshots, metrics)
// do not wait for that lock: they see what was last committed.
type Engine struct {
	st     Store
	log    *slog.Logger
	now    func() time.Time
	ins    *instruments
	decode func([]byte) (mixture, error) // of stored mixtures

	mu      sync.Mutex
	symbols *lru.Cache[string, *symbolState] // hit rate: quantmesh_regime_feature_cache_*
	models  *lru.Cache[string, *loadedModel]
	active  map[string]string // symbol → model id
	seq     uint64            // the last sequence given, committed or not

	// view guards latest and published. They change only after a commit,
	// under mu too, so a holder of mu reads them without view.
	view      sync.RWMutex
	latest    map[string]*regimev1.RegimeState
	published uint64 // the sequence of the last committed state

	broker *stream.Broker[*regimev1.RegimeState]
}

// EngineConfig sizes the engine's caches.
type EngineConfig struct {
	// Symbols is how many symbols keep their feature windows and filter in
	// memory; others are rebuilt from stored bars when they next need
	// them. 0 means 10,000.
	Symbols int
	// Models is how many fitted models stay decoded in memory; 0 means 64.
	Models int
	// Retained is how many recent states are kept in memory for streams;
	// older ones are read from the store. 0 means 65,536.
	Retained int
}

// symbolState is one symbol's live state under its active model.
type symbolState struct {
	symbol   string
	model    *loadedModel // nil when no model is active for the symbol
	comp     *features.Computer
	filter   regimefilter.Filter
	lastBar  Bar
	hasBar   bool
	vec, buf []float64
}

// NewEngine loads the active models, the latest states and the last
// sequence from st. meter may be nil.
func NewEngine(ctx context.Context, cfg EngineConfig, st Store, log *slog.Logger, meter metric.Meter) (*Engine, error) {
	if cfg.Symbols <= 0 {
		cfg.Symbols = 10_000
	}
	if cfg.Models <= 0 {
		cfg.Models = 64
	}
	if cfg.Retained <= 0 {
		cfg.Retained = 65_536
	}
	ins, err := newInstruments(meter)
	if err != nil {
		return nil, err
	}
	e := &Engine{st: st, log: log, now: time.Now, ins: ins, decode: decodeMixture}
	if e.symbols, err = lru.New[string, *symbolState](cfg.Symbols); err != nil {
		return nil, err
	}
	if e.models, err = lru.New[string, *loadedModel](cfg.Models); err != nil {
		return nil, err
	}
	if e.active, err = st.Activations(ctx); err != nil {
		return nil, err
	}
	if e.latest, err = st.Latest(ctx); err != nil {
		return nil, err
	}
	if e.seq, err = st.LastSequence(ctx); err != nil {
		return nil, err
	}
	e.published = e.seq
	e.broker = stream.NewBroker[*regimev1.RegimeState](e.seq, cfg.Retained)
	if err := ins.observeStates(meter, e); err != nil {
		return nil, err
	}
	return e, nil
}

// model returns a decoded model, loading it when needed.
func (e *Engine) model(ctx context.Context, id string) (*loadedModel, error) {
	if lm, ok := e.models.Get(id); ok {
		return lm, nil
	}
	sm, err := e.st.GetModel(ctx, id)
	if err != nil {
		return nil, err
	}
	lm, err := loadModel(sm, e.decode)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", id, err)
	}
	e.models.Add(id, lm)
	return lm, nil
}

// activeModelID is the id of the model active for symbol: its own, or the
// default.
func (e *Engine) activeModelID(symbol string) string {
	if id, ok := e.active[symbol]; ok {
		return id
	}
	return e.active[DefaultSymbol]
}

// state returns symbol's live state, rebuilding it from the store when it
// is not cached. Callers hold e.mu.
func (e *Engine) state(ctx context.Context, symbol string) (*symbolState, error) {
	if st, ok := e.symbols.Get(symbol); ok {
		e.ins.cache(ctx, true)
		return st, nil
	}
	e.ins.cache(ctx, false)
	st, err := e.build(ctx, symbol)
	if err != nil {
		return nil, err
	}
	e.symbols.Add(symbol, st)
	return st, nil
}

// build rebuilds symbol's live state from the store: the active model, the
// feature windows from the last bars, and the filter from the latest state
// under that model. Callers hold e.mu.
func (e *Engine) build(ctx context.Context, symbol string) (*symbolState, error) {
	st := &symbolState{symbol: symbol}
	specs := features.DefaultSpecs()
	if id := e.activeModelID(symbol); id != "" {
		lm, err := e.model(ctx, id)
		if err != nil {
			return nil, err
		}
		st.model, specs = lm, lm.specs
	}
	comp, err := features.NewComputer(specs)
	if err != nil {
		return nil, err
	}
	st.comp = comp
	st.vec, st.buf = make([]float64, comp.Len()), make([]float64, comp.Len())
	bars, err := e.st.LastBars(ctx, symbol, comp.Warmup())
	if err != nil {
		return nil, err
	}
	if len(bars) == comp.Warmup() && comp.TracksHigh() {
		// Drawdown over every bar measures from the high of the whole
		// history, not of the bars replayed here (when fewer, they are the
		// whole history).
		high, err := e.st.MaxClose(ctx, symbol)
		if err != nil {
			return nil, err
		}
		comp.SeedHigh(high)
	}
	for _, b := range bars {
		// Stored bars were valid when ingested; a feature error here means
		// a model needing volumes on bars without them: the windows stay
		// short and the symbol waits for new bars.
		_, _ = comp.Update(point(b), st.vec)
	}
	if n := len(bars); n > 0 {
		st.lastBar, st.hasBar = bars[n-1], true
	}
	if prev := e.latest[symbol]; prev != nil && st.model != nil && prev.GetModelId() == st.model.id {
		st.filter = regimefilter.Resume(st.model.smoothing, prev.GetSmoothedProbabilities(), int(prev.GetDominantRegime()), prev.GetDwellBars())
	} else if st.model != nil {
		st.filter = regimefilter.New(st.model.smoothing)
	}
	return st, nil
}

func point(b Bar) features.Point {
	return features.Point{Close: b.Close, Volume: b.Volume, HasVolume: b.HasVolume}
}

// IngestResult is what one ingest message did.
type IngestResult struct {
	Accepted, Duplicate int
	States              []*regimev1.RegimeState
	// Last holds, per symbol of the message, its latest bar time and the
	// sequence of its latest state (0 when none yet).
	Last map[string]SymbolLast
	// PerSymbol counts the message's bars by symbol.
	PerSymbol map[string]SymbolCounts
}

// SymbolCounts is what a message did for one symbol.
type SymbolCounts struct {
	Accepted, Duplicate int
}

// SymbolLast is a symbol's position after an ingest message.
type SymbolLast struct {
	BarTime  time.Time
	Sequence uint64
}

// Ingest applies one message of bars, in order, as a whole: bars are
// checked against each symbol's stored history first (times strictly
// increase per symbol; an exact copy of a stored bar is a duplicate and
// skipped); an invalid bar rejects the message with nothing written. Then
// each new bar updates its symbol's features (a bar whose features are not
// finite is invalid too) and, with an active model and filled windows,
// gives a regime state; bars and states commit in one transaction, after
// which the states are published.
func (e *Engine) Ingest(ctx context.Context, bars []Bar) (IngestResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	res := IngestResult{Last: map[string]SymbolLast{}, PerSymbol: map[string]SymbolCounts{}}
	accept := make([]bool, len(bars))
	var v apierr.Violations
	tentative := map[string]time.Time{}
	for i, b := range bars {
		st, err := e.state(ctx, b.Symbol)
		if err != nil {
			return res, err
		}
		last, seen := tentative[b.Symbol]
		if !seen && st.hasBar {
			last, seen = st.lastBar.Time, true
		}
		field := fmt.Sprintf("bars[%d]", i)
		switch {
		case seen && !b.Time.After(last):
			if st.hasBar && !b.Time.After(st.lastBar.Time) {
				stored, err := e.storedBar(ctx, st, b)
				if err != nil {
					return res, err
				}
				if stored != nil && sameBar(*stored, b) {
					res.Duplicate++
					c := res.PerSymbol[b.Symbol]
					c.Duplicate++
					res.PerSymbol[b.Symbol] = c
					continue
				}
			}
			v.Add(field+".time", "%s is not after the symbol's latest bar %s and is not an exact copy of a stored bar",
				b.Time.Format(time.RFC3339Nano), last.Format(time.RFC3339Nano))
			continue
		case st.model != nil && st.model.needsVolume && !b.HasVolume:
			v.Add(field+".volume", "required: model %s computes a volume z-score", st.model.id)
			continue
		}
		tentative[b.Symbol] = b.Time
		accept[i] = true
	}
	if err := v.Err(); err != nil {
		return IngestResult{}, err
	}

	// Apply. Failures below (the commit) evict the touched symbols, which
	// are rebuilt from the store on their next use.
	touched := map[string]*symbolState{}
	seq0 := e.seq
	var write Write
	overflowed := map[string]bool{} // later bars of these would only repeat the violation
	for i, b := range bars {
		if !accept[i] || overflowed[b.Symbol] {
			continue
		}
		st, err := e.state(ctx, b.Symbol)
		if err != nil {
			e.rollback(touched, seq0)
			return IngestResult{}, err
		}
		touched[b.Symbol] = st
		write.Bars = append(write.Bars, b)
		c := res.PerSymbol[b.Symbol]
		c.Accepted++
		res.PerSymbol[b.Symbol] = c
		state, err := e.apply(st, b)
		var of *overflowError
		if errors.As(err, &of) {
			v.Add(fmt.Sprintf("bars[%d].%s", i, of.field), "%v", of)
			overflowed[b.Symbol] = true
			continue
		}
		if err != nil {
			e.rollback(touched, seq0)
			return IngestResult{}, err
		}
		if state != nil {
			write.States = append(write.States, state)
		}
	}
	if err := v.Err(); err != nil {
		e.rollback(touched, seq0)
		return IngestResult{}, err
	}
	start := time.Now()
	if err := e.st.Commit(ctx, write); err != nil {
		e.rollback(touched, seq0)
		return IngestResult{}, err
	}
	e.ins.ingested(ctx, len(write.Bars), len(write.States), time.Since(start))
	e.publish(write.States)
	res.Accepted, res.States = len(write.Bars), write.States
	for sym, st := range touched {
		sl := SymbolLast{BarTime: st.lastBar.Time}
		if l := e.latest[sym]; l != nil {
			sl.Sequence = l.GetSequence()
		}
		res.Last[sym] = sl
	}
	for _, b := range bars {
		if _, ok := res.Last[b.Symbol]; !ok {
			st, _ := e.symbols.Peek(b.Symbol)
			sl := SymbolLast{}
			if st != nil {
				sl.BarTime = st.lastBar.Time
			}
			if l := e.latest[b.Symbol]; l != nil {
				sl.Sequence = l.GetSequence()
			}
			res.Last[b.Symbol] = sl
		}
	}
	return res, nil
}

// storedBar finds the stored bar at b's time.
func (e *Engine) storedBar(ctx context.Context, st *symbolState, b Bar) (*Bar, error) {
	if st.hasBar && st.lastBar.Time.Equal(b.Time) {
		return &st.lastBar, nil
	}
	return e.st.BarAt(ctx, b.Symbol, b.Time)
}

func sameBar(a, b Bar) bool {
	return a.Time.Equal(b.Time) && a.Open == b.Open && a.High == b.High && a.Low == b.Low && a.Close == b.Close &&
		a.HasVolume == b.HasVolume && (!a.HasVolume || a.Volume == b.Volume)
}

// rollback forgets the effects of a failed message: the touched symbols
// are rebuilt from the store when next used, and the sequence returns to
// where it was.
func (e *Engine) rollback(touched map[string]*symbolState, seq uint64) {
	for sym := range touched {
		e.symbols.Remove(sym)
	}
	e.seq = seq
}

// overflowError is apply's error for a bar of finite prices whose
// features are not: a ratio of closes (1e-200 then 1e200) or a sum of
// volumes overflows. Classified, such a bar would make the symbol's
// filter NaN.
type overflowError struct {
	field  string // of the bar: close or volume
	reason string
}

func (e *overflowError) Error() string { return e.reason + "; the bar's features are not finite" }

// apply adds a bar to a symbol's windows and, when a model is active and
// the windows are filled, classifies it. After an *overflowError the
// symbol's windows are spoilt: the caller drops its state.
func (e *Engine) apply(st *symbolState, b Bar) (*regimev1.RegimeState, error) {
	// Checked during the warm-up too, when no features are computed yet:
	// an infinite return would stay in the windows.
	if st.hasBar && !finite(math.Log(b.Close/st.lastBar.Close)) {
		return nil, &overflowError{"close", fmt.Sprintf("the log return from the previous close %v to %v overflows", st.lastBar.Close, b.Close)}
	}
	ready, err := st.comp.Update(point(b), st.vec)
	if err != nil {
		return nil, err
	}
	st.lastBar, st.hasBar = b, true
	if !ready {
		return nil, nil
	}
	for i, x := range st.vec {
		if !finite(x) {
			sp := st.comp.Specs()[i]
			field := "close"
			if sp.Kind == features.VolumeZScore {
				field = "volume"
			}
			return nil, &overflowError{field, fmt.Sprintf("%s is %v", sp.Name(), x)}
		}
	}
	if st.model == nil {
		return nil, nil
	}
	return e.classify(st, b)
}

// classify turns the symbol's current feature vector into the next regime
// state.
func (e *Engine) classify(st *symbolState, b Bar) (*regimev1.RegimeState, error) {
	lm := st.model
	logLik := lm.regimeLogLik(st.vec, st.buf)
	step, err := st.filter.Next(logLik, lm.prior)
	if err != nil {
		return nil, err
	}
	e.seq++
	state := &regimev1.RegimeState{
		Symbol: st.symbol, Sequence: e.seq, BarTime: timestamppb.New(b.Time), Close: b.Close, ModelId: lm.id,
		Features:              append([]float64(nil), st.vec...),
		RawProbabilities:      step.Raw,
		SmoothedProbabilities: step.Smoothed,
		DominantRegime:        int32(step.Dominant),
		RawDominantRegime:     int32(step.RawDominant),
		Entropy:               step.Entropy,
		RawEntropy:            step.RawEntropy,
		DwellBars:             step.Dwell,
	}
	if prev := e.latest[st.symbol]; prev != nil && prev.GetModelId() == lm.id {
		state.Flipped = prev.GetDominantRegime() != state.DominantRegime
		if prev.GetRawDominantRegime() != state.RawDominantRegime {
			e.ins.flips.Add(context.Background(), 1, e.ins.raw)
		}
		if state.Flipped {
			e.ins.flips.Add(context.Background(), 1, e.ins.smoothed)
		}
	}
	return state, nil
}

// Latest returns a symbol's latest state.
func (e *Engine) Latest(symbol string) *regimev1.RegimeState {
	e.view.RLock()
	defer e.view.RUnlock()
	return e.latest[symbol]
}

// Readiness explains why a symbol has no state: no bars, no model, or
// windows not yet filled (how many bars more).
func (e *Engine) Readiness(ctx context.Context, symbol string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, ok := e.symbols.Peek(symbol)
	if !ok {
		var err error
		if st, err = e.build(ctx, symbol); err != nil {
			return err
		}
		// A symbol with bars is cached, as its next bar would cache it, so
		// that polling it while its windows fill does not rebuild it from
		// the store each time. One without bars is not: clients may ask
		// about any symbol.
		if st.hasBar {
			e.symbols.Add(symbol, st)
		}
	}
	switch {
	case !st.hasBar:
		return apierr.NotFound("symbol", symbol)
	case st.model == nil:
		return apierr.FailedPrecondition("NO_ACTIVE_MODEL", "no model is active for %s (neither its own nor the default %q); fit one or activate one", symbol, DefaultSymbol)
	case st.comp.Bars() < st.comp.Warmup():
		return apierr.FailedPrecondition("FEATURE_WINDOWS_NOT_FILLED", "%s needs %d more bars before its first regime (the longest feature window plus one)",
			symbol, st.comp.Warmup()-st.comp.Bars())
	}
	return apierr.FailedPrecondition("NO_REGIME_YET", "%s has no regime state yet", symbol)
}

// Snapshot returns the latest state of the symbols (every symbol when
// empty), in symbol order, and the last sequence they reflect.
func (e *Engine) Snapshot(symbols map[string]bool) ([]*regimev1.RegimeState, uint64) {
	e.view.RLock()
	var out []*regimev1.RegimeState
	for sym, st := range e.latest {
		if len(symbols) == 0 || symbols[sym] {
			out = append(out, st)
		}
	}
	seq := e.published
	e.view.RUnlock()
	sortStates(out)
	return out, seq
}

func sortStates(states []*regimev1.RegimeState) {
	slices.SortFunc(states, func(a, b *regimev1.RegimeState) int { return strings.Compare(a.GetSymbol(), b.GetSymbol()) })
}

// Activate makes model the active model of symbols ("*": the default).
// Each affected symbol with bars has its latest bar reclassified at once
// under the new model (its filter restarts there from the model's regime
// weights), giving a new state. Symbols already on the model, their own or
// the default, keep their state; one on it through the default has the
// activation recorded as its own.
func (e *Engine) Activate(ctx context.Context, modelID string, symbols []string) ([]*regimev1.RegimeState, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	lm, err := e.model(ctx, modelID)
	if err != nil {
		return nil, err
	}
	// change holds the activations to record; affected the symbols whose
	// model changes, to reclassify: the named ones not already on it
	// through the default, and with "*" every symbol without its own
	// activation.
	var change []string
	affected := map[string]bool{}
	for _, sym := range symbols {
		if e.active[sym] == modelID {
			continue
		}
		change = append(change, sym)
		if sym != DefaultSymbol && e.activeModelID(sym) != modelID {
			affected[sym] = true
		}
	}
	if len(change) == 0 {
		return nil, nil
	}
	prevActive := make(map[string]string, len(e.active))
	for k, v := range e.active {
		prevActive[k] = v
	}
	seq0 := e.seq
	for _, sym := range change {
		e.active[sym] = modelID
	}
	if slices.Contains(change, DefaultSymbol) {
		all, err := e.st.Symbols(ctx)
		if err != nil {
			e.active = prevActive
			return nil, err
		}
		for _, sym := range all {
			if _, own := e.active[sym]; !own {
				affected[sym] = true
			}
		}
		// Symbols cached without stored bars (asked about, or named in a
		// rejected message) hold the old default too.
		for _, sym := range e.symbols.Keys() {
			if _, own := e.active[sym]; !own {
				e.symbols.Remove(sym)
			}
		}
	}
	restore := func() {
		e.active, e.seq = prevActive, seq0
		for sym := range affected {
			e.symbols.Remove(sym)
		}
	}
	var states []*regimev1.RegimeState
	for _, sym := range sortedKeys(affected) {
		e.symbols.Remove(sym)
		st, err := e.state(ctx, sym)
		if err != nil {
			restore()
			return nil, err
		}
		if !st.hasBar || st.comp.Bars() < st.comp.Warmup() || st.model != lm {
			continue
		}
		st.filter = regimefilter.New(lm.smoothing)
		state, err := e.classify(st, st.lastBar)
		if err != nil {
			restore()
			return nil, err
		}
		states = append(states, state)
	}
	if err := e.st.Activate(ctx, modelID, change, e.now(), states); err != nil {
		restore()
		return nil, err
	}
	e.publish(states)
	return states, nil
}

// publish makes committed states the latest and streams them. The caller
// holds mu.
func (e *Engine) publish(states []*regimev1.RegimeState) {
	e.view.Lock()
	defer e.view.Unlock()
	for _, s := range states {
		e.latest[s.GetSymbol()] = s
	}
	e.published = e.seq
	e.broker.Publish(states)
}

// ActiveSymbols returns the symbols model is active for, sorted.
func (e *Engine) ActiveSymbols(modelID string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for sym, id := range e.active {
		if id == modelID {
			out = append(out, sym)
		}
	}
	slices.Sort(out)
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
