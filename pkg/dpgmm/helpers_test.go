package dpgmm

import (
	"encoding/csv"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// readCSV reads a testdata CSV of floats with a header row. A column named
// "label" is returned separately (nil when there is none).
func readCSV(t testing.TB, name string) (X [][]float64, labels []int) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	labelCol := -1
	for j, h := range recs[0] {
		if h == "label" {
			labelCol = j
		}
	}
	for _, rec := range recs[1:] {
		var row []float64
		for j, s := range rec {
			if j == labelCol {
				l, err := strconv.Atoi(s)
				if err != nil {
					t.Fatal(err)
				}
				labels = append(labels, l)
				continue
			}
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				t.Fatal(err)
			}
			row = append(row, v)
		}
		X = append(X, row)
	}
	return X, labels
}

// dataset reads a golden case's data: "file.csv" or "file.csv:N" for the
// first N rows.
func dataset(t testing.TB, spec string) [][]float64 {
	t.Helper()
	name, rows, cut := strings.Cut(spec, ":")
	X, _ := readCSV(t, name)
	if cut {
		n, err := strconv.Atoi(rows)
		if err != nil {
			t.Fatal(err)
		}
		X = X[:n]
	}
	return X
}

// goldenCase is one case of testdata/golden.json (see golden.py).
type goldenCase struct {
	Name   string `json:"name"`
	Data   string `json:"data"`
	Config struct {
		NComponents              int         `json:"n_components"`
		RandomState              int64       `json:"random_state"`
		WeightConcentrationPrior float64     `json:"weight_concentration_prior"`
		MeanPrecisionPrior       float64     `json:"mean_precision_prior"`
		MeanPrior                []float64   `json:"mean_prior"`
		DegreesOfFreedomPrior    float64     `json:"degrees_of_freedom_prior"`
		CovariancePrior          [][]float64 `json:"covariance_prior"`
		Tol                      float64     `json:"tol"`
		RegCovar                 float64     `json:"reg_covar"`
		MaxIter                  int         `json:"max_iter"`
		InitParams               string      `json:"init_params"`
	} `json:"config"`
	InitLabels          []int        `json:"init_labels"`
	InitResp            [][]float64  `json:"init_resp"`
	Weights             []float64    `json:"weights"`
	Means               [][]float64  `json:"means"`
	Covariances         [][]float64  `json:"covariances"`
	WeightConcentration [2][]float64 `json:"weight_concentration"`
	MeanPrecision       []float64    `json:"mean_precision"`
	DegreesOfFreedom    []float64    `json:"degrees_of_freedom"`
	LowerBound          float64      `json:"lower_bound"`
	LowerBounds         []float64    `json:"lower_bounds"`
	NIter               int          `json:"n_iter"`
	Converged           bool         `json:"converged"`
	Rows                []int        `json:"rows"`
	PredictProba        [][]float64  `json:"predict_proba"`
	WeightedLogProb     [][]float64  `json:"weighted_log_prob"`
	// scikit-learn's lower_bound_ with random_state 0..9, n_init 1.
	SeedLowerBounds []float64 `json:"seed_lower_bounds"`
	// scikit-learn's fit with n_init 10, random_state 0.
	BestOf10 *struct {
		LowerBound float64     `json:"lower_bound"`
		Weights    []float64   `json:"weights"`
		Means      [][]float64 `json:"means"`
	} `json:"best_of_10"`
}

type goldenFile struct {
	Sklearn string       `json:"sklearn"`
	Cases   []goldenCase `json:"cases"`
}

var (
	goldenOnce sync.Once
	golden     goldenFile
	goldenErr  error
)

func loadGolden(t testing.TB) goldenFile {
	t.Helper()
	goldenOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join("testdata", "golden.json"))
		if err != nil {
			goldenErr = err
			return
		}
		goldenErr = json.Unmarshal(b, &golden)
	})
	if goldenErr != nil {
		t.Fatal(goldenErr)
	}
	return golden
}

