package features

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Kind is a configurable causal feature (RegimeService's FeatureKind, same
// numbering).
type Kind int

// Kinds.
const (
	// LogReturn is ln(close_t / close_{t-1}); window 0 or 1.
	LogReturn Kind = 1
	// Volatility is the sample standard deviation of the last window
	// one-bar log returns; window >= 2.
	Volatility Kind = 2
	// Momentum is ln(close_t / close_{t-window}); window >= 1.
	Momentum Kind = 3
	// Drawdown is close_t / max(close) - 1 over the last window bars, or
	// over every bar when window is 0.
	Drawdown Kind = 4
	// VolumeZScore is (volume_t - mean) / std over the last window bars;
	// window >= 2; every bar must carry a volume.
	VolumeZScore Kind = 5
)

// MaxWindow bounds a spec's window.
const MaxWindow = 1000

// Spec is one feature of a configurable vector.
type Spec struct {
	Kind   Kind
	Window int
}

// DefaultSpecs is RegimeService's default vector: log return, volatility
// over 10 and 30 bars, momentum over 10 and 30 bars, drawdown from the
// running high.
func DefaultSpecs() []Spec {
	return []Spec{{LogReturn, 1}, {Volatility, 10}, {Volatility, 30}, {Momentum, 10}, {Momentum, 30}, {Drawdown, 0}}
}

// Validate reports what is wrong with s.
func (s Spec) Validate() error {
	if s.Window < 0 || s.Window > MaxWindow {
		return fmt.Errorf("window %d: must be 0 to %d", s.Window, MaxWindow)
	}
	switch s.Kind {
	case LogReturn:
		if s.Window > 1 {
			return fmt.Errorf("log return window must be 0 or 1, got %d", s.Window)
		}
	case Volatility, VolumeZScore:
		if s.Window < 2 {
			return fmt.Errorf("%s window must be at least 2, got %d", s.Kind, s.Window)
		}
	case Momentum:
		if s.Window < 1 {
			return fmt.Errorf("momentum window must be at least 1, got %d", s.Window)
		}
	case Drawdown:
	default:
		return fmt.Errorf("unknown feature kind %d", int(s.Kind))
	}
	return nil
}

// normal returns s with the log return's window written as 1.
func (s Spec) normal() Spec {
	if s.Kind == LogReturn {
		s.Window = 1
	}
	return s
}

func (k Kind) String() string {
	switch k {
	case LogReturn:
		return "log_return"
	case Volatility:
		return "volatility"
	case Momentum:
		return "momentum"
	case Drawdown:
		return "drawdown"
	case VolumeZScore:
		return "volume_zscore"
	}
	return "kind_" + strconv.Itoa(int(k))
}

// Name is the feature's name in a vector: log_return, volatility_10,
// drawdown_0, ...
func (s Spec) Name() string {
	s = s.normal()
	if s.Kind == LogReturn {
		return "log_return"
	}
	return s.Kind.String() + "_" + strconv.Itoa(s.Window)
}

// Point is what a Computer reads of a bar.
type Point struct {
	Close float64
	// Volume is read only when HasVolume.
	Volume    float64
	HasVolume bool
}

// Computer computes a configurable feature vector bar by bar, causally,
// keeping only the windows it needs. It is not safe for concurrent use.
type Computer struct {
	specs   []Spec
	closes  ring // the last maxWin+1 closes
	rets    ring // the last retWin log returns
	volumes ring // the last volWin volumes
	allHigh float64
	bars    int
	warmup  int
	needVol bool
}

// NewComputer returns an empty computer of specs (1 to 64, no two equal).
func NewComputer(specs []Spec) (*Computer, error) {
	if len(specs) == 0 || len(specs) > 64 {
		return nil, fmt.Errorf("features: 1 to 64 features, got %d", len(specs))
	}
	c := &Computer{}
	seen := map[Spec]bool{}
	maxWin, retWin, volWin := 1, 1, 1
	for i, s := range specs {
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("features[%d]: %w", i, err)
		}
		s = s.normal()
		if seen[s] {
			return nil, fmt.Errorf("features[%d]: %s appears twice", i, s.Name())
		}
		seen[s] = true
		c.specs = append(c.specs, s)
		maxWin = max(maxWin, s.Window)
		switch s.Kind {
		case Volatility:
			retWin = max(retWin, s.Window)
		case VolumeZScore:
			volWin = max(volWin, s.Window)
			c.needVol = true
		}
	}
	c.closes, c.rets, c.volumes = newRing(maxWin+1), newRing(retWin), newRing(volWin)
	c.warmup = maxWin + 1
	return c, nil
}

