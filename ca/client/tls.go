package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
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
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			data, err := os.ReadFile(rootFile)
			if err != nil {
				return fmt.Errorf("reading root file: %w", err)
			}
			roots, err := ca.ParseCertificates(data)
			if err != nil {
				return fmt.Errorf("root file %s: %w", rootFile, err)
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
				return fmt.Errorf("verifying server certificate for %q: %w", serverName, err)
			}
			return nil
		},
	}
}
