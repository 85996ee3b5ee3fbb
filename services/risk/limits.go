package risk

import (
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/pkg/apierr"
)

// opt is an optional limit: unset means the rule is not checked.
type opt struct {
	v   float64
	set bool
}

func optOf(p *float64) opt {
	if p == nil {
		return opt{}
	}
	return opt{v: *p, set: true}
}

func (o opt) ptr() *float64 {
	if !o.set {
		return nil
	}
	v := o.v
	return &v
}

// exceeded reports whether observed is beyond the limit; equal passes.
func (o opt) exceeded(observed float64) bool { return o.set && observed > o.v }

// Limits is an account's risk settings (see riskv1.Limits for meanings).
type Limits struct {
	Restricted          []string // sorted
	restrictedSet       map[string]struct{}
	MaxOrderQuantity    opt
	MaxOrderNotional    opt
	PriceCollarPercent  opt
	DuplicateWindow     time.Duration // 0: not checked
	MaxOrdersPerSecond  opt
	OrderBurst          int // 0: max(1, ceil(rate))
	MaxPositionQuantity opt
	MaxPositionNotional opt
	MaxGrossExposure    opt
	MaxLeverage         opt
	MaxConcentrationPct opt
	MaxDailyLoss        opt
	MaxDrawdownPercent  opt
	ReservationTTL      time.Duration // 0: the service default
	Revision            uint64
	UpdateTime          time.Time
	UpdatedByPrincipal  string
}

func (l *Limits) restricted(symbol string) bool {
	_, ok := l.restrictedSet[symbol]
	return ok
}

func (l *Limits) burst() int {
	if l.OrderBurst > 0 {
		return l.OrderBurst
	}
	return max(1, int(math.Ceil(l.MaxOrdersPerSecond.v)))
}

// floatLimit ties an optional numeric limit's request field to its domain
// field.
type floatLimit struct {
	proto  func(*riskv1.Limits) **float64
	domain func(*Limits) *opt
}

// floatLimits are the optional numeric limits, by update mask path.
var floatLimits = map[string]floatLimit{
	"max_order_quantity":        {func(l *riskv1.Limits) **float64 { return &l.MaxOrderQuantity }, func(l *Limits) *opt { return &l.MaxOrderQuantity }},
	"max_order_notional":        {func(l *riskv1.Limits) **float64 { return &l.MaxOrderNotional }, func(l *Limits) *opt { return &l.MaxOrderNotional }},
	"price_collar_percent":      {func(l *riskv1.Limits) **float64 { return &l.PriceCollarPercent }, func(l *Limits) *opt { return &l.PriceCollarPercent }},
	"max_orders_per_second":     {func(l *riskv1.Limits) **float64 { return &l.MaxOrdersPerSecond }, func(l *Limits) *opt { return &l.MaxOrdersPerSecond }},
	"max_position_quantity":     {func(l *riskv1.Limits) **float64 { return &l.MaxPositionQuantity }, func(l *Limits) *opt { return &l.MaxPositionQuantity }},
	"max_position_notional":     {func(l *riskv1.Limits) **float64 { return &l.MaxPositionNotional }, func(l *Limits) *opt { return &l.MaxPositionNotional }},
	"max_gross_exposure":        {func(l *riskv1.Limits) **float64 { return &l.MaxGrossExposure }, func(l *Limits) *opt { return &l.MaxGrossExposure }},
	"max_leverage":              {func(l *riskv1.Limits) **float64 { return &l.MaxLeverage }, func(l *Limits) *opt { return &l.MaxLeverage }},
	"max_concentration_percent": {func(l *riskv1.Limits) **float64 { return &l.MaxConcentrationPercent }, func(l *Limits) *opt { return &l.MaxConcentrationPct }},
	"max_daily_loss":            {func(l *riskv1.Limits) **float64 { return &l.MaxDailyLoss }, func(l *Limits) *opt { return &l.MaxDailyLoss }},
	"max_drawdown_percent":      {func(l *riskv1.Limits) **float64 { return &l.MaxDrawdownPercent }, func(l *Limits) *opt { return &l.MaxDrawdownPercent }},
}

// limitFields maps each settable Limits field (update mask path) to how it
// is copied from a request.
var limitFields = map[string]func(dst *Limits, src *riskv1.Limits){
	"restricted_symbols": func(d *Limits, s *riskv1.Limits) {
		d.Restricted = slices.Clone(s.GetRestrictedSymbols())
		slices.Sort(d.Restricted)
		d.Restricted = slices.Compact(d.Restricted)
	},
	"duplicate_window": func(d *Limits, s *riskv1.Limits) { d.DuplicateWindow = s.GetDuplicateWindow().AsDuration() },
	"order_burst":      func(d *Limits, s *riskv1.Limits) { d.OrderBurst = int(s.GetOrderBurst()) },
	"reservation_ttl":  func(d *Limits, s *riskv1.Limits) { d.ReservationTTL = s.GetReservationTtl().AsDuration() },
}

