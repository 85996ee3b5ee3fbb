package policy

import (
	"fmt"
	"sync"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// The network in gorgonia: each layer is h = act(x·W + b) for a batch x
// (rows are samples), with W stored in×out, the transpose of the layer's own
// out×in layout, and b a 1×out row broadcast over the batch.

// graphParams are the parameter nodes of a network in a graph, in layer order.
type graphParams struct {
	w, b []*G.Node
}

// addParams adds nodes holding the layers' values (in gorgonia's layout) to g.
// prefix names them ("theta" for the trained parameters, "anchor", "fisher").
func addParams(g *G.ExprGraph, layers []layer, prefix string) graphParams {
	var p graphParams
	for i, l := range layers {
		w := tensor.New(tensor.WithShape(l.in, l.out), tensor.WithBacking(transpose(l.w, l.out, l.in)))
		b := tensor.New(tensor.WithShape(1, l.out), tensor.WithBacking(append([]float64(nil), l.b...)))
		p.w = append(p.w, G.NewMatrix(g, tensor.Float64, G.WithShape(l.in, l.out), G.WithValue(w), G.WithName(fmt.Sprintf("%s_W%d", prefix, i))))
		p.b = append(p.b, G.NewMatrix(g, tensor.Float64, G.WithShape(1, l.out), G.WithValue(b), G.WithName(fmt.Sprintf("%s_b%d", prefix, i))))
	}
	return p
}

// transpose returns the cols×rows transpose of the rows×cols row-major m.
func transpose(m []float64, rows, cols int) []float64 {
	t := make([]float64, len(m))
	for r := range rows {
		for c := range cols {
			t[c*rows+r] = m[r*cols+c]
		}
	}
	return t
}

// logits adds the network's layers applied to x (batch×inputs) to the graph.
func logits(x *G.Node, p graphParams, relu bool) (*G.Node, error) {
	h := x
	for i := range p.w {
		xw, err := G.Mul(h, p.w[i])
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if h, err = G.BroadcastAdd(xw, p.b[i], nil, []byte{0}); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if i == len(p.w)-1 {
			break
		}
		if relu {
			h, err = G.Rectify(h)
		} else {
			h, err = G.Tanh(h)
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return h, nil
}

// gorgoniaModel is a network compiled into a gorgonia graph for one sample at
// a time: probs = softmax(layers((x − mean) / std)).
type gorgoniaModel struct {
	g     *G.ExprGraph
	vm    G.VM
	x     *G.Node
	xv    *tensor.Dense
	probs *G.Node
}

func newGorgoniaModel(n *Network) (m *gorgoniaModel, err error) {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	defer recoverGorgonia(&err)
	g := G.NewGraph()
	in := n.cfg.Inputs
	row := func(name string, v []float64) *G.Node {
		t := tensor.New(tensor.WithShape(1, in), tensor.WithBacking(append([]float64(nil), v...)))
		return G.NewMatrix(g, tensor.Float64, G.WithShape(1, in), G.WithValue(t), G.WithName(name))
	}
	m = &gorgoniaModel{g: g, xv: tensor.New(tensor.WithShape(1, in), tensor.Of(tensor.Float64))}
	m.x = G.NewMatrix(g, tensor.Float64, G.WithShape(1, in), G.WithName("x"))
	centred, err := G.Sub(m.x, row("mean", n.mean))
	if err != nil {
		return nil, fmt.Errorf("policy: gorgonia graph: %w", err)
	}
	z, err := G.HadamardDiv(centred, row("std", n.std))
	if err != nil {
		return nil, fmt.Errorf("policy: gorgonia graph: %w", err)
	}
	out, err := logits(z, addParams(g, n.layers, "theta"), n.relu)
	if err != nil {
		return nil, fmt.Errorf("policy: gorgonia graph: %w", err)
	}
	if m.probs, err = G.SoftMax(out); err != nil {
		return nil, fmt.Errorf("policy: gorgonia graph: %w", err)
	}
	m.vm = G.NewTapeMachine(g)
	return m, nil
}

// forward evaluates one sample, which has the right length.
func (m *gorgoniaModel) forward(x []float64, probs *[NumActions]float64) (err error) {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	defer recoverGorgonia(&err)
	copy(m.xv.Data().([]float64), x)
	if err := G.Let(m.x, m.xv); err != nil {
		return fmt.Errorf("policy: gorgonia: %w", err)
	}
	defer m.vm.Reset()
	if err := m.vm.RunAll(); err != nil {
		return fmt.Errorf("policy: gorgonia: %w", err)
	}
	copy(probs[:], m.probs.Value().Data().([]float64))
	return nil
}

func (m *gorgoniaModel) close() {
	gorgoniaMu.Lock()
	defer gorgoniaMu.Unlock()
	m.vm.Close()
}

// gorgoniaMu serialises every use of gorgonia in the process. Graphs are
// not independent in gorgonia v0.9.18: building two at once races on
// shared nodes (Node.Hashcode caches lazily), which the race detector
// reports. Training and the reference forward pass are not on the request
// path (serving uses Predict), so one at a time costs nothing that matters.
var gorgoniaMu sync.Mutex

// GorgoniaForward evaluates the network through a gorgonia graph, one sample
// at a time as serving would, and returns the softmax probabilities of each
// sample. It computes what Predict computes, through gorgonia's own
// operations (normalisation, matrix products, activations, softmax); it is
// there to check Predict and to benchmark against, not to serve.
//
// One sample at a time is also what keeps gorgonia's SoftMax right: in
// v0.9.18 its batched form shifts every row by a maximum that includes the
// first row's first logit, which overflows when rows differ widely.
func GorgoniaForward(n *Network, X [][]float64) ([][NumActions]float64, error) {
	if n == nil {
		return nil, fmt.Errorf("%w: nil network", ErrInvalidInput)
	}
	if err := CheckData(n.Inputs(), X, nil); err != nil {
		return nil, err
	}
	m, err := newGorgoniaModel(n)
	if err != nil {
		return nil, err
	}
	defer m.close()
	probs := make([][NumActions]float64, len(X))
	for i, x := range X {
		if err := m.forward(x, &probs[i]); err != nil {
			return nil, fmt.Errorf("sample %d: %w", i, err)
		}
	}
	return probs, nil
}

// recoverGorgonia turns a panic inside gorgonia into an error: this package
// promises errors, never panics, and gorgonia reports some problems by
// panicking.
func recoverGorgonia(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("policy: gorgonia panicked: %v", r)
	}
}
