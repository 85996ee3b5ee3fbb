package regime

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/dpgmm"
	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/marketdata"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// The flip-rate goal (issue 6) and how it is measured.
//
// Flip rates are changes of the dominant regime per 100 bars: raw is the
// argmax of the mixture's per-bar probabilities, smoothed is the filter's
// dominant regime. On eustock each index is fitted on its own, as
// FitModel does with the defaults and seed 7, and the flips are counted
// over its training bars (the FitReport's numbers); "all four" pools the
// four indices' flips and bar pairs, and "one model" is a single fit on
// the four indices' samples together (its FitReport). The goal is
// smoothed ≤ 25% of raw.
//
// Detection lag is measured on seeded synthetic bar series that switch
// between three well-separated volatility regimes at known bars; a model
// is fitted on each series with the defaults, each fitted regime is
// named after the true regime most of its bars belong to, and a change's
// lag is the bars from the first bar of the new regime to the first bar
// whose dominant regime is named after it. The lag includes the features'
// own delay (a 10-bar volatility needs a few bars of the new regime), so
// the raw argmax's lag is reported beside the smoothed one.
//
// Reproduce (numbers logged with -v):
//
//	go test -run 'TestFlipRates|TestDetectionLag' -v ./services/regime/
//	QUANTMESH_REGIME_SWEEP=1 go test -run TestSmoothingSweep -v ./services/regime/
//
// Under the race detector a fit is some twenty times slower, so these two
// tests skip there (they fit eleven models on one goroutine each);
// TestFitModelOnEustock still checks DAX's flip rate.

const (
	flipGoal     = 0.25 // smoothed flips at most this fraction of raw
	flipFitSeed  = 7
	lagSeeds     = 6    // synthetic series
	lagSegments  = 24   // regimes per series
	lagBound     = 20.0 // median smoothed lag, bars
	lagMissBound = 0.05 // fraction of changes never detected within their segment
	sweepEnv     = "QUANTMESH_REGIME_SWEEP"
)

// raceEnabled is set by race_test.go when the race detector is on.
var raceEnabled bool

func skipUnderRace(t *testing.T) {
	t.Helper()
	if raceEnabled {
		t.Skip("fits are too slow under the race detector; run without -race")
	}
}

// fittedSeries is a model fitted with the service's defaults and, per
// symbol, the regimes' log-likelihoods of every training sample.
type fittedSeries struct {
	prior  []float64
	logLik [][][]float64 // [run][sample][regime]
	// offset[run] is the bar index of the run's first sample.
	offset []int
}

// fitDefault fits series as FitModel does with default features, mixture
// (seed given) and threshold.
func fitDefault(t testing.TB, series []trainingSeries, seed int64) fittedSeries {
	t.Helper()
	specs := features.DefaultSpecs()
	data, err := buildTraining(series, specs)
	if err != nil {
		t.Fatal(err)
	}
	scaler := fitScaler(data.X)
	X := scaler.apply(data.X)
	cfg, err := mixtureConfig(&regimev1.MixtureConfig{Seed: proto.Int64(seed)}, scaler, len(specs))
	if err != nil {
		t.Fatal(err)
	}
	mix, rep, err := dpgmm.Fit(context.Background(), X, cfg)
	if err != nil {
		t.Fatal(err)
	}
	model, meta := describe(mix, rep, data, X, scaler, defaultEffective)
	fs := fittedSeries{prior: regimePrior(model)}
	comp := make([]float64, mix.Components())
	for i, run := range data.runs {
		var lls [][]float64
		for _, x := range X[run[0]:run[1]] {
			mix.LogProb(x, comp)
			ll := make([]float64, len(meta.Components))
			for r, c := range meta.Components {
				ll[r] = comp[c]
			}
			lls = append(lls, ll)
		}
		fs.logLik = append(fs.logLik, lls)
		fs.offset = append(fs.offset, len(series[i].bars)-(run[1]-run[0]))
	}
	return fs
}

// dominants runs one run's samples through a fresh filter.
func (fs fittedSeries) dominants(run int, sm Smoothing) (raw, smoothed []int) {
	f := filter{cfg: sm}
	for _, ll := range fs.logLik[run] {
		st, err := f.next(ll, fs.prior)
		if err != nil {
			panic(err)
		}
		raw, smoothed = append(raw, st.rawDominant), append(smoothed, st.dominant)
	}
	return raw, smoothed
}

