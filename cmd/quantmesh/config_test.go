package main

import (
	"flag"
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
