// Package metrics counts Warren's connections under Istio's standard TCP
// metric names and labels, plus Warren's own warren_* gauges and counters, on
// a Prometheus registry passed in.
package metrics
