package resilience_test

import (
	"strings"
	"testing"
	"time"

	"github.com/quantmesh/quantmesh/pkg/resilience"
)

func TestPresetsAreValid(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]resilience.Config{
		"default": resilience.DefaultConfig(),
		"peer":    resilience.PeerConfig(),
		"store":   resilience.StoreConfig(),
		"bus":     resilience.BusConfig(),
	} {
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: Validate() = %v", name, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mutate    func(*resilience.Config)
		wantField string // "" means valid
	}{
		{"default", func(*resilience.Config) {}, ""},
		{"timeout disabled", func(c *resilience.Config) { c.Timeout = 0 }, ""},
		{"no retries", func(c *resilience.Config) { c.MaxAttempts = 1 }, ""},
		{"consecutive failures", func(c *resilience.Config) { c.FailureWindow = c.FailureThreshold }, ""},
		{"negative timeout", func(c *resilience.Config) { c.Timeout = -time.Second }, "Config.Timeout"},
		{"zero attempts", func(c *resilience.Config) { c.MaxAttempts = 0 }, "Config.MaxAttempts"},
		{"zero base delay", func(c *resilience.Config) { c.BaseDelay = 0 }, "Config.BaseDelay"},
		{"max below base", func(c *resilience.Config) { c.MaxDelay = c.BaseDelay / 2 }, "Config.MaxDelay"},
		{"negative jitter", func(c *resilience.Config) { c.JitterFactor = -0.1 }, "Config.JitterFactor"},
		{"jitter of one", func(c *resilience.Config) { c.JitterFactor = 1 }, "Config.JitterFactor"},
		{"zero failure threshold", func(c *resilience.Config) { c.FailureThreshold = 0 }, "Config.FailureThreshold"},
		{"window below threshold", func(c *resilience.Config) { c.FailureWindow = c.FailureThreshold - 1 }, "Config.FailureWindow"},
		{"zero open delay", func(c *resilience.Config) { c.OpenDelay = 0 }, "Config.OpenDelay"},
		{"zero success threshold", func(c *resilience.Config) { c.SuccessThreshold = 0 }, "Config.SuccessThreshold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := resilience.DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case tt.wantField == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantField != "" && err == nil:
				t.Fatalf("Validate() = nil, want an error naming %s", tt.wantField)
			case tt.wantField != "" && !strings.Contains(err.Error(), tt.wantField+" "):
				t.Fatalf("Validate() = %q, want it to name %s", err, tt.wantField)
			}
		})
	}
}

func TestValidateReportsEveryField(t *testing.T) {
	t.Parallel()
	err := resilience.Config{}.Validate()
	if err == nil {
		t.Fatal("Validate() of the zero Config = nil")
	}
	for _, f := range []string{"MaxAttempts", "BaseDelay", "FailureThreshold", "OpenDelay", "SuccessThreshold"} {
		if !strings.Contains(err.Error(), "Config."+f) {
			t.Errorf("Validate() = %q, missing Config.%s", err, f)
		}
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	if _, err := resilience.New("", resilience.DefaultConfig(), nil); err == nil {
		t.Error("New with an empty name succeeded")
	}
	bad := resilience.DefaultConfig()
	bad.MaxAttempts = 0
	if _, err := resilience.New("store", bad, nil); err == nil || !strings.Contains(err.Error(), "Config.MaxAttempts") {
		t.Errorf("New with an invalid config = %v, want an error naming Config.MaxAttempts", err)
	}
}
