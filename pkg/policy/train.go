package policy

import (
	"context"
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/stat"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Optimizers.
const (
	OptimizerAdam     = "adam"
	OptimizerMomentum = "momentum" // SGD with momentum
)

// TrainConfig configures Train. Zero values take the documented defaults.
type TrainConfig struct {
	// Config is the shape of the network. Inputs may be 0 to take it from the
	// data. When fine-tuning (Start set) it may be left zero entirely; if set
	// it must equal Start's.
	Config
	// Epochs is the number of passes over the training split (default 20).
	Epochs int
	// BatchSize is the number of samples per gradient step (default 64; at
	// most the size of the training split). The last batch of an epoch may be
	// smaller; every sample is used once per epoch.
	BatchSize int
	// LearningRate of the optimizer (default 1e-3 for Adam, 1e-2 for momentum).
	LearningRate float64
	// Optimizer is "adam" (default) or "momentum" (SGD with momentum).
	Optimizer string
	// Momentum of the "momentum" optimizer (default 0.9; must be in [0, 1)).
	Momentum float64
	// L2 adds (L2/2)·Σ w² over the weights (not the biases) to the objective.
	L2 float64
	// Seed drives every random choice: initial weights, the validation split
	// and the per-epoch shuffles. Same data, config and seed, same weights.
	Seed int64
	// ValidationFraction of the samples (chosen at random by Seed) is held out
	// and evaluated after each epoch; 0 (the default) holds out nothing. At
	// most 0.5.
	ValidationFraction float64
	// ClassWeights weights each sample's loss by the inverse frequency of its
	// label in the training split (total weight N spread evenly across the
	// labels present), so that a rare action is not ignored.
	ClassWeights bool
	// Start, when set, fine-tunes these weights instead of initialising new
	// ones, and keeps their input normalisation (it is not refitted).
	Start *Network
	// EWC, when set, adds an Elastic Weight Consolidation penalty to the
	// objective. Without Start, training starts from EWC.Anchor.
	EWC *EWC
}

// EpochStats reports one epoch of Train.
type EpochStats struct {
	// Epoch counts from 1.
	Epoch int
	// Loss and Accuracy are Evaluate's on the training split with the weights
	// at the end of the epoch (unweighted cross-entropy).
	Loss, Accuracy float64
	// ValLoss and ValAccuracy are Evaluate's on the validation split; zero
	// when ValidationFraction is 0.
	ValLoss, ValAccuracy float64
	// Objective is the mean over the epoch's steps of what the optimizer
	// minimised: the (class-weighted) cross-entropy plus the L2 and EWC
	// penalties, each at the weights before its step.
	Objective float64
}

// resolved is a validated TrainConfig with its defaults applied.
type resolved struct {
	TrainConfig
	start *Network // the initial weights, or nil for New(Config, Seed)
}

func (c TrainConfig) resolve(X [][]float64) (resolved, error) {
	r := resolved{TrainConfig: c, start: c.Start}
	if r.start == nil && c.EWC != nil {
		r.start = c.EWC.Anchor
	}
	if r.start != nil {
		zero := r.Inputs == 0 && len(r.Hidden) == 0 && r.Activation == ""
		if !zero && !r.Config.Equal(r.start.cfg) {
			return r, fmt.Errorf("%w: config %s differs from the starting network's %s", ErrInvalidConfig, r.Config, r.start.cfg)
		}
		r.Config = r.start.Config()
	} else if r.Inputs == 0 && len(X) > 0 {
		r.Inputs = len(X[0])
	}
	if err := r.Config.Validate(); err != nil {
		return r, err
	}
	r.Config = r.Config.normalized()
	if r.Epochs == 0 {
		r.Epochs = 20
	}
	if r.BatchSize == 0 {
		r.BatchSize = 64
	}
	if r.Optimizer == "" {
		r.Optimizer = OptimizerAdam
	}
	switch r.Optimizer {
	case OptimizerAdam:
		if r.LearningRate == 0 {
			r.LearningRate = 1e-3
		}
	case OptimizerMomentum:
		if r.LearningRate == 0 {
			r.LearningRate = 1e-2
		}
		if r.Momentum == 0 {
			r.Momentum = 0.9
		}
	default:
		return r, fmt.Errorf("%w: optimizer must be %q or %q, got %q", ErrInvalidConfig, OptimizerAdam, OptimizerMomentum, r.Optimizer)
	}
	switch {
	case r.Epochs < 1 || r.Epochs > 1_000_000:
		return r, fmt.Errorf("%w: epochs must be in [1, 1000000], got %d", ErrInvalidConfig, r.Epochs)
	case r.BatchSize < 1:
		return r, fmt.Errorf("%w: batch size must be ≥ 1, got %d", ErrInvalidConfig, r.BatchSize)
	case !(r.LearningRate > 0) || math.IsInf(r.LearningRate, 0):
		return r, fmt.Errorf("%w: learning rate must be finite and > 0, got %v", ErrInvalidConfig, r.LearningRate)
	case !(r.Momentum >= 0 && r.Momentum < 1):
		return r, fmt.Errorf("%w: momentum must be in [0, 1), got %v", ErrInvalidConfig, r.Momentum)
	case !(r.L2 >= 0) || math.IsInf(r.L2, 0):
		return r, fmt.Errorf("%w: L2 must be finite and ≥ 0, got %v", ErrInvalidConfig, r.L2)
	case !(r.ValidationFraction >= 0 && r.ValidationFraction <= 0.5):
		return r, fmt.Errorf("%w: validation fraction must be in [0, 0.5], got %v", ErrInvalidConfig, r.ValidationFraction)
	}
	if r.EWC != nil {
		if err := r.EWC.check(r.start); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Train fits a network to the labelled samples (X, y) with gorgonia:
// softmax cross-entropy, mini-batches, Adam or SGD with momentum. It first
// fits the input normalisation (per-feature mean and standard deviation) on
// the training split, unless it fine-tunes cfg.Start. After each epoch it
// calls progress (if not nil) with that epoch's stats, and it returns them
// all with the trained network.
//
// Train is deterministic: the same data, config and seed give the same
// weights, byte for byte (MarshalBinary). It stops with ctx's error (and no
// network) when ctx is done, and fails with ErrInvalidInput or
// ErrInvalidConfig on bad data or config, and with an error saying so if the
// objective stops being finite (lower the learning rate).
func Train(ctx context.Context, cfg TrainConfig, X [][]float64, y []Action, progress func(EpochStats)) (*Network, []EpochStats, error) {
	rc, err := cfg.resolve(X)
	if err != nil {
		return nil, nil, err
	}
	if err := CheckData(rc.Inputs, X, y); err != nil {
		return nil, nil, err
	}
	if y == nil {
		return nil, nil, fmt.Errorf("%w: no labels", ErrInvalidInput)
	}
	if len(X) < 2 && rc.ValidationFraction > 0 {
		return nil, nil, fmt.Errorf("%w: %d sample, too few to hold out a validation split", ErrInvalidInput, len(X))
	}

	// Split: a seeded permutation, the validation split at its end.
	perm := make([]int, len(X))
	for i := range perm {
		perm[i] = i
	}
	newRNG(rc.Seed, streamSplit).shuffle(perm)
	nVal := 0
	if rc.ValidationFraction > 0 {
		nVal = min(max(int(math.Round(rc.ValidationFraction*float64(len(X)))), 1), len(X)-1)
	}
	trainIdx, valIdx := perm[:len(X)-nVal], perm[len(X)-nVal:]
	// Keep the original order within each split, so that the split is the
	// only thing the permutation decides.
	slices.Sort(trainIdx)
	slices.Sort(valIdx)
	Xtr, ytr := pick(X, y, trainIdx)
	Xval, yval := pick(X, y, valIdx)

	// The starting network, with the normalisation training uses.
	var net *Network
	if rc.start != nil {
		net = rc.start
	} else {
		if net, err = New(rc.Config, rc.Seed); err != nil {
			return nil, nil, err
		}
		mean, std := fitNormalization(rc.Inputs, Xtr)
		net = newNetwork(net.cfg, mean, std, net.layers)
	}

	tr, err := newTrainer(rc, net, min(rc.BatchSize, len(Xtr)))
	if err != nil {
		return nil, nil, err
	}
	defer tr.close()

	// Normalise the training split once.
	in := rc.Inputs
	z := make([]float64, len(Xtr)*in)
	for r, x := range Xtr {
		for i, v := range x {
			v = (v - net.mean[i]) / net.std[i]
			if v-v != 0 {
				return nil, nil, fmt.Errorf("%w: sample %d: feature %d overflows the network's normalisation", ErrInvalidInput, trainIdx[r], i)
			}
			z[r*in+i] = v
		}
	}
	weights := sampleWeights(ytr, rc.ClassWeights)

	order := make([]int, len(Xtr))
	for i := range order {
		order[i] = i
	}
	shuffler := newRNG(rc.Seed, streamEpoch)
	stats := make([]EpochStats, 0, rc.Epochs)
	for epoch := 1; epoch <= rc.Epochs; epoch++ {
		shuffler.shuffle(order)
		var sumObjective float64
		steps := 0
		for lo := 0; lo < len(order); lo += tr.batch {
			if err := ctx.Err(); err != nil {
				return nil, nil, fmt.Errorf("policy: training stopped in epoch %d: %w", epoch, err)
			}
			rows := order[lo:min(lo+tr.batch, len(order))]
			tr.fill(z, ytr, weights, rows)
			obj, err := tr.step()
			if err != nil {
				return nil, nil, fmt.Errorf("policy: epoch %d: %w", epoch, err)
			}
			if math.IsNaN(obj) || math.IsInf(obj, 0) {
				return nil, nil, fmt.Errorf("policy: training diverged in epoch %d: the objective is %v (lower the learning rate)", epoch, obj)
			}
			sumObjective += obj
			steps++
		}
		net = net.withParams(tr.params())
		s := EpochStats{Epoch: epoch, Objective: sumObjective / float64(steps)}
		s.Loss, s.Accuracy = Evaluate(net, Xtr, ytr)
		if len(Xval) > 0 {
			s.ValLoss, s.ValAccuracy = Evaluate(net, Xval, yval)
		}
		if math.IsNaN(s.Loss) {
			return nil, nil, fmt.Errorf("policy: training diverged in epoch %d: the weights overflow on the training data (lower the learning rate)", epoch)
		}
		stats = append(stats, s)
		if progress != nil {
			progress(s)
		}
	}
	return net, stats, nil
}

func pick(X [][]float64, y []Action, idx []int) ([][]float64, []Action) {
	Xs := make([][]float64, len(idx))
	ys := make([]Action, len(idx))
	for i, j := range idx {
		Xs[i], ys[i] = X[j], y[j]
	}
	return Xs, ys
}

// fitNormalization returns the per-feature mean and standard deviation of X.
// A feature with no spread (or too little to divide by) gets std 1.
func fitNormalization(inputs int, X [][]float64) (mean, std []float64) {
	mean, std = make([]float64, inputs), make([]float64, inputs)
	col := make([]float64, len(X))
	for i := range inputs {
		for r, x := range X {
			col[r] = x[i]
		}
		m, s := stat.MeanStdDev(col, nil)
		if len(X) < 2 || !(s > 1e-12*max(1, math.Abs(m))) || math.IsInf(s, 0) || math.IsInf(m, 0) {
			s = 1
		}
		if math.IsInf(m, 0) || math.IsNaN(m) {
			m = 0
		}
		mean[i], std[i] = m, s
	}
	return mean, std
}

// sampleWeights returns each sample's weight in the loss: 1, or with class
// weights N / (K·countₖ) for a sample of label k, K labels present.
func sampleWeights(y []Action, classWeights bool) []float64 {
	w := make([]float64, len(y))
	var counts [NumActions]int
	for _, a := range y {
		counts[a]++
	}
	present := 0
	for _, c := range counts {
		if c > 0 {
			present++
		}
	}
	for i, a := range y {
		w[i] = 1
		if classWeights {
			w[i] = float64(len(y)) / (float64(present) * float64(counts[a]))
		}
	}
	return w
}

// trainer is the training graph: for a batch of normalised inputs x and a
// target matrix t (row r: the sample's weight over the batch's total weight,
// in the column of its label; zero rows for padding), the objective is
//
//	−Σ t ⊙ log softmax(logits(x)) + (L2/2)·Σ W² + EWC penalty
//
// i.e. the weighted mean cross-entropy of the batch plus the penalties.
type trainer struct {
	batch  int
	g      *G.ExprGraph
	vm     G.VM
	cfg    Config
	x, t   *G.Node
	xv, tv *tensor.Dense
	theta  graphParams
	cost   *G.Node
	solver G.Solver
}

func newTrainer(rc resolved, start *Network, batch int) (tr *trainer, err error) {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	defer recoverGorgonia(&err)
	g := G.NewGraph()
	in := rc.Inputs
	tr = &trainer{
		batch: batch,
		g:     g,
		cfg:   rc.Config,
		xv:    tensor.New(tensor.WithShape(batch, in), tensor.Of(tensor.Float64)),
		tv:    tensor.New(tensor.WithShape(batch, NumActions), tensor.Of(tensor.Float64)),
		x:     G.NewMatrix(g, tensor.Float64, G.WithShape(batch, in), G.WithName("x")),
		t:     G.NewMatrix(g, tensor.Float64, G.WithShape(batch, NumActions), G.WithName("t")),
		theta: addParams(g, start.layers, "theta"),
	}
	wrap := func(err error) error { return fmt.Errorf("policy: gorgonia training graph: %w", err) }
	out, err := logits(tr.x, tr.theta, start.relu)
	if err != nil {
		return nil, wrap(err)
	}
	logp, err := logSoftmax(out)
	if err != nil {
		return nil, wrap(err)
	}
	wlogp, err := G.HadamardProd(tr.t, logp)
	if err != nil {
		return nil, wrap(err)
	}
	sum, err := G.Sum(wlogp)
	if err != nil {
		return nil, wrap(err)
	}
	if tr.cost, err = G.Neg(sum); err != nil {
		return nil, wrap(err)
	}
	if rc.L2 > 0 {
		l2, err := l2Penalty(g, tr.theta, rc.L2)
		if err != nil {
			return nil, wrap(err)
		}
		if tr.cost, err = G.Add(tr.cost, l2); err != nil {
			return nil, wrap(err)
		}
	}
	if rc.EWC != nil && rc.EWC.Lambda > 0 {
		pen, err := rc.EWC.penalty(g, tr.theta)
		if err != nil {
			return nil, wrap(err)
		}
		if tr.cost, err = G.Add(tr.cost, pen); err != nil {
			return nil, wrap(err)
		}
	}
	learnables := tr.theta.learnables()
	if _, err := G.Grad(tr.cost, learnables...); err != nil {
		return nil, wrap(err)
	}
	tr.vm = G.NewTapeMachine(g, G.BindDualValues(learnables...))
	switch rc.Optimizer {
	case OptimizerMomentum:
		tr.solver = G.NewMomentum(G.WithLearnRate(rc.LearningRate), G.WithMomentum(rc.Momentum))
	default:
		tr.solver = G.NewAdamSolver(G.WithLearnRate(rc.LearningRate))
	}
	return tr, nil
}

// logSoftmax is the row-wise log-softmax of a batch of logits, computed as
// (l − max) − log Σ exp(l − max) so that it never overflows. (gorgonia's own
// LogSoftMax takes the maximum of the wrong row for batches after the first
// row, which can overflow.) The maximum is a constant shift: its gradient
// contributions cancel.
func logSoftmax(l *G.Node) (*G.Node, error) {
	m, err := G.Max(l, 1)
	if err != nil {
		return nil, err
	}
	shifted, err := G.BroadcastSub(l, m, nil, []byte{1})
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

// l2Penalty is (l2/2)·Σ W² over the weight matrices.
func l2Penalty(g *G.ExprGraph, theta graphParams, l2 float64) (*G.Node, error) {
	var total *G.Node
	for _, w := range theta.w {
		sq, err := G.Square(w)
		if err != nil {
			return nil, err
		}
		s, err := G.Sum(sq)
		if err != nil {
			return nil, err
		}
		if total == nil {
			total = s
		} else if total, err = G.Add(total, s); err != nil {
			return nil, err
		}
	}
	return G.Mul(G.NewConstant(l2/2, G.WithName("l2_half")), total)
}

// fill loads the samples rows (indices into z, y, w) into the batch,
// padding with zero rows that carry no weight.
func (tr *trainer) fill(z []float64, y []Action, w []float64, rows []int) {
	in := tr.cfg.Inputs
	xs := tr.xv.Data().([]float64)
	ts := tr.tv.Data().([]float64)
	clear(xs)
	clear(ts)
	var total float64
	for _, r := range rows {
		total += w[r]
	}
	for i, r := range rows {
		copy(xs[i*in:(i+1)*in], z[r*in:(r+1)*in])
		ts[i*NumActions+int(y[r])] = w[r] / total
	}
}

// run evaluates the objective and its gradient for the loaded batch.
func (tr *trainer) run() (float64, error) {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	return tr.runLocked()
}

func (tr *trainer) runLocked() (float64, error) {
	if err := G.Let(tr.x, tr.xv); err != nil {
		return 0, err
	}
	if err := G.Let(tr.t, tr.tv); err != nil {
		return 0, err
	}
	if err := tr.vm.RunAll(); err != nil {
		return 0, err
	}
	return tr.cost.Value().Data().(float64), nil
}

// step runs the loaded batch and takes one optimizer step; it returns the
// objective before the step.
func (tr *trainer) step() (obj float64, err error) {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	defer recoverGorgonia(&err)
	defer tr.vm.Reset()
	if obj, err = tr.runLocked(); err != nil {
		return 0, err
	}
	if err := tr.solver.Step(G.NodesToValueGrads(tr.theta.learnables())); err != nil {
		return 0, err
	}
	return obj, nil
}

// learnables lists the parameters in the order W₀, b₀, W₁, b₁, ...
func (p graphParams) learnables() G.Nodes {
	ns := make(G.Nodes, 0, 2*len(p.w))
	for i := range p.w {
		ns = append(ns, p.w[i], p.b[i])
	}
	return ns
}

// readParams copies the current values of p into new layers of shape cfg.
func readParams(cfg Config, p graphParams) []layer {
	layers := emptyLayers(cfg)
	for i := range layers {
		l := &layers[i]
		w := p.w[i].Value().Data().([]float64) // in×out
		for r := range l.in {
			for c := range l.out {
				l.w[c*l.in+r] = w[r*l.out+c]
			}
		}
		copy(l.b, p.b[i].Value().Data().([]float64))
	}
	return layers
}

// params returns a copy of the current parameters.
func (tr *trainer) params() []layer { return readParams(tr.cfg, tr.theta) }

func (tr *trainer) close() {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	tr.vm.Close()
}
