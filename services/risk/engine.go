package risk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
	"github.com/quantmesh/quantmesh/pkg/stream"
)

// Config is the risk service's configuration.
type Config struct {
	// ReservationTTL is how long a reservation lives when the account's
	// limits do not say; 60s by default.
	ReservationTTL time.Duration
	// Location is the time zone whose midnight starts the trading day; UTC
	// by default.
	Location *time.Location
	// EventRetention is how long risk events are kept for resuming streams;
	// at least 24h, 7 days by default.
	EventRetention time.Duration
	// SweepInterval is how often expired reservations are released; 1s by
	// default.
	SweepInterval time.Duration
	// Retention is how long a closed (or expired) reservation and its fills
	// are kept in the store; at least 7 days (the longest duplicate window),
	// 90 days by default. A fill resent after that names a reservation that
	// is gone, so it is refused (NotFound) rather than applied twice.
	Retention time.Duration
}

// DefaultConfig returns the embedded defaults.
func DefaultConfig() Config {
	return Config{
		ReservationTTL: 60 * time.Second,
		Location:       time.UTC,
		EventRetention: 7 * 24 * time.Hour,
		SweepInterval:  time.Second,
		Retention:      90 * 24 * time.Hour,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.ReservationTTL < time.Second || c.ReservationTTL > 24*time.Hour:
		return fmt.Errorf("risk reservation TTL must be 1s to 24h, got %s", c.ReservationTTL)
	case c.Location == nil:
		return errors.New("risk trading-day time zone must be set")
	case c.EventRetention < 24*time.Hour:
		return fmt.Errorf("risk event retention must be at least 24h, got %s", c.EventRetention)
	case c.SweepInterval <= 0:
		return fmt.Errorf("risk sweep interval must be positive, got %s", c.SweepInterval)
	case c.Retention < loadWindow:
		return fmt.Errorf("risk reservation and fill retention must be at least %s, got %s", loadWindow, c.Retention)
	}
	return nil
}

// keepRecent is how long closed reservations and applied fills stay in
// memory (older ones are read from the store on demand).
const keepRecent = 24 * time.Hour

// eventRing is how many recent events live streams read from memory; older
// ones come from the store.
const eventRing = 4096

// Limits on request sizes.
const (
	maxIDLen        = 128
	maxSymbolLen    = 64
	maxBatch        = 1000
	maxPriceBatch   = 10000
	maxRestricted   = 10000
	maxReasonLen    = 1000
	maxViolations   = 16
	systemPrincipal = "quantmesh-risk"
	// maxFillAmount bounds a fill's quantity × price and its fee, in
	// currency: far beyond any real execution, and far enough inside the
	// float64 range that cash and equity stay finite (an infinite cash
	// makes equity NaN, and every limit compared with NaN passes).
	maxFillAmount = 1e15
	// maxPriceLead is how far ahead of the service's clock a price_time
	// may be (clock skew between a feed and the service). A later one
	// would freeze the reference price: every real update, stamped before
	// it, would be ignored as stale.
	maxPriceLead = time.Minute
)

// Engine is the risk state of every account, in memory, written through to
// the Store. It is safe for concurrent use: each account has its own lock,
// so different accounts are checked in parallel.
type Engine struct {
	cfg    Config
	store  Store
	log    *slog.Logger
	now    func() time.Time
	events *stream.Broker[*riskv1.RiskEvent]
	obs    observer

	mu       sync.RWMutex // guards accounts (the map, not the accounts) and rolled
	accounts map[string]*account
	rolled   time.Time // the trading day every account was last rolled into

	pricesMu sync.RWMutex
	prices   priceView

	idPrefix string
	idSeq    atomic.Uint64
}

// observer receives what the engine does, for metrics. The zero value
// records nothing.
type observer struct {
	breach    func(rule riskv1.RiskRule)
	eventDrop func()
	// fill gets each fill applied: its side, its realised P&L (fee
	// included) and whether it closed any quantity.
	fill func(side sign, pnl float64, closed bool)
}

// NewEngine loads the state from st and starts the reservation sweeper and
// event pruning; stop them by cancelling ctx.
func NewEngine(ctx context.Context, cfg Config, st Store, log *slog.Logger) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:      cfg,
		store:    st,
		log:      log,
		now:      nowMicros,
		accounts: map[string]*account{},
		prices:   priceView{},
		idPrefix: "r" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-",
	}
	snap, err := st.Load(ctx, e.now().Add(-loadWindow))
	if err != nil {
		return nil, fmt.Errorf("load risk state: %w", err)
	}
	e.install(snap)
	e.events = stream.NewBroker[*riskv1.RiskEvent](snap.lastSequence, eventRing)
	st.OnCommit(e.events.Publish)
	return e, nil
}