// config is the case's configuration as a Config (Init from init_params).
func (c goldenCase) config(t testing.TB) Config {
	t.Helper()
	cfg := Config{
		Components:          c.Config.NComponents,
		WeightConcentration: c.Config.WeightConcentrationPrior,
		MeanPrecision:       c.Config.MeanPrecisionPrior,
		MeanPrior:           c.Config.MeanPrior,
		DegreesOfFreedom:    c.Config.DegreesOfFreedomPrior,
		Tol:                 c.Config.Tol,
		RegCovar:            c.Config.RegCovar,
		MaxIter:             c.Config.MaxIter,
	}
	for _, row := range c.Config.CovariancePrior {
		cfg.CovariancePrior = append(cfg.CovariancePrior, row...)
	}
	switch c.Config.InitParams {
	case "", "kmeans":
		cfg.Init = InitKMeans
	case "k-means++":
		cfg.Init = InitKMeansPlusPlus
	case "random":
		cfg.Init = InitRandom
	case "random_from_data":
		cfg.Init = InitRandomFromData
	default:
		t.Fatalf("init_params %q", c.Config.InitParams)
	}
	return cfg
}

// initResp is the responsibilities scikit-learn started from.
func (c goldenCase) initResp(n, k int) [][]float64 {
	if c.InitResp != nil {
		return c.InitResp
	}
	resp := make([][]float64, n)
	for i := range resp {
		resp[i] = make([]float64, k)
		if l := c.InitLabels[i]; l >= 0 {
			resp[i][l] = 1
		}
	}
	return resp
}

// relErr is |got − want| / max(|want|, floor).
func relErr(got, want, floor float64) float64 {
	return math.Abs(got-want) / math.Max(math.Abs(want), floor)
}

// maxRelErr is the largest relErr over paired values.
func maxRelErr(got, want []float64, floor float64) float64 {
	e := 0.0
	for i := range want {
		e = math.Max(e, relErr(got[i], want[i], floor))
	}
	return e
}

// adjustedRandIndex compares two labelings of the same samples (Hubert &
// Arabie 1985): 1 for identical partitions, about 0 for independent ones.
func adjustedRandIndex(a, b []int) float64 {
	type pair struct{ x, y int }
	cont := map[pair]int{}
	ra, rb := map[int]int{}, map[int]int{}
	for i := range a {
		cont[pair{a[i], b[i]}]++
		ra[a[i]]++
		rb[b[i]]++
	}
	c2 := func(n int) float64 { return float64(n) * float64(n-1) / 2 }
	var index, sa, sb float64
	for _, n := range cont {
		index += c2(n)
	}
	for _, n := range ra {
		sa += c2(n)
	}
	for _, n := range rb {
		sb += c2(n)
	}
	expected := sa * sb / c2(len(a))
	maxIndex := (sa + sb) / 2
	if maxIndex == expected {
		return 1
	}
	return (index - expected) / (maxIndex - expected)
}

// matchMeans pairs each wanted mean with a distinct got mean, minimising
// the total Euclidean distance over all pairings (exhaustive assignment by
// dynamic programming over subsets; want has at most 12 rows). It returns
// got's index for each want.
func matchMeans(got, want [][]float64) []int {
	nw, ng := len(want), len(got)
	cost := make([][]float64, nw)
	for i := range want {
		cost[i] = make([]float64, ng)
		for j := range got {
			cost[i][j] = math.Sqrt(sqDist(want[i], got[j]))
		}
	}
	// best[i][mask]: least cost of matching want[i:] using got indices not in mask.
	type key struct{ i, mask int }
	memo := map[key]float64{}
	var solve func(i, mask int) float64
	solve = func(i, mask int) float64 {
		if i == nw {
			return 0
		}
		if v, ok := memo[key{i, mask}]; ok {
			return v
		}
		best := math.Inf(1)
		for j := range ng {
			if mask&(1<<j) == 0 {
				best = math.Min(best, cost[i][j]+solve(i+1, mask|1<<j))
			}
		}
		memo[key{i, mask}] = best
		return best
	}
	out := make([]int, nw)
	mask := 0
	for i := range nw {
		for j := range ng {
			if mask&(1<<j) == 0 && cost[i][j]+solve(i+1, mask|1<<j) == solve(i, mask) {
				out[i] = j
				mask |= 1 << j
				break
			}
		}
	}
	return out
}
