package resilience

import (
	"errors"
	"fmt"
	"time"
)

// Config sets the policy for one kind of outbound call. Start from
// DefaultConfig or one of the presets (PeerConfig, StoreConfig, BusConfig)
// and change what you need; the zero value is not valid.
type Config struct {
	// Timeout bounds each attempt, as a context deadline (never later than the
	// caller's own). 0 disables the per-attempt timeout: use it for calls that
	// legitimately run long, such as backtests or model fits. Streams opened
	// through StreamClientInterceptor never get it.
	Timeout time.Duration

	// MaxAttempts is the total number of attempts, the first included; 1
	// disables retries. Only errors the Classifier marks Retry are retried.
	MaxAttempts int
	// BaseDelay is the wait before the first retry; each later retry waits
	// twice as long as the one before, up to MaxDelay.
	BaseDelay time.Duration
	// MaxDelay caps the backoff between retries.
	MaxDelay time.Duration
	// JitterFactor spreads each backoff delay randomly by ± that fraction of
	// it (0.5: a 40ms delay becomes 20–60ms), so callers that failed together
	// do not retry together. 0 disables jitter; must be below 1.
	JitterFactor float64

	// FailureThreshold is how many of the last FailureWindow attempts must be
	// failures (in the Classifier's sense) to open the circuit breaker.
	FailureThreshold int
	// FailureWindow is the number of most recent attempts the breaker looks
	// at while closed. Equal to FailureThreshold means "that many failures in
	// a row".
	FailureWindow int
	// OpenDelay is how long the breaker stays open, failing calls at once,
	// before it lets probe calls through (half-open).
	OpenDelay time.Duration
	// SuccessThreshold is how many probe calls must succeed in a row while
	// half-open to close the breaker; a failed probe opens it again. It is
	// also the number of probes allowed in flight at once.
	SuccessThreshold int

	// Classifier decides which errors are retried and which count as breaker
	// failures. Nil means DefaultClassifier.
	Classifier Classifier
}

// DefaultConfig returns the policy for calls between quantmesh services over
// loopback or a local network, where a healthy answer takes milliseconds:
//
//   - Timeout 1s: two orders of magnitude above a healthy call, so only a
//     stuck peer hits it, and well inside a trading engine's patience.
//   - MaxAttempts 3 with backoff 20ms doubling to at most 200ms, jitter
//     ±50%: rides over a dropped connection or a peer restarting its
//     listener without holding the caller more than ~3.1s in the worst case.
//   - Breaker opens on 5 failures among the last 10 attempts, stays open 5s
//     (about the time a crashed service takes to come back), and closes after
//     2 successful probes.
func DefaultConfig() Config {
	return Config{
		Timeout:          time.Second,
		MaxAttempts:      3,
		BaseDelay:        20 * time.Millisecond,
		MaxDelay:         200 * time.Millisecond,
		JitterFactor:     0.5,
		FailureThreshold: 5,
		FailureWindow:    10,
		OpenDelay:        5 * time.Second,
		SuccessThreshold: 2,
	}
}

// PeerConfig returns the policy for gRPC calls to another quantmesh service.
// It is DefaultConfig. Unary calls are retried only when the method is
// idempotent (see UnaryClientInterceptor).
func PeerConfig() Config {
	return DefaultConfig()
}

// StoreConfig returns the policy for calls to the store (SQLite or
// PostgreSQL). Attempts get 5s, room for a batched commit or a slow query
// over the network; retries back off from 50ms to 1s; the breaker stays open
// 10s, since a database restart or failover takes longer than a service
// restart. A write that timed out may still have committed, so wrap only
// idempotent writes (upserts keyed by id) in a policy with retries.
func StoreConfig() Config {
	c := DefaultConfig()
	c.Timeout = 5 * time.Second
	c.BaseDelay = 50 * time.Millisecond
	c.MaxDelay = time.Second
	c.OpenDelay = 10 * time.Second
	return c
}

// BusConfig returns the policy for bus publishes. Attempts get 10s, the time
// Kafka producers wait for all in-sync replicas by default (sarama's
// Producer.Timeout) and room for backpressure; there are 2 attempts only,
// because the Kafka producer already retries inside one attempt and the two
// layers multiply. Delivery is at least once, so a retried publish is safe.
func BusConfig() Config {
	c := DefaultConfig()
	c.Timeout = 10 * time.Second
	c.MaxAttempts = 2
	c.BaseDelay = 100 * time.Millisecond
	c.MaxDelay = time.Second
	c.OpenDelay = 10 * time.Second
	return c
}

// Validate reports every invalid field, each error naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("resilience: Config.%s %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Timeout < 0 {
		bad("Timeout", "must not be negative (0 disables it), got %s", c.Timeout)
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts", "must be at least 1, got %d", c.MaxAttempts)
	}
	if c.BaseDelay <= 0 {
		bad("BaseDelay", "must be positive, got %s", c.BaseDelay)
	}
	if c.MaxDelay < c.BaseDelay {
		bad("MaxDelay", "must be at least BaseDelay (%s), got %s", c.BaseDelay, c.MaxDelay)
	}
	if c.JitterFactor < 0 || c.JitterFactor >= 1 {
		bad("JitterFactor", "must be in [0, 1), got %g", c.JitterFactor)
	}
	if c.FailureThreshold < 1 {
		bad("FailureThreshold", "must be at least 1, got %d", c.FailureThreshold)
	}
	if c.FailureWindow < c.FailureThreshold {
		bad("FailureWindow", "must be at least FailureThreshold (%d), got %d", c.FailureThreshold, c.FailureWindow)
	}
	if c.OpenDelay <= 0 {
		bad("OpenDelay", "must be positive, got %s", c.OpenDelay)
	}
	if c.SuccessThreshold < 1 {
		bad("SuccessThreshold", "must be at least 1, got %d", c.SuccessThreshold)
	}
	return errors.Join(errs...)
}
