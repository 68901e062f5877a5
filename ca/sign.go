package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sign checks a DER-encoded PKCS#10 CSR and issues a leaf X.509-SVID for the
// SPIFFE ID it carries. It returns the chain leaf first, then the
// intermediates of a plugged-in CA (none for Warren's own root), root last.
//
// The CSR must be signed with ECDSA P-256 / SHA-256 and carry exactly one
// URI SAN, a SPIFFE ID with a path in the CA's trust domain, and no other
// SAN; anything else yields an error wrapping ErrInvalidCSR. The CSR's
// subject is ignored: the leaf has none, as in Istio. The lifetime is ttl,
// or Config.LeafTTL when ttl <= 0, capped at Config.MaxTTL and at the
// earliest expiry in the chain above the leaf. Sign has no side effects
// beyond consuming randomness.
func (c *CA) Sign(csrDER []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	return c.sign(csrDER, spiffeid.ID{}, ttl)
}

// SignFor is Sign that also requires the CSR's SPIFFE ID to be want. A
// network front end uses it after deciding which identity the caller may
// obtain (its own, or one it impersonates for a local pod).
func (c *CA) SignFor(csrDER []byte, want spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if want.IsZero() {
		return nil, fmt.Errorf("%w: no identity requested", ErrInvalidCSR)
	}
	return c.sign(csrDER, want, ttl)
}

func (c *CA) sign(csrDER []byte, want spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, id, err := c.checkCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if !want.IsZero() && id != want {
		return nil, fmt.Errorf("%w: CSR is for %s, requested %s", ErrInvalidCSR, id, want)
	}

	lifetime := c.cfg.LeafTTL
	if ttl > 0 {
		lifetime = ttl
	}
	tmpl := &x509.Certificate{
		// KeyEncipherment is meaningless for ECDSA keys but Istio sets it and
		// some peers check for it.
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		// With an empty subject, crypto/x509 marks the SAN extension
		// critical, as RFC 5280 4.2.1.6 requires.
		URIs: []*url.URL{id.URL()},
	}
	chain, err := c.issue(tmpl, csr.PublicKey, min(lifetime, c.cfg.MaxTTL))
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, err)
	}
	return chain, nil
}

// issue completes tmpl — random serial, validity from now (backdated) for
// lifetime but never past any certificate above it — signs it for pub with
// the current signing certificate and returns [leaf, intermediates...,
// root].
func (c *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, lifetime time.Duration) ([]*x509.Certificate, error) {
	a := c.auth.Load()
	now := c.now()
	notAfter := now.Add(lifetime)
	// A leaf that outlives its intermediate or root would fail
	// verification early anyway; cutting it makes the holder refresh in
	// time.
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-c.cfg.Backdate)
	tmpl.NotAfter = notAfter
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the issued certificate: %w", err)
	}
	return append([]*x509.Certificate{leaf}, a.chain...), nil
}

// checkCSR parses csrDER and enforces the rules in Sign's comment.
func (c *CA) checkCSR(csrDER []byte) (*x509.CertificateRequest, spiffeid.ID, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: parsing: %w", ErrInvalidCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: public key is %s, want ECDSA P-256", ErrInvalidCSR, keyKind(csr.PublicKey))
	}
	if csr.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: signature algorithm is %s, want %s", ErrInvalidCSR, csr.SignatureAlgorithm, x509.ECDSAWithSHA256)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: checking signature: %w", ErrInvalidCSR, err)
	}
	switch {
	case len(csr.URIs) != 1:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: has %d URI SANs, want exactly one", ErrInvalidCSR, len(csr.URIs))
	case len(csr.DNSNames) > 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: has DNS SANs %q, want only a URI SAN", ErrInvalidCSR, csr.DNSNames)
	case len(csr.IPAddresses) > 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: has IP SANs %v, want only a URI SAN", ErrInvalidCSR, csr.IPAddresses)
	case len(csr.EmailAddresses) > 0:
		return nil, spiffeid.ID{}, fmt.Errorf("%w: has email SANs %q, want only a URI SAN", ErrInvalidCSR, csr.EmailAddresses)
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %w", ErrInvalidCSR, csr.URIs[0], err)
	}
	if !id.MemberOf(c.td) {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %s is not in trust domain %q", ErrInvalidCSR, id, c.td.Name())
	}
	// A SPIFFE leaf must name a workload, not the trust domain itself.
	if id.Path() == "" {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %s has no path", ErrInvalidCSR, id)
	}
	return csr, id, nil
}
