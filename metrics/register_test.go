package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRegister: all or none, and a nil registerer registers nothing.
func TestRegister(t *testing.T) {
	a := prometheus.NewCounter(prometheus.CounterOpts{Name: "warren_test_a", Help: "a"})
	b := prometheus.NewCounter(prometheus.CounterOpts{Name: "warren_test_b", Help: "b"})
	dupA := prometheus.NewCounter(prometheus.CounterOpts{Name: "warren_test_a", Help: "a"})
	if err := Register(nil, "test", a, b); err != nil {
		t.Fatalf("nil registerer: %v", err)
	}
	reg := prometheus.NewRegistry()
	if err := Register(reg, "test", b, dupA, a); err == nil {
		t.Fatal("registering a duplicate succeeded")
	}
	// b was rolled back, so a full, correct registration works now.
	if err := Register(reg, "test", a, b); err != nil {
		t.Fatalf("after a failed registration: %v", err)
	}
	if err := Register(reg, "test", dupA); err == nil {
		t.Error("duplicate of a registered collector accepted")
	}
}