func init() {
	for path, f := range floatLimits {
		limitFields[path] = func(d *Limits, s *riskv1.Limits) { *f.domain(d) = optOf(*f.proto(s)) }
	}
}

// limitPaths lists the settable paths in a stable order.
func limitPaths() []string {
	paths := make([]string, 0, len(limitFields))
	for p := range limitFields {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return paths
}

// validateLimits checks the values of the masked fields of l, adding
// violations under prefix (for example "limits.").
func validateLimits(v *apierr.Violations, prefix string, l *riskv1.Limits, paths []string) {
	for _, path := range paths {
		if f, ok := floatLimits[path]; ok {
			if p := *f.proto(l); p != nil {
				if !isFinite(*p) {
					v.Add(prefix+path, "must be finite, got %v", *p)
				} else if *p < 0 {
					v.Add(prefix+path, "must not be negative, got %v", *p)
				}
			}
		}
		switch path {
		case "restricted_symbols":
			if n := len(l.GetRestrictedSymbols()); n > maxRestricted {
				v.Add(prefix+path, "at most %d symbols, got %d", maxRestricted, n)
			}
			for i, s := range l.GetRestrictedSymbols() {
				if err := checkSymbol(s); err != "" {
					v.Add(prefix+path+"["+itoa(i)+"]", "%s", err)
				}
			}
		case "max_drawdown_percent":
			if p := l.MaxDrawdownPercent; p != nil && *p > 100 {
				v.Add(prefix+path, "must be at most 100, got %v", *p)
			}
		case "max_orders_per_second":
			if p := l.MaxOrdersPerSecond; p != nil && *p == 0 {
				v.Add(prefix+path, "must be greater than 0")
			}
		case "order_burst":
			if b := l.OrderBurst; b != nil && (*b < 1 || *b > 1_000_000) {
				v.Add(prefix+path, "must be 1 to 1000000, got %d", *b)
			}
		case "duplicate_window":
			if d := l.GetDuplicateWindow(); d != nil {
				if err := d.CheckValid(); err != nil || d.AsDuration() < time.Second || d.AsDuration() > 7*24*time.Hour {
					v.Add(prefix+path, "must be 1s to 7 days, got %s", d.AsDuration())
				}
			}
		case "reservation_ttl":
			if d := l.GetReservationTtl(); d != nil {
				if err := d.CheckValid(); err != nil || d.AsDuration() < time.Second || d.AsDuration() > 24*time.Hour {
					v.Add(prefix+path, "must be 1s to 1 day, got %s", d.AsDuration())
				}
			}
		}
	}
}

// toProto renders l for account id.
func (l *Limits) toProto(id string) *riskv1.Limits {
	out := &riskv1.Limits{
		AccountId:          id,
		RestrictedSymbols:  slices.Clone(l.Restricted),
		Revision:           l.Revision,
		UpdatedByPrincipal: l.UpdatedByPrincipal,
	}
	for _, f := range floatLimits {
		*f.proto(out) = f.domain(l).ptr()
	}
	if l.OrderBurst > 0 {
		b := int32(l.OrderBurst)
		out.OrderBurst = &b
	}
	if l.DuplicateWindow > 0 {
		out.DuplicateWindow = durationpb.New(l.DuplicateWindow)
	}
	if l.ReservationTTL > 0 {
		out.ReservationTtl = durationpb.New(l.ReservationTTL)
	}
	if !l.UpdateTime.IsZero() {
		out.UpdateTime = timestamppb.New(l.UpdateTime)
	}
	return out
}

// limitsFromProto is the inverse of toProto (used when loading).
func limitsFromProto(p *riskv1.Limits) Limits {
	var l Limits
	for _, set := range limitFields {
		set(&l, p)
	}
	l.index()
	l.Revision = p.GetRevision()
	l.UpdatedByPrincipal = p.GetUpdatedByPrincipal()
	if p.GetUpdateTime() != nil {
		l.UpdateTime = p.GetUpdateTime().AsTime()
	}
	return l
}

// index rebuilds the lookup set of restricted symbols.
func (l *Limits) index() {
	l.restrictedSet = make(map[string]struct{}, len(l.Restricted))
	for _, s := range l.Restricted {
		l.restrictedSet[s] = struct{}{}
	}
}