// nowMicros is the engine's clock: UTC, to the microsecond the store keeps,
// so a time read back after a restart equals the one answered before it.
func nowMicros() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// loadWindow is how far back closed reservations and fills are loaded: the
// longest duplicate window.
const loadWindow = 7 * 24 * time.Hour

// install replaces the memory of the accounts in snap, and merges its
// prices.
func (e *Engine) install(snap *snapshot) {
	e.pricesMu.Lock()
	for _, p := range snap.prices {
		if cur, ok := e.prices[p.symbol]; !ok || p.at.After(cur.at) {
			e.prices[p.symbol] = priceEntry{price: p.price, at: p.at}
		}
	}
	e.pricesMu.Unlock()

	byID := e.accountsFrom(snap)
	e.mu.Lock()
	for id, a := range byID {
		e.accounts[id] = a
	}
	e.mu.Unlock()
}

// accountsFrom builds the in-memory accounts a snapshot describes.
func (e *Engine) accountsFrom(snap *snapshot) map[string]*account {
	now := e.now()
	byID := map[string]*account{}
	for _, row := range snap.accounts {
		a := newAccount(row.id, row.created)
		a.limits = limitsFromProto(row.limits)
		a.setRate(now)
		a.cash, a.dayStart, a.dayEquity, a.highWater = row.cash, row.dayStart, row.dayEquity, row.highWater
		if row.kill != nil {
			a.kill = row.kill
		}
		byID[a.id] = a
	}
	for _, p := range snap.positions {
		if a := byID[p.accountID]; a != nil {
			pos := a.position(p.symbol)
			pos.qty, pos.avgPrice, pos.realized, pos.updated = p.qty, p.avgPrice, p.realized, p.updated
		}
	}
	for i := range snap.reservations {
		r := snap.reservations[i]
		normalize(&r, now)
		if a := byID[r.accountID]; a != nil {
			a.addReservation(&r)
		}
	}
	for _, f := range snap.fills {
		if a := byID[f.accountID]; a != nil {
			a.fills[f.fillID] = fillRecord{reservationID: f.reservationID, quantity: f.quantity, price: f.price, fee: f.fee, at: f.at}
		}
	}
	return byID
}

// account returns the account, or nil.
func (e *Engine) account(id string) *account {
	e.mu.RLock()
	a := e.accounts[id]
	e.mu.RUnlock()
	return a
}

// newReservationID returns a unique, opaque reservation id.
func (e *Engine) newReservationID() string {
	var buf [40]byte
	b := append(buf[:0], e.idPrefix...)
	b = strconv.AppendUint(b, e.idSeq.Add(1), 36)
	return string(b)
}

// ready makes a's memory trustworthy before it is used: a stale account
// (a write failed) is reloaded from the store once no write of it is in
// flight. It returns an error when that is not possible now; the caller
// then fails closed. a.mu is held.
func (e *Engine) ready(ctx context.Context, a *account) error {
	if !a.stale {
		return nil
	}
	if a.inflight > 0 {
		return errors.New("account state is being recovered after a failed write")
	}
	snap, err := e.store.LoadAccount(ctx, a.id, e.now().Add(-loadWindow))
	if err != nil {
		return fmt.Errorf("account state cannot be read: %w", err)
	}
	fresh := e.accountsFrom(snap)[a.id]
	if fresh == nil {
		fresh = newAccount(a.id, a.created)
	}
	a.limits, a.cash, a.dayStart, a.dayEquity, a.highWater, a.kill = fresh.limits, fresh.cash, fresh.dayStart, fresh.dayEquity, fresh.highWater, fresh.kill
	a.positions, a.open, a.recent, a.byClientOrder, a.fills = fresh.positions, fresh.open, fresh.recent, fresh.byClientOrder, fresh.fills
	a.setRate(e.now()) // keeps the tokens left in a's bucket
	a.stale = false
	// Memory is what the store holds: later writes depend on no earlier
	// one.
	a.chain = nil
	e.log.Info("risk account reloaded after a failed write", "account", a.id)
	return nil
}

// commit writes u for account a (nil for writes of no account). It must
// be called with a.mu held, after the change is applied in memory: it
// submits u at once, so the store commits the account's writes in the
// order they happened, and returns a function that waits for durability
// and must be called without the lock. If the write fails the account is
// marked stale: later checks fail closed until its state is reloaded. The
// commit's span links to ctx's span when it is sampled.
func (e *Engine) commit(ctx context.Context, a *account, u *unit) func() error {
	if u.empty() {
		return func() error { return nil }
	}
	return e.submit(ctx, a, u)
}

// settle returns a function that waits until every write of a submitted
// so far is durable, and fails if one of them failed. An answer that
// repeats an earlier change (a resent fill, a kill switch already
// tripped) uses it: the earlier change may still be in flight, and must
// not be acknowledged twice and then lost. a.mu is held; the function is
// called without it.
func (e *Engine) settle(ctx context.Context, a *account) func() error {
	if a.inflight == 0 {
		return func() error { return nil }
	}
	// An empty unit of a's chain: the writer finishes it after every unit
	// before it, and fails it when one of a's failed.
	return e.submit(ctx, a, &unit{})
}

