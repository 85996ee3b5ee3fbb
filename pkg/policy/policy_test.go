package policy

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

func TestActionString(t *testing.T) {
	t.Parallel()
	for a, want := range map[Action]string{ActionBuy: "BUY", ActionHold: "HOLD", ActionSell: "SELL", 3: "Action(3)", -1: "Action(-1)"} {
		if got := a.String(); got != want {
			t.Errorf("Action(%d).String() = %q, want %q", int(a), got, want)
		}
		got, err := ParseAction(want)
		if a.Valid() && (err != nil || got != a) {
			t.Errorf("ParseAction(%q) = %v, %v; want %v", want, got, err, a)
		}
		if !a.Valid() && !errors.Is(err, ErrInvalidInput) {
			t.Errorf("ParseAction(%q) error = %v, want ErrInvalidInput", want, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cfg     Config
		wantErr string // empty: valid
	}{
		{DefaultConfig(16), ""},
		{Config{Inputs: 3}, ""},
		{Config{Inputs: 3, Hidden: []int{4}, Activation: "relu"}, ""},
		{Config{Inputs: 0, Hidden: []int{4}}, "inputs must be in [1, 4096], got 0"},
		{Config{Inputs: MaxInputs + 1}, "inputs must be in"},
		{Config{Inputs: 3, Hidden: []int{4, 0}}, "hidden layer 1: width must be in [1, 4096], got 0"},
		{Config{Inputs: 3, Hidden: make([]int, 9)}, "at most 8 hidden layers, got 9"},
		{Config{Inputs: 3, Activation: "sigmoid"}, `activation must be "tanh" or "relu", got "sigmoid"`},
		{Config{Inputs: 4096, Hidden: []int{4096, 4096}}, "parameters, at most"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("%+v: %v", tt.cfg, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%+v: error %v, want ErrInvalidConfig containing %q", tt.cfg, err, tt.wantErr)
		}
		if _, err := New(tt.cfg, 1); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New(%+v): error %v, want ErrInvalidConfig", tt.cfg, err)
		}
	}
}

func TestNewDeterministic(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig(16)
	a, b, c := mustNew(t, cfg, 1), mustNew(t, cfg, 1), mustNew(t, cfg, 2)
	if !bytes.Equal(mustMarshal(t, a), mustMarshal(t, b)) {
		t.Error("New with the same seed gave different weights")
	}
	if bytes.Equal(mustMarshal(t, a), mustMarshal(t, c)) {
		t.Error("New with different seeds gave the same weights")
	}
	if got, want := a.NumParams(), 16*64+64+64*32+32+32*3+3; got != want {
		t.Errorf("NumParams = %d, want %d", got, want)
	}
	if got := a.Config().String(); got != "16-64-32-3 tanh" {
		t.Errorf("Config().String() = %q", got)
	}
}

func mustNew(t testing.TB, cfg Config, seed int64) *Network {
	t.Helper()
	n, err := New(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPredictMatchesGorgonia is the equivalence of the serving forward pass
// with gorgonia's on the same weights, for several shapes, both activations
// and inputs from small to large magnitudes.
func TestPredictMatchesGorgonia(t *testing.T) {
	t.Parallel()
	configs := []Config{
		{Inputs: 1},
		{Inputs: 5, Hidden: []int{3}},
		{Inputs: 16, Hidden: []int{64, 32}},
		{Inputs: 16, Hidden: []int{64, 32}, Activation: "relu"},
		{Inputs: 7, Hidden: []int{13, 1, 9}, Activation: "relu"},
		{Inputs: 33, Hidden: []int{17, 31, 8}, Activation: "tanh"},
	}
	for ci, cfg := range configs {
		for seed := uint64(1); seed <= 3; seed++ {
			n := randomNetwork(t, cfg, seed*100+uint64(ci))
			r := rand.New(rand.NewPCG(seed, uint64(ci)))
			var X [][]float64
			for _, scale := range []float64{1e-3, 1, 10, 1e3, 1e6} {
				X = append(X, randomInputs(r, 8, cfg.Inputs, scale)...)
			}
			want, err := GorgoniaForward(n, X)
			if err != nil {
				t.Fatalf("%s: GorgoniaForward: %v", cfg, err)
			}
			var out Output
			for s, x := range X {
				if err := n.Predict(x, &out); err != nil {
					t.Fatalf("%s sample %d: Predict: %v", cfg, s, err)
				}
				sum := 0.0
				for a := range NumActions {
					if d := math.Abs(out.Probs[a] - want[s][a]); !(d <= 1e-9) {
						t.Errorf("%s seed %d sample %d: P(%v) = %v, gorgonia %v (|Δ| = %g)", cfg, seed, s, Action(a), out.Probs[a], want[s][a], d)
					}
					sum += out.Probs[a]
				}
				if math.Abs(sum-1) > 1e-12 {
					t.Errorf("%s sample %d: probabilities sum to %v", cfg, s, sum)
				}
				if out.Confidence != out.Probs[out.Action] {
					t.Errorf("%s sample %d: confidence %v is not P(%v) = %v", cfg, s, out.Confidence, out.Action, out.Probs[out.Action])
				}
				for a := range NumActions {
					if out.Probs[a] > out.Confidence {
						t.Errorf("%s sample %d: action %v is not the most probable (%v)", cfg, s, out.Action, out.Probs)
					}
				}
			}
		}
	}
}

func TestPredictBadInput(t *testing.T) {
	t.Parallel()
	n := mustNew(t, DefaultConfig(4), 1)
	var out Output
	tests := []struct {
		name string
		x    []float64
		want string
	}{
		{"short", []float64{1, 2, 3}, "got 3 features, the model takes 4"},
		{"long", []float64{1, 2, 3, 4, 5}, "got 5 features, the model takes 4"},
		{"nil", nil, "got 0 features, the model takes 4"},
		{"NaN", []float64{1, math.NaN(), 3, 4}, "feature 1 is NaN"},
		{"+Inf", []float64{1, 2, 3, math.Inf(1)}, "feature 3 is +Inf"},
		{"-Inf", []float64{math.Inf(-1), 2, 3, 4}, "feature 0 is -Inf"},
	}
	for _, tt := range tests {
		err := n.Predict(tt.x, &out)
		if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want ErrInvalidInput containing %q", tt.name, err, tt.want)
		}
	}
	if err := n.Predict([]float64{1, 2, 3, 4}, nil); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("nil output: error %v, want ErrInvalidInput", err)
	}
	// Finite features whose normalisation overflows must not produce NaN probabilities.
	relu := randomNetwork(t, Config{Inputs: 2, Hidden: []int{4}, Activation: "relu"}, 3)
	relu.mean[0] = -math.MaxFloat64
	relu.std[0] = 1
	err := relu.Predict([]float64{math.MaxFloat64, 0}, &out)
	if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "overflow") {
		t.Errorf("overflowing features: error %v, want ErrInvalidInput about overflow", err)
	}
}

func TestPredictConcurrent(t *testing.T) {
	t.Parallel()
	n := randomNetwork(t, DefaultConfig(16), 5)
	X := randomInputs(rand.New(rand.NewPCG(1, 2)), 64, 16, 2)
	want := make([]Output, len(X))
	for i, x := range X {
		if err := n.Predict(x, &want[i]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var out Output
			for k := range 200 {
				i := (g*31 + k) % len(X)
				if err := n.Predict(X[i], &out); err != nil {
					t.Error(err)
					return
				}
				if out != want[i] {
					t.Errorf("sample %d: concurrent Predict gave %+v, want %+v", i, out, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestPredictAllocatesNothing(t *testing.T) {
	n := randomNetwork(t, DefaultConfig(16), 5)
	x := randomInputs(rand.New(rand.NewPCG(1, 2)), 1, 16, 1)[0]
	var out Output
	_ = n.Predict(x, &out) // fill the pool
	if allocs := testing.AllocsPerRun(100, func() { _ = n.Predict(x, &out) }); allocs != 0 {
		t.Errorf("Predict allocates %v times per call, want 0", allocs)
	}
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	n := randomNetwork(t, Config{Inputs: 3, Hidden: []int{5}}, 9)
	X := randomInputs(rand.New(rand.NewPCG(3, 4)), 50, 3, 1)
	y := make([]Action, len(X))
	var out Output
	var wantLoss float64
	for i, x := range X {
		if err := n.Predict(x, &out); err != nil {
			t.Fatal(err)
		}
		y[i] = out.Action
		if i%5 == 0 {
			y[i] = (out.Action + 1) % NumActions // 10 of 50 wrong
		}
		wantLoss -= math.Log(out.Probs[y[i]])
	}
	wantLoss /= float64(len(X))
	loss, acc := Evaluate(n, X, y)
	if acc != 0.8 || math.Abs(loss-wantLoss) > 1e-12 {
		t.Errorf("Evaluate = %v, %v; want %v, 0.8", loss, acc, wantLoss)
	}
	for name, data := range map[string]struct {
		X [][]float64
		y []Action
	}{
		"no samples":   {nil, nil},
		"label 3":      {X[:1], []Action{3}},
		"short labels": {X, y[:3]},
		"nil labels":   {X, nil},
	} {
		if loss, acc := Evaluate(n, data.X, data.y); !math.IsNaN(loss) || !math.IsNaN(acc) {
			t.Errorf("%s: Evaluate = %v, %v, want NaN, NaN", name, loss, acc)
		}
	}
}

func TestCheckData(t *testing.T) {
	t.Parallel()
	good := [][]float64{{1, 2}, {3, 4}}
	tests := []struct {
		name string
		X    [][]float64
		y    []Action
		want string
	}{
		{"no samples", nil, nil, "no samples"},
		{"labels", good, []Action{ActionBuy}, "2 samples but 1 labels"},
		{"row length", [][]float64{{1, 2}, {3}}, nil, "sample 1 has 1 features, the model takes 2"},
		{"NaN", [][]float64{{1, 2}, {3, math.NaN()}}, nil, "sample 1: feature 1 is NaN"},
		{"label range", good, []Action{ActionSell, 7}, "sample 1: label 7 is not an action"},
		{"negative label", good, []Action{-1, ActionSell}, "sample 0: label -1 is not an action"},
	}
	for _, tt := range tests {
		err := CheckData(2, tt.X, tt.y)
		if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want ErrInvalidInput containing %q", tt.name, err, tt.want)
		}
	}
	if err := CheckData(2, good, []Action{ActionBuy, ActionSell}); err != nil {
		t.Errorf("good data: %v", err)
	}
}
