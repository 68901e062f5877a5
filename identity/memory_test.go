package identity

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/ca"
)

// BenchmarkMemoryPerIdentity reports what one held identity costs the
// agent: its key, certificate chain, renewal goroutine and bookkeeping,
// as heap plus goroutine stack growth over n identities.
func BenchmarkMemoryPerIdentity(b *testing.B) {
	const n = 1000
	for range b.N {
		c, err := ca.New(ca.DefaultConfig(), discard())
		if err != nil {
			b.Fatal(err)
		}
		m, err := NewManager(DefaultConfig(), LocalIssuer(c), discard())
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := m.Start(ctx); err != nil {
			b.Fatal(err)
		}
		before := memInUse()
		releases := make([]func(), 0, n)
		for i := range n {
			id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://cluster.local/ns/ns%d/sa/sa%d", i%50, i))
			_, release, err := m.Acquire(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			releases = append(releases, release)
		}
		after := memInUse()
		b.ReportMetric(float64(after-before)/n, "bytes/identity")
		for _, r := range releases {
			r()
		}
		m.Stop()
		cancel()
	}
}

// memInUse is the live heap plus goroutine stacks after a full collection.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}
