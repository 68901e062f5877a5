package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
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
	"strings"
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

// authority is the signing certificate with its key, the chain above it
// and the roots currently trusted. Immutable.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
	// chain is what follows a leaf in an issued chain: cert, any
	// intermediates above it, and the root it chains to, last. For a
	// self-signed root it is just [cert].
	chain []*x509.Certificate
	// notAfter is the earliest expiry in chain: no leaf may outlive it.
	notAfter time.Time
	roots    []*x509.Certificate
}

// newAuthority fills in notAfter.
func newAuthority(key crypto.Signer, chain, roots []*x509.Certificate) *authority {
	a := &authority{cert: chain[0], key: key, chain: chain, roots: roots, notAfter: chain[0].NotAfter}
	for _, c := range chain[1:] {
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
	}
	return a
}

// New returns a CA for cfg.
//
// With cfg.Dir set it loads one of two layouts from there:
//
//   - Warren's own root: root.pem and root-key.pem, a self-signed ECDSA
//     P-256 CA for the trust domain and its key. When neither file exists
//     it generates a new root and writes both (the key with mode 0600, the
//     directory created with 0700 if missing). When only one exists it
//     fails rather than overwrite half of a root.
//   - Istio's plugged-in CA (the cacerts Secret): ca-cert.pem and ca-key.pem
//     sign, root-cert.pem is the trust bundle, cert-chain.pem links
//     ca-cert.pem to a root (see loadPlugged). All four must exist; nothing
//     is ever written.
//
// Both layouts at once is an error, as is a certificate or key that does
// not fit (not a CA, expired, mismatched key, chain not verifying). Errors
// name the file; they are not retryable without operator action except for
// transient I/O errors.
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
// chain to. It holds Warren's own root, or every root of a plugged-in CA's
// root-cert.pem (several during a rotation). The slice is a copy; the
// certificates must not be modified.
func (c *CA) Roots() []*x509.Certificate {
	return slices.Clone(c.auth.Load().roots)
}

func (c *CA) loadOrGenerate() (*authority, error) {
	own, err := existing(c.cfg.Dir, RootCertFile, RootKeyFile)
	if err != nil {
		return nil, err
	}
	plugged, err := existing(c.cfg.Dir, PluggedCertFile, PluggedKeyFile, PluggedRootFile, PluggedChainFile)
	if err != nil {
		return nil, err
	}
	switch {
	case len(own) > 0 && len(plugged) > 0:
		return nil, fmt.Errorf("CA directory %s holds both a Warren root (%s) and Istio plugged-in CA files (%s); keep one layout",
			c.cfg.Dir, strings.Join(own, ", "), strings.Join(plugged, ", "))
	case len(plugged) > 0:
		return c.loadPlugged()
	default:
		return c.loadOwn()
	}
}

// existing returns which of names exist in dir.
func existing(dir string, names ...string) ([]string, error) {
	var out []string
	for _, n := range names {
		_, err := os.Stat(filepath.Join(dir, n))
		switch {
		case err == nil:
			out = append(out, n)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("checking CA directory: %w", err)
		}
	}
	return out, nil
}

// loadOwn loads Warren's root.pem and root-key.pem, or generates and
// persists them when both are missing.
func (c *CA) loadOwn() (*authority, error) {
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

	cert, err := parseOneCert("root certificate", certPath, certPEM)
	if err != nil {
		return nil, err
	}
	// Warren's own root is ECDSA P-256 throughout, as the roots it
	// generates; other key types come with a plugged-in CA.
	if err := c.checkCACert("root certificate", certPath, cert, isP256, "ECDSA P-256"); err != nil {
		return nil, err
	}
	key, err := parseKey("root key", keyPath, keyPEM)
	if err != nil {
		return nil, err
	}
	if !isP256(key.Public()) {
		return nil, fmt.Errorf("root key %s: key is %s, want ECDSA P-256", keyPath, keyKind(key))
	}
	if err := matchKey("root key", keyPath, key, certPath, cert); err != nil {
		return nil, err
	}
	c.warnKeyMode(keyPath)
	c.log.Info("loaded root", "trust_domain", c.td.Name(), "dir", c.cfg.Dir, "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return newAuthority(key, []*x509.Certificate{cert}, []*x509.Certificate{cert}), nil
}

func (c *CA) warnKeyMode(path string) {
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		c.log.Warn("CA key is readable by group or others", "path", path, "mode", fi.Mode().Perm().String())
	}
}

// parseOneCert parses the first PEM block of data, which must be a
// certificate; what describes the file in errors.
func parseOneCert(what, path string, data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s %s: no PEM data", what, path)
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s %s: PEM block is %q, want CERTIFICATE", what, path, block.Type)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return cert, nil
}

// checkCACert checks that cert may sign leaves now: a CA allowed to sign
// certificates, with a key that keyOK accepts (want describes which, for
// the error), within its validity, and not for another trust domain.
func (c *CA) checkCACert(what, path string, cert *x509.Certificate, keyOK func(crypto.PublicKey) bool, want string) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("%s %s: not a CA certificate", what, path)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%s %s: key usage lacks certificate signing", what, path)
	}
	if !keyOK(cert.PublicKey) {
		return fmt.Errorf("%s %s: public key is %s, want %s", what, path, keyKind(cert.PublicKey), want)
	}
	now := c.now()
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%s %s: expired at %s", what, path, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("%s %s: not valid before %s", what, path, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	// A CA need not carry a SPIFFE ID, but one naming another trust domain
	// means Dir belongs to a different mesh.
	for _, u := range cert.URIs {
		if td, err := spiffeid.TrustDomainFromURI(u); err == nil && td != c.td {
			return fmt.Errorf("%s %s: is for trust domain %q, configured %q", what, path, td.Name(), c.td.Name())
		}
	}
	return nil
}

// parseKey parses a PEM private key: PKCS#8, SEC 1 (EC) or PKCS#1 (RSA).
// It does not restrict the key type.
func parseKey(what, path string, data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s %s: no PEM data", what, path)
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
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s %s: PEM block is %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", what, path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	// Callers check the key type against their own policy.
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s %s: key is %s, which cannot sign", what, path, keyKind(key))
	}
	return signer, nil
}

// matchKey checks that key is the private half of cert's public key.
func matchKey(what, keyPath string, key crypto.Signer, certPath string, cert *x509.Certificate) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("%s %s does not match the certificate in %s", what, keyPath, certPath)
	}
	return nil
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
	return newAuthority(key, []*x509.Certificate{cert}, []*x509.Certificate{cert}), nil
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
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	default:
		return fmt.Sprintf("%T", k)
	}
}

func isP256(pub crypto.PublicKey) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}

// minRSABits is the smallest RSA CA key accepted: 2048 bits is NIST's floor
// for signatures (SP 800-131A) and the size Istio's tooling generates.
const minRSABits = 2048

// pluggedKeyWant describes what isPluggedKey accepts (minRSABits spelt
// out, since a constant cannot format it).
const pluggedKeyWant = "RSA of at least 2048 bits, ECDSA P-256 or P-384"

// isPluggedKey accepts the CA keys plugged-in Istio CAs commonly use: RSA
// of at least minRSABits, ECDSA P-256 or P-384. Leaves stay ECDSA P-256.
func isPluggedKey(pub crypto.PublicKey) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return k.Curve == elliptic.P256() || k.Curve == elliptic.P384()
	case *rsa.PublicKey:
		return k.N.BitLen() >= minRSABits
	}
	return false
}
