package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// alpnH2 is the only application protocol HBONE speaks.
const alpnH2 = "h2"

// clientTLSConfig authenticates with the request's SVID and accepts only a
// server chained to the bundle presenting one of the expected identities. The
// certificate is read from the source on every handshake, so rotation needs
// no restart.
func clientTLSConfig(req *Request) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(req.SVID, req.Bundle, tlsconfig.AuthorizeOneOf(req.Expected...))
	harden(cfg)
	return cfg
}

// serverTLSConfig requires a client certificate with a SPIFFE ID in the trust
// domain chained to the bundle; which identities may open which streams is
// decided later by authorization.
func serverTLSConfig(id ServerIdentity) *tls.Config {
	cfg := tlsconfig.MTLSServerConfig(id.SVID, id.Bundle, tlsconfig.AuthorizeMemberOf(id.TrustDomain))
	harden(cfg)
	return cfg
}

// harden pins what HBONE requires on top of go-spiffe's verification: TLS 1.3
// only, ALPN h2, and X25519 with the post-quantum hybrid offered first.
func harden(cfg *tls.Config) {
	cfg.MinVersion = tls.VersionTLS13
	cfg.MaxVersion = tls.VersionTLS13
	cfg.NextProtos = []string{alpnH2}
	cfg.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
}

// peerID returns the SPIFFE ID of the verified peer certificate.
func peerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	return id, nil
}
