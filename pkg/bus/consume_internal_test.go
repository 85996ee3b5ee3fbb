package bus

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}.withDefaults()
	tests := []struct {
		attempt int
		base    time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{100, time.Second},
	}
	for _, tc := range tests {
		for range 50 {
			d := b.delay(tc.attempt)
			if lo, hi := tc.base-tc.base/10, tc.base+tc.base/10; d < lo || d > hi {
				t.Fatalf("delay(%d) = %s, want within 10%% of %s", tc.attempt, d, tc.base)
			}
		}
	}
}

func TestBackoffDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   Backoff
		want Backoff
	}{
		{"zero", Backoff{}, Backoff{DefaultBackoffMin, DefaultBackoffMax}},
		{"min only", Backoff{Min: time.Second}, Backoff{time.Second, DefaultBackoffMax}},
		{"max below default min", Backoff{Max: time.Millisecond}, Backoff{DefaultBackoffMin, DefaultBackoffMin}},
	}
	for _, tc := range tests {
		if diff := cmp.Diff(tc.want, tc.in.withDefaults()); diff != "" {
			t.Errorf("%s: withDefaults (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestConsumerConfigNormalize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      ConsumerConfig
		want    ConsumerConfig
		wantErr bool
	}{
		{
			name: "defaults",
			in:   ConsumerConfig{Group: "g", Topics: []string{"a"}},
			want: ConsumerConfig{Group: "g", Topics: []string{"a"}, MaxBatch: DefaultMaxBatch, MaxWait: DefaultMaxWait},
		},
		{
			name: "duplicate topics dropped",
			in:   ConsumerConfig{Group: "g", Topics: []string{"a", "b", "a"}, MaxBatch: 3, MaxWait: time.Second},
			want: ConsumerConfig{Group: "g", Topics: []string{"a", "b"}, MaxBatch: 3, MaxWait: time.Second},
		},
		{name: "no group", in: ConsumerConfig{Topics: []string{"a"}}, wantErr: true},
		{name: "no topics", in: ConsumerConfig{Group: "g"}, wantErr: true},
		{name: "negative batch", in: ConsumerConfig{Group: "g", Topics: []string{"a"}, MaxBatch: -1}, wantErr: true},
	}
	for _, tc := range tests {
		got, err := tc.in.normalize()
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: normalize error = %v, wantErr %v", tc.name, err, tc.wantErr)
			continue
		}
		if err == nil {
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("%s: normalize (-want +got):\n%s", tc.name, diff)
			}
		}
	}
}