// churn is the mean total-variation distance between consecutive bars'
// smoothed probabilities (½ Σ|p_t − p_t−1|): how much a consumer weighting
// by the probabilities would move per bar, raw and smoothed.
func (fs fittedSeries) churn(run int, sm Smoothing) (raw, smoothed float64) {
	f := filter{cfg: sm}
	var prev step
	for i, ll := range fs.logLik[run] {
		st, err := f.next(ll, fs.prior)
		if err != nil {
			panic(err)
		}
		if i > 0 {
			for j := range st.raw {
				raw += math.Abs(st.raw[j]-prev.raw[j]) / 2
				smoothed += math.Abs(st.smoothed[j]-prev.smoothed[j]) / 2
			}
		}
		prev = st
	}
	n := float64(len(fs.logLik[run]) - 1)
	return raw / n, smoothed / n
}

// flipCount is flips and consecutive pairs, raw and smoothed.
type flipCount struct{ raw, smoothed, pairs int }

func (c flipCount) add(o flipCount) flipCount {
	return flipCount{c.raw + o.raw, c.smoothed + o.smoothed, c.pairs + o.pairs}
}
func (c flipCount) rawRate() float64      { return 100 * float64(c.raw) / float64(c.pairs) }
func (c flipCount) smoothedRate() float64 { return 100 * float64(c.smoothed) / float64(c.pairs) }
func (c flipCount) ratio() float64        { return float64(c.smoothed) / float64(c.raw) }

func countFlips(raw, smoothed []int) flipCount {
	var c flipCount
	for i := 1; i < len(raw); i++ {
		c.pairs++
		if raw[i] != raw[i-1] {
			c.raw++
		}
		if smoothed[i] != smoothed[i-1] {
			c.smoothed++
		}
	}
	return c
}

// eustockSeries is one bundled eustock column as training bars.
func eustockSeries(t testing.TB) []trainingSeries {
	t.Helper()
	eu, err := marketdata.Bundled(marketdata.EuStock)
	if err != nil {
		t.Fatal(err)
	}
	var out []trainingSeries
	for _, s := range eu {
		ts := trainingSeries{symbol: s.Symbol}
		for _, b := range s.Bars {
			ts.bars = append(ts.bars, Bar{Symbol: s.Symbol, Time: b.Time, Open: b.Open, High: b.High, Low: b.Low, Close: b.Close})
		}
		out = append(out, ts)
	}
	return out
}

// switching is a synthetic bar series and its true regime per bar.
type switching struct {
	series  trainingSeries
	truth   []int
	changes []int // first bar of each regime after the first
}

// switchingSeries returns a seeded random walk through segments of 25 to
// 250 bars (short ones too, so that a long minimum dwell shows its cost), each in one of three regimes far apart in volatility and
// drift (daily volatility 0.5%, 1.5%, 4%), each segment's regime differing
// from the last.
func switchingSeries(seed uint64, segments int) switching {
	rng := rand.New(rand.NewPCG(seed, 6))
	vol := []float64{0.005, 0.015, 0.04}
	drift := []float64{0.0005, 0, -0.004}
	var sw switching
	sw.series.symbol = fmt.Sprintf("SYN%d", seed)
	c := 100.0
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	regime := rng.IntN(3)
	for s := range segments {
		if s > 0 {
			regime = (regime + 1 + rng.IntN(2)) % 3
			sw.changes = append(sw.changes, len(sw.truth))
		}
		for range 25 + rng.IntN(226) {
			c *= math.Exp(drift[regime] + vol[regime]*rng.NormFloat64())
			sw.series.bars = append(sw.series.bars, Bar{Symbol: sw.series.symbol, Time: t0.Add(time.Duration(len(sw.truth)) * 24 * time.Hour), Open: c, High: c, Low: c, Close: c})
			sw.truth = append(sw.truth, regime)
		}
	}
	return sw
}

// lagFit is a synthetic series with its fitted model.
type lagFit struct {
	sw switching
	fs fittedSeries
}

func fitSwitching(t testing.TB) []lagFit {
	t.Helper()
	var out []lagFit
	for seed := range uint64(lagSeeds) {
		sw := switchingSeries(seed+1, lagSegments)
		out = append(out, lagFit{sw, fitDefault(t, []trainingSeries{sw.series}, flipFitSeed)})
	}
	return out
}

// lagResult is the detection lags of every change point of every series,
// raw and smoothed, how many changes were never detected within their
// segment (those have no lag), and the fraction of bars whose dominant
// regime is named after the true one.
type lagResult struct {
	raw, smoothed         []float64
	rawMissed, missed, n  int
	rawAccuracy, accuracy float64
}

