package regime

import (
	"fmt"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/dpgmm"
	"github.com/quantmesh/quantmesh/pkg/features"
)

// mixture is what classification needs of a fitted Dirichlet-process
// Gaussian mixture (pkg/dpgmm).
type mixture interface {
	// Components is the truncation level K.
	Components() int
	// LogProb writes, per component, the log of its weight times the
	// likelihood of x (x standardised as the model was fitted).
	LogProb(x, out []float64)
}

// decodeMixture decodes a stored pkg/dpgmm mixture.
func decodeMixture(b []byte) (mixture, error) { return dpgmm.Unmarshal(b) }

// loadedModel is a stored model ready to classify.
type loadedModel struct {
	id          string
	proto       *regimev1.Model
	specs       []features.Spec
	needsVolume bool
	scaler      *Scaler
	mix         mixture
	// components maps a regime index to its mixture component.
	components []int
	// prior is the regimes' weights renormalised: the filter's start.
	prior     []float64
	smoothing Smoothing
}

func loadModel(sm StoredModel, decode func([]byte) (mixture, error)) (*loadedModel, error) {
	mix, err := decode(sm.Mixture)
	if err != nil {
		return nil, err
	}
	m := sm.Model
	if len(m.GetRegimes()) == 0 {
		// Stored before FitModel refused such fits; it could classify no bar.
		return nil, apierr.FailedPrecondition("MODEL_HAS_NO_REGIMES", "model %s has no regimes (its effective_weight_threshold %v left none of its components); fit another",
			m.GetModelId(), m.GetMixture().GetEffectiveWeightThreshold())
	}
	lm := &loadedModel{id: m.GetModelId(), proto: m, scaler: sm.Meta.Scaler, mix: mix}
	for _, f := range m.GetFeatures().GetFeatures() {
		s := features.Spec{Kind: features.Kind(f.GetKind()), Window: int(f.GetWindow())}
		lm.specs = append(lm.specs, s)
		lm.needsVolume = lm.needsVolume || s.Kind == features.VolumeZScore
	}
	var total float64
	for _, r := range m.GetRegimes() {
		total += r.GetWeight()
	}
	for _, r := range m.GetRegimes() {
		lm.prior = append(lm.prior, r.GetWeight()/total)
	}
	comps := sm.Meta.Components
	if len(comps) != len(m.GetRegimes()) {
		return nil, fmt.Errorf("model %s: %d regimes but %d component indices", lm.id, len(m.GetRegimes()), len(comps))
	}
	if s := lm.scaler; s != nil && (len(s.Mean) != len(lm.specs) || len(s.Std) != len(lm.specs)) {
		return nil, fmt.Errorf("model %s: scaler for %d features, model has %d", lm.id, len(s.Mean), len(lm.specs))
	}
	for _, c := range comps {
		if c < 0 || c >= mix.Components() {
			return nil, fmt.Errorf("model %s: regime component %d out of range", lm.id, c)
		}
	}
	lm.components = comps
	lm.smoothing = smoothingFromModel(m.GetSmoothing())
	if err := lm.smoothing.Validate(); err != nil {
		return nil, fmt.Errorf("model %s: smoothing: %w", lm.id, err)
	}
	return lm, nil
}

// regimeLogLik writes x standardised into buf and returns, per regime,
// its component's weighted log-likelihood.
func (lm *loadedModel) regimeLogLik(x, buf []float64) []float64 {
	z := lm.standardise(x, buf)
	comp := make([]float64, lm.mix.Components())
	lm.mix.LogProb(z, comp)
	out := make([]float64, len(lm.components))
	for r, c := range lm.components {
		out[r] = comp[c]
	}
	return out
}

// standardise writes the scaled x into buf (x itself without a scaler).
func (lm *loadedModel) standardise(x, buf []float64) []float64 {
	if lm.scaler == nil {
		return x
	}
	for i, v := range x {
		buf[i] = (v - lm.scaler.Mean[i]) / lm.scaler.Std[i]
	}
	return buf
}
