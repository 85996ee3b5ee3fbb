package dpgmm

import (
	"math"
	"math/rand/v2"
)

// rng is the package's deterministic random source: PCG-DXSM
// (math/rand/v2.PCG, a fixed algorithm) with floats and integers derived
// here, so the numbers for a seed never depend on the Go release. All the
// initialisations of one fit draw from one stream, one after the other, as
// scikit-learn's do from one RandomState.
type rng struct{ src *rand.PCG }

// streamInit is the PCG stream of the initialisations.
const streamInit = 1

func newRNG(seed int64) *rng { return &rng{src: rand.NewPCG(uint64(seed), streamInit)} }

// float64 is uniform in [0, 1), on the 2⁻⁵³ grid.
func (r *rng) float64() float64 { return float64(r.src.Uint64()>>11) * 0x1p-53 }

// intn is uniform in [0, n) for n > 0, without modulo bias.
func (r *rng) intn(n int) int {
	bound := uint64(n)
	limit := math.MaxUint64 - math.MaxUint64%bound
	for {
		if v := r.src.Uint64(); v < limit {
			return int(v % bound)
		}
	}
}
