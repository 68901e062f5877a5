package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/identity"
)

func newTest(t testing.TB) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(DefaultConfig(), reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m, reg
}

// value reads the counter of vec with the labels of r and flag f.
func value(t *testing.T, vec *prometheus.CounterVec, r *flow.Record, f responseFlag) float64 {
	t.Helper()
	v := deriveLabels(DefaultConfig(), r, f)
	c, err := vec.GetMetricWithLabelValues(v[:]...)
	if err != nil {
		t.Fatalf("metric: %v", err)
	}
	return testutil.ToFloat64(c)
}

func TestCountsConnections(t *testing.T) {
	m, _ := newTest(t)
	sleep, echo, svc := testWorkloads()
	rec := func(sent, recv int64) *flow.Record {
		return &flow.Record{
			Direction: flow.Outbound, Source: sleep, Dest: echo, Service: svc, MTLS: true,
			SrcIdentity: sleepID, DstIdentity: echoID, Sent: sent, Received: recv,
		}
	}
	a, b := rec(100, 2000), rec(7, 0)
	m.Opened(a)
	m.Opened(b)
	if got := testutil.ToFloat64(m.sockets.WithLabelValues("source")); got != 2 {
		t.Errorf("sockets open after two opens = %v, want 2", got)
	}
	m.Closed(a)
	m.Closed(b)

	got := map[string]float64{
		"opened":   value(t, m.opened, a, flagNone),
		"closed":   value(t, m.closed, a, flagNone),
		"received": value(t, m.received, a, flagNone),
		"sent":     value(t, m.sent, a, flagNone),
		"sockets":  testutil.ToFloat64(m.sockets.WithLabelValues("source")),
		"failed":   float64(testutil.CollectAndCount(m.failed)),
	}
	want := map[string]float64{
		"opened": 2, "closed": 2,
		// Istio's convention: received = client to server, sent = server to client.
		"received": 107, "sent": 2000,
		"sockets": 0, "failed": 0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

func TestCountsRefusedConnection(t *testing.T) {
	m, _ := newTest(t)
	sleep, _, svc := testWorkloads()
	r := &flow.Record{Direction: flow.Outbound, Source: sleep, Service: svc, Path: flow.PathDenied, Reason: flow.ReasonPolicy}
	m.Opened(r)
	m.Closed(r)

	got := map[string]float64{
		"opened":        value(t, m.opened, r, flagNone),
		"closed DENY":   value(t, m.closed, r, flagDeny),
		"failed DENY":   value(t, m.failed, r, flagDeny),
		"closed series": float64(testutil.CollectAndCount(m.closed)),
		// No bytes moved, so no byte series were made.
		"sent series":     float64(testutil.CollectAndCount(m.sent)),
		"received series": float64(testutil.CollectAndCount(m.received)),
		"sockets":         testutil.ToFloat64(m.sockets.WithLabelValues("source")),
	}
	want := map[string]float64{
		"opened": 1, "closed DENY": 1, "failed DENY": 1, "closed series": 1,
		"sent series": 0, "received series": 0, "sockets": 0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

func TestSocketsGaugePerReporter(t *testing.T) {
	m, _ := newTest(t)
	_, echo, _ := testWorkloads()
	out := &flow.Record{Direction: flow.Outbound}
	in := &flow.Record{Direction: flow.Inbound, Dest: echo, MTLS: true}
	plain := &flow.Record{Direction: flow.InboundPlain, Dest: echo}
	steps := []struct {
		do                  func()
		source, destination float64
	}{
		{func() { m.Opened(out) }, 1, 0},
		{func() { m.Opened(in) }, 1, 1},
		{func() { m.Opened(plain) }, 1, 2},
		{func() { m.Closed(in) }, 1, 1},
		{func() { m.Closed(out) }, 0, 1},
		{func() { m.Closed(plain) }, 0, 0},
	}
	for i, s := range steps {
		s.do()
		src := testutil.ToFloat64(m.sockets.WithLabelValues("source"))
		dst := testutil.ToFloat64(m.sockets.WithLabelValues("destination"))
		if src != s.source || dst != s.destination {
			t.Errorf("step %d: sockets source=%v destination=%v, want %v %v", i, src, dst, s.source, s.destination)
		}
	}
}

func TestSeriesCacheIsBounded(t *testing.T) {
	m, _ := newTest(t)
	for i := range maxCachedSeries + 10 {
		// A fresh workload pointer per record, as successive snapshots give.
		_, echo, _ := testWorkloads()
		r := &flow.Record{Direction: flow.Inbound, Dest: echo, Sent: int64(i)}
		m.Opened(r)
		m.Closed(r)
	}
	m.mu.RLock()
	n := len(m.cache)
	m.mu.RUnlock()
	if n > maxCachedSeries {
		t.Errorf("cache holds %d entries, limit %d", n, maxCachedSeries)
	}
	// All those records share one label set: one series.
	if got := testutil.CollectAndCount(m.opened); got != 1 {
		t.Errorf("opened series = %d, want 1", got)
	}
	_, echo, _ := testWorkloads()
	if got := value(t, m.opened, &flow.Record{Direction: flow.Inbound, Dest: echo}, flagNone); got != maxCachedSeries+10 {
		t.Errorf("opened = %v, want %d", got, maxCachedSeries+10)
	}
}

func TestWarrenCounters(t *testing.T) {
	m, _ := newTest(t)
	m.ConfigUpdate("file", true)
	m.ConfigUpdate("file", true)
	m.ConfigUpdate("file", false)
	m.ConfigUpdate("xds", true)
	m.DryRunDenied("default/deny-all")
	m.DryRunDenied("default/deny-all")

	got := map[string]float64{
		"file applied":  testutil.ToFloat64(m.configUpdates.WithLabelValues("file", "applied")),
		"file rejected": testutil.ToFloat64(m.configUpdates.WithLabelValues("file", "rejected")),
		"xds applied":   testutil.ToFloat64(m.configUpdates.WithLabelValues("xds", "applied")),
		"dry run":       testutil.ToFloat64(m.dryRunDenied.WithLabelValues("default/deny-all")),
	}
	want := map[string]float64{"file applied": 2, "file rejected": 1, "xds applied": 1, "dry run": 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
}

func TestCallbacksReadAtScrape(t *testing.T) {
	m, reg := newTest(t)
	// Nothing is reported before a callback is set.
	if n, err := testutil.GatherAndCount(reg, "warren_hbone_pool_connections", "warren_certificate_expiry_seconds"); err != nil || n != 0 {
		t.Fatalf("before Watch: %d series, err %v; want 0", n, err)
	}

	var poolCalls, certCalls atomic.Int32
	m.WatchPool(func() hbone.PoolStats {
		poolCalls.Add(1)
		return hbone.PoolStats{Connections: 3, Streams: 17}
	})
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	m.certs.now = func() time.Time { return now }
	sleep := spiffeid.RequireFromString(sleepID)
	echo := spiffeid.RequireFromString(echoID)
	old := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/old")
	pending := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/new")
	m.WatchCertificates(func() []identity.CertInfo {
		certCalls.Add(1)
		return []identity.CertInfo{
			{ID: echo, State: identity.StateValid, NotAfter: now.Add(90 * time.Minute)},
			{ID: pending, State: identity.StatePending},
			{ID: old, State: identity.StateExpired, NotAfter: now.Add(-time.Minute)},
			{ID: sleep, State: identity.StateValid, NotAfter: now.Add(24 * time.Hour)},
		}
	})
	if poolCalls.Load() != 0 || certCalls.Load() != 0 {
		t.Fatal("callbacks ran before a scrape")
	}

	want := `
# HELP warren_certificate_expiry_seconds Seconds until the identity's workload certificate expires
# TYPE warren_certificate_expiry_seconds gauge
warren_certificate_expiry_seconds{identity="spiffe://cluster.local/ns/default/sa/echo"} 5400
warren_certificate_expiry_seconds{identity="spiffe://cluster.local/ns/default/sa/old"} -60
warren_certificate_expiry_seconds{identity="spiffe://cluster.local/ns/default/sa/sleep"} 86400
# HELP warren_certificates Identities in use on this node, by certificate state
# TYPE warren_certificates gauge
warren_certificates{state="expired"} 1
warren_certificates{state="pending"} 1
warren_certificates{state="valid"} 2
# HELP warren_hbone_pool_connections HTTP/2 connections in the outbound HBONE pool
# TYPE warren_hbone_pool_connections gauge
warren_hbone_pool_connections 3
# HELP warren_hbone_pool_streams CONNECT streams open on the outbound HBONE pool's connections
# TYPE warren_hbone_pool_streams gauge
warren_hbone_pool_streams 17
`
	names := []string{"warren_certificate_expiry_seconds", "warren_certificates", "warren_hbone_pool_connections", "warren_hbone_pool_streams"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if p, c := poolCalls.Load(), certCalls.Load(); p != 2 || c != 2 {
		t.Errorf("after two scrapes: pool callback ran %d times, certificates %d; want 2 each", p, c)
	}

	m.WatchPool(nil)
	if n, err := testutil.GatherAndCount(reg, "warren_hbone_pool_connections"); err != nil || n != 0 {
		t.Errorf("after WatchPool(nil): %d series, err %v; want 0", n, err)
	}
}

func TestHandler(t *testing.T) {
	reg := NewRegistry()
	m, err := New(DefaultConfig(), reg)
	if err != nil {
		t.Fatal(err)
	}
	_, echo, svc := testWorkloads()
	r := &flow.Record{Direction: flow.Inbound, Dest: echo, Service: svc, MTLS: true, Sent: 5, Received: 6}
	m.Opened(r)
	m.Closed(r)
	f := &flow.Record{Direction: flow.Outbound, Reason: flow.ReasonUpstreamConnect}
	m.Opened(f)
	m.Closed(f)
	m.ConfigUpdate("file", true)
	m.DryRunDenied("ns/p")
	m.WatchPool(func() hbone.PoolStats { return hbone.PoolStats{} })

	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("content type %q, want Prometheus text", ct)
	}
	for _, name := range []string{
		"istio_tcp_connections_opened_total{",
		"istio_tcp_connections_closed_total{",
		"istio_tcp_connections_failed_total{",
		"istio_tcp_sent_bytes_total{",
		"istio_tcp_received_bytes_total{",
		`istio_tcp_sockets_open{reporter="destination"} 0`,
		`response_flags="CONNECT"`,
		`connection_security_policy="mutual_tls"`,
		"warren_config_updates_total{",
		"warren_policy_dry_run_denied_total{",
		"warren_hbone_pool_connections 0",
		"go_goroutines",
		"process_",
	} {
		if !strings.Contains(string(body), name) {
			t.Errorf("scrape lacks %q", name)
		}
	}
}

func TestNewErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(DefaultConfig(), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(DefaultConfig(), reg); err == nil {
		t.Error("second New on one registry succeeded; want a duplicate registration error")
	}
	// A clash part-way through registration leaves the registry unchanged.
	clashReg := prometheus.NewRegistry()
	clash := prometheus.NewGauge(prometheus.GaugeOpts{Name: "warren_config_updates_total", Help: "clash"})
	clashReg.MustRegister(clash)
	if _, err := New(DefaultConfig(), clashReg); err == nil {
		t.Error("New over a clashing metric succeeded")
	}
	again := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_tcp_connections_opened_total",
		Help: "The total number of TCP connections opened",
	}, trafficLabelNames())
	if err := clashReg.Register(again); err != nil {
		t.Errorf("metric registered before the clash was left registered: %v", err)
	}
	if _, err := New(Config{}, prometheus.NewRegistry()); err == nil {
		t.Error("New with an empty config succeeded")
	}
	if _, err := New(DefaultConfig(), nil); err == nil {
		t.Error("New with a nil registerer succeeded")
	}
}

// TestNoAllocs pins the per-connection cost: once a label set is cached,
// Opened and Closed allocate nothing.
func TestNoAllocs(t *testing.T) {
	m, _ := newTest(t)
	sleep, echo, svc := testWorkloads()
	ok := &flow.Record{
		Direction: flow.Outbound, Source: sleep, Dest: echo, Service: svc, MTLS: true,
		SrcIdentity: sleepID, DstIdentity: echoID, Sent: 1234, Received: 5678,
	}
	denied := &flow.Record{Direction: flow.Inbound, Dest: echo, SrcIdentity: sleepID, Reason: flow.ReasonPolicy}
	for _, r := range []*flow.Record{ok, denied} {
		m.Opened(r)
		m.Closed(r)
		if n := testing.AllocsPerRun(1000, func() { m.Opened(r); m.Closed(r) }); n != 0 {
			t.Errorf("%s: Opened+Closed allocate %v times, want 0", r.Direction, n)
		}
	}
}
