package hrl

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"
)

var names = []string{"trend", "mean_reversion", "momentum", "defensive"}

// randomPolicy draws a policy with arbitrary (finite, possibly large)
// parameters.
func randomPolicy(t *rapid.T) *Policy {
	cfg := DefaultConfig()
	cfg.NumOptions = rapid.IntRange(1, 6).Draw(t, "options")
	cfg.HiddenUnits = rapid.IntRange(1, 8).Draw(t, "hidden")
	cfg.BlendRate = rapid.Float64Range(0.001, 1).Draw(t, "blend")
	n := rapid.IntRange(2, 6).Draw(t, "strategies")
	d := n + 1
	scale := rapid.Float64Range(0, 50).Draw(t, "scale")
	seed := rapid.Uint64().Draw(t, "seed")
	r := rand.New(rand.NewPCG(seed, 1))
	g := func(k int) []float64 {
		out := make([]float64, k)
		for i := range out {
			out[i] = scale * r.NormFloat64()
		}
		return out
	}
	m, h := cfg.NumOptions, cfg.HiddenUnits
	ones := make([]float64, d)
	for i := range ones {
		ones[i] = rapid.Float64Range(0.01, 10).Draw(t, "std")
	}
	return &Policy{Format: Format, Config: cfg, Strategies: append([]string(nil), names[:min(n, 4)]...), StateDim: d, InMean: g(d), InStd: ones,
		W1: g(d * h), B1: g(h), W2: g(h * m), B2: g(m), V: g(d * m), U: g(d * m), UB: g(m), Theta: g(m * n)}
}

// Weights are each in [0, 1] and sum to 1 within 1e-9, whatever the
// parameters and inputs.
func TestWeightsProperty(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		p := randomPolicy(t)
		n := len(p.Theta) / p.Config.NumOptions
		p.Strategies = make([]string, n)
		run := p.NewRunner()
		w, target := make([]float64, n), make([]float64, n)
		steps := rapid.IntRange(1, 30).Draw(t, "steps")
		for range steps {
			state := rapid.SliceOfN(rapid.Float64Range(-1e6, 1e6), p.StateDim, p.StateDim).Draw(t, "state")
			if err := run.Step(state, w, target); err != nil {
				t.Fatal(err)
			}
			for _, v := range [][]float64{w, target} {
				var s float64
				for _, x := range v {
					if !(x >= 0 && x <= 1) {
						t.Fatalf("weight %v out of [0, 1]: %v", x, v)
					}
					s += x
				}
				if math.Abs(s-1) > 1e-9 {
					t.Fatalf("weights sum to %v: %v", s, v)
				}
			}
			st := run.Option()
			if st.Option < 0 || st.Option >= p.Config.NumOptions || !(st.Termination >= 0 && st.Termination <= 1) {
				t.Fatalf("option state %+v", st)
			}
		}
	})
}

func TestStepRejectsBadInput(t *testing.T) {
	t.Parallel()
	p := trainSmall(t, 1)
	run := p.NewRunner()
	w := make([]float64, 4)
	for _, state := range [][]float64{{1, 2}, {0.25, 0.25, 0.25, 0.25, math.NaN()}} {
		if err := run.Step(state, w, w); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("state %v: err = %v, want ErrInvalidInput", state, err)
		}
	}
}

func syntheticData(n int) (states, returns [][]float64) {
	r := rand.New(rand.NewPCG(3, 4))
	for t := range n {
		regime := (t / 50) % 2
		s := []float64{0.1, 0.1, 0.1, 0.1, 0.5}
		s[regime*3] = 0.7
		states = append(states, s)
		ret := make([]float64, 4)
		for i := range ret {
			ret[i] = 0.01 * r.NormFloat64()
		}
		ret[regime*3] += 0.005
		returns = append(returns, ret)
	}
	return states, returns
}

func trainSmall(t *testing.T, seed int64) *Policy {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.Seed, cfg.HiddenUnits = 5, seed, 8
	states, returns := syntheticData(300)
	p, stats, err := Train(context.Background(), cfg, names, states, returns, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) != cfg.Epochs {
		t.Fatalf("%d epoch stats, want %d", len(stats), cfg.Epochs)
	}
	return p
}

func TestTrainDeterministic(t *testing.T) {
	t.Parallel()
	a, err := trainSmall(t, 7).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := trainSmall(t, 7).MarshalBinary()
	if !bytes.Equal(a, b) {
		t.Fatal("two trainings with the same seed differ")
	}
	c, _ := trainSmall(t, 8).MarshalBinary()
	if bytes.Equal(a, c) {
		t.Fatal("different seeds give the same policy")
	}
	p, err := Unmarshal(a)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := p.MarshalBinary()
	if !bytes.Equal(a, again) {
		t.Fatal("round trip changes the policy")
	}
}

func TestTrainRejectsBadInput(t *testing.T) {
	t.Parallel()
	states, returns := syntheticData(300)
	bad := DefaultConfig()
	bad.BlendRate = 0
	var fe *FieldError
	if _, _, err := Train(context.Background(), bad, names, states, returns, nil); !errors.As(err, &fe) || fe.Field != "blend_rate" {
		t.Errorf("blend rate 0: err = %v", err)
	}
	if _, _, err := Train(context.Background(), DefaultConfig(), names, states[:10], returns[:10], nil); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("10 bars: err = %v", err)
	}
	if _, _, err := Train(context.Background(), DefaultConfig(), names[:3], states, returns, nil); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("3 names for 4 returns: err = %v", err)
	}
}

func TestUnmarshalRejects(t *testing.T) {
	t.Parallel()
	for _, b := range []string{"", "{}", `{"format":"quantmesh.hrl.v1"}`, `{"format":"other"}`} {
		if _, err := Unmarshal([]byte(b)); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%q: err = %v", b, err)
		}
	}
}
