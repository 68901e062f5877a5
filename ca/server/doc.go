// Package server is the controller's networked CA: Istio's
// IstioCertificateService over gRPC and TLS, which authenticates each caller,
// decides which SPIFFE identity it may obtain and has the CA sign it.
package server
