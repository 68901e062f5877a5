// Package discovery feeds Warren's state.Store from the sources of mesh
// state: a local YAML file (hosts without Kubernetes, the demo) and, later,
// Istio's workload xDS.
package discovery
