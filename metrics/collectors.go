package metrics

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/identity"
)

// WatchPool makes scrapes report fn's counts as warren_hbone_pool_connections
// and warren_hbone_pool_streams. fn is called once per scrape, never on a
// connection's path; a later call replaces fn, nil stops the report.
func (m *Metrics) WatchPool(fn func() hbone.PoolStats) { m.pool.fn.Store(&fn) }

// WatchCertificates makes scrapes report, for each identity fn returns,
// warren_certificate_expiry_seconds (time left on its certificate, negative
// once expired; absent while none is issued) and the count of identities
// per state in warren_certificates. fn is called once per scrape; a later
// call replaces it, nil stops the report.
func (m *Metrics) WatchCertificates(fn func() []identity.CertInfo) { m.certs.fn.Store(&fn) }

// poolCollector reads the HBONE pool when scraped: its counts live in the
// pool, and copying them on every change would cost the data path.
type poolCollector struct {
	fn          atomic.Pointer[func() hbone.PoolStats]
	connections *prometheus.Desc
	streams     *prometheus.Desc
}

func newPoolCollector() *poolCollector {
	return &poolCollector{
		connections: prometheus.NewDesc("warren_hbone_pool_connections",
			"HTTP/2 connections in the outbound HBONE pool", nil, nil),
		streams: prometheus.NewDesc("warren_hbone_pool_streams",
			"CONNECT streams open on the outbound HBONE pool's connections", nil, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connections
	ch <- c.streams
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	fn := c.fn.Load()
	if fn == nil || *fn == nil {
		return
	}
	st := (*fn)()
	ch <- prometheus.MustNewConstMetric(c.connections, prometheus.GaugeValue, float64(st.Connections))
	ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(st.Streams))
}

// certCollector reads the identity manager when scraped.
type certCollector struct {
	fn     atomic.Pointer[func() []identity.CertInfo]
	now    func() time.Time // replaced in tests
	expiry *prometheus.Desc
	states *prometheus.Desc
}

func newCertCollector() *certCollector {
	return &certCollector{
		now: time.Now,
		// One series per identity in use on the node: bounded by its
		// pods' service accounts.
		expiry: prometheus.NewDesc("warren_certificate_expiry_seconds",
			"Seconds until the identity's workload certificate expires", []string{"identity"}, nil),
		states: prometheus.NewDesc("warren_certificates",
			"Identities in use on this node, by certificate state", []string{"state"}, nil),
	}
}

func (c *certCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.expiry
	ch <- c.states
}

func (c *certCollector) Collect(ch chan<- prometheus.Metric) {
	fn := c.fn.Load()
	if fn == nil || *fn == nil {
		return
	}
	infos := (*fn)()
	now := c.now()
	// Every state is reported, at zero too, so that alerts on "pending > 0"
	// see a value rather than an absent series.
	counts := map[identity.State]int{identity.StatePending: 0, identity.StateValid: 0, identity.StateExpired: 0}
	for _, info := range infos {
		counts[info.State]++
		if info.State == identity.StatePending || info.NotAfter.IsZero() {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue,
			info.NotAfter.Sub(now).Seconds(), info.ID.String())
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(n), string(st))
	}
}

// NewRegistry returns a registry with the Go runtime and process collectors
// registered, as the agent's :15020 endpoint serves them (ztunnel reports
// its process metrics there too).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves g in the Prometheus text format. The agent mounts it at
// /metrics and /stats/prometheus on port 15020, where Istio's scrape
// annotations point. A collector that fails does not fail the whole scrape:
// the rest is still served.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Register registers cs on reg, all or none: on a failure the ones already
// registered are unregistered again, so that a corrected caller may retry.
// A nil reg registers nothing (components built without metrics, tests).
// what names the component in the error.
func Register(reg prometheus.Registerer, what string, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("registering %s metrics: %w", what, err)
		}
	}
	return nil
}
