package learner

import (
	"fmt"
	"math"
	"time"
)

// Config configures the learner. Zero values are not defaults: start from
// DefaultConfig.
type Config struct {
	// Model is the registered model the learner fine-tunes.
	Model string
	// Alias is the alias it trains from and moves on a publish (the one
	// InferenceService follows, e.g. production, or staging).
	Alias string
	// Experiment names the ExperimentService experiment of its runs.
	Experiment string
	// Lambda (λ ≥ 0) weighs the EWC penalty; 0 is plain fine-tuning. The
	// default, 100, is the forgetting benchmark's choice (README): with
	// this configuration's retrains it cuts plain fine-tuning's forgetting
	// of regime A by more than 70% while keeping over 90% of its accuracy
	// on regime B, on every seed and at every chunk size and γ tried.
	Lambda float64
	// Gamma (γ in [0, 1]) decays the running Fisher estimate on each
	// publish: F ← γF + F_new (online EWC). 0 keeps only the newest.
	Gamma float64
	// LearningRate of Adam.
	LearningRate float64
	// BatchSize of the mini-batches.
	BatchSize int
	// Epochs over the outcomes a retrain learns.
	Epochs int
	// Cadence is how often Run considers a retrain.
	Cadence time.Duration
	// MinNewOutcomes is how many outcomes must arrive after a retrain
	// before Run tries again: about how many a retrain learns, since each
	// outcome is learned once, by the first published retrain after it
	// leaves the hold-out.
	MinNewOutcomes int
	// ReplaySize bounds the replay buffer: the newest outcomes are kept.
	// Outcomes a retrain has not learned by the time they leave it are
	// never learned (while retrains are rejected, say).
	ReplaySize int
	// HoldOut is the newest fraction of the replay buffer held out of
	// training for the stability check; outcomes are learned once they
	// leave it.
	HoldOut float64
	// DegradationThreshold rejects a candidate whose accuracy on the
	// held-out replay set or on the previous version's evaluation set is
	// lower than the previous version's by more than this fraction.
	DegradationThreshold float64
	// Horizon and LabelThreshold turn a realised forward return into the
	// action that would have been right, as `quantmesh train` labels bars.
	Horizon        int
	LabelThreshold float64
	// Seed of the fine-tuning's shuffles.
	Seed int64
}

// DefaultConfig is the learner's defaults.
func DefaultConfig() Config {
	return Config{
		Model:                "policy",
		Alias:                "production",
		Experiment:           "online-learning",
		Lambda:               100,
		Gamma:                0.9,
		LearningRate:         1e-3,
		BatchSize:            32,
		Epochs:               5,
		Cadence:              time.Minute,
		MinNewOutcomes:       1000,
		ReplaySize:           10000,
		HoldOut:              0.2,
		DegradationThreshold: 0.2,
		Horizon:              5,
		LabelThreshold:       0.5,
		Seed:                 1,
	}
}

// Validate reports the first problem, naming the field.
func (c Config) Validate() error {
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case c.Model == "":
		return fmt.Errorf("model: required")
	case c.Alias == "":
		return fmt.Errorf("alias: required")
	case c.Experiment == "":
		return fmt.Errorf("experiment: required")
	case !finite(c.Lambda) || c.Lambda < 0:
		return fmt.Errorf("lambda: must be finite and ≥ 0, got %v", c.Lambda)
	case !(c.Gamma >= 0 && c.Gamma <= 1):
		return fmt.Errorf("gamma: must be in [0, 1], got %v", c.Gamma)
	case !finite(c.LearningRate) || c.LearningRate <= 0:
		return fmt.Errorf("learning rate: must be finite and > 0, got %v", c.LearningRate)
	case c.BatchSize < 1:
		return fmt.Errorf("batch size: must be ≥ 1, got %d", c.BatchSize)
	case c.Epochs < 1 || c.Epochs > 10000:
		return fmt.Errorf("epochs: must be in [1, 10000], got %d", c.Epochs)
	case c.Cadence <= 0:
		return fmt.Errorf("cadence: must be positive, got %s", c.Cadence)
	case c.MinNewOutcomes < 1:
		return fmt.Errorf("min new outcomes: must be ≥ 1, got %d", c.MinNewOutcomes)
	case c.ReplaySize < 2:
		return fmt.Errorf("replay size: must be ≥ 2 (a training and a held-out outcome), got %d", c.ReplaySize)
	case !(c.HoldOut > 0 && c.HoldOut < 1):
		return fmt.Errorf("hold-out: must be in (0, 1), got %v", c.HoldOut)
	case !(c.DegradationThreshold >= 0 && c.DegradationThreshold <= 1):
		return fmt.Errorf("degradation threshold: must be in [0, 1], got %v", c.DegradationThreshold)
	case c.Horizon < 1:
		return fmt.Errorf("horizon: must be ≥ 1, got %d", c.Horizon)
	case !finite(c.LabelThreshold) || c.LabelThreshold < 0:
		return fmt.Errorf("label threshold: must be finite and ≥ 0, got %v", c.LabelThreshold)
	}
	return nil
}
