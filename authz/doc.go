// Package authz decides whether an inbound connection may reach its
// destination workload under Istio's L4 AuthorizationPolicy semantics, and
// converts policies from Istio's CRDs and xDS protos into state.Policy.
package authz
