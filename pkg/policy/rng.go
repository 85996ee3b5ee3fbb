package policy

import (
	"math"
	"math/rand/v2"
)

// Random streams, one per use, so that changing how one use draws numbers
// does not change the others.
const (
	streamInit  = 1 // weight initialisation
	streamSplit = 2 // train/validation split
	streamEpoch = 3 // per-epoch shuffles
)

// rng is the package's deterministic random source. It draws from PCG-DXSM
// (math/rand/v2.PCG, a fixed algorithm) and derives floats and shuffles
// itself, so the numbers for a seed never depend on the Go release.
type rng struct{ src *rand.PCG }

func newRNG(seed int64, stream uint64) *rng {
	return &rng{src: rand.NewPCG(uint64(seed), stream)}
}

// float64 is uniform in [0, 1), on the 2⁻⁵³ grid.
func (r *rng) float64() float64 { return float64(r.src.Uint64()>>11) * 0x1p-53 }

// intn is uniform in [0, n) for n > 0, without modulo bias (rejection sampling).
func (r *rng) intn(n int) int {
	bound := uint64(n)
	limit := math.MaxUint64 - math.MaxUint64%bound // a multiple of bound
	for {
		if v := r.src.Uint64(); v < limit {
			return int(v % bound)
		}
	}
}

// shuffle permutes idx uniformly (Fisher–Yates).
func (r *rng) shuffle(idx []int) {
	for i := len(idx) - 1; i > 0; i-- {
		j := r.intn(i + 1)
		idx[i], idx[j] = idx[j], idx[i]
	}
}
