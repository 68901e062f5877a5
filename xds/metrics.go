package xds

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/warren-mesh/warren/metrics"
)

type serverMetrics struct {
	streams prometheus.Gauge
	pushes  *prometheus.CounterVec
	acks    *prometheus.CounterVec
	nacks   *prometheus.CounterVec
	refused *prometheus.CounterVec
}

// resourcesDesc is read from the Cache at scrape time, so that the gauge
// can never disagree with what is served.
var resourcesDesc = prometheus.NewDesc("warren_xds_resources",
	"Resources the xDS server holds, by type URL.", []string{"type"}, nil)

// cacheCollector exports warren_xds_resources from a Cache.
type cacheCollector struct{ c *Cache }

func (cc cacheCollector) Describe(ch chan<- *prometheus.Desc) { ch <- resourcesDesc }

func (cc cacheCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range cc.c.typeURLs() {
		ch <- prometheus.MustNewConstMetric(resourcesDesc, prometheus.GaugeValue, float64(cc.c.Len(t)), t)
	}
}

// newServerMetrics registers the server's metrics on reg (nil:
// unregistered).
func newServerMetrics(reg prometheus.Registerer, c *Cache) (*serverMetrics, error) {
	m := &serverMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_xds_connected_streams",
			Help: "Delta ADS streams currently served.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_xds_pushes_total",
			Help: "Delta xDS responses sent, by type URL.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_xds_acks_total",
			Help: "Responses clients accepted, by type URL.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_xds_nacks_total",
			Help: "Responses clients rejected (NACK), by type URL.",
		}, []string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_xds_streams_refused_total",
			Help: "Streams refused before anything was sent, by gRPC code.",
		}, []string{"code"}),
	}
	// The served types exist from the start, so that a rate over a NACK that
	// never happened reads 0 rather than nothing.
	for _, t := range []string{TypeAddress, TypeAuthorization} {
		m.pushes.WithLabelValues(t)
		m.acks.WithLabelValues(t)
		m.nacks.WithLabelValues(t)
	}
	return m, metrics.Register(reg, "xds server", m.streams, m.pushes, m.acks, m.nacks, m.refused, cacheCollector{c})
}

type clientMetrics struct {
	connected  prometheus.Gauge
	updates    *prometheus.CounterVec
	reconnects prometheus.Counter
	resources  *prometheus.GaugeVec
}

// Values of the result label of warren_xds_client_updates_total.
const (
	resultACK  = "ack"
	resultNACK = "nack"
)

func newClientMetrics(reg prometheus.Registerer, typeURLs []string) (*clientMetrics, error) {
	m := &clientMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_xds_client_connected",
			Help: "1 while the xDS stream is up and the server has answered on it.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_xds_client_updates_total",
			Help: "xDS responses received, by type URL and whether they were accepted (ack) or rejected (nack).",
		}, []string{"type", "result"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_xds_client_reconnects_total",
			Help: "xDS streams that ended and were retried.",
		}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_xds_client_resources",
			Help: "Resources the xDS client holds, by type URL.",
		}, []string{"type"}),
	}
	for _, t := range typeURLs {
		m.updates.WithLabelValues(t, resultACK)
		m.updates.WithLabelValues(t, resultNACK)
		m.resources.WithLabelValues(t)
	}
	return m, metrics.Register(reg, "xds client", m.connected, m.updates, m.reconnects, m.resources)
}
