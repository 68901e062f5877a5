package catest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/warren-mesh/warren/ca"
)

// Hierarchy is a self-signed root and an intermediate CA signed by it.
type Hierarchy struct {
	Root            *x509.Certificate
	RootKey         crypto.Signer
	Intermediate    *x509.Certificate
	IntermediateKey crypto.Signer
}

// Options shape a Hierarchy; the zero value gives ECDSA P-256 keys, a day
// of validity and the trust domain cluster.local.
type Options struct {
	// TrustDomain names the root's SPIFFE ID; empty means cluster.local.
	TrustDomain string
	// RootKey and IntermediateKey are the keys; nil means a new ECDSA
	// P-256 key.
	RootKey, IntermediateKey crypto.Signer
	// Lifetime is how long both certificates are valid from an hour ago;
	// zero means 24 hours.
	Lifetime time.Duration
	// Intermediate, when set, edits the intermediate's template before it
	// is signed.
	Intermediate func(*x509.Certificate)
}

// New creates a Hierarchy, failing tb on error.
func New(tb testing.TB, opts Options) *Hierarchy {
	tb.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = 24 * time.Hour
	}
	if opts.RootKey == nil {
		opts.RootKey = P256(tb)
	}
	if opts.IntermediateKey == nil {
		opts.IntermediateKey = P256(tb)
	}
	// An hour of backdating keeps the certificates valid for a CA whose
	// clock is set a little in the past.
	notBefore := time.Now().Add(-time.Hour).Truncate(time.Second)
	td := &url.URL{Scheme: "spiffe", Host: opts.TrustDomain}
	root := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{opts.TrustDomain}, CommonName: "test root"},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(opts.Lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td},
	}
	h := &Hierarchy{RootKey: opts.RootKey, IntermediateKey: opts.IntermediateKey}
	h.Root = create(tb, root, root, opts.RootKey.Public(), opts.RootKey)
	inter := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{Organization: []string{opts.TrustDomain}, CommonName: "test intermediate"},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(opts.Lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Zero with MaxPathLenZero: it may sign leaves only, as a mesh's
		// issuing CA should.
		MaxPathLenZero: true,
		URIs:           []*url.URL{td},
	}
	if opts.Intermediate != nil {
		opts.Intermediate(inter)
	}
	h.Intermediate = create(tb, inter, h.Root, opts.IntermediateKey.Public(), opts.RootKey)
	return h
}

func create(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		tb.Fatalf("creating certificate %q: %v", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Files returns the Istio plugged-in CA layout of h, file name to content.
// cert-chain.pem is the intermediate then the root, as Istio's tooling
// writes it.
func (h *Hierarchy) Files(tb testing.TB) map[string][]byte {
	tb.Helper()
	return map[string][]byte{
		ca.PluggedCertFile:  PEM(h.Intermediate),
		ca.PluggedKeyFile:   KeyPEM(tb, h.IntermediateKey),
		ca.PluggedRootFile:  PEM(h.Root),
		ca.PluggedChainFile: PEM(h.Intermediate, h.Root),
	}
}

// Write writes Files to dir, creating it.
func (h *Hierarchy) Write(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	for name, data := range h.Files(tb) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
}

// P256 returns a new ECDSA P-256 key.
func P256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// PEM encodes certificates as concatenated PEM blocks.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM encodes key as a PKCS#8 PEM block.
func KeyPEM(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
