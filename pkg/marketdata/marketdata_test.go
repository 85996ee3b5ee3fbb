package marketdata

import (
	"strings"
	"testing"
	"time"
)

func TestBundled(t *testing.T) {
	t.Parallel()
	eu, err := Bundled(EuStock)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range eu {
		names = append(names, s.Symbol)
		if len(s.Bars) != 1860 || s.HasVolume {
			t.Errorf("%s: %d bars, volume %v", s.Symbol, len(s.Bars), s.HasVolume)
		}
	}
	if got := strings.Join(names, ","); got != "CAC,DAX,FTSE,SMI" {
		t.Errorf("symbols %s", got)
	}
	if dax := eu[1]; dax.Bars[0].Close != 1628.75 || !dax.Bars[0].Time.Equal(DayOne) || dax.Bars[5].Time.Weekday() == time.Saturday {
		t.Errorf("DAX day 1: %+v", dax.Bars[0])
	}
	tt, err := Bundled(TTRC)
	if err != nil {
		t.Fatal(err)
	}
	if len(tt) != 1 || len(tt[0].Bars) != 5550 || !tt[0].HasVolume || tt[0].Bars[0].Volume != 1870906 || tt[0].Bars[0].High != 3.18 {
		t.Errorf("ttrc: %d series, first %+v", len(tt), tt[0].Bars[0])
	}
	if _, err := Bundled("nope"); err == nil {
		t.Error("unknown data set accepted")
	}
}

func TestReadErrors(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"negative close":   "Date,Open,High,Low,Close,Volume\n2020-01-02,1,1,1,-1,5\n",
		"bad date":         "Date,Close\n2020-13-02,1\n",
		"dates backwards":  "Date,Close\n2020-01-03,1\n2020-01-02,1\n",
		"bad volume":       "Date,Close,Volume\n2020-01-02,1,x\n",
		"NaN close":        "day,A\n1,NaN\n",
		"bad day":          "day,A\n0,1\n",
		"one column":       "day\n1\n",
		"no rows":          "day,A\n",
		"days not forward": "day,A\n2,1\n2,1\n",
	} {
		if _, err := Read(strings.NewReader(in), "X"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
