// Package xds speaks Istio's workload-discovery protocol, delta ADS with the
// istio.workload.Address and istio.security.Authorization types: a server
// the controller feeds from a Cache, and a reconnecting client the agent
// hands each response to.
package xds
