package server_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every server the tests start, and every one New fails to build, must
// leave no goroutine behind: no listener, gateway client or stream.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
