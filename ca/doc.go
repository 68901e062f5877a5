// Package ca is Warren's local certificate authority: it keeps an ECDSA P-256
// root for one SPIFFE trust domain and signs workload CSRs into short-lived
// X.509-SVIDs; the controller's gRPC CA service wraps it.
package ca
