package marketdata

import (
	"encoding/csv"
	"fmt"
	"io"
	"strings"
)

// Columns returns the instrument columns of a CSV of closes in header
// order (every column after the first), or nil for an OHLCV file.
func Columns(r io.Reader) ([]string, error) {
	cr := csv.NewReader(r)
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	cols := map[string]bool{}
	for _, h := range header {
		cols[strings.ToLower(strings.TrimSpace(h))] = true
	}
	if cols["close"] && cols["date"] {
		return nil, nil
	}
	var out []string
	for _, h := range header[1:] {
		out = append(out, strings.TrimSpace(h))
	}
	return out, nil
}

// BundledColumns is Columns of a bundled data set.
func BundledColumns(name string) ([]string, error) {
	f, err := bundled.Open("data/" + name + ".csv")
	if err != nil {
		return nil, fmt.Errorf("no bundled data set %q (have %s, %s)", name, EuStock, TTRC)
	}
	defer f.Close()
	return Columns(f)
}