func lags(fits []lagFit, sm Smoothing) lagResult {
	var res lagResult
	var bars, rawRight, right int
	for _, lf := range fits {
		r, s := lf.fs.dominants(0, sm)
		off := lf.fs.offset[0]
		truthOf := func(seq []int) []int { // fitted regime → the true regime most of its bars are in
			votes := map[int][3]int{}
			for i, d := range seq {
				v := votes[d]
				v[lf.sw.truth[off+i]]++
				votes[d] = v
			}
			names := make([]int, len(lf.fs.prior))
			for d, v := range votes {
				names[d] = slices.Index(v[:], slices.Max(v[:]))
			}
			return names
		}
		rawNames, names := truthOf(r), truthOf(s)
		for i := range r {
			bars++
			if rawNames[r[i]] == lf.sw.truth[off+i] {
				rawRight++
			}
			if names[s[i]] == lf.sw.truth[off+i] {
				right++
			}
		}
		for k, c := range lf.sw.changes {
			end := len(lf.sw.truth)
			if k+1 < len(lf.sw.changes) {
				end = lf.sw.changes[k+1]
			}
			want := lf.sw.truth[c]
			find := func(seq, names []int) (int, bool) {
				for b := max(c, off); b < end; b++ {
					if names[seq[b-off]] == want {
						return b - c, true
					}
				}
				return 0, false
			}
			res.n++
			if l, ok := find(r, rawNames); ok {
				res.raw = append(res.raw, float64(l))
			} else {
				res.rawMissed++
			}
			if l, ok := find(s, names); ok {
				res.smoothed = append(res.smoothed, float64(l))
			} else {
				res.missed++
			}
		}
	}
	res.rawAccuracy, res.accuracy = float64(rawRight)/float64(bars), float64(right)/float64(bars)
	return res
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestFlipRates fits each eustock index as FitModel does, with the
// default smoothing, and checks the smoothed flip rate against the goal
// over the four indices pooled, and for one model fitted on all four
// through FitModel. Each index's rate is logged but not asserted: the
// closest (CAC) is within one flip of the goal, so a last-bit difference in
// a fit could decide it. TestFitModelOnEustock asserts DAX's.
func TestFlipRates(t *testing.T) {
	skipUnderRace(t)
	t.Parallel()
	var all flipCount
	for _, s := range eustockSeries(t) {
		fs := fitDefault(t, []trainingSeries{s}, flipFitSeed)
		c := countFlips(fs.dominants(0, DefaultSmoothing()))
		t.Logf("eustock %s: flips per 100 bars raw %.2f smoothed %.2f, ratio %.3f (%d bars)", s.symbol, c.rawRate(), c.smoothedRate(), c.ratio(), c.pairs+1)
		all = all.add(c)
	}
	t.Logf("eustock all four: flips per 100 bars raw %.2f smoothed %.2f, ratio %.3f", all.rawRate(), all.smoothedRate(), all.ratio())
	if all.ratio() > flipGoal {
		t.Errorf("eustock: smoothed flips are %.3f of raw; goal at most %v", all.ratio(), flipGoal)
	}
	c, _ := serveRegimeDPGMM(t, storetest.SQLite(t, Migrations()))
	resp, err := c.FitModel(context.Background(), eustockFit("DAX", "SMI", "CAC", "FTSE"))
	if err != nil {
		t.Fatal(err)
	}
	fit := resp.GetModel().GetFit()
	raw, smoothed := fit.GetRawFlipsPer_100Bars(), fit.GetSmoothedFlipsPer_100Bars()
	t.Logf("eustock one model on all four (%d regimes): flips per 100 bars raw %.2f smoothed %.2f, ratio %.3f", fit.GetEffectiveRegimes(), raw, smoothed, smoothed/raw)
	if smoothed > flipGoal*raw {
		t.Errorf("eustock one model: smoothed flips %.2f per 100 bars, raw %.2f; goal at most %v of raw", smoothed, raw, flipGoal)
	}
}

// TestDetectionLag: on synthetic switching series the default smoothing
// still follows every regime change within a few bars.
func TestDetectionLag(t *testing.T) {
	skipUnderRace(t)
	t.Parallel()
	r := lags(fitSwitching(t), DefaultSmoothing())
	t.Logf("synthetic switching series (%d series, %d changes): median detection lag raw %.1f bars, smoothed %.1f bars; undetected raw %d, smoothed %d; bars right raw %.3f, smoothed %.3f",
		lagSeeds, r.n, median(r.raw), median(r.smoothed), r.rawMissed, r.missed, r.rawAccuracy, r.accuracy)
	if m := median(r.smoothed); !(m <= lagBound) {
		t.Errorf("median smoothed detection lag %v bars; want at most %v", m, lagBound)
	}
	if float64(r.missed) > lagMissBound*float64(r.n) {
		t.Errorf("%d of %d changes never detected by the smoothed regime", r.missed, r.n)
	}
	// On well-separated regimes the raw argmax is seldom wrong, so the
	// smoothed regime loses only its lag.
	if r.accuracy < 0.8 {
		t.Errorf("smoothed dominant regime right on %.3f of bars (raw on %.3f); want at least 0.8", r.accuracy, r.rawAccuracy)
	}
}

// sweepRow is one smoothing configuration's outcome.
type sweepRow struct {
	sm                    Smoothing
	all                   flipCount // the four indices pooled, fit seed 7
	worstSeed             float64   // the highest pooled ratio over the fit seeds
	worstIndex            float64   // the highest per-index ratio, fit seed 7
	rawLag, lag           float64   // medians, bars
	missed, changes       int
	churn, rawChurn       float64 // mean over the four indices, fit seed 7
	rawAccuracy, accuracy float64
	noisyAccuracy         float64
}

func (r sweepRow) String() string {
	return fmt.Sprintf("| %v | %v | %v | %d | %.2f | %.2f | %.3f | %.3f | %.3f | %.1f | %.1f | %d/%d | %.3f | %.3f | %.3f | %.3f | %.3f |",
		r.sm.Tempering, r.sm.Stickiness, r.sm.Hysteresis, r.sm.MinDwell, r.all.rawRate(), r.all.smoothedRate(), r.all.ratio(), r.worstSeed, r.worstIndex,
		r.rawLag, r.lag, r.missed, r.changes, r.rawAccuracy, r.accuracy, r.noisyAccuracy, r.rawChurn, r.churn)
}

const sweepHeader = "| tempering | stickiness | hysteresis | min dwell | raw flips /100 | smoothed /100 | ratio | worst ratio over fit seeds | worst index ratio | median lag raw | median lag smoothed | undetected | bars right raw | bars right smoothed | noisy series bars right | churn raw | churn smoothed |\n" +
	"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"

// noisyAccuracyBound is TestFilterSmooths' bar: on a two-regime series
// whose bars mislead 30% of the time, the smoothed dominant regime is
// right on at least 80% of bars (the raw argmax on about 70%). A long
// dwell fails it: it holds on to the misleading bars' flips.
const noisyAccuracyBound = 0.8

// noisyAccuracy is the fraction of TestFilterSmooths' series on which the
// smoothed dominant regime is right.
func noisyAccuracy(sm Smoothing) float64 {
	f := filter{cfg: sm}
	right := 0
	lls := noisy(2000, 2)
	for i, ll := range lls {
		st, err := f.next(ll, []float64{0.5, 0.5})
		if err != nil {
			panic(err)
		}
		if (i >= len(lls)/2) == (st.dominant == 1) {
			right++
		}
	}
	return float64(right) / float64(len(lls))
}

// sweepFitSeeds are the mixture seeds the sweep fits eustock with; the
// first is the one TestFlipRates and FitModel's tests use.
var sweepFitSeeds = []int64{flipFitSeed, 1, 2, 3, 4}

// TestSmoothingSweep prints the tables the default smoothing was chosen
// from and checks that the default is the rule's choice. Every
// configuration of a grid (tempering × stickiness × hysteresis × minimum
// dwell) is scored by its eustock flip ratio (all four indices pooled) on
// fits with five mixture seeds, and by its median detection lag and
// undetected changes on the synthetic series. The rule: among the
// configurations whose ratio meets the goal on every fit seed (so that it
// does not hang on one fit) and that leave at most 5% of changes
// undetected and that are right on at least 80% of TestFilterSmooths'
// noisy series (as that test demands), the smallest median lag; ties go to the lower worst ratio,
// then to the least smoothing (higher tempering, lower stickiness,
// hysteresis and dwell). Set QUANTMESH_REGIME_SWEEP=1 to run it.
func TestSmoothingSweep(t *testing.T) {
	if os.Getenv(sweepEnv) == "" {
		t.Skipf("set %s=1 to print the smoothing sweep", sweepEnv)
	}
	eu := make([][]fittedSeries, len(sweepFitSeeds)) // [seed][index]
	for i, seed := range sweepFitSeeds {
		for _, s := range eustockSeries(t) {
			eu[i] = append(eu[i], fitDefault(t, []trainingSeries{s}, seed))
		}
	}
	syn := fitSwitching(t)
	score := func(sm Smoothing) sweepRow {
		r := sweepRow{sm: sm}
		for i, fits := range eu {
			var all flipCount
			for _, fs := range fits {
				c := countFlips(fs.dominants(0, sm))
				if i == 0 {
					r.worstIndex = max(r.worstIndex, c.ratio())
					rc, sc := fs.churn(0, sm)
					r.rawChurn += rc / float64(len(fits))
					r.churn += sc / float64(len(fits))
				}
				all = all.add(c)
			}
			if i == 0 {
				r.all = all
			}
			r.worstSeed = max(r.worstSeed, all.ratio())
		}
		l := lags(syn, sm)
		r.rawLag, r.lag, r.missed, r.changes = median(l.raw), median(l.smoothed), l.missed, l.n
		r.rawAccuracy, r.accuracy = l.rawAccuracy, l.accuracy
		r.noisyAccuracy = noisyAccuracy(sm)
		return r
	}
	var b strings.Builder
	// Tempering and stickiness alone.
	b.WriteString("\nTempering × stickiness, no hysteresis or dwell:\n" + sweepHeader)
	for _, tau := range []float64{1, 0.5, 0.2, 0.1, 0.05, 0.02} {
		for _, s := range []float64{0.9, 0.95, 0.99} {
			b.WriteString(score(Smoothing{Stickiness: s, MinDwell: 1, Tempering: tau}).String() + "\n")
		}
	}
	// The full grid, reduced to its Pareto frontier in (ratio, lag).
	var rows []sweepRow
	for _, tau := range []float64{1, 0.5, 0.2, 0.1, 0.05, 0.02} {
		for _, s := range []float64{0.9, 0.95, 0.98, 0.99} {
			for _, h := range []float64{0, 0.1, 0.2, 0.3} {
				for _, d := range []int{1, 5, 10, 20, 30, 40} {
					rows = append(rows, score(Smoothing{Stickiness: s, Hysteresis: h, MinDwell: d, Tempering: tau}))
				}
			}
		}
	}
	less := func(a, b sweepRow) bool { // a is preferred to b at equal lag and ratio
		switch {
		case a.sm.Tempering != b.sm.Tempering:
			return a.sm.Tempering > b.sm.Tempering
		case a.sm.Stickiness != b.sm.Stickiness:
			return a.sm.Stickiness < b.sm.Stickiness
		case a.sm.Hysteresis != b.sm.Hysteresis:
			return a.sm.Hysteresis < b.sm.Hysteresis
		}
		return a.sm.MinDwell < b.sm.MinDwell
	}
	slices.SortStableFunc(rows, func(a, b sweepRow) int {
		switch {
		case a.lag != b.lag:
			return cmpFloat(a.lag, b.lag)
		case a.worstSeed != b.worstSeed:
			return cmpFloat(a.worstSeed, b.worstSeed)
		case less(a, b):
			return -1
		case less(b, a):
			return 1
		}
		return 0
	})
	fmt.Fprintf(&b, "\nPareto frontier of the %d configurations in (worst ratio over fit seeds, median lag), among those right on at least 80%% of the noisy series' bars, by lag:\n%s", len(rows), sweepHeader)
	best := math.Inf(1)
	var chosen *sweepRow
	for i, r := range rows {
		if r.worstSeed < best && r.noisyAccuracy >= noisyAccuracyBound {
			best = r.worstSeed
			b.WriteString(r.String() + "\n")
		}
		if chosen == nil && r.worstSeed <= flipGoal && float64(r.missed) <= lagMissBound*float64(r.changes) && r.noisyAccuracy >= noisyAccuracyBound {
			chosen = &rows[i]
		}
	}
	if chosen == nil {
		t.Log(b.String())
		t.Fatal("no configuration meets the flip goal")
	}
	fmt.Fprintf(&b, "\nChosen (least lag with ratio <= %v on every fit seed, noisy series right >= 0.8):\n%s%s\nDefault:\n%s%s\n", flipGoal, sweepHeader, chosen, sweepHeader, score(DefaultSmoothing()))
	t.Log(b.String())
	if chosen.sm != DefaultSmoothing() {
		t.Errorf("the default smoothing %+v is not the sweep's choice %+v", DefaultSmoothing(), chosen.sm)
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
