package hrl

import (
	"bytes"
	"context"
	"math"
	"testing"
)

// switchingPolicy returns a two-option, two-strategy policy whose option
// follows the sign of the (single) state value and which moves its weights
// all the way at once: state +1 holds strategy a, state -1 strategy b.
func switchingPolicy() *Policy {
	cfg := DefaultConfig()
	cfg.NumOptions, cfg.HiddenUnits, cfg.BlendRate, cfg.SwitchingCostBps = 2, 1, 1, 10
	const big = 50
	return &Policy{
		Format: Format, Config: cfg, Strategies: []string{"a", "b"}, StateDim: 1,
		InMean: []float64{0}, InStd: []float64{1},
		W1: []float64{0}, B1: []float64{0}, W2: []float64{0, 0}, B2: []float64{0, 0},
		V: []float64{big, -big},                     // option 0 when the state is positive
		U: []float64{0, 0}, UB: []float64{big, big}, // options always terminate
		Theta: []float64{big, -big, -big, big}, // option 0 holds a, option 1 holds b
	}
}

func TestPlayKnownSequence(t *testing.T) {
	t.Parallel()
	p := switchingPolicy()
	if err := p.validate(); err != nil {
		t.Fatal(err)
	}
	states := [][]float64{{1}, {1}, {-1}, {-1}, {1}}
	returns := [][]float64{{0.5, 0.5}, {0.02, -0.01}, {0.03, -0.04}, {-0.02, 0.01}, {0.01, 0.02}}
	// Weights a, a, b, b, a. Bar 0 earns nothing; bars 2 and 4 switch
	// everything (turnover 1, cost 10 bps).
	want := 0.02 + (-0.04 - 0.001) + 0.01 + (0.01 - 0.001)
	ep, err := p.Play(states, returns)
	if err != nil {
		t.Fatal(err)
	}
	if ep.Bars != 4 || math.Abs(ep.Return-want) > 1e-12 {
		t.Fatalf("Play = %+v, want {Return: %v, Bars: 4}", ep, want)
	}
	if _, err := p.Play(states, returns[:4]); err == nil {
		t.Fatal("Play with fewer returns than states: no error")
	}
	if _, err := p.Play(states[:1], [][]float64{{1}}); err == nil {
		t.Fatal("Play with one return for two strategies: no error")
	}
}

// TestTrainEpisodes checks that Train reports one episode per epoch when
// given a progress callback, that the last one is the trained policy's
// pass over the training data, and that playing episodes does not change
// what is trained.
func TestTrainEpisodes(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.Epochs, cfg.Seed, cfg.HiddenUnits = 4, 7, 8
	states, returns := syntheticData(300)
	var seen []EpochStats
	p, stats, err := Train(context.Background(), cfg, names, states, returns, func(st EpochStats) { seen = append(seen, st) })
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != cfg.Epochs || len(stats) != cfg.Epochs {
		t.Fatalf("%d progress calls and %d stats, want %d", len(seen), len(stats), cfg.Epochs)
	}
	for i, st := range seen {
		if st != stats[i] {
			t.Errorf("epoch %d: progress got %+v, stats hold %+v", i+1, st, stats[i])
		}
		if st.Episode.Bars != len(states)-1 || math.IsNaN(st.Episode.Return) || st.Episode.Return == 0 {
			t.Errorf("epoch %d: episode %+v, want %d bars and a return", i+1, st.Episode, len(states)-1)
		}
	}
	last, err := p.Play(states, returns)
	if err != nil {
		t.Fatal(err)
	}
	if last != seen[len(seen)-1].Episode {
		t.Errorf("the trained policy plays %+v, the last epoch reported %+v", last, seen[len(seen)-1].Episode)
	}
	if seen[0].Episode == seen[len(seen)-1].Episode {
		t.Errorf("every epoch reported the same episode %+v: it does not follow training", seen[0].Episode)
	}
	quiet, _, err := Train(context.Background(), cfg, names, states, returns, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := p.MarshalBinary()
	b, _ := quiet.MarshalBinary()
	if !bytes.Equal(a, b) {
		t.Error("training with a progress callback gives a different policy than without")
	}
}
