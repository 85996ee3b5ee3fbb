package metacontroller

import (
	"context"
	"math"
	"strconv"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/quantmesh/quantmesh/pkg/hrl"
)

// RollingWindows are the episode counts the rolling Sharpe ratio and win
// rate of training are computed over.
var RollingWindows = []int{10, 50, 100}

// Histogram boundaries of the training episodes: returns are sums of
// per-bar net returns over a training window (0.1 is 10%), lengths are
// bars.
var (
	episodeReturnBuckets = []float64{-2, -1, -0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.25, 0.5, 1, 2, 4}
	episodeLengthBuckets = []float64{64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768}
)

// instruments are MetaControllerService's metrics: the training episodes of
// TrainPolicy (one per epoch, see hrl.Episode). Prometheus names:
//
//	quantmesh_metacontroller_training_episodes_total{result}    episodes, win (return > 0) or loss
//	quantmesh_metacontroller_training_episode_return            histogram of episode returns
//	quantmesh_metacontroller_training_episode_length            histogram of rewarded bars per episode
//	quantmesh_metacontroller_training_sharpe{window}            Sharpe ratio of the last 10, 50, 100 episode returns
//	quantmesh_metacontroller_training_win_rate{window}          share of the last 10, 50, 100 episodes won
//	quantmesh_metacontroller_training_cumulative_reward         sum of the episode returns of the training
//
// The gauges describe the training that started last; with several
// trainings at once (Config.MaxTrainings > 1) the counters and histograms
// count every training's episodes.
type instruments struct {
	episodes  metric.Int64Counter
	returns   metric.Float64Histogram
	length    metric.Int64Histogram
	win, loss metric.AddOption

	mu      sync.Mutex
	current *episodes // the training that started last; nil before the first
}

func newInstruments(meter metric.Meter) (*instruments, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	ins := &instruments{
		win:  metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "win"))),
		loss: metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "loss"))),
	}
	var err error
	if ins.episodes, err = meter.Int64Counter("quantmesh.metacontroller.training.episodes",
		metric.WithDescription("Training episodes of TrainPolicy (one per epoch: the policy's pass over its training window), by result: win (return > 0) or loss.")); err != nil {
		return nil, err
	}
	if ins.returns, err = meter.Float64Histogram("quantmesh.metacontroller.training.episode.return",
		metric.WithDescription("Return of each training episode: the sum of its bars' net returns (after switching costs)."),
		metric.WithExplicitBucketBoundaries(episodeReturnBuckets...)); err != nil {
		return nil, err
	}
	if ins.length, err = meter.Int64Histogram("quantmesh.metacontroller.training.episode.length", metric.WithUnit("{bar}"),
		metric.WithDescription("Rewarded bars of each training episode (the training window's bars less one)."),
		metric.WithExplicitBucketBoundaries(episodeLengthBuckets...)); err != nil {
		return nil, err
	}
	sharpe, err := meter.Float64ObservableGauge("quantmesh.metacontroller.training.sharpe",
		metric.WithDescription("Sharpe ratio (mean over sample standard deviation, not annualised) of the returns of the last 10, 50 and 100 episodes of the training that started last, by window; a window is exported once that many episodes have run."))
	if err != nil {
		return nil, err
	}
	winRate, err := meter.Float64ObservableGauge("quantmesh.metacontroller.training.win_rate",
		metric.WithDescription("Share of the last 10, 50 and 100 episodes of the training that started last with a positive return, by window; a window is exported once that many episodes have run."))
	if err != nil {
		return nil, err
	}
	cumulative, err := meter.Float64ObservableGauge("quantmesh.metacontroller.training.cumulative_reward",
		metric.WithDescription("Sum of the episode returns of the training that started last, so far."))
	if err != nil {
		return nil, err
	}
	windowOpts := make([]metric.ObserveOption, len(RollingWindows))
	for i, w := range RollingWindows {
		windowOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("window", strconv.Itoa(w))))
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		ins.mu.Lock()
		defer ins.mu.Unlock()
		ep := ins.current
		if ep == nil || ep.n == 0 {
			return nil
		}
		o.ObserveFloat64(cumulative, ep.cumulative)
		for i, w := range RollingWindows {
			if v, ok := ep.sharpe(w); ok {
				o.ObserveFloat64(sharpe, v, windowOpts[i])
			}
			if v, ok := ep.winRate(w); ok {
				o.ObserveFloat64(winRate, v, windowOpts[i])
			}
		}
		return nil
	}, sharpe, winRate, cumulative); err != nil {
		return nil, err
	}
	ctx := context.Background()
	ins.episodes.Add(ctx, 0, ins.win)
	ins.episodes.Add(ctx, 0, ins.loss)
	return ins, nil
}

// startTraining begins a training's episodes; the gauges follow it from now
// on.
func (ins *instruments) startTraining() *episodes {
	ep := newEpisodes(RollingWindows[len(RollingWindows)-1])
	ins.mu.Lock()
	ins.current = ep
	ins.mu.Unlock()
	return ep
}

// episode records one episode of the training ep.
func (ins *instruments) episode(ctx context.Context, ep *episodes, e hrl.Episode) {
	if math.IsNaN(e.Return) || math.IsInf(e.Return, 0) {
		return
	}
	ins.mu.Lock()
	ep.add(e.Return)
	ins.mu.Unlock()
	if e.Return > 0 {
		ins.episodes.Add(ctx, 1, ins.win)
	} else {
		ins.episodes.Add(ctx, 1, ins.loss)
	}
	ins.returns.Record(ctx, e.Return)
	ins.length.Record(ctx, int64(e.Bars))
}

// episodes holds one training's recent episode returns.
type episodes struct {
	ring       []float64 // the last len(ring) returns; ring[n%len] is the oldest once full
	n          int       // episodes so far
	cumulative float64
}

func newEpisodes(keep int) *episodes { return &episodes{ring: make([]float64, keep)} }

func (e *episodes) add(ret float64) {
	e.ring[e.n%len(e.ring)] = ret
	e.n++
	e.cumulative += ret
}

// last returns the last w returns, newest first; false when fewer than w
// episodes have run or w is more than the ring keeps.
func (e *episodes) last(w int) ([]float64, bool) {
	if w < 1 || w > len(e.ring) || e.n < w {
		return nil, false
	}
	out := make([]float64, w)
	for i := range out {
		out[i] = e.ring[(e.n-1-i)%len(e.ring)]
	}
	return out, true
}

// sharpe is the mean over the sample standard deviation of the last w
// returns; false when there are fewer, or they do not vary.
func (e *episodes) sharpe(w int) (float64, bool) {
	xs, ok := e.last(w)
	if !ok || w < 2 {
		return 0, false
	}
	var mean float64
	for _, x := range xs {
		mean += x
	}
	mean /= float64(w)
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	sd := math.Sqrt(ss / float64(w-1))
	if !(sd > 1e-12*math.Max(1, math.Abs(mean))) {
		return 0, false
	}
	return mean / sd, true
}

// winRate is the share of the last w returns above 0; false when there are
// fewer.
func (e *episodes) winRate(w int) (float64, bool) {
	xs, ok := e.last(w)
	if !ok {
		return 0, false
	}
	won := 0
	for _, x := range xs {
		if x > 0 {
			won++
		}
	}
	return float64(won) / float64(w), true
}
