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

// limitFields maps each settable Limits field (update mask path) to how it
// is copied from a request.
var limitFields = map[string]func(dst *Limits, src *riskv1.Limits){
	"restricted_symbols": func(d *Limits, s *riskv1.Limits) {
		d.Restricted = slices.Clone(s.GetRestrictedSymbols())
		slices.Sort(d.Restricted)
		d.Restricted = slices.Compact(d.Restricted)
	},
	"max_order_quantity":        func(d *Limits, s *riskv1.Limits) { d.MaxOrderQuantity = optOf(s.MaxOrderQuantity) },
	"max_order_notional":        func(d *Limits, s *riskv1.Limits) { d.MaxOrderNotional = optOf(s.MaxOrderNotional) },
	"price_collar_percent":      func(d *Limits, s *riskv1.Limits) { d.PriceCollarPercent = optOf(s.PriceCollarPercent) },
	"duplicate_window":          func(d *Limits, s *riskv1.Limits) { d.DuplicateWindow = s.GetDuplicateWindow().AsDuration() },
	"max_orders_per_second":     func(d *Limits, s *riskv1.Limits) { d.MaxOrdersPerSecond = optOf(s.MaxOrdersPerSecond) },
	"order_burst":               func(d *Limits, s *riskv1.Limits) { d.OrderBurst = int(s.GetOrderBurst()) },
	"max_position_quantity":     func(d *Limits, s *riskv1.Limits) { d.MaxPositionQuantity = optOf(s.MaxPositionQuantity) },
	"max_position_notional":     func(d *Limits, s *riskv1.Limits) { d.MaxPositionNotional = optOf(s.MaxPositionNotional) },
	"max_gross_exposure":        func(d *Limits, s *riskv1.Limits) { d.MaxGrossExposure = optOf(s.MaxGrossExposure) },
	"max_leverage":              func(d *Limits, s *riskv1.Limits) { d.MaxLeverage = optOf(s.MaxLeverage) },
	"max_concentration_percent": func(d *Limits, s *riskv1.Limits) { d.MaxConcentrationPct = optOf(s.MaxConcentrationPercent) },
	"max_daily_loss":            func(d *Limits, s *riskv1.Limits) { d.MaxDailyLoss = optOf(s.MaxDailyLoss) },
	"max_drawdown_percent":      func(d *Limits, s *riskv1.Limits) { d.MaxDrawdownPercent = optOf(s.MaxDrawdownPercent) },
	"reservation_ttl":           func(d *Limits, s *riskv1.Limits) { d.ReservationTTL = s.GetReservationTtl().AsDuration() },
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
	nonNeg := func(name string, p *float64) {
		if p == nil {
			return
		}
		if math.IsNaN(*p) || math.IsInf(*p, 0) {
			v.Add(prefix+name, "must be finite, got %v", *p)
		} else if *p < 0 {
			v.Add(prefix+name, "must not be negative, got %v", *p)
		}
	}
	for _, path := range paths {
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
		case "max_order_quantity":
			nonNeg(path, l.MaxOrderQuantity)
		case "max_order_notional":
			nonNeg(path, l.MaxOrderNotional)
		case "price_collar_percent":
			nonNeg(path, l.PriceCollarPercent)
		case "max_position_quantity":
			nonNeg(path, l.MaxPositionQuantity)
		case "max_position_notional":
			nonNeg(path, l.MaxPositionNotional)
		case "max_gross_exposure":
			nonNeg(path, l.MaxGrossExposure)
		case "max_leverage":
			nonNeg(path, l.MaxLeverage)
		case "max_concentration_percent":
			nonNeg(path, l.MaxConcentrationPercent)
		case "max_daily_loss":
			nonNeg(path, l.MaxDailyLoss)
		case "max_drawdown_percent":
			nonNeg(path, l.MaxDrawdownPercent)
			if p := l.MaxDrawdownPercent; p != nil && *p > 100 {
				v.Add(prefix+path, "must be at most 100, got %v", *p)
			}
		case "max_orders_per_second":
			nonNeg(path, l.MaxOrdersPerSecond)
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
		AccountId:               id,
		RestrictedSymbols:       slices.Clone(l.Restricted),
		MaxOrderQuantity:        l.MaxOrderQuantity.ptr(),
		MaxOrderNotional:        l.MaxOrderNotional.ptr(),
		PriceCollarPercent:      l.PriceCollarPercent.ptr(),
		MaxOrdersPerSecond:      l.MaxOrdersPerSecond.ptr(),
		MaxPositionQuantity:     l.MaxPositionQuantity.ptr(),
		MaxPositionNotional:     l.MaxPositionNotional.ptr(),
		MaxGrossExposure:        l.MaxGrossExposure.ptr(),
		MaxLeverage:             l.MaxLeverage.ptr(),
		MaxConcentrationPercent: l.MaxConcentrationPct.ptr(),
		MaxDailyLoss:            l.MaxDailyLoss.ptr(),
		MaxDrawdownPercent:      l.MaxDrawdownPercent.ptr(),
		Revision:                l.Revision,
		UpdatedByPrincipal:      l.UpdatedByPrincipal,
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
