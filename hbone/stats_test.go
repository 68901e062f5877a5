package hbone

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPoolStats(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, DefaultConfig(), echo())
	if diff := cmp.Diff(PoolStats{}, e.pool.Stats()); diff != "" {
		t.Errorf("empty pool (-want +got):\n%s", diff)
	}
	a, b, c := e.connect(t), e.connect(t), e.connect(t)
	defer b.Close()
	defer c.Close()
	if diff := cmp.Diff(PoolStats{Connections: 1, Streams: 3}, e.pool.Stats()); diff != "" {
		t.Errorf("three streams (-want +got):\n%s", diff)
	}
	a.Close()
	waitFor(t, "a closed stream to leave the count", func() bool { return e.pool.Stats().Streams == 2 })
	if got := e.pool.Stats().Connections; got != 1 {
		t.Errorf("connections = %d after closing one stream, want 1", got)
	}
}
