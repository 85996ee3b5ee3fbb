package main

import "testing"

func TestLearnUsageErrors(t *testing.T) {
	t.Parallel()
	testUsageErrors(t, "learn", []usageCase{
		{"negative lambda", []string{"--replay", "eustock", "--lambda", "-1"}, []string{"invalid --lambda", "must be finite and ≥ 0, got -1"}},
		{"gamma", []string{"--replay", "eustock", "--gamma", "1.5"}, []string{"invalid --gamma", "[0, 1]"}},
		{"no source", nil, []string{"--replay <data> or --kafka-brokers"}},
		{"two sources", []string{"--replay", "eustock", "--kafka-brokers", "k:9092"}, []string{"one source of outcomes"}},
		{"bad metrics address", []string{"--kafka-brokers", "k:9092", "--metrics-addr", "9464"}, []string{`invalid --metrics-addr "9464"`, "host:port"}},
		{"bad replay data", []string{"--replay", "/nonexistent.csv"}, []string{"invalid --replay", "no such file"}},
		{"bad lambdas", []string{"--forgetting-benchmark", "--lambdas", "1,x"}, []string{"invalid --lambdas", `"x" is not a positive number`}},
		{"bad fisher", []string{"--forgetting-benchmark", "--bench-fisher", "full"}, []string{"invalid --bench-fisher", `"full": want one of diagonal, empirical, kronecker`}},
		{"bad activation", []string{"--forgetting-benchmark", "--bench-activation", "gelu"}, []string{"invalid --bench-activation", `"gelu": want tanh or relu`}},
		{"bad fine-tune optimizer", []string{"--forgetting-benchmark", "--bench-fine-tune-optimizer", "sgd"}, []string{"invalid --bench-fine-tune-optimizer", `"sgd": want adam or momentum`}},
		{"bad fine-tune learning rate", []string{"--forgetting-benchmark", "--bench-fine-tune-learning-rate", "-1"}, []string{"invalid --bench-fine-tune-learning-rate -1"}},
		{"bad regime", []string{"--forgetting-benchmark", "--regime-a", "nasdaq"}, []string{"invalid --regime-a", `unknown regime "nasdaq"`}},
		{"bad seeds", []string{"--forgetting-benchmark", "--bench-seeds", "0"}, []string{"invalid --bench-seeds 0", "want 1 to 100"}},
		{"bad retrains", []string{"--forgetting-benchmark", "--bench-retrains", "0"}, []string{"invalid --bench-retrains 0", "want 1 to 100"}},
		{"retrains with K-FAC", []string{"--forgetting-benchmark", "--bench-chunk", "0", "--bench-retrains", "3", "--bench-fisher", "kronecker"}, []string{"chained retrains need a diagonal Fisher"}},
		{"chunks with K-FAC", []string{"--forgetting-benchmark", "--bench-fisher", "kronecker"}, []string{"chained retrains need a diagonal Fisher", "--bench-chunk 0"}},
		{"retrains with chunks", []string{"--forgetting-benchmark", "--bench-retrains", "3"}, []string{"invalid --bench-retrains 3 with --bench-chunk 1000", "needs --bench-chunk 0"}},
		{"bad chunk", []string{"--forgetting-benchmark", "--bench-chunk", "-1"}, []string{"invalid --bench-chunk -1"}},
		{"bad bench gamma", []string{"--forgetting-benchmark", "--bench-gamma", "2"}, []string{"invalid --bench-gamma 2", "[0, 1]"}},
		{"bad fine-tune batch", []string{"--forgetting-benchmark", "--bench-fine-tune-batch-size", "0"}, []string{"invalid --bench-fine-tune-batch-size 0"}},
		{"argument", []string{"now"}, []string{"learn takes no arguments"}},
	})
	testUsageErrors(t, "up", []usageCase{
		{"learner lambda", []string{"--learn", "--learn-lambda", "-2"}, []string{"invalid --learn-lambda", "got -2"}},
		{"learner threshold", []string{"--learn", "--learn-degradation-threshold", "3"}, []string{"invalid --learn-degradation-threshold", "[0, 1]"}},
	})
}
