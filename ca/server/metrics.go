package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/warren-mesh/warren/metrics"
)

// Results of a request, the values of the result label. Each refusal maps
// to the gRPC code of the same name.
const (
	ResultIssued           = "issued"
	ResultUnauthenticated  = "unauthenticated"
	ResultPermissionDenied = "permission_denied"
	ResultInvalidArgument  = "invalid_argument"
	ResultInternal         = "internal"
)

var results = []string{ResultIssued, ResultUnauthenticated, ResultPermissionDenied, ResultInvalidArgument, ResultInternal}

type serverMetrics struct {
	requests *prometheus.CounterVec
}

// newMetrics registers the server's metrics on reg (nil: unregistered).
func newMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_ca_requests_total",
			Help: "Certificate requests to the CA, by result: issued, or the refusal's gRPC code.",
		}, []string{"result"}),
	}
	// Every result is exported from the start, so that a rate over a
	// refusal that never happened reads 0 rather than nothing.
	for _, r := range results {
		m.requests.WithLabelValues(r)
	}
	if err := metrics.Register(reg, "CA", m.requests); err != nil {
		return nil, err
	}
	return m, nil
}
