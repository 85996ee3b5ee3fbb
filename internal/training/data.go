package training

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/quantmesh/quantmesh/pkg/marketdata"
)

// Bundled is the data the first start of `quantmesh up` trains on: every
// bundled series.
const Bundled = "bundled"

// Load reads the series data names: "bundled" (every bundled set), the
// name of one bundled set (eustock, ttrc), or a CSV file (an OHLCV file's
// symbol is its base name).
func Load(data string) ([]marketdata.Series, error) {
	switch data {
	case "":
		return nil, fmt.Errorf("--data is required: a CSV file, %s, %s or %s", Bundled, marketdata.EuStock, marketdata.TTRC)
	case Bundled:
		var all []marketdata.Series
		for _, name := range []string{marketdata.EuStock, marketdata.TTRC} {
			s, err := marketdata.Bundled(name)
			if err != nil {
				return nil, err
			}
			all = append(all, s...)
		}
		return all, nil
	case marketdata.EuStock, marketdata.TTRC:
		return marketdata.Bundled(data)
	}
	f, err := os.Open(data)
	if err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}
	defer f.Close()
	symbol := strings.ToUpper(strings.TrimSuffix(filepath.Base(data), filepath.Ext(data)))
	s, err := marketdata.Read(f, symbol)
	if err != nil {
		return nil, fmt.Errorf("--data %s: %w", data, err)
	}
	return s, nil
}

func maskOf(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
