package regime

import (
	"context"
	"embed"
	"time"

	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
)

//go:embed migrations
var migrationFiles embed.FS

// Migrations is the schema of RegimeService's tables.
func Migrations() store.MigrationSet { return store.Embedded("regime", migrationFiles) }

// Bar is one stored bar.
type Bar struct {
	Symbol                 string
	Time                   time.Time // microsecond precision
	Open, High, Low, Close float64
	Volume                 float64
	HasVolume              bool
}

// StoredModel is a fitted model as stored.
type StoredModel struct {
	// Model is the contract's view, FULL, without active symbols.
	Model *regimev1.Model
	// Mixture is the pkg/dpgmm model's bytes.
	Mixture []byte
	// Meta is what classification needs beside the mixture.
	Meta ModelMeta
}

// ModelMeta is a model's classification details that the contract's view
// does not carry.
type ModelMeta struct {
	// Scaler is the standardisation the model was fitted with, nil when
	// none.
	Scaler *Scaler `json:"scaler"`
	// Components holds the mixture component of each regime, by regime
	// index.
	Components []int `json:"components"`
}

// Scaler z-scores features: (x - Mean) / Std.
type Scaler struct {
	Mean []float64 `json:"mean"`
	Std  []float64 `json:"std"`
}

// Write is one ingest message's effect, committed atomically.
type Write struct {
	Bars   []Bar
	States []*regimev1.RegimeState
}

// Store persists RegimeService's state. Methods return apierr errors;
// implementations are safe for concurrent use.
type Store interface {
	// Commit stores bars and states (and each state's symbol's latest) in
	// one transaction.
	Commit(ctx context.Context, w Write) error
	// LastBars returns the last n bars of symbol, oldest first.
	LastBars(ctx context.Context, symbol string, n int) ([]Bar, error)
	// MaxClose returns the highest close of symbol's bars (0 when none):
	// the running high that drawdown features measure from.
	MaxClose(ctx context.Context, symbol string) (float64, error)
	// BarAt returns the bar of symbol at t, or nil.
	BarAt(ctx context.Context, symbol string, t time.Time) (*Bar, error)
	// Bars returns symbol's bars in [start, end) (zero times are open),
	// oldest first.
	Bars(ctx context.Context, symbol string, start, end time.Time) ([]Bar, error)
	// CreateModel stores a model and, in the same transaction, activates
	// it for symbols.
	CreateModel(ctx context.Context, m StoredModel, activate []string, at time.Time) error
	// GetModel reads a model; NotFound when unknown.
	GetModel(ctx context.Context, id string) (StoredModel, error)
	// ListModels reads up to limit models with ids below before (empty:
	// from the newest), newest first; activeOnly keeps models active for
	// some symbol.
	ListModels(ctx context.Context, before string, limit int, activeOnly bool) ([]StoredModel, error)
	// Activate makes model the active model of symbols and stores the
	// states of the reclassified symbols, in one transaction.
	Activate(ctx context.Context, modelID string, symbols []string, at time.Time, states []*regimev1.RegimeState) error
	// Symbols returns every symbol with stored bars, sorted.
	Symbols(ctx context.Context) ([]string, error)
	// Activations returns every symbol's active model id.
	Activations(ctx context.Context) (map[string]string, error)
	// Latest returns every symbol's latest state.
	Latest(ctx context.Context) (map[string]*regimev1.RegimeState, error)
	// LastSequence returns the highest state sequence ever stored (0 when
	// none).
	LastSequence(ctx context.Context) (uint64, error)
	// States returns up to limit states with sequences above after, in
	// sequence order, of symbols (all when empty).
	States(ctx context.Context, after uint64, symbols []string, limit int) ([]*regimev1.RegimeState, error)
	// FirstSequence returns the oldest retained state sequence (0 when
	// none).
	FirstSequence(ctx context.Context) (uint64, error)
	// PruneStates deletes states with sequences at or below upTo, keeping
	// every symbol's latest in regime_latest.
	PruneStates(ctx context.Context, upTo uint64) error
}
