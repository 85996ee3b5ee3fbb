package policy

import "testing"

func TestChooseTies(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		p    [NumActions]float64
		want Action
	}{
		{[NumActions]float64{0.5, 0.3, 0.2}, ActionBuy},
		{[NumActions]float64{0.2, 0.3, 0.5}, ActionSell},
		{[NumActions]float64{0.4, 0.4, 0.2}, ActionHold},
		{[NumActions]float64{0.2, 0.4, 0.4}, ActionHold},
		{[NumActions]float64{0.4, 0.2, 0.4}, ActionBuy},
		{[NumActions]float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, ActionHold},
	} {
		if got := choose(tt.p); got != tt.want {
			t.Errorf("choose(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
}
