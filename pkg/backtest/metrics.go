package backtest

import "math"

// Metrics are one policy's results over the evaluated bars.
//
// Definitions (the contract's PolicyMetrics):
//   - churn of bar t: half the L1 distance between the weights decided at
//     t and at t-1, 1/2 * sum_i |w_t,i - w_t-1,i|, in [0, 1];
//   - ChurnRate: its mean over the evaluated bars; MaxDisruption its max;
//   - traded of bar t: the change of the net exposure to the instrument,
//     |e_t - e_t-1| with e_t = sum_i w_t,i * p_t,i and p_t,i strategy i's
//     position decided at t (see the package comment);
//   - net return of bar t+1: sum_i w_t,i * r_t+1,i - cost * traded_t, with
//     cost = switching_cost_bps / 10000;
//   - Sharpe: mean / sample standard deviation of the net returns times
//     sqrt(periods per year), risk-free rate 0; 0 when the deviation is 0;
//   - TotalReturn: prod(1 + r) - 1;
//   - MaxDrawdown: the largest fall of equity (starting at 1) from a
//     previous peak, as a positive fraction;
//   - TurnoverCost: the sum of cost * traded_t charged. Churn is not
//     charged: moving weight between strategies holding the same position
//     trades nothing, and a strategy's own trades are charged under
//     constant weights.
type Metrics struct {
	Bars                 int
	ChurnRate            float64
	MaxDisruption        float64
	Sharpe               float64
	TotalReturn          float64
	MaxDrawdown          float64
	TurnoverCost         float64
	AnnualizedVolatility float64
	MeanWeights          []float64
}

// Churn is half the L1 distance between two weight vectors.
func Churn(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += math.Abs(a[i] - b[i])
	}
	return s / 2
}

// compute returns the metrics of the accumulated net returns, churns,
// traded exposures and weights (one row per evaluated bar).
func compute(a *accumulator, cost float64, periodsPerYear int) Metrics {
	net, churn, weights := a.net, a.churn, a.weights
	m := Metrics{Bars: len(net)}
	if len(net) == 0 {
		return m
	}
	equity, peak := 1.0, 1.0
	var sum float64
	for i, r := range net {
		sum += r
		m.ChurnRate += churn[i]
		m.MaxDisruption = math.Max(m.MaxDisruption, churn[i])
		m.TurnoverCost += cost * a.traded[i]
		equity *= 1 + r
		peak = math.Max(peak, equity)
		m.MaxDrawdown = math.Max(m.MaxDrawdown, 1-equity/peak)
	}
	n := float64(len(net))
	m.ChurnRate /= n
	m.TotalReturn = equity - 1
	mean := sum / n
	if len(net) > 1 {
		var ss float64
		for _, r := range net {
			ss += (r - mean) * (r - mean)
		}
		sd := math.Sqrt(ss / (n - 1))
		m.AnnualizedVolatility = sd * math.Sqrt(float64(periodsPerYear))
		if sd > 0 {
			m.Sharpe = mean / sd * math.Sqrt(float64(periodsPerYear))
		}
	}
	if len(weights) > 0 {
		m.MeanWeights = make([]float64, len(weights[0]))
		for _, w := range weights {
			for i, v := range w {
				m.MeanWeights[i] += v / float64(len(weights))
			}
		}
	}
	return m
}
