package kube

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"
)

// TestBuild builds (or finds) the binaries; `go test ./test/kube -run
// TestBuild -timeout 30m` pre-warms the cache before the other packages'
// integration tests, which then start in seconds.
func TestBuild(t *testing.T) {
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("%s=1: not building etcd and kube-apiserver", skipEnv)
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	start := time.Now()
	bins, err := Build(ctx, DefaultConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binaries %+v in %v", bins, time.Since(start))
	// A second call finds them without relinking.
	start = time.Now()
	again, err := Build(ctx, DefaultConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	if again != bins {
		t.Errorf("second Build = %+v, want %+v", again, bins)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("warm Build took %v, want it instant", d)
	}
}

// TestBuildNode builds (or finds) the node binaries the real-cluster tests
// run; like TestBuild it pre-warms the cache.
func TestBuildNode(t *testing.T) {
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("%s=1: not building the node binaries", skipEnv)
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	start := time.Now()
	bins, err := BuildNode(ctx, DefaultConfig(), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{bins.Kubelet, bins.ControllerManager, bins.Scheduler, bins.Proxy} {
		if !exists(p) {
			t.Errorf("%s missing after BuildNode", p)
		}
	}
	t.Logf("binaries %+v in %v", bins, time.Since(start))
}
