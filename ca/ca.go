package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names of the persisted root inside Config.Dir.
const (
	RootCertFile = "root.pem"
	RootKeyFile  = "root-key.pem"
)

// rootLifetime is long because rotating a root means redistributing the trust
// bundle to every agent; leaves, not the root, carry the short lifetimes.
const rootLifetime = 10 * 365 * 24 * time.Hour

// CA signs workload certificates for one trust domain. It is safe for
// concurrent use.
type CA struct {
	cfg Config
	td  spiffeid.TrustDomain
	log *slog.Logger
	// auth is swapped as a whole so that a later root rotation can replace
	// the signer and the bundle together without blocking Sign.
	auth atomic.Pointer[authority]
	// now is time.Now outside tests.
	now func() time.Time
}

// authority is the signing root and the roots currently trusted. Immutable.
type authority struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	roots []*x509.Certificate
}

// New returns a CA for cfg.
//
// With cfg.Dir set it loads root.pem and root-key.pem from there, checking
// that the certificate is an unexpired CA for the trust domain with an ECDSA
// P-256 key and that the key matches it. When neither file exists it
// generates a new root and writes both (the key with mode 0600, the directory
// created with 0700 if missing). When only one exists it fails rather than
// overwrite half of a root. Errors name the file; they are not retryable
// without operator action except for transient I/O errors.
func New(cfg Config, log *slog.Logger) (*CA, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ca config: %w", err)
	}
	td, _ := spiffeid.TrustDomainFromString(cfg.TrustDomain) // checked by Validate
	c := &CA{cfg: cfg, td: td, log: log.With("component", "ca"), now: time.Now}

	var (
		a   *authority
		err error
	)
	switch {
	case cfg.Dir == "":
		a, err = c.generate()
		if err == nil {
			c.log.Info("generated in-memory root; it is lost at exit", "trust_domain", td.Name(), "serial", a.cert.SerialNumber.Text(16))
		}
	default:
		a, err = c.loadOrGenerate()
	}
	if err != nil {
		return nil, err
	}
	c.auth.Store(a)
	return c, nil
}

// TrustDomain returns the trust domain the CA signs for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Roots returns the trust bundle: every root a certificate from this CA may
// chain to. It holds one root today and several during a rotation. The
// slice is a copy; the certificates must not be modified.
func (c *CA) Roots() []*x509.Certificate {
	return slices.Clone(c.auth.Load().roots)
}

func (c *CA) loadOrGenerate() (*authority, error) {
	certPath := filepath.Join(c.cfg.Dir, RootCertFile)
	keyPath := filepath.Join(c.cfg.Dir, RootKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	certMissing := errors.Is(certErr, fs.ErrNotExist)
	keyMissing := errors.Is(keyErr, fs.ErrNotExist)
	switch {
	case certErr != nil && !certMissing:
		return nil, fmt.Errorf("reading root certificate %s: %w", certPath, certErr)
	case keyErr != nil && !keyMissing:
		return nil, fmt.Errorf("reading root key %s: %w", keyPath, keyErr)
	case certMissing && keyMissing:
		a, err := c.generate()
		if err != nil {
			return nil, err
		}
		if err := persist(c.cfg.Dir, a); err != nil {
			return nil, err
		}
		c.log.Info("generated root", "trust_domain", c.td.Name(), "dir", c.cfg.Dir, "serial", a.cert.SerialNumber.Text(16))
		return a, nil
	case certMissing:
		return nil, fmt.Errorf("root certificate %s is missing but its key %s exists; restore it or remove both to create a new root", certPath, keyPath)
	case keyMissing:
		return nil, fmt.Errorf("root key %s is missing but its certificate %s exists; restore it or remove both to create a new root", keyPath, certPath)
	}

	cert, err := c.parseRootCert(certPath, certPEM)
	if err != nil {
		return nil, err
	}
	key, err := parseRootKey(keyPath, keyPEM)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("root key %s does not match the certificate in %s", keyPath, certPath)
	}
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		c.log.Warn("root key is readable by group or others", "path", keyPath, "mode", fi.Mode().Perm().String())
	}
	c.log.Info("loaded root", "trust_domain", c.td.Name(), "dir", c.cfg.Dir, "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return &authority{cert: cert, key: key, roots: []*x509.Certificate{cert}}, nil
}

// parseRootCert parses and checks the persisted root certificate.
func (c *CA) parseRootCert(path string, data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("root certificate %s: no PEM data", path)
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("root certificate %s: PEM block is %q, want CERTIFICATE", path, block.Type)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("root certificate %s: %w", path, err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("root certificate %s: not a CA certificate", path)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("root certificate %s: key usage lacks certificate signing", path)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("root certificate %s: public key is %s, want ECDSA P-256", path, keyKind(cert.PublicKey))
	}
	if now := c.now(); now.After(cert.NotAfter) {
		return nil, fmt.Errorf("root certificate %s: expired at %s", path, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	// A root need not carry a SPIFFE ID, but one naming another trust domain
	// means Dir belongs to a different mesh.
	for _, u := range cert.URIs {
		if td, err := spiffeid.TrustDomainFromURI(u); err == nil && td != c.td {
			return nil, fmt.Errorf("root certificate %s: is for trust domain %q, configured %q", path, td.Name(), c.td.Name())
		}
	}
	return cert, nil
}

// parseRootKey parses the persisted root key, PKCS#8 or SEC 1.
func parseRootKey(path string, data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("root key %s: no PEM data", path)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("root key %s: PEM block is %q, want PRIVATE KEY or EC PRIVATE KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("root key %s: %w", path, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("root key %s: key is %s, want ECDSA P-256", path, keyKind(key))
	}
	return ec, nil
}

// generate makes a self-signed ECDSA P-256 root for the trust domain.
func (c *CA) generate() (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{c.td.Name()}},
		NotBefore:             now.Add(-c.cfg.Backdate),
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// No path length limit, so that a later hierarchy can put
		// intermediates (per-cluster CAs) under this root.
		URIs: []*url.URL{c.td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing generated root certificate: %w", err)
	}
	return &authority{cert: cert, key: key, roots: []*x509.Certificate{cert}}, nil
}

// persist writes the root to dir: key first, certificate last, each through
// a rename so that a crash never leaves a truncated file.
func persist(dir string, a *authority) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating CA directory %s: %w", dir, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return fmt.Errorf("encoding root key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFileAtomic(filepath.Join(dir, RootKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw})
	// The certificate is public; 0644 lets tools read the bundle.
	return writeFileAtomic(filepath.Join(dir, RootCertFile), certPEM, 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	// CreateTemp uses 0600; set the final mode before any data lands.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// randomSerial returns a random positive serial below 2^128: 128 random bits
// are above the 64 the CA/Browser baseline asks for and stay within RFC 5280's
// 20 octets.
func randomSerial() (*big.Int, error) {
	serialLimit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		// RFC 5280 requires a positive serial.
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// keyKind describes a key for error messages.
func keyKind(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *ecdsa.PrivateKey:
		return "ECDSA " + k.Curve.Params().Name
	default:
		return fmt.Sprintf("%T", k)
	}
}