func (e *Engine) submit(ctx context.Context, a *account, u *unit) func() error {
	u.span = trace.SpanContextFromContext(ctx)
	if a != nil {
		a.inflight++
		if a.chain == nil {
			a.chain = &writeChain{}
		}
		u.chain = a.chain
	}
	done := e.store.Submit(u)
	return func() error {
		err := <-done
		if a != nil {
			a.mu.Lock()
			a.inflight--
			if err != nil {
				a.stale = true
			}
			a.mu.Unlock()
		}
		if err != nil {
			e.log.Error("risk state write failed", "account", accountName(a), "error", err)
			return err
		}
		return nil
	}
}

func accountName(a *account) string {
	if a == nil {
		return ""
	}
	return a.id
}

func checkID(id string) string {
	switch {
	case id == "":
		return "required"
	case len(id) > maxIDLen:
		return fmt.Sprintf("must be at most %d characters, got %d", maxIDLen, len(id))
	}
	return checkPlain(id)
}

// checkPlain reports what is wrong with text stored or logged as given (an
// id, a reason): invalid UTF-8 or a control character. PostgreSQL refuses
// invalid UTF-8 and NUL bytes in a text column, so the write would fail on
// every retry; in logs and events control characters could forge lines.
func checkPlain(text string) string {
	if !utf8.ValidString(text) {
		return "must be valid UTF-8"
	}
	for _, r := range text {
		if r < 0x20 || r == 0x7f {
			return "must not contain control characters"
		}
	}
	return ""
}

func checkSymbol(s string) string {
	switch {
	case s == "":
		return "required"
	case len(s) > maxSymbolLen:
		return fmt.Sprintf("must be at most %d characters, got %d", maxSymbolLen, len(s))
	case !utf8.ValidString(s):
		return "must be valid UTF-8"
	}
	for _, r := range s {
		if r <= 0x20 || r == 0x7f {
			return "must not contain spaces or control characters"
		}
	}
	return ""
}

func itoa(i int) string { return strconv.Itoa(i) }

// errUnknownAccount is returned for operations on an account that does not
// exist.
func errUnknownAccount(id string) error { return apierr.NotFound("account", id) }

// allAccounts returns every account (a copy of the list, not of the
// accounts).
func (e *Engine) allAccounts() []*account {
	e.mu.RLock()
	defer e.mu.RUnlock()
	accounts := make([]*account, 0, len(e.accounts))
	for _, a := range e.accounts {
		accounts = append(accounts, a)
	}
	return accounts
}

// counts returns the number of tripped kill switches and open reservations.
func (e *Engine) counts() (killed, open int) {
	accounts := e.allAccounts()
	for _, a := range accounts {
		a.mu.Lock()
		if a.kill.GetTripped() {
			killed++
		}
		open += len(a.open)
		a.mu.Unlock()
	}
	return killed, open
}

// accountEquities are the equities of the accounts.
type accountEquities struct {
	n     int // accounts
	first []accountEquity
}

type accountEquity struct {
	id     string
	equity float64
}

// equities returns the equity of all accounts together and of the first
// limit accounts in id order.
func (e *Engine) equities(limit int) (float64, accountEquities) {
	accounts := e.allAccounts()
	slices.SortFunc(accounts, func(a, b *account) int { return strings.Compare(a.id, b.id) })
	out := accountEquities{n: len(accounts)}
	var total float64
	for i, a := range accounts {
		a.mu.Lock()
		e.pricesMu.RLock()
		eq, _ := a.valuation(e.prices)
		e.pricesMu.RUnlock()
		a.mu.Unlock()
		total += eq
		if i < limit {
			out.first = append(out.first, accountEquity{id: a.id, equity: eq})
		}
	}
	return total, out
}

// recordRejection writes the rejection event of a check without waiting:
// the order is already rejected, and the audit trail must not slow the
// answer down.
func (e *Engine) recordRejection(o *order, res *checkResult) {
	ev := &riskv1.RiskEvent{
		Type:      riskv1.RiskEventType_RISK_EVENT_TYPE_ORDER_REJECTED,
		AccountId: o.accountID,
		EventTime: ts(res.at),
		Detail: &riskv1.RiskEvent_Rejection{Rejection: &riskv1.OrderRejection{
			Order:      o.toProto(),
			Violations: violationsToProto(res.violations[:res.n]),
		}},
	}
	account := o.accountID
	e.store.SubmitAsync(&unit{events: []*riskv1.RiskEvent{ev}}, func(err error) {
		if e.obs.eventDrop != nil {
			e.obs.eventDrop()
		}
		e.log.Warn("risk rejection event not recorded", "account", account, "error", err)
	})
}
