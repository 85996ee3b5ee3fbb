package policy

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// Output is the network's answer for one sample.
type Output struct {
	// Logits are the output layer's values, indexed by Action.
	Logits [NumActions]float64
	// Probs is the softmax of Logits: each in [0, 1], summing to 1.
	Probs [NumActions]float64
	// Action is the most probable action (the first one on a tie).
	Action Action
	// Confidence is the probability of Action, the largest of Probs.
	Confidence float64
}

// scratch holds the activations of one forward pass.
type scratch struct{ a, b []float64 }

// Predict runs the plain Go forward pass on the features x: normalise, the
// hidden layers, the output layer, softmax. It is safe to call from many
// goroutines at once and allocates nothing (scratch space comes from a pool
// inside the network).
//
// It fails, wrapping ErrInvalidInput, when x does not have Inputs() values,
// when one is NaN or infinite, or when finite features so far out of range
// that the logits overflow; out is then left in an unspecified state.
func (n *Network) Predict(x []float64, out *Output) error {
	if out == nil {
		return fmt.Errorf("%w: nil *Output", ErrInvalidInput)
	}
	if len(x) != n.cfg.Inputs {
		return fmt.Errorf("%w: got %d features, the model takes %d", ErrInvalidInput, len(x), n.cfg.Inputs)
	}
	s := n.scratch.Get().(*scratch)
	err := n.forward(x, s, out)
	n.scratch.Put(s)
	return err
}

// forward computes out from x, which has the right length.
func (n *Network) forward(x []float64, s *scratch, out *Output) error {
	cur, next := s.a[:len(x)], s.b
	mean, std := n.mean[:len(x)], n.std[:len(x)]
	for i, v := range x {
		if v-v != 0 { // NaN or ±Inf
			return featureError(i, v)
		}
		cur[i] = (v - mean[i]) / std[i]
	}
	last := len(n.layers) - 1
	for li := range n.layers[:last] {
		l := &n.layers[li]
		h := next[:l.out]
		l.apply(cur, h)
		if n.relu {
			for j, v := range h {
				if v < 0 {
					h[j] = 0
				}
			}
		} else {
			for j, v := range h {
				h[j] = math.Tanh(v)
			}
		}
		cur, next = h, cur[:cap(cur)]
	}
	n.layers[last].apply(cur, out.Logits[:])
	return out.softmax()
}

// apply sets out = l.w·in + l.b. len(in) == l.in and len(out) == l.out.
func (l *layer) apply(in, out []float64) {
	copy(out, l.b)
	blasImpl.Dgemv(blas.NoTrans, l.out, l.in, 1, l.w, l.in, in, 1, 1, out, 1)
}

// blasImpl is gonum's BLAS, whose matrix–vector product is SIMD assembly on amd64.
var blasImpl gonum.Implementation

// softmax fills Probs, Action and Confidence from Logits.
func (o *Output) softmax() error {
	m := o.Logits[0]
	for _, v := range o.Logits[1:] {
		m = max(m, v)
	}
	if m-m != 0 { // max is NaN or ±Inf
		return fmt.Errorf("%w: features so far out of range that the logits overflow (%v)", ErrInvalidInput, o.Logits)
	}
	var sum float64
	for i, v := range o.Logits {
		if v-v != 0 { // NaN (max ignores it) or -Inf
			return fmt.Errorf("%w: features so far out of range that the logits overflow (%v)", ErrInvalidInput, o.Logits)
		}
		e := math.Exp(v - m)
		o.Probs[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range o.Probs {
		o.Probs[i] *= inv
	}
	o.Action = choose(o.Probs)
	o.Confidence = o.Probs[o.Action]
	return nil
}

// choose returns the most probable action; ties go to HOLD, then BUY,
// then SELL (doing nothing is the safe answer to an undecided model).
func choose(p [NumActions]float64) Action {
	best := ActionHold
	for _, a := range [...]Action{ActionBuy, ActionSell} {
		if p[a] > p[best] {
			best = a
		}
	}
	return best
}

func featureError(i int, v float64) error {
	return fmt.Errorf("%w: feature %d is %v", ErrInvalidInput, i, v)
}

// CheckData reports the first problem with a labelled data set for a network
// with the given number of inputs: no samples, X and y of different lengths,
// a row of the wrong length, a NaN or infinite feature, a label that is not
// an Action. y may be nil to check X alone.
func CheckData(inputs int, X [][]float64, y []Action) error {
	if len(X) == 0 {
		return fmt.Errorf("%w: no samples", ErrInvalidInput)
	}
	if y != nil && len(y) != len(X) {
		return fmt.Errorf("%w: %d samples but %d labels", ErrInvalidInput, len(X), len(y))
	}
	for r, row := range X {
		if len(row) != inputs {
			return fmt.Errorf("%w: sample %d has %d features, the model takes %d", ErrInvalidInput, r, len(row), inputs)
		}
		for i, v := range row {
			if v-v != 0 {
				return fmt.Errorf("%w: sample %d: feature %d is %v", ErrInvalidInput, r, i, v)
			}
		}
	}
	for r, a := range y {
		if !a.Valid() {
			return fmt.Errorf("%w: sample %d: label %d is not an action (0 BUY, 1 HOLD, 2 SELL)", ErrInvalidInput, r, int(a))
		}
	}
	return nil
}

// Evaluate returns the mean cross-entropy −log p(y|x) of the network on a
// labelled data set, and the fraction of samples whose predicted Action is
// the label. Both are NaN when the data set is invalid (CheckData says why)
// or a sample's logits overflow.
func Evaluate(n *Network, X [][]float64, y []Action) (loss, accuracy float64) {
	if n == nil || y == nil || CheckData(n.Inputs(), X, y) != nil {
		return math.NaN(), math.NaN()
	}
	var out Output
	var sumLoss float64
	correct := 0
	for r, x := range X {
		if err := n.Predict(x, &out); err != nil {
			return math.NaN(), math.NaN()
		}
		sumLoss += out.nll(y[r])
		if out.Action == y[r] {
			correct++
		}
	}
	return sumLoss / float64(len(X)), float64(correct) / float64(len(X))
}

// nll is −log Probs[a], computed from the logits so that it stays finite and
// accurate when Probs[a] underflows.
func (o *Output) nll(a Action) float64 {
	m := o.Logits[0]
	for _, v := range o.Logits[1:] {
		m = max(m, v)
	}
	var sum float64
	for _, v := range o.Logits {
		sum += math.Exp(v - m)
	}
	return m + math.Log(sum) - o.Logits[a]
}
