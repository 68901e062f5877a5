package kube

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"
)

const (
	// skipEnv set to 1 skips the tests that need a real apiserver.
	skipEnv = "WARREN_SKIP_KUBE"
	// buildTimeout bounds a cold build: ~5 min on two cores, measured up to
	// ~10 min on a busy runner.
	buildTimeout = 20 * time.Minute
)

// shared is the one cluster of a test binary. A package-level value is the
// point here: every test in the binary shares one apiserver (3-4 s to start,
// ~300 MB), and Main stops it.
var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Require returns the test binary's cluster, building the binaries and
// starting it on first use. It skips the test when WARREN_SKIP_KUBE=1 and
// fails it (never skips) when the build or start fails. Tests share the
// cluster, so each should work in its own namespace. Call Main from
// TestMain to stop the cluster at exit; without it the processes still die
// with the test binary (Linux), but the temp dir stays.
//
// A cold build takes ~5 min, so run the first build with a longer go test
// -timeout (or pre-build: go test ./test/kube -run TestBuild -timeout 30m).
func Require(t testing.TB) *Cluster {
	t.Helper()
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("%s=1: skipping test that needs a real kube-apiserver", skipEnv)
	}
	shared.once.Do(func() {
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		// Not the test's context: the cluster outlives the first test.
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		bins, err := Build(ctx, DefaultConfig(), log)
		if err != nil {
			shared.err = fmt.Errorf("building etcd and kube-apiserver (set %s=1 to skip these tests): %w", skipEnv, err)
			return
		}
		shared.c, shared.err = Start(ctx, bins, log)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

// Main runs the tests and stops the cluster Require started, if any:
//
//	func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping test kube-apiserver:", err)
		}
	}
	return code
}
