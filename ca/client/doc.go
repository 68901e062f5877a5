// Package client is the node agent's side of the networked CA: an
// identity.Issuer that sends CSRs to Warren's controller or to Istio's istiod
// over gRPC and TLS, with the node's token or client certificate.
package client
