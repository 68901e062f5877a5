package metrics

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

// maxCachedSeries bounds the series cache. An entry exists per (source,
// destination, service, identities, direction, outcome) tuple in use, so a
// node with a hundred pods each talking to a few dozen destinations stays
// well below it. Past it the cache is emptied: that forgets the state objects
// of old snapshots it was keeping alive, at the cost of deriving labels
// again once per tuple.
const maxCachedSeries = 4096

// Metrics records connections and Warren's own state. It is safe for
// concurrent use.
type Metrics struct {
	cfg Config

	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	failed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
	sockets  *prometheus.GaugeVec

	configUpdates *prometheus.CounterVec
	dryRunDenied  *prometheus.CounterVec
	pool          *poolCollector
	certs         *certCollector

	mu    sync.RWMutex
	cache map[seriesKey]*series
}

// seriesKey identifies the label set of a record without deriving it. State
// objects are immutable once in a snapshot, so their pointers stand for their
// contents; a new snapshot brings new pointers and so new entries.
type seriesKey struct {
	src, dst     *state.Workload
	svc          *state.Service
	srcID, dstID string
	dir          flow.Direction
	mtls         bool
	// end tells the entry Closed uses from the one Opened uses, so that
	// neither creates the other's series: a denied connection leaves no
	// closed series with flag "-" and no byte series.
	end  bool
	flag responseFlag
}

// series holds the resolved metrics of one seriesKey, so that a connection
// costs a map lookup and atomic adds instead of hashing 23 label values per
// metric.
type series struct {
	sockets prometheus.Gauge
	// opened is set in Opened's entries.
	opened prometheus.Counter
	// closed and failed are set in Closed's entries and carry the final
	// flag; failed is nil when the flag is "-".
	closed, failed prometheus.Counter
	// bytes is resolved by the first Closed that carried any, so that
	// connections that never moved a byte create no byte series.
	bytes atomic.Pointer[byteCounters]
}

// byteCounters carry the flag "-" whatever the outcome: ztunnel counts bytes
// as they flow, against the labels known when the connection opened.
type byteCounters struct {
	sent, received prometheus.Counter
}

// New creates the metrics and registers them on reg. It fails if cfg is
// invalid or a metric of the same name is already registered on reg; a
// failed New leaves reg unchanged.
func New(cfg Config, reg prometheus.Registerer) (*Metrics, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("metrics config: %w", err)
	}
	if reg == nil {
		return nil, errors.New("metrics: registerer is nil")
	}
	names := trafficLabelNames()
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &Metrics{
		cfg: cfg,
		// Names and help texts are Istio's (ztunnel src/proxy/metrics.rs);
		// client_golang takes the _total suffix as part of the name.
		opened: counter("istio_tcp_connections_opened_total",
			"The total number of TCP connections opened", names),
		closed: counter("istio_tcp_connections_closed_total",
			"The total number of TCP connections closed", names),
		failed: counter("istio_tcp_connections_failed_total",
			"The total number of TCP connections that failed to establish (unstable)", names),
		sent: counter("istio_tcp_sent_bytes_total",
			"The size of total bytes sent during response in case of a TCP connection", names),
		received: counter("istio_tcp_received_bytes_total",
			"The size of total bytes received during request in case of a TCP connection", names),
		// Only reporter: a per-peer gauge would keep a series per pair
		// alive at zero forever, and ztunnel's socket metrics carry only
		// reporter too.
		sockets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "istio_tcp_sockets_open",
			Help: "The number of TCP connections currently open (unstable)",
		}, []string{"reporter"}),
		configUpdates: counter("warren_config_updates_total",
			"Configuration updates by source, applied or rejected", []string{"source", "result"}),
		dryRunDenied: counter("warren_policy_dry_run_denied_total",
			"Connections a dry-run authorization policy would have denied", []string{"policy"}),
		pool:  newPoolCollector(),
		certs: newCertCollector(),
		cache: make(map[seriesKey]*series),
	}
	var registered []prometheus.Collector
	for _, c := range []struct {
		name string
		c    prometheus.Collector
	}{
		{"istio_tcp_connections_opened_total", m.opened},
		{"istio_tcp_connections_closed_total", m.closed},
		{"istio_tcp_connections_failed_total", m.failed},
		{"istio_tcp_sent_bytes_total", m.sent},
		{"istio_tcp_received_bytes_total", m.received},
		{"istio_tcp_sockets_open", m.sockets},
		{"warren_config_updates_total", m.configUpdates},
		{"warren_policy_dry_run_denied_total", m.dryRunDenied},
		{"warren_hbone_pool_*", m.pool},
		{"warren_certificate_*", m.certs},
	} {
		if err := reg.Register(c.c); err != nil {
			// Leave reg as it was, so that a corrected New may be retried.
			for _, done := range registered {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("registering metric %s: %w", c.name, err)
		}
		registered = append(registered, c.c)
	}
	return m, nil
}

