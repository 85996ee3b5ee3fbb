package main

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestUpUsageErrors(t *testing.T) {
	t.Parallel()
	testUsageErrors(t, "up", []usageCase{
		{"grpc address", []string{"--grpc-addr", "50051"}, []string{`invalid --grpc-addr "50051"`, "host:port"}},
		{"reservation ttl", []string{"--risk-reservation-ttl", "100ms"}, []string{"invalid --risk-reservation-ttl", "1s to 24h, got 100ms"}},
		{"time zone", []string{"--risk-timezone", "Mars/Olympus"}, []string{`invalid --risk-timezone "Mars/Olympus"`}},
		{"retention", []string{"--risk-retention", "24h"}, []string{"invalid --risk-retention", "at least 168h0m0s, got 24h0m0s"}},
		{"event retention", []string{"--risk-event-retention", "1h"}, []string{"invalid --risk-event-retention", "at least 24h, got 1h0m0s"}},
	})
	testUsageErrors(t, "migrate", []usageCase{
		{"argument", []string{"postgres://db"}, []string{"migrate takes no arguments", "--database-url"}},
	})
}

func TestRiskFlags(t *testing.T) {
	t.Parallel()
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var f meshFlags
	f.register(fs, false)
	if err := fs.Parse([]string{"--risk-retention", "720h", "--risk-event-retention", "48h", "--risk-reservation-ttl", "2m", "--risk-timezone", "Europe/Berlin"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.riskConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retention != 720*time.Hour || cfg.EventRetention != 48*time.Hour || cfg.ReservationTTL != 2*time.Minute || cfg.Location.String() != "Europe/Berlin" {
		t.Errorf("risk config %+v", cfg)
	}
}

// TestConfigurationTable checks README's Configuration table against the
// flags of `serve` (those of `up` and more): every flag has a row, every
// row names a flag, and each row's variable and default are the flag's.
func TestConfigurationTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Configuration\n")
	if !ok {
		t.Fatal("README has no Configuration section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var f meshFlags
	f.register(fs, true)

	code := regexp.MustCompile("`([^`]*)`")
	documented := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 4 {
			t.Errorf("row has %d cells, want 4: %s", len(cells), line)
			continue
		}
		var names []string
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			names = append(names, strings.TrimPrefix(m[1], "--"))
		}
		defaults := code.FindAllStringSubmatch(cells[2], -1)
		for i, name := range names {
			documented[name] = true
			if name == "peer-<service>" {
				continue
			}
			fl := fs.Lookup(name)
			if fl == nil {
				t.Errorf("README documents --%s, which serve does not take", name)
				continue
			}
			if len(names) == 1 && !strings.Contains(cells[1], "…") && cells[1] != "`"+envName(name)+"`" {
				t.Errorf("--%s: README's variable %s, want %s", name, cells[1], envName(name))
			}
			switch {
			case len(defaults) == 0: // "empty (…)" or "—"
				if fl.DefValue != "" {
					t.Errorf("--%s: README says no default (%s), the flag's is %q", name, cells[2], fl.DefValue)
				}
			case len(defaults) != len(names):
				t.Errorf("--%s: README gives %d defaults for %d flags: %s", name, len(defaults), len(names), cells[2])
			case strings.Contains(defaults[i][1], "<"): // a description, e.g. file://<data-dir>/artifacts
			default:
				if !sameDefault(fl, defaults[i][1]) {
					t.Errorf("--%s: README's default %q, the flag's %q", name, defaults[i][1], fl.DefValue)
				}
			}
		}
	}
	fs.VisitAll(func(fl *flag.Flag) {
		name := fl.Name
		if strings.HasPrefix(name, "peer-") && name != "peer-api-key" {
			name = "peer-<service>"
		}
		if !documented[name] {
			t.Errorf("--%s is not in README's Configuration table", fl.Name)
		}
	})
}

// sameDefault compares a flag's default with README's, durations by value.
func sameDefault(fl *flag.Flag, readme string) bool {
	if fl.DefValue == readme {
		return true
	}
	a, errA := time.ParseDuration(fl.DefValue)
	b, errB := time.ParseDuration(readme)
	return errA == nil && errB == nil && a == b
}
