package hrl

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/quantmesh/quantmesh/pkg/features"
	"github.com/quantmesh/quantmesh/pkg/policy"
)

// Training windows: gradients flow through the option and blending
// recursion over windowLen consecutive bars; each optimizer step takes
// batchWindows windows.
const (
	windowLen    = 32
	batchWindows = 4
)

// riskAversion is the lambda of the per-bar mean-variance utility the
// policy maximises, x - lambda/2 x^2, where x is the bar's net return
// divided by the root mean square of the training strategy returns. With
// lambda 0 the policy chases return and piles into the riskiest strategy;
// 0.15 was chosen after trying 0.05, 0.1, 0.15, 0.2, 0.3 and 1 (see the
// README's MetaControllerService section).
const riskAversion = 0.15

// The prior's strengths (see initPolicy).
const (
	initFavour = 5.0
	initRoute  = 4.0
	initStay   = -6.0
	initTerm   = 2.0
)

// EpochStats is one epoch's progress.
type EpochStats struct {
	Epoch int
	// Objective is the mean net reward per bar (portfolio return minus
	// switching cost, unscaled) over the epoch's windows.
	Objective float64
	// Episode is the epoch's episode; Train plays it only when it is given
	// a progress callback.
	Episode Episode
}

// Episode is one pass of the policy, as it stands at the end of an epoch,
// over the whole training window: the policy allocates bar by bar as it is
// served (Runner), and each bar's reward is what training counts for it,
// the portfolio's return over the next bar minus the switching cost of the
// bar's turnover. The first bar only sets the starting weights and earns
// nothing, as in training. Training itself learns from random windows of
// windowLen bars, not from this pass: the episode measures how the policy
// being trained would have done on its own training data.
type Episode struct {
	// Return is the sum of the rewarded bars' net returns: undiscounted,
	// simple (not compounded), without the mean-variance utility training
	// maximises.
	Return float64
	// Bars is the number of rewarded bars, one fewer than the training
	// window's.
	Bars int
}

// Train trains a policy on states[t] (the state vector of bar t) and
// returns[t] (the strategies' returns over bar t+1). strategies names the
// weight vector. It is deterministic for a given input and cfg.Seed.
func Train(ctx context.Context, cfg Config, strategies []string, states, returns [][]float64, progress func(EpochStats)) (*Policy, []EpochStats, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	if len(states) != len(returns) {
		return nil, nil, fmt.Errorf("%w: %d states and %d returns", ErrInvalidInput, len(states), len(returns))
	}
	if len(states) < windowLen+1 {
		return nil, nil, fmt.Errorf("%w: %d training bars, need at least %d", ErrInvalidInput, len(states), windowLen+1)
	}
	n := len(strategies)
	if n < 2 {
		return nil, nil, fmt.Errorf("%w: %d strategies, need at least 2", ErrInvalidInput, n)
	}
	d := len(states[0])
	for t := range states {
		if len(states[t]) != d || len(returns[t]) != n {
			return nil, nil, fmt.Errorf("%w: bar %d has %d state values and %d returns, want %d and %d", ErrInvalidInput, t, len(states[t]), len(returns[t]), d, n)
		}
		for _, x := range append(append([]float64(nil), states[t]...), returns[t]...) {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, nil, fmt.Errorf("%w: bar %d holds %v", ErrInvalidInput, t, x)
			}
		}
	}
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x68726c))
	p := initPolicy(cfg, strategies, d, rng)
	p.InMean, p.InStd = features.Standardiser(states)
	raw := states
	z := make([][]float64, len(states))
	for t, s := range states {
		z[t] = make([]float64, d)
		for i, x := range s {
			z[t][i] = (x - p.InMean[i]) / p.InStd[i]
		}
	}
	states = z
	// Rewards are scaled by the inverse root mean square of the strategy
	// returns so that the objective is of order one whatever the data.
	var ss float64
	for _, r := range returns {
		for _, x := range r {
			ss += x * x
		}
	}
	scale := 1.0
	if rms := math.Sqrt(ss / float64(len(returns)*n)); rms > 0 {
		scale = 1 / rms
	}
	tr, err := newTrainer(p, scale)
	if err != nil {
		return nil, nil, err
	}
	defer tr.close()
	starts := len(states) - windowLen + 1
	perEpoch := max(1, (len(states)/windowLen+batchWindows-1)/batchWindows)
	var stats []EpochStats
	for epoch := 1; epoch <= cfg.Epochs; epoch++ {
		var obj float64
		for range perEpoch {
			if err := ctx.Err(); err != nil {
				return nil, stats, err
			}
			tr.fill(states, returns, func() int { return rng.IntN(starts) })
			o, err := tr.step()
			if err != nil {
				return nil, stats, err
			}
			obj += o / scale
		}
		st := EpochStats{Epoch: epoch, Objective: obj / float64(perEpoch)}
		if progress != nil {
			tr.read(p)
			if st.Episode, err = p.Play(raw, returns); err != nil {
				return nil, stats, err
			}
		}
		stats = append(stats, st)
		if progress != nil {
			progress(st)
		}
	}
	tr.read(p)
	if err := p.validate(); err != nil {
		return nil, stats, fmt.Errorf("hrl: training diverged: %w", err)
	}
	return p, stats, nil
}

