// Package features turns bars into the feature vectors the regime model
// and the policy network read. Every feature is causal: the vector at bar t
// uses bars up to t only. A Pipeline computes them bar by bar, keeping only
// the windows it needs, so a live feed and a replay of history give the
// same vectors.
//
// The features, in vector order (Names):
//
//	ret_1        log return of the last bar
//	vol_5/20/60  standard deviation of log returns over 5, 20, 60 bars
//	mom_5/20/60  log return over 5, 20, 60 bars
//	drawdown     close / highest close so far - 1 (0 at a new high, negative below)
//	vol_ratio    vol_5 / vol_60 (volatility regime change)
//	range        (high - low) / close of the last bar      (Set.Range)
//	volume_z_20  z-score of log(1 + volume) over 20 bars   (Set.Volume)
package features

import (
	"errors"
	"fmt"
	"math"

	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

// Set selects the optional features; the base features are always there.
type Set struct {
	// Range adds the bar's high-low range (needs OHLC bars).
	Range bool
	// Volume adds the volume z-score (needs volumes).
	Volume bool
}

// For returns the richest set a series supports.
func For(s marketdata.Series) Set {
	ohlc := false
	for _, b := range s.Bars {
		if b.High != b.Low {
			ohlc = true
			break
		}
	}
	return Set{Range: ohlc, Volume: s.HasVolume}
}

var baseNames = []string{"ret_1", "vol_5", "vol_20", "vol_60", "mom_5", "mom_20", "mom_60", "drawdown", "vol_ratio"}

// Names returns the feature names of set, in vector order.
func (set Set) Names() []string {
	out := append([]string(nil), baseNames...)
	if set.Range {
		out = append(out, "range")
	}
	if set.Volume {
		out = append(out, "volume_z_20")
	}
	return out
}

// Len is the length of set's vectors.
func (set Set) Len() int { return len(set.Names()) }

// Warmup is how many bars a pipeline needs before its first vector: the
// longest window (60 returns) plus the bar before the first return.
const Warmup = 61

const (
	longest   = 60
	volWindow = 20
)

// Pipeline computes the feature vectors of one instrument, bar by bar.
// It is not safe for concurrent use.
type Pipeline struct {
	set     Set
	closes  ring // the last longest+1 closes
	rets    ring // the last longest log returns
	volumes ring // the last volWindow log volumes
	high    float64
	bars    int
}

// NewPipeline returns an empty pipeline computing set.
func NewPipeline(set Set) *Pipeline {
	return &Pipeline{set: set, closes: newRing(longest + 1), rets: newRing(longest), volumes: newRing(volWindow)}
}

// Set returns the pipeline's feature set.
func (p *Pipeline) Set() Set { return p.set }

// Bars returns how many bars the pipeline has seen.
func (p *Pipeline) Bars() int { return p.bars }

// ErrBadBar is returned for a bar with a non-positive or non-finite price
// or a negative volume; the pipeline is unchanged.
var ErrBadBar = errors.New("bad bar")

// Update adds a bar and writes its feature vector into dst (which must have
// room for Set().Len() values). ready is false during the warm-up, when
// dst is left untouched.
func (p *Pipeline) Update(b marketdata.Bar, dst []float64) (ready bool, err error) {
	if !finitePositive(b.Close) || !finitePositive(b.High) || !finitePositive(b.Low) || b.Volume < 0 || math.IsNaN(b.Volume) || math.IsInf(b.Volume, 0) {
		return false, fmt.Errorf("%w: close %v, high %v, low %v, volume %v", ErrBadBar, b.Close, b.High, b.Low, b.Volume)
	}
	if len(dst) < p.set.Len() {
		return false, fmt.Errorf("features: dst has room for %d values, need %d", len(dst), p.set.Len())
	}
	if p.bars > 0 {
		p.rets.push(math.Log(b.Close / p.closes.last()))
	}
	p.closes.push(b.Close)
	p.volumes.push(math.Log1p(b.Volume))
	p.high = math.Max(p.high, b.Close)
	p.bars++
	if p.bars < Warmup {
		return false, nil
	}
	vol5, vol60 := p.rets.std(5), p.rets.std(60)
	dst[0] = p.rets.last()
	dst[1] = vol5
	dst[2] = p.rets.std(20)
	dst[3] = vol60
	dst[4] = math.Log(b.Close / p.closes.back(5))
	dst[5] = math.Log(b.Close / p.closes.back(20))
	dst[6] = math.Log(b.Close / p.closes.back(60))
	dst[7] = b.Close/p.high - 1
	dst[8] = 1
	if vol60 > 0 {
		dst[8] = vol5 / vol60
	}
	i := len(baseNames)
	if p.set.Range {
		dst[i] = (b.High - b.Low) / b.Close
		i++
	}
	if p.set.Volume {
		mean, sd := p.volumes.meanStd(volWindow)
		dst[i] = 0
		if sd > 0 {
			dst[i] = (p.volumes.last() - mean) / sd
		}
	}
	return true, nil
}

// Compute runs a fresh pipeline over bars and returns one vector per bar
// from index Warmup-1 on: X[i] belongs to bars[Warmup-1+i].
func Compute(bars []marketdata.Bar, set Set) ([][]float64, error) {
	p := NewPipeline(set)
	var out [][]float64
	for i, b := range bars {
		v := make([]float64, set.Len())
		ready, err := p.Update(b, v)
		if err != nil {
			return nil, fmt.Errorf("bar %d (%s): %w", i, b.Time.Format("2006-01-02"), err)
		}
		if ready {
			out = append(out, v)
		}
	}
	return out, nil
}

func finitePositive(x float64) bool { return x > 0 && !math.IsInf(x, 0) }

// ring keeps the last n values pushed.
type ring struct {
	buf  []float64
	next int
	full bool
}

func newRing(n int) ring { return ring{buf: make([]float64, n)} }

func (r *ring) push(x float64) {
	r.buf[r.next] = x
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
}

// back returns the value pushed k pushes before the last one (back(0) is
// the last).
func (r *ring) back(k int) float64 {
	i := r.next - 1 - k
	for i < 0 {
		i += len(r.buf)
	}
	return r.buf[i]
}

func (r *ring) last() float64 { return r.back(0) }

// meanStd returns the mean and sample standard deviation of the last n
// values, computed exactly (two passes) from the window.
func (r *ring) meanStd(n int) (float64, float64) {
	var sum float64
	for k := range n {
		sum += r.back(k)
	}
	mean := sum / float64(n)
	var ss float64
	for k := range n {
		d := r.back(k) - mean
		ss += d * d
	}
	return mean, math.Sqrt(ss / float64(n-1))
}

func (r *ring) std(n int) float64 {
	_, sd := r.meanStd(n)
	return sd
}

// Label is the action a policy should have taken at a bar, judged by the
// forward return.
type Label int

// Labels, in the policy network's output order.
const (
	LabelBuy Label = iota
	LabelHold
	LabelSell
)

// Labels judges each bar t of closes by its forward log return over
// horizon bars: BUY above threshold·vol[t]·√horizon, SELL below minus
// that, HOLD in between, where vol[t] is the 20-bar volatility at t (the
// scale of normal moves). The last horizon bars have no label; the result
// has len(closes)-horizon entries.
func Labels(closes []float64, horizon int, threshold float64) ([]Label, error) {
	if horizon < 1 || len(closes) <= horizon+volWindow {
		return nil, fmt.Errorf("features: need more than %d closes for horizon %d, got %d", horizon+volWindow, horizon, len(closes))
	}
	rets := newRing(volWindow)
	out := make([]Label, len(closes)-horizon)
	for t := range out {
		if t > 0 {
			rets.push(math.Log(closes[t] / closes[t-1]))
		}
		vol := 0.01
		if t > volWindow {
			vol = rets.std(volWindow)
		}
		fwd := math.Log(closes[t+horizon] / closes[t])
		band := threshold * vol * math.Sqrt(float64(horizon))
		switch {
		case fwd > band:
			out[t] = LabelBuy
		case fwd < -band:
			out[t] = LabelSell
		default:
			out[t] = LabelHold
		}
	}
	return out, nil
}
