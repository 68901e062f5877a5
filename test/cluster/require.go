package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"
)

// buildTimeout bounds Require's first call: a cold build of the Kubernetes
// binaries takes 5-10 minutes on two cores, then Start its own
// startTimeout.
const buildTimeout = 25 * time.Minute

// shared is the one cluster of a test binary. A package-level value is the
// point: every test in the binary shares one cluster (~1.5 GB, 10-15 s to
// start), and Main stops it.
var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Require returns the test binary's cluster, starting it on first use. It
// skips the test when not root or when WARREN_SKIP_CLUSTER=1, and fails it
// (never skips) when a Debian package is missing or the start fails; the
// failure repeats for every later caller without a second attempt. Tests
// share the cluster, so each should work in its own namespace. Call Main
// from TestMain: without it the processes still die with the test binary,
// but the next Start has to clean up after them.
func Require(t testing.TB) *Cluster {
	t.Helper()
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("%s=1: skipping a test that needs a real Kubernetes cluster", skipEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping a test that needs a real Kubernetes cluster: not root (it creates network namespaces, mounts and cgroups)")
	}
	shared.once.Do(func() {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		// Not the test's context: the cluster outlives the first test.
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		shared.c, shared.err = Start(ctx, Options{Log: log})
	})
	if shared.err != nil {
		var missing *MissingError
		if errors.As(shared.err, &missing) {
			t.Fatalf("%v (set %s=1 to skip these tests)", shared.err, skipEnv)
		}
		t.Fatalf("starting the test cluster (set %s=1 to skip these tests): %v", skipEnv, shared.err)
	}
	return shared.c
}

// Main runs the tests and stops the cluster Require started, if any:
//
//	func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the test cluster:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}