// Play runs the policy over states[t] (bar t's state vector) and returns[t]
// (the strategies' returns over bar t+1) from a fresh start, and returns the
// episode: the sum of the net returns of bars 1 to len(states)-1, each the
// served weights' return minus SwitchingCostBps/10000 times the turnover
// the bar causes (1/2 sum_i |w_t,i - w_t-1,i|).
func (p *Policy) Play(states, returns [][]float64) (Episode, error) {
	if len(states) != len(returns) {
		return Episode{}, fmt.Errorf("%w: %d states and %d returns", ErrInvalidInput, len(states), len(returns))
	}
	n := p.NumStrategies()
	r := p.NewRunner()
	w, prev, target := make([]float64, n), make([]float64, n), make([]float64, n)
	cost := p.Config.SwitchingCostBps / 10000
	var ep Episode
	for t := range states {
		if len(returns[t]) != n {
			return Episode{}, fmt.Errorf("%w: bar %d has %d returns, the policy has %d strategies", ErrInvalidInput, t, len(returns[t]), n)
		}
		if err := r.Step(states[t], w, target); err != nil {
			return Episode{}, fmt.Errorf("bar %d: %w", t, err)
		}
		if t > 0 {
			var ret, churn float64
			for i := range w {
				ret += w[i] * returns[t][i]
				churn += math.Abs(w[i] - prev[i])
			}
			ep.Return += ret - cost*churn/2
			ep.Bars++
		}
		copy(prev, w)
	}
	return ep, nil
}

func initPolicy(cfg Config, strategies []string, d int, rng *rand.Rand) *Policy {
	h, m, n := cfg.HiddenUnits, cfg.NumOptions, len(strategies)
	gauss := func(k int, sd float64) []float64 {
		out := make([]float64, k)
		for i := range out {
			out[i] = sd * rng.NormFloat64()
		}
		return out
	}
	p := &Policy{
		Format: Format, Config: cfg, Strategies: append([]string(nil), strategies...), StateDim: d,
		W1: gauss(d*h, 1/math.Sqrt(float64(d))), B1: make([]float64, h),
		W2: gauss(h*m, 1/math.Sqrt(float64(h))), B2: make([]float64, m),
		V: make([]float64, d*m),
		U: gauss(d*m, 0.1), UB: make([]float64, m),
		Theta: gauss(m*n, 1),
	}
	// Option o starts favouring strategy o mod N (about 0.9 of its
	// allocation), so that options begin distinct and each strategy has an
	// option: with the routing prior below, the untrained policy is close
	// to a blended naive router.
	for o := range m {
		p.Theta[o*n+o%n] += initFavour
	}
	// A prior the training refines: the high-level policy starts leaning
	// to option o in proportion to the regime-proportional weight of its
	// strategy (state value o mod N), and option o starts terminating
	// when that weight is low (sigmoid(2) = 0.88 at weight 0) and
	// persisting when it is high (sigmoid(-4) = 0.02 at weight 1).
	for o := range m {
		if i := o % n; i < d {
			p.V[i*m+o] = initRoute
			p.U[i*m+o] += initStay
		}
		p.UB[o] = initTerm
	}
	return p
}

// trainer is the unrolled training graph.
type trainer struct {
	g                               *G.ExprGraph
	vm                              G.VM
	solver                          G.Solver
	s, r                            *G.Node // (windowLen*batch) x d and x n, step-major
	sv, rv                          *tensor.Dense
	w1, b1, w2, b2, v, u, ub, theta *G.Node
	objective                       *G.Node // mean discounted scaled net reward (to report)
	cost                            *G.Node // what is minimised
	d, n                            int
}

