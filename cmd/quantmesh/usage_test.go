package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// usageCase is a command line that must be refused as a usage error.
type usageCase struct {
	name string
	args []string // after the subcommand
	want []string // substrings of the one-line message
}

// testUsageErrors runs each case as `quantmesh <command> args...` and
// checks that it exits with exitUsage, says every wanted thing on one line
// of stderr and prints nothing on stdout.
func testUsageErrors(t *testing.T, command string, cases []usageCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{command}, tc.args...), &stdout, &stderr)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n != 0 {
				t.Errorf("stderr has %d lines, want one:\n%s", n+1, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}
