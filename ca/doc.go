// Package ca is Warren's certificate authority for one SPIFFE trust domain:
// it signs workload CSRs into short-lived X.509-SVIDs with its own ECDSA
// P-256 root or with a plugged-in intermediate in Istio's cacerts layout;
// the controller's gRPC CA service wraps it.
package ca