func (tr *trainer) params() G.Nodes {
	return G.Nodes{tr.w1, tr.b1, tr.w2, tr.b2, tr.v, tr.u, tr.ub, tr.theta}
}

func matrix(g *G.ExprGraph, rows, cols int, v []float64, name string) *G.Node {
	t := tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(append([]float64(nil), v...)))
	return G.NewMatrix(g, tensor.Float64, G.WithShape(rows, cols), G.WithValue(t), G.WithName(name))
}

func newTrainer(p *Policy, scale float64) (tr *trainer, err error) {
	unlock := policy.LockGorgonia()
	defer unlock()
	defer recoverGorgonia(&err)
	cfg := p.Config
	d, h, m, n := p.StateDim, cfg.HiddenUnits, cfg.NumOptions, len(p.Strategies)
	B, L := batchWindows, windowLen
	g := G.NewGraph()
	tr = &trainer{g: g, d: d, n: n,
		sv: tensor.New(tensor.WithShape(L*B, d), tensor.Of(tensor.Float64)),
		rv: tensor.New(tensor.WithShape(L*B, n), tensor.Of(tensor.Float64)),
	}
	tr.s = G.NewMatrix(g, tensor.Float64, G.WithShape(L*B, d), G.WithName("s"))
	tr.r = G.NewMatrix(g, tensor.Float64, G.WithShape(L*B, n), G.WithName("r"))
	tr.w1, tr.b1 = matrix(g, d, h, p.W1, "w1"), matrix(g, 1, h, p.B1, "b1")
	tr.w2, tr.b2 = matrix(g, h, m, p.W2, "w2"), matrix(g, 1, m, p.B2, "b2")
	tr.v = matrix(g, d, m, p.V, "v")
	tr.u, tr.ub = matrix(g, d, m, p.U, "u"), matrix(g, 1, m, p.UB, "ub")
	tr.theta = matrix(g, m, n, p.Theta, "theta")

	var e error
	must := func(x *G.Node, err error) *G.Node {
		if err != nil && e == nil {
			e = err
		}
		return x
	}
	c := func(v float64) *G.Node { return G.NewConstant(v) }
	// The high-level policy and the terminations of every bar at once.
	hid := must(G.Tanh(must(G.BroadcastAdd(must(G.Mul(tr.s, tr.w1)), tr.b1, nil, []byte{0}))))
	logits := must(G.BroadcastAdd(must(G.Add(must(G.Mul(hid, tr.w2)), must(G.Mul(tr.s, tr.v)))), tr.b2, nil, []byte{0}))
	logPi := must(logSoftmax(logits))
	pi := must(G.Exp(logPi))
	beta := must(G.Sigmoid(must(G.BroadcastAdd(must(G.Mul(tr.s, tr.u)), tr.ub, nil, []byte{0}))))
	// Each option's allocation.
	optW := must(G.Exp(must(logSoftmax(tr.theta))))
	rows := func(x *G.Node, t int) *G.Node { return must(G.Slice(x, G.S(t*B, (t+1)*B))) }
	// The recursion.
	q := rows(pi, 0)
	w := must(G.Mul(q, optW))
	one := c(1)
	var total *G.Node
	var norm float64
	for t := 1; t < L; t++ {
		piT, betaT := rows(pi, t), rows(beta, t)
		stay := must(G.HadamardProd(q, must(G.Sub(one, betaT))))
		mass := must(G.Reshape(must(G.Sum(must(G.HadamardProd(q, betaT)), 1)), tensor.Shape{B, 1}))
		q = must(G.Add(stay, must(G.BroadcastHadamardProd(piT, mass, nil, []byte{1}))))
		target := must(G.Mul(q, optW))
		prev := w
		w = must(G.Add(must(G.Mul(c(1-cfg.BlendRate), prev)), must(G.Mul(c(cfg.BlendRate), target))))
		churn := must(G.Mul(c(0.5), must(G.Sum(must(G.Abs(must(G.Sub(w, prev)))), 1))))
		ret := must(G.Sum(must(G.HadamardProd(w, rows(tr.r, t))), 1))
		net := must(G.Sub(ret, must(G.Mul(c(cfg.SwitchingCostBps/10000), churn))))
		disc := math.Pow(cfg.Discount, float64(t-1))
		norm += disc
		x := must(G.Mul(c(scale), net))
		util := must(G.Sub(x, must(G.Mul(c(riskAversion/2), must(G.Square(x))))))
		term := must(G.Mul(c(disc), must(G.Sum(util))))
		if total == nil {
			total = term
		} else {
			total = must(G.Add(total, term))
		}
	}
	tr.objective = must(G.Div(total, c(norm*float64(B))))

	// Regularisers: the high-level policy's mean entropy, the mean
	// termination probability.
	ent := must(G.Neg(must(G.Mean(must(G.Sum(must(G.HadamardProd(pi, logPi)), 1))))))
	meanBeta := must(G.Mean(beta))
	tr.cost = must(G.Neg(tr.objective))
	tr.cost = must(G.Sub(tr.cost, must(G.Mul(c(cfg.EntropyCoefficient), ent))))
	tr.cost = must(G.Add(tr.cost, must(G.Mul(c(cfg.TerminationRegularization), meanBeta))))
	if e != nil {
		return nil, fmt.Errorf("hrl: gorgonia graph: %w", e)
	}
	if _, err := G.Grad(tr.cost, tr.params()...); err != nil {
		return nil, fmt.Errorf("hrl: gorgonia gradient: %w", err)
	}
	tr.vm = G.NewTapeMachine(g, G.BindDualValues(tr.params()...))
	tr.solver = G.NewAdamSolver(G.WithLearnRate(cfg.LearningRate))
	return tr, nil
}