// Opened counts a connection once it is decided: its upstream open, or
// refused, in which case Closed must follow at once. It increments
// istio_tcp_connections_opened_total and istio_tcp_sockets_open. Like
// ztunnel, which counts a connection as opened before authorizing and
// connecting it, a refused connection counts as opened, then closed and
// failed.
func (m *Metrics) Opened(r *flow.Record) {
	if r == nil {
		return
	}
	s := m.series(r, false, flagNone)
	s.opened.Inc()
	s.sockets.Inc()
}

// Closed counts the end of a connection that Opened counted: closed, the
// bytes it carried, failed when r.Reason is set, and one socket fewer open.
// closed and failed carry the response flag of r.Reason.
//
// The byte counters follow Istio's convention, which ztunnel keeps for
// compatibility (istio/istio#32399): istio_tcp_received_bytes_total counts
// the request direction, client to server (r.Sent), and
// istio_tcp_sent_bytes_total the response direction, server to client
// (r.Received), for either reporter.
func (m *Metrics) Closed(r *flow.Record) {
	if r == nil {
		return
	}
	s := m.series(r, true, flagOf(r))
	s.closed.Inc()
	if s.failed != nil {
		s.failed.Inc()
	}
	if r.Sent > 0 || r.Received > 0 {
		b := s.bytes.Load()
		if b == nil {
			// Concurrent first closes resolve the same children; either
			// store is right.
			b = m.resolveBytes(r)
			s.bytes.Store(b)
		}
		if r.Sent > 0 {
			b.received.Add(float64(r.Sent))
		}
		if r.Received > 0 {
			b.sent.Add(float64(r.Received))
		}
	}
	s.sockets.Dec()
	// Allowed, but a dry-run policy would have denied it.
	if r.DryRun != "" && r.Reason == flow.ReasonNone {
		m.DryRunDenied(r.DryRun)
	}
}

// series returns the cached metrics of r for Opened (end false) or Closed
// with flag f, resolving them on first use.
func (m *Metrics) series(r *flow.Record, end bool, f responseFlag) *series {
	k := seriesKey{
		src: r.Source, dst: r.Dest, svc: r.Service,
		srcID: r.SrcIdentity, dstID: r.DstIdentity,
		dir: r.Direction, mtls: r.MTLS, end: end, flag: f,
	}
	m.mu.RLock()
	s := m.cache[k]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	s = m.resolve(r, end, f)
	m.mu.Lock()
	if len(m.cache) >= maxCachedSeries {
		clear(m.cache)
	}
	m.cache[k] = s
	m.mu.Unlock()
	return s
}

// resolve derives the labels of r and looks up the children it needs.
func (m *Metrics) resolve(r *flow.Record, end bool, f responseFlag) *series {
	v := deriveLabels(m.cfg, r, f)
	s := &series{sockets: m.sockets.WithLabelValues(v[lReporter])}
	switch {
	case !end:
		s.opened = m.opened.WithLabelValues(v[:]...)
	case f == flagNone:
		s.closed = m.closed.WithLabelValues(v[:]...)
	default:
		s.closed = m.closed.WithLabelValues(v[:]...)
		s.failed = m.failed.WithLabelValues(v[:]...)
	}
	return s
}

func (m *Metrics) resolveBytes(r *flow.Record) *byteCounters {
	v := deriveLabels(m.cfg, r, flagNone)
	return &byteCounters{
		sent:     m.sent.WithLabelValues(v[:]...),
		received: m.received.WithLabelValues(v[:]...),
	}
}

// ConfigUpdate counts one configuration update from source (such as "file"
// or "xds"), applied when ok, else rejected. source must come from a small
// fixed set: each value is a series.
func (m *Metrics) ConfigUpdate(source string, ok bool) {
	result := "rejected"
	if ok {
		result = "applied"
	}
	m.configUpdates.WithLabelValues(source, result).Inc()
}

// DryRunDenied counts a connection that the dry-run policy ("namespace/name")
// would have denied; the connection itself was allowed. Policies are
// bounded by configuration, so the label is too.
func (m *Metrics) DryRunDenied(policy string) {
	m.dryRunDenied.WithLabelValues(policy).Inc()
}
