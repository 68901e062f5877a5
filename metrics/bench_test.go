package metrics

import (
	"testing"

	"github.com/warren-mesh/warren/flow"
)

// BenchmarkOpenedClosed is the per-connection cost with the label set
// cached, as for every connection but the first of its tuple.
func BenchmarkOpenedClosed(b *testing.B) {
	m, _ := newTest(b)
	sleep, echo, svc := testWorkloads()
	r := &flow.Record{
		Direction: flow.Outbound, Source: sleep, Dest: echo, Service: svc, MTLS: true,
		SrcIdentity: sleepID, DstIdentity: echoID, Sent: 1234, Received: 5678,
	}
	b.ReportAllocs()
	for b.Loop() {
		m.Opened(r)
		m.Closed(r)
	}
}

// BenchmarkOpenedClosedParallel adds contention on the cache lock and the
// shared counters.
func BenchmarkOpenedClosedParallel(b *testing.B) {
	m, _ := newTest(b)
	sleep, echo, svc := testWorkloads()
	r := &flow.Record{
		Direction: flow.Outbound, Source: sleep, Dest: echo, Service: svc, MTLS: true,
		SrcIdentity: sleepID, DstIdentity: echoID, Sent: 1234, Received: 5678,
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Opened(r)
			m.Closed(r)
		}
	})
}

// BenchmarkOpenedClosedUncached is the cost of the first connection of a
// tuple: deriving 23 labels and resolving six metrics.
func BenchmarkOpenedClosedUncached(b *testing.B) {
	m, _ := newTest(b)
	sleep, echo, svc := testWorkloads()
	r := &flow.Record{
		Direction: flow.Outbound, Source: sleep, Dest: echo, Service: svc, MTLS: true,
		SrcIdentity: sleepID, DstIdentity: echoID, Sent: 1234, Received: 5678,
	}
	b.ReportAllocs()
	for b.Loop() {
		m.mu.Lock()
		clear(m.cache)
		m.mu.Unlock()
		m.Opened(r)
		m.Closed(r)
	}
}
