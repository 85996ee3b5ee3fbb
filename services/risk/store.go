package risk

import (
	"context"
	"embed"
	"time"

	"go.opentelemetry.io/otel/trace"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/store"
)

//go:embed migrations
var migrationFiles embed.FS

// Migrations is the schema of the risk service's tables.
func Migrations() store.MigrationSet { return store.Embedded("risk", migrationFiles) }

// Rows are value copies of in-memory state, taken under the account lock
// and written by the store in the order they were enqueued.

// accountRow is an account's persistent state. With full unset only the
// money anchors (cash, day start, high water) are written.
type accountRow struct {
	id        string
	full      bool
	created   time.Time
	limits    *riskv1.Limits
	kill      *riskv1.KillSwitchState
	cash      float64
	dayStart  time.Time
	dayEquity float64
	highWater float64
}

type positionRow struct {
	accountID string
	symbol    string
	qty       float64
	avgPrice  float64
	realized  float64
	updated   time.Time
}

type reservationRow = reservation

type fillRow struct {
	accountID     string
	fillID        string
	reservationID string
	quantity      float64
	price         float64
	fee           float64
	at            time.Time
}

type priceRow struct {
	symbol string
	price  float64
	at     time.Time
}

// unit is one durable change: everything in it commits together. Events get
// their sequence numbers at commit.
type unit struct {
	accounts     []accountRow
	positions    []positionRow
	reservations []reservationRow
	fills        []fillRow
	prices       []priceRow
	events       []*riskv1.RiskEvent
	// span is the context of the request that made the change; the
	// commit's span links to it when it is sampled.
	span trace.SpanContext
	// chain is the account's chain of writes this unit belongs to; nil
	// for writes of no account.
	chain *writeChain
}

// writeChain links the writes of one account submitted since its memory
// was last read from the store. A unit carries whole rows (position, cash,
// reservation) copied from memory, so it includes the effect of every
// earlier unit of its chain: once one of them fails, a later one would
// store the effect of the failed write (a fill whose own row is missing
// would be applied again when it is resent). The store fails every later
// unit of a chain whose unit failed, without writing it; the engine starts
// a new chain when it reloads the account.
type writeChain struct {
	err error // the first failure; read and written by the store's writer only
}

func (u *unit) empty() bool {
	return len(u.accounts) == 0 && len(u.positions) == 0 && len(u.reservations) == 0 &&
		len(u.fills) == 0 && len(u.prices) == 0 && len(u.events) == 0
}

// snapshot is everything the engine needs to rebuild its memory.
type snapshot struct {
	accounts     []accountRow
	positions    []positionRow
	reservations []reservation // open, or created or closed since the cutoff
	fills        []fillRow     // applied since the cutoff
	prices       []priceRow
	lastSequence uint64
}

// Store persists the risk state. Commit is durable when it returns nil;
// concurrent commits are grouped into one transaction. Methods return
// pkg/apierr errors (Unavailable when the database cannot be reached).
type Store interface {
	// Load reads the whole state: every account, position and price, the
	// reservations that are open or changed since cutoff, and the fills
	// applied since cutoff.
	Load(ctx context.Context, cutoff time.Time) (*snapshot, error)
	// LoadAccount reads one account's state the same way.
	LoadAccount(ctx context.Context, id string, cutoff time.Time) (*snapshot, error)
	// Reservation reads one reservation of an account (any age), or
	// NotFound.
	Reservation(ctx context.Context, accountID, id string) (*reservation, error)
	// Fill reads one applied fill (any age), or NotFound.
	Fill(ctx context.Context, accountID, fillID string) (*fillRow, error)
	// Submit queues u for the writer and returns at once; the channel
	// receives nil when u is durable, or why it is not. Units are committed
	// in the order they were submitted, many per transaction; each gets
	// sequence numbers for its events, after every event committed before.
	// A unit whose chain had an earlier unit fail fails too, unwritten. A
	// unit with nothing to write is durable once every unit submitted
	// before it is (and fails if its chain failed).
	Submit(u *unit) <-chan error
	// SubmitAsync queues u without waiting: never blocks, and calls onFail
	// (from the writer) if u is dropped because the queue is full or cannot
	// be written.
	SubmitAsync(u *unit, onFail func(error))
	// OnCommit registers the function the writer calls, in sequence order,
	// with the events of every committed transaction. Call it before the
	// first Submit.
	OnCommit(fn func(events []*riskv1.RiskEvent))
	// Events reads committed events with sequence > after, in order, at
	// most limit.
	Events(ctx context.Context, after uint64, limit int) ([]*riskv1.RiskEvent, error)
	// FirstSequence is the sequence of the oldest retained event (0 when
	// there is none).
	FirstSequence(ctx context.Context) (uint64, error)
	// PruneEvents deletes events older than before.
	PruneEvents(ctx context.Context, before time.Time) (int64, error)
	// PruneClosed deletes up to limit reservations that were closed, or
	// expired, before before, together with their fills, in one
	// transaction, oldest first, and returns how many of each it deleted.
	PruneClosed(ctx context.Context, before time.Time, limit int) (reservations, fills int64, err error)
	// Close stops the writer after committing what was enqueued.
	Close() error
}
