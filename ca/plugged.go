package ca

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// File names of Istio's plugged-in CA layout inside Config.Dir: the keys of
// the cacerts Secret that istiod mounts, so that one Secret serves both.
const (
	// PluggedCertFile is the signing (intermediate) CA certificate.
	PluggedCertFile = "ca-cert.pem"
	// PluggedKeyFile is its private key.
	PluggedKeyFile = "ca-key.pem"
	// PluggedRootFile holds the trust bundle: one or more roots.
	PluggedRootFile = "root-cert.pem"
	// PluggedChainFile links PluggedCertFile to a root of PluggedRootFile.
	PluggedChainFile = "cert-chain.pem"
)

// loadPlugged loads Istio's plugged-in CA layout from Config.Dir.
//
// Istio's tooling writes cert-chain.pem as ca-cert.pem followed by every
// certificate up to and including the root (tools/certs: "cat ca-cert.pem
// root-cert.pem"); its older documentation has it hold the intermediates
// only, and empty when ca-cert.pem is itself the root. All of these are
// accepted: the chain file and any certificates after the first in
// ca-cert.pem only offer intermediates, and the issued chain is the path
// that verification finds from ca-cert.pem to a root of root-cert.pem. That
// path must allow both server and client authentication, since both ends
// of an HBONE tunnel present the same certificate.
func (c *CA) loadPlugged() (*authority, error) {
	path := func(name string) string { return filepath.Join(c.cfg.Dir, name) }
	names := []string{PluggedCertFile, PluggedKeyFile, PluggedRootFile, PluggedChainFile}
	data := make(map[string][]byte, len(names))
	var missing []string
	for _, n := range names {
		b, err := os.ReadFile(path(n))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, path(n))
		case err != nil:
			return nil, fmt.Errorf("reading plugged-in CA file %s: %w", path(n), err)
		}
		data[n] = b
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("plugged-in CA in %s is incomplete: %s missing (want %s)", c.cfg.Dir, strings.Join(missing, ", "), strings.Join(names, ", "))
	}

	certPath, keyPath, rootPath, chainPath := path(PluggedCertFile), path(PluggedKeyFile), path(PluggedRootFile), path(PluggedChainFile)
	certs, err := ParseCertificates(data[PluggedCertFile])
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	cert := certs[0]
	if err := c.checkCACert("CA certificate", certPath, cert, isPluggedKey, pluggedKeyWant); err != nil {
		return nil, err
	}
	key, err := parseKey("CA key", keyPath, data[PluggedKeyFile])
	if err != nil {
		return nil, err
	}
	if !isPluggedKey(key.Public()) {
		return nil, fmt.Errorf("CA key %s: key is %s, want %s", keyPath, keyKind(key), pluggedKeyWant)
	}
	if err := matchKey("CA key", keyPath, key, certPath, cert); err != nil {
		return nil, err
	}

	roots, err := ParseCertificates(data[PluggedRootFile])
	if err != nil {
		return nil, fmt.Errorf("root bundle %s: %w", rootPath, err)
	}
	for _, r := range roots {
		if !r.BasicConstraintsValid || !r.IsCA {
			return nil, fmt.Errorf("root bundle %s: certificate %q (serial %x) is not a CA", rootPath, r.Subject, r.SerialNumber)
		}
	}
	// An empty chain file is Istio's way of saying ca-cert.pem is a root.
	var chainCerts []*x509.Certificate
	if len(bytes.TrimSpace(data[PluggedChainFile])) > 0 {
		if chainCerts, err = ParseCertificates(data[PluggedChainFile]); err != nil {
			return nil, fmt.Errorf("certificate chain %s: %w", chainPath, err)
		}
	}

	chain, err := c.verifyPlugged(cert, append(certs[1:], chainCerts...), roots)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s does not chain to a root of %s through %s: %w", certPath, rootPath, chainPath, err)
	}
	c.warnKeyMode(keyPath)
	a := newAuthority(key, chain, roots)
	c.log.Info("loaded plugged-in CA", "trust_domain", c.td.Name(), "dir", c.cfg.Dir,
		"subject", cert.Subject.String(), "serial", cert.SerialNumber.Text(16), "key", keyKind(key),
		"chain", len(chain), "roots", len(roots), "not_after", a.notAfter)
	return a, nil
}

// verifyPlugged finds the shortest path from cert through intermediates to
// one of roots that is valid now, and returns it cert first, root last.
// Every certificate on it that restricts extended key usage must allow both
// server and client authentication.
func (c *CA) verifyPlugged(cert *x509.Certificate, intermediates, roots []*x509.Certificate) ([]*x509.Certificate, error) {
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   c.now(),
		// Usages are checked below, on the chosen path only.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, r := range roots {
		opts.Roots.AddCert(r)
	}
	for _, ic := range intermediates {
		opts.Intermediates.AddCert(ic)
	}
	chains, err := cert.Verify(opts)
	if err != nil {
		return nil, err
	}
	best := chains[0]
	for _, ch := range chains[1:] {
		if len(ch) < len(best) {
			best = ch
		}
	}
	for _, ch := range best {
		if len(ch.ExtKeyUsage) == 0 || slices.Contains(ch.ExtKeyUsage, x509.ExtKeyUsageAny) {
			continue
		}
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if !slices.Contains(ch.ExtKeyUsage, u) {
				return nil, fmt.Errorf("certificate %q on the path restricts extended key usage and lacks %s", ch.Subject, extKeyUsageName(u))
			}
		}
	}
	return best, nil
}

func extKeyUsageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "server authentication"
	}
	return "client authentication"
}