// EachClose feeds closes, one bar each, to a new computer of specs and calls
// fn with every bar whose feature vector is ready (t its index in closes).
// vec is reused between calls: copy it to keep it. An error from fn stops
// the walk and is returned as is.
func EachClose(specs []Spec, closes []float64, fn func(t int, vec []float64) error) error {
	c, err := NewComputer(specs)
	if err != nil {
		return err
	}
	vec := make([]float64, c.Len())
	for t, x := range closes {
		ready, err := c.Update(Point{Close: x}, vec)
		if err != nil {
			return fmt.Errorf("bar %d: %w", t, err)
		}
		if !ready {
			continue
		}
		if err := fn(t, vec); err != nil {
			return err
		}
	}
	return nil
}

// Specs returns the computer's features, normalised.
func (c *Computer) Specs() []Spec { return c.specs }

// Len is the vector length.
func (c *Computer) Len() int { return len(c.specs) }

// Warmup is how many bars come before the first vector: the longest
// window plus one.
func (c *Computer) Warmup() int { return c.warmup }

// Bars is how many bars the computer has seen.
func (c *Computer) Bars() int { return c.bars }

// SeedHigh raises the running high that drawdown over every bar (window 0)
// measures from to high. A computer rebuilt from the last bars of a longer
// history is seeded with the highest close of that history, so that its
// drawdown is the one a computer fed every bar would give.
func (c *Computer) SeedHigh(high float64) { c.allHigh = math.Max(c.allHigh, high) }

// TracksHigh reports whether the computer has a drawdown over every bar,
// the one feature SeedHigh matters to.
func (c *Computer) TracksHigh() bool {
	return slices.Contains(c.specs, Spec{Kind: Drawdown})
}

// ErrNoVolume is returned for a bar without a volume when a feature needs
// volumes; the computer is unchanged.
var ErrNoVolume = errors.New("the bar has no volume and a volume z-score feature needs one")

// Update adds a bar and, once the windows are filled, writes its vector
// into dst (room for Len() values) and reports ready. A non-positive or
// non-finite close, a negative or non-finite volume, or a missing volume
// that a feature needs is an error and changes nothing.
func (c *Computer) Update(p Point, dst []float64) (ready bool, err error) {
	if !finitePositive(p.Close) {
		return false, fmt.Errorf("%w: close %v", ErrBadBar, p.Close)
	}
	if p.HasVolume && (p.Volume < 0 || math.IsNaN(p.Volume) || math.IsInf(p.Volume, 0)) {
		return false, fmt.Errorf("%w: volume %v", ErrBadBar, p.Volume)
	}
	if c.needVol && !p.HasVolume {
		return false, ErrNoVolume
	}
	if len(dst) < len(c.specs) {
		return false, fmt.Errorf("features: dst has room for %d values, need %d", len(dst), len(c.specs))
	}
	if c.bars > 0 {
		c.rets.push(math.Log(p.Close / c.closes.last()))
	}
	c.closes.push(p.Close)
	if p.HasVolume {
		c.volumes.push(p.Volume)
	}
	c.allHigh = math.Max(c.allHigh, p.Close)
	c.bars++
	if c.bars < c.warmup {
		return false, nil
	}
	for i, s := range c.specs {
		switch s.Kind {
		case LogReturn:
			dst[i] = c.rets.last()
		case Volatility:
			dst[i] = c.rets.std(s.Window)
		case Momentum:
			dst[i] = math.Log(p.Close / c.closes.back(s.Window))
		case Drawdown:
			high := c.allHigh
			if s.Window > 0 {
				high = 0
				for k := range s.Window {
					high = math.Max(high, c.closes.back(k))
				}
			}
			dst[i] = p.Close/high - 1
		case VolumeZScore:
			mean, sd := c.volumes.meanStd(s.Window)
			dst[i] = 0
			if sd > 0 {
				dst[i] = (c.volumes.last() - mean) / sd
			}
		}
	}
	return true, nil
}

// Standardiser returns each column's mean and population standard
// deviation over the rows of X, the scaling that turns features into
// z-scores: (x − mean) / std. A constant column gets deviation 1, also when
// rounding in the mean leaves it a deviation of a few ulps (≤ 1e-12), which
// would otherwise blow rounding noise up into large z-scores.
func Standardiser(X [][]float64) (mean, std []float64) {
	if len(X) == 0 {
		return nil, nil
	}
	d := len(X[0])
	mean, std = make([]float64, d), make([]float64, d)
	n := float64(len(X))
	for _, x := range X {
		for j, v := range x {
			mean[j] += v / n
		}
	}
	for _, x := range X {
		for j, v := range x {
			std[j] += (v - mean[j]) * (v - mean[j]) / n
		}
	}
	for j := range std {
		std[j] = math.Sqrt(std[j])
		if !(std[j] > 1e-12) {
			std[j] = 1
		}
	}
	return mean, std
}
