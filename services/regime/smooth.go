package regime

import "github.com/quantmesh/quantmesh/pkg/regimefilter"

// Smoothing configures the forward filter and the dominant-regime rules
// (pkg/regimefilter).
type Smoothing = regimefilter.Smoothing

// DefaultSmoothing is the contract's default (regimefilter.Default).
func DefaultSmoothing() Smoothing { return regimefilter.Default() }
