package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"
)

// SignServing issues a TLS server certificate for the CA's own gRPC
// endpoint: DNS and IP SANs, no SPIFFE ID, server authentication only, so
// that it can never pass as a workload identity. pub must be an ECDSA P-256
// key. It returns the chain as Sign does, leaf first, root last, and has no
// side effects beyond consuming randomness.
func (c *CA) SignServing(pub crypto.PublicKey, dnsNames []string, ips []net.IP, ttl time.Duration) ([]*x509.Certificate, error) {
	if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("serving key is %s, want ECDSA P-256", keyKind(pub))
	}
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, errors.New("serving certificate needs at least one DNS name or IP address")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("serving certificate lifetime %v: must be positive", ttl)
	}
	chain, err := c.issue(&x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	}, pub, ttl)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	return chain, nil
}
