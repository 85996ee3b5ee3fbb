package dpgmm

import (
	"context"
	"math"
	"slices"
	"testing"
)

// goldenTol bounds the relative difference from scikit-learn when the fit
// starts from scikit-learn's own initial responsibilities. The brief asks
// for 1e-6 on the lower bound; the two agree to about 1e-14 on amd64 (see
// the logged values), and 1e-9 leaves room for platforms where Go fuses
// multiply-adds.
const goldenTol = 1e-9

// TestGoldenFromSklearnInit starts every golden case from the
// responsibilities scikit-learn started from and expects the same
// iterations: the lower bound after every iteration, n_iter_, converged_,
// every fitted parameter, and predict_proba / _estimate_weighted_log_prob
// on some rows.
func TestGoldenFromSklearnInit(t *testing.T) {
	t.Parallel()
	g := loadGolden(t)
	for _, c := range g.Cases {
		t.Run(c.Name, func(t *testing.T) {
			X := dataset(t, c.Data)
			cfg := c.config(t)
			cfg.InitResp = c.initResp(len(X), c.Config.NComponents)
			m, rep, err := Fit(context.Background(), X, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Iterations != c.NIter || rep.Converged != c.Converged {
				t.Errorf("%d iterations, converged %v; scikit-learn %d, %v", rep.Iterations, rep.Converged, c.NIter, c.Converged)
			}
			lbErr := relErr(rep.LowerBound, c.LowerBound, 1)
			trajErr := 0.0
			if len(rep.LowerBounds) != len(c.LowerBounds) {
				t.Fatalf("%d lower bounds, scikit-learn %d", len(rep.LowerBounds), len(c.LowerBounds))
			}
			for i := range c.LowerBounds {
				trajErr = math.Max(trajErr, relErr(rep.LowerBounds[i], c.LowerBounds[i], 1))
			}
			a, b := m.WeightConcentration()
			errs := []struct {
				what string
				err  float64
			}{
				{"lower bound", lbErr},
				{"lower bound trajectory", trajErr},
				{"weights", maxRelErr(m.Weights(), c.Weights, 1e-3)},
				{"weight concentration a", maxRelErr(a, c.WeightConcentration[0], 1)},
				{"weight concentration b", maxRelErr(b, c.WeightConcentration[1], 1)},
				{"mean precision", maxRelErr(m.MeanPrecision(), c.MeanPrecision, 1)},
				{"degrees of freedom", maxRelErr(m.DegreesOfFreedom(), c.DegreesOfFreedom, 1)},
				{"means", maxRelErr(slices.Concat(m.Means()...), slices.Concat(c.Means...), 1e-3)},
				{"covariances", maxRelErr(slices.Concat(m.Covariances()...), slices.Concat(c.Covariances...), 1e-6)},
			}
			out := make([]float64, m.Components())
			var proba, wlp float64
			for i, row := range c.Rows {
				m.LogProb(X[row], out)
				wlp = math.Max(wlp, maxRelErr(out, c.WeightedLogProb[i], 1))
				m.PredictProba(X[row], out)
				for k := range out {
					proba = math.Max(proba, math.Abs(out[k]-c.PredictProba[i][k]))
				}
			}
			errs = append(errs, struct {
				what string
				err  float64
			}{"weighted log prob", wlp}, struct {
				what string
				err  float64
			}{"predict_proba (absolute)", proba})
			for _, e := range errs {
				if !(e.err <= goldenTol) {
					t.Errorf("%s differs from scikit-learn by %.3g (relative), want <= %g", e.what, e.err, goldenTol)
				}
			}
			t.Logf("lower bound %.12g (scikit-learn %.12g, relative difference %.2g), %d iterations; largest relative differences: trajectory %.2g, weights %.2g, means %.2g, covariances %.2g, weighted log prob %.2g, predict_proba %.2g",
				rep.LowerBound, c.LowerBound, lbErr, rep.Iterations, trajErr, errs[2].err, errs[7].err, errs[8].err, wlp, proba)
		})
	}
}

// ownInitMeanTol bounds, per golden case, the distance between the means of
// matched components of the best-of-10 fits of Go and scikit-learn, each
// from its own k-means initialisations, in units of each feature's standard
// deviation in the data. Only components heavier than minWeight in
// scikit-learn's fit are compared. The fits are different local optima of
// the same objective, so only well-determined components can agree: the
// three clusters of the synthetic data, and the heavy components of the
// converged eustock fit with priors (observed: 2e-6 and 0.04 standard
// deviations). The K = 10 eustock fits stop at max_iter with ten
// overlapping components, which two initialisations place differently:
// there the matched means only agree to about one standard deviation
// (observed 0.60 z-scored, 1.07 raw), and the lower bounds are the
// meaningful comparison.
var ownInitMeanTol = map[string]struct{ minWeight, tol float64 }{
	"synthetic_kmeans":   {0.01, 1e-3},
	"eustock_z_priors":   {0.1, 0.05},
	"eustock_z_kmeans":   {0.1, 0.75},
	"eustock_raw_kmeans": {0.1, 1.25},
}

// TestGoldenOwnInit fits every k-means golden case from Go's own k-means
// initialisation (seed 0, 10 initialisations) and compares with
// scikit-learn's from its own: the lower bound of the best initialisation
// within 1% of scikit-learn's n_init=10 fit, the median over the ten
// initialisations no more than 1% below the median of scikit-learn's fits
// with seeds 0 to 9 (different initialisations reach different local optima
// whose bounds spread over several percent in both implementations), and
// the matched means of the heavy components within ownInitMeanTol.
func TestGoldenOwnInit(t *testing.T) {
	t.Parallel()
	g := loadGolden(t)
	for _, c := range g.Cases {
		if c.BestOf10 == nil {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			X := dataset(t, c.Data)
			cfg := c.config(t)
			cfg.NInit = 10
			m, rep, err := Fit(context.Background(), X, cfg)
			if err != nil {
				t.Fatal(err)
			}
			sk := c.BestOf10
			if e := relErr(rep.LowerBound, sk.LowerBound, 1); e > 0.01 {
				t.Errorf("best of 10: lower bound %.8g, scikit-learn %.8g: %.2f%% apart, want <= 1%%", rep.LowerBound, sk.LowerBound, 100*e)
			}
			goMed, skMed := median(rep.InitLowerBounds), median(c.SeedLowerBounds)
			if goMed < skMed-0.01*math.Abs(skMed) {
				t.Errorf("median lower bound over 10 initialisations %.8g, scikit-learn %.8g: more than 1%% lower", goMed, skMed)
			}

			std := columnStd(X)
			tol := ownInitMeanTol[c.Name]
			var want [][]float64
			var wantW []float64
			for k, w := range sk.Weights {
				if w > tol.minWeight {
					want = append(want, scaled(sk.Means[k], std))
					wantW = append(wantW, w)
				}
			}
			var got [][]float64
			for _, mu := range m.Means() {
				got = append(got, scaled(mu, std))
			}
			match := matchMeans(got, want)
			worst := 0.0
			dists := make([]float64, len(want))
			for i, j := range match {
				dists[i] = math.Sqrt(sqDist(got[j], want[i]))
				worst = math.Max(worst, dists[i])
			}
			if worst > tol.tol {
				t.Errorf("matched means of components heavier than %g: worst distance %.3g data standard deviations, want <= %g (distances %.3g, weights %.3f)", tol.minWeight, worst, tol.tol, dists, wantW)
			}
			t.Logf("best of 10: lower bound %.8g (scikit-learn %.8g, %.3f%% apart); median of 10 %.8g (scikit-learn seeds 0-9 %.8g); effective %d (scikit-learn %d); means of %d components heavier than %g within %.3g std (tolerance %g)",
				rep.LowerBound, sk.LowerBound, 100*relErr(rep.LowerBound, sk.LowerBound, 1), goMed, skMed,
				len(m.Effective(0.01)), countAbove(sk.Weights, 0.01), len(want), tol.minWeight, worst, tol.tol)
		})
	}
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func countAbove(v []float64, threshold float64) int {
	n := 0
	for _, x := range v {
		if x > threshold {
			n++
		}
	}
	return n
}

// columnStd is the population standard deviation of each column.
func columnStd(X [][]float64) []float64 {
	d := len(X[0])
	std := make([]float64, d)
	for j := range d {
		mean := 0.0
		for _, row := range X {
			mean += row[j]
		}
		mean /= float64(len(X))
		for _, row := range X {
			std[j] += (row[j] - mean) * (row[j] - mean)
		}
		std[j] = math.Sqrt(std[j] / float64(len(X)))
	}
	return std
}

func scaled(v, std []float64) []float64 {
	out := make([]float64, len(v))
	for j := range v {
		out[j] = v[j] / std[j]
	}
	return out
}
