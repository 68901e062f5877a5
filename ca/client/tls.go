package client

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/warren-mesh/warren/ca"
)

// FileRootsTLS returns a client TLS configuration that verifies the server
// as serverName against the PEM roots in rootFile, read again on every
// handshake so that a root published later (a ConfigMap rewritten by the
// controller) is picked up without a restart. Agents dial the controller's
// discovery service with it.
func FileRootsTLS(rootFile, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// tls.Config.RootCAs is fixed at creation; verification happens in
		// VerifyConnection instead and is not skipped.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			data, err := os.ReadFile(rootFile)
			if err != nil {
				return fmt.Errorf("reading root file: %w", err)
			}
			roots, err := ca.ParseCertificates(data)
			if err != nil {
				return fmt.Errorf("root file %s: %w", rootFile, err)
			}
			return verifyPeer(cs, "server", serverName, roots)
		},
	}
}

// verifyPeer checks the chain the peer (what: "CA", "server") sent in cs
// against roots, for serverName.
func verifyPeer(cs tls.ConnectionState, what, serverName string, roots []*x509.Certificate) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%s sent no certificate", what)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: serverName, Roots: pool, Intermediates: inter}); err != nil {
		return fmt.Errorf("verifying %s certificate for %q: %w", what, serverName, err)
	}
	return nil
}
