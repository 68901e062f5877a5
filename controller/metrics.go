package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	wmetrics "github.com/warren-mesh/warren/metrics"
)

// metrics are the controller's own: istiod has no equivalents for a
// builder of this shape, so the names are Warren's.
type metrics struct {
	rebuilds  prometheus.Counter
	duration  prometheus.Histogram
	resources *prometheus.GaugeVec
	problems  prometheus.Gauge
	leader    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_controller_rebuilds_total",
			Help: "Builds of the workload-API resources from the cluster's state.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "warren_controller_rebuild_duration_seconds",
			Help: "Time to build the resources and hand them to the xDS cache.",
			// 1 ms to ~4 s: a small cluster builds in about a millisecond,
			// 10,000 pods in tens of milliseconds.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 13),
		}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_controller_resources",
			Help: "Resources of the last build, by type (workload, service, authorization).",
		}, []string{"type"}),
		problems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_controller_object_problems",
			Help: "Objects the last build left out or changed (see Warning Events).",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warren_controller_leader",
			Help: "1 while this replica is the leader.",
		}),
	}
	if err := wmetrics.Register(reg, "controller", m.rebuilds, m.duration, m.resources, m.problems, m.leader); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) built(took time.Duration, workloads, services, authorizations, problems int) {
	m.rebuilds.Inc()
	m.duration.Observe(took.Seconds())
	m.resources.WithLabelValues("workload").Set(float64(workloads))
	m.resources.WithLabelValues("service").Set(float64(services))
	m.resources.WithLabelValues("authorization").Set(float64(authorizations))
	m.problems.Set(float64(problems))
}

func (m *metrics) setLeader(leader bool) {
	v := 0.0
	if leader {
		v = 1
	}
	m.leader.Set(v)
}
