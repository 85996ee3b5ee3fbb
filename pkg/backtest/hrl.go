package backtest

import (
	"context"
	"errors"

	"github.com/quantmesh/quantmesh/pkg/hrl"
)

type hrlPolicy struct{ p *hrl.Policy }

func (h hrlPolicy) NewRunner() Runner { return h.p.NewRunner() }

// HRLPolicy adapts a trained hierarchical policy.
func HRLPolicy(p *hrl.Policy) Policy { return hrlPolicy{p} }

// HRLTrainer trains a fresh hierarchical policy with cfg per fold.
// Invalid hyperparameters are ErrInvalid.
func HRLTrainer(cfg hrl.Config, strategies []string, progress func(hrl.EpochStats)) Trainer {
	return func(ctx context.Context, states, returns [][]float64) (Policy, error) {
		p, _, err := hrl.Train(ctx, cfg, strategies, states, returns, progress)
		if errors.Is(err, hrl.ErrInvalidInput) {
			return nil, invalid("%v", err)
		}
		if err != nil {
			return nil, err
		}
		return HRLPolicy(p), nil
	}
}
