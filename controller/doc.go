// Package controller is the Kubernetes side of warren-controller: it watches
// the cluster and turns pods, services, endpoint slices, namespaces and Istio
// security policies into Istio's workload-API resources (istio.workload.Address
// and istio.security.Authorization) for the xDS server, and it holds the
// replica coordination (leader election, CA root Secret bootstrap).
package controller
