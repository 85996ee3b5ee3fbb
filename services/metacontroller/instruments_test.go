package metacontroller

import (
	"context"
	"math"
	"strconv"
	"testing"

	"github.com/quantmesh/quantmesh/pkg/telemetry/telemetrytest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/quantmesh/quantmesh/pkg/hrl"
)

// sharpeOf is the mean over the sample standard deviation, written out.
func sharpeOf(xs []float64) float64 {
	var mean float64
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	return mean / math.Sqrt(ss/float64(len(xs)-1))
}

func TestTrainingInstruments(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	ins, err := newInstruments(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	got := telemetrytest.Points(t, reader)
	if got["quantmesh.metacontroller.training.episodes{result=win}"] != 0 || got["quantmesh.metacontroller.training.episodes{result=loss}"] != 0 {
		t.Fatalf("before any training: %v", got)
	}
	if _, ok := got["quantmesh.metacontroller.training.cumulative_reward"]; ok {
		t.Fatalf("a cumulative reward before any training: %v", got)
	}

	// 120 episodes whose returns follow a known pattern: i mod 7 minus 2,
	// in hundredths (so 2 of every 7 lose, one of them at exactly 0).
	ctx := context.Background()
	ep := ins.startTraining()
	var rets []float64
	check := func() {
		t.Helper()
		got := telemetrytest.Points(t, reader)
		n := len(rets)
		var sum float64
		wins := 0
		for _, r := range rets {
			sum += r
			if r > 0 {
				wins++
			}
		}
		if math.Abs(got["quantmesh.metacontroller.training.cumulative_reward"]-sum) > 1e-12 {
			t.Errorf("after %d episodes: cumulative reward %v, want %v", n, got["quantmesh.metacontroller.training.cumulative_reward"], sum)
		}
		for _, w := range RollingWindows {
			key := "{window=" + strconv.Itoa(w) + "}"
			s, okS := got["quantmesh.metacontroller.training.sharpe"+key]
			wr, okW := got["quantmesh.metacontroller.training.win_rate"+key]
			if n < w {
				if okS || okW {
					t.Errorf("after %d episodes: window %d exported (Sharpe %v, win rate %v) before it is full", n, w, s, wr)
				}
				continue
			}
			lastW := rets[n-w:]
			won := 0
			for _, r := range lastW {
				if r > 0 {
					won++
				}
			}
			if want := sharpeOf(lastW); !okS || math.Abs(s-want) > 1e-9 {
				t.Errorf("after %d episodes: Sharpe over %d = %v (exported %v), want %v", n, w, s, okS, want)
			}
			if want := float64(won) / float64(w); !okW || math.Abs(wr-want) > 1e-12 {
				t.Errorf("after %d episodes: win rate over %d = %v (exported %v), want %v", n, w, wr, okW, want)
			}
		}
		if got["quantmesh.metacontroller.training.episodes{result=win}"] != float64(wins) ||
			got["quantmesh.metacontroller.training.episodes{result=loss}"] != float64(n-wins) {
			t.Errorf("after %d episodes: counters %v wins and %v losses, want %d and %d", n,
				got["quantmesh.metacontroller.training.episodes{result=win}"], got["quantmesh.metacontroller.training.episodes{result=loss}"], wins, n-wins)
		}
		if got["quantmesh.metacontroller.training.episode.return_count"] != float64(n) ||
			math.Abs(got["quantmesh.metacontroller.training.episode.return_sum"]-sum) > 1e-12 {
			t.Errorf("after %d episodes: return histogram count %v sum %v, want %d and %v", n,
				got["quantmesh.metacontroller.training.episode.return_count"], got["quantmesh.metacontroller.training.episode.return_sum"], n, sum)
		}
		if got["quantmesh.metacontroller.training.episode.length_sum"] != float64(250*n) {
			t.Errorf("after %d episodes: length histogram sum %v, want %d", n, got["quantmesh.metacontroller.training.episode.length_sum"], 250*n)
		}
	}
	for i := range 120 {
		r := float64(i%7-2) / 100
		rets = append(rets, r)
		ins.episode(ctx, ep, hrl.Episode{Return: r, Bars: 250})
		if n := i + 1; n == 1 || n == 9 || n == 10 || n == 50 || n == 99 || n == 100 || n == 120 {
			check()
		}
	}
	// A non-finite return (a diverged policy) is not an episode.
	ins.episode(ctx, ep, hrl.Episode{Return: math.NaN(), Bars: 250})
	check()

	// A new training starts the gauges afresh; the counters go on.
	ep2 := ins.startTraining()
	ins.episode(ctx, ep2, hrl.Episode{Return: 0.5, Bars: 100})
	got = telemetrytest.Points(t, reader)
	if got["quantmesh.metacontroller.training.cumulative_reward"] != 0.5 {
		t.Errorf("second training: cumulative reward %v, want 0.5", got["quantmesh.metacontroller.training.cumulative_reward"])
	}
	if _, ok := got["quantmesh.metacontroller.training.sharpe{window=10}"]; ok {
		t.Errorf("second training: Sharpe over 10 exported after one episode: %v", got)
	}
	if got["quantmesh.metacontroller.training.episode.return_count"] != 121 {
		t.Errorf("return histogram count %v after 121 episodes", got["quantmesh.metacontroller.training.episode.return_count"])
	}
}

func TestEpisodesSharpeUndefined(t *testing.T) {
	t.Parallel()
	e := newEpisodes(100)
	for range 10 {
		e.add(0.01)
	}
	if v, ok := e.sharpe(10); ok {
		t.Errorf("Sharpe of ten equal returns = %v, want none (zero deviation)", v)
	}
	if v, ok := e.winRate(10); !ok || v != 1 {
		t.Errorf("win rate of ten positive returns = %v, %v; want 1", v, ok)
	}
	if _, ok := e.winRate(200); ok {
		t.Error("a window longer than the ring is exported")
	}
}
