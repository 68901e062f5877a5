// Package discovery feeds Warren's state.Store from the sources of mesh
// state: a local YAML file (hosts without Kubernetes, the demo) and Istio's
// workload xDS from Warren's controller or istiod, merged with the pods
// the agent captures on its own node.
package discovery
