// Package marketdata reads daily bars from CSV files and carries the
// project's bundled data sets, so `quantmesh up`, the trainers and the tests
// work without anything outside the binary.
//
// Two CSV shapes are understood, told apart by the header:
//
//   - OHLCV of one instrument: Date,Open,High,Low,Close,Volume (column names
//     case-insensitive, extra columns ignored; Date as 2006-01-02).
//   - Closes of several instruments: a first column that is a date or a day
//     number, then one column of closes per instrument, named by the
//     header (for example "day","DAX","SMI","CAC","FTSE").
//
// Day numbers are placed on a synthetic business-day calendar (weekdays
// from DayOne), since such files carry no dates.
package marketdata

import (
	"embed"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Bar is one day of one instrument. Open, High and Low equal Close and
// Volume is 0 when the source has closes only.
type Bar struct {
	Time                   time.Time
	Open, High, Low, Close float64
	Volume                 float64
}

// MaxBarLead is how far ahead of the clock a live bar's time may be (time
// zones, a feed's clock): a bar stamped far in the future would make every
// later bar of its symbol look out of order. RegimeService refuses such a
// bar, and the online learner skips it.
const MaxBarLead = 24 * time.Hour

// Series is the bars of one instrument in time order.
type Series struct {
	Symbol string
	Bars   []Bar
	// HasVolume reports whether the source carried volumes.
	HasVolume bool
}

// Closes returns the closing prices.
func (s Series) Closes() []float64 {
	out := make([]float64, len(s.Bars))
	for i, b := range s.Bars {
		out[i] = b.Close
	}
	return out
}

// DayOne is the date of day 1 in files that number their days.
var DayOne = time.Date(1991, time.July, 1, 0, 0, 0, 0, time.UTC)

// BusinessDay returns the date of day number n (1-based) on the synthetic
// calendar: weekdays from DayOne.
func BusinessDay(n int) time.Time {
	t := DayOne
	for left := n - 1; left > 0; {
		t = t.AddDate(0, 0, 1)
		if wd := t.Weekday(); wd != time.Saturday && wd != time.Sunday {
			left--
		}
	}
	return t
}

// Read parses a CSV in either shape. symbol names the instrument of an
// OHLCV file (ignored for a file of closes, whose header names them).
// Errors name the line and the column.
func Read(r io.Reader, symbol string) ([]Series, error) {
	cr := csv.NewReader(r)
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	cols := map[string]int{}
	for i, h := range header {
		cols[strings.ToLower(strings.TrimSpace(h))] = i
	}
	_, hasClose := cols["close"]
	_, hasDate := cols["date"]
	if hasClose && hasDate {
		if symbol == "" {
			return nil, errors.New("an OHLCV file needs a symbol")
		}
		s, err := readOHLCV(cr, cols, symbol)
		if err != nil {
			return nil, err
		}
		return []Series{s}, nil
	}
	if len(header) < 2 {
		return nil, fmt.Errorf("header %q: want Date,Open,High,Low,Close[,Volume] or a date/day column and one column of closes per instrument", header)
	}
	return readCloses(cr, header)
}

func readOHLCV(cr *csv.Reader, cols map[string]int, symbol string) (Series, error) {
	s := Series{Symbol: symbol}
	vi, hasVol := cols["volume"]
	s.HasVolume = hasVol
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return s, fmt.Errorf("line %d: %w", line, err)
		}
		var b Bar
		if b.Time, err = time.Parse(time.DateOnly, field(rec, cols["date"])); err != nil {
			return s, fmt.Errorf("line %d: Date: %w", line, err)
		}
		for name, dst := range map[string]*float64{"close": &b.Close, "open": &b.Open, "high": &b.High, "low": &b.Low} {
			i, ok := cols[name]
			if !ok {
				continue
			}
			if *dst, err = price(field(rec, i)); err != nil {
				return s, fmt.Errorf("line %d: %s: %w", line, name, err)
			}
		}
		for _, p := range []*float64{&b.Open, &b.High, &b.Low} {
			if *p == 0 {
				*p = b.Close
			}
		}
		if hasVol {
			if b.Volume, err = strconv.ParseFloat(field(rec, vi), 64); err != nil || b.Volume < 0 || math.IsInf(b.Volume, 0) || math.IsNaN(b.Volume) {
				return s, fmt.Errorf("line %d: volume %q is not a non-negative number", line, field(rec, vi))
			}
		}
		if n := len(s.Bars); n > 0 && !b.Time.After(s.Bars[n-1].Time) {
			return s, fmt.Errorf("line %d: date %s is not after the previous %s", line, b.Time.Format(time.DateOnly), s.Bars[n-1].Time.Format(time.DateOnly))
		}
		s.Bars = append(s.Bars, b)
	}
	if len(s.Bars) == 0 {
		return s, errors.New("no bars")
	}
	return s, nil
}

func readCloses(cr *csv.Reader, header []string) ([]Series, error) {
	out := make([]Series, len(header)-1)
	for i := range out {
		out[i].Symbol = strings.TrimSpace(header[i+1])
	}
	var prev time.Time
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		t, err := time.Parse(time.DateOnly, field(rec, 0))
		if err != nil {
			n, nerr := strconv.Atoi(field(rec, 0))
			if nerr != nil || n < 1 {
				return nil, fmt.Errorf("line %d: first column %q is neither a date nor a day number", line, field(rec, 0))
			}
			t = BusinessDay(n)
		}
		if line > 2 && !t.After(prev) {
			return nil, fmt.Errorf("line %d: not after the previous row", line)
		}
		prev = t
		for i := range out {
			c, err := price(field(rec, i+1))
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: %w", line, out[i].Symbol, err)
			}
			out[i].Bars = append(out[i].Bars, Bar{Time: t, Open: c, High: c, Low: c, Close: c})
		}
	}
	if len(out[0].Bars) == 0 {
		return nil, errors.New("no rows")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Symbol < out[j].Symbol })
	return out, nil
}

func field(rec []string, i int) string {
	if i < len(rec) {
		return strings.TrimSpace(rec[i])
	}
	return ""
}

func price(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a positive price", s)
	}
	return v, nil
}

//go:embed data/*.csv
var bundled embed.FS

// Bundled data sets.
const (
	// EuStock holds daily closes of DAX, SMI, CAC and FTSE over 1860
	// business days (1991-1998).
	EuStock = "eustock"
	// TTRC holds daily OHLCV bars of one stock, 1985-2006.
	TTRC = "ttrc"
)

// Bundled returns a bundled data set by name.
func Bundled(name string) ([]Series, error) {
	f, err := bundled.Open("data/" + name + ".csv")
	if err != nil {
		return nil, fmt.Errorf("no bundled data set %q (have %s, %s)", name, EuStock, TTRC)
	}
	defer f.Close()
	return Read(f, strings.ToUpper(name))
}