// logSoftmax is the row-wise log-softmax, shifted by the row maximum so
// that it never overflows.
func logSoftmax(l *G.Node) (*G.Node, error) {
	mx, err := G.Max(l, 1)
	if err != nil {
		return nil, err
	}
	shifted, err := G.BroadcastSub(l, mx, nil, []byte{1})
	if err != nil {
		return nil, err
	}
	e, err := G.Exp(shifted)
	if err != nil {
		return nil, err
	}
	s, err := G.Sum(e, 1)
	if err != nil {
		return nil, err
	}
	lse, err := G.Log(s)
	if err != nil {
		return nil, err
	}
	return G.BroadcastSub(shifted, lse, nil, []byte{1})
}

// fill loads batchWindows windows starting at start() into the inputs.
func (tr *trainer) fill(states, returns [][]float64, start func() int) {
	sv, rv := tr.sv.Data().([]float64), tr.rv.Data().([]float64)
	for b := range batchWindows {
		s0 := start()
		for t := range windowLen {
			row := t*batchWindows + b
			copy(sv[row*tr.d:(row+1)*tr.d], states[s0+t])
			copy(rv[row*tr.n:(row+1)*tr.n], returns[s0+t])
		}
	}
}

// step evaluates the loaded batch, takes one Adam step and returns the
// objective before it.
func (tr *trainer) step() (obj float64, err error) {
	unlock := policy.LockGorgonia()
	defer unlock()
	defer recoverGorgonia(&err)
	defer tr.vm.Reset()
	if err := G.Let(tr.s, tr.sv); err != nil {
		return 0, err
	}
	if err := G.Let(tr.r, tr.rv); err != nil {
		return 0, err
	}
	if err := tr.vm.RunAll(); err != nil {
		return 0, err
	}
	obj = tr.objective.Value().Data().(float64)
	if err := tr.solver.Step(G.NodesToValueGrads(tr.params())); err != nil {
		return 0, err
	}
	return obj, nil
}

// read copies the trained values into p.
func (tr *trainer) read(p *Policy) {
	unlock := policy.LockGorgonia()
	defer unlock()
	get := func(n *G.Node) []float64 { return append([]float64(nil), n.Value().Data().([]float64)...) }
	p.W1, p.B1, p.W2, p.B2, p.V = get(tr.w1), get(tr.b1), get(tr.w2), get(tr.b2), get(tr.v)
	p.U, p.UB, p.Theta = get(tr.u), get(tr.ub), get(tr.theta)
}

func (tr *trainer) close() {
	unlock := policy.LockGorgonia()
	defer unlock()
	tr.vm.Close()
}

func recoverGorgonia(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("hrl: gorgonia panicked: %v", r)
	}
}
