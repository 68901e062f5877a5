package testbed

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if servers, captures or process watchers outlive
// the testbeds that started them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
