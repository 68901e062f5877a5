package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{name: "default", mod: func(*Config) {}},
		{name: "empty trust domain", mod: func(c *Config) { c.TrustDomain = "" }, wantErr: "trust domain is empty"},
		{name: "uri trust domain", mod: func(c *Config) { c.TrustDomain = "spiffe://example.org" }, wantErr: "bare name"},
		{name: "bad trust domain", mod: func(c *Config) { c.TrustDomain = "Exa mple" }, wantErr: "trust domain"},
		{name: "zero leaf ttl", mod: func(c *Config) { c.LeafTTL = 0 }, wantErr: "leaf TTL"},
		{name: "zero max ttl", mod: func(c *Config) { c.MaxTTL = 0 }, wantErr: "max TTL"},
		{name: "leaf above max", mod: func(c *Config) { c.LeafTTL = 48 * time.Hour }, wantErr: "exceeds max TTL"},
		{name: "negative backdate", mod: func(c *Config) { c.Backdate = -time.Second }, wantErr: "backdate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mod(&cfg)
			checkErr(t, cfg.Validate(), tt.wantErr)
		})
	}
}

// checkErr fails unless err contains every ";"-separated part of want, or
// err is nil when want is empty.
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	for part := range strings.SplitSeq(want, ";") {
		if !strings.Contains(err.Error(), part) {
			t.Fatalf("error %q does not contain %q", err, part)
		}
	}
}

func TestNewPersistReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca") // New creates it
	cfg := DefaultConfig()
	cfg.Dir = dir
	first, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	root := first.Roots()[0]

	fi, err := os.Stat(filepath.Join(dir, RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode = %v, want 0600", got)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}

	type rootInfo struct {
		IsCA      bool
		URIs      []string
		Org       []string
		CN        string
		CertSign  bool
		PublicKey string
		Lifetime  time.Duration
	}
	var uris []string
	for _, u := range root.URIs {
		uris = append(uris, u.String())
	}
	got := rootInfo{
		IsCA:      root.IsCA && root.BasicConstraintsValid,
		URIs:      uris,
		Org:       root.Subject.Organization,
		CN:        root.Subject.CommonName,
		CertSign:  root.KeyUsage&x509.KeyUsageCertSign != 0,
		PublicKey: keyKind(root.PublicKey),
		Lifetime:  root.NotAfter.Sub(root.NotBefore),
	}
	want := rootInfo{
		IsCA:      true,
		URIs:      []string{"spiffe://cluster.local"},
		Org:       []string{"cluster.local"},
		CertSign:  true,
		PublicKey: "ECDSA P-256",
		Lifetime:  rootLifetime + cfg.Backdate,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("root (-want +got):\n%s", diff)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}

	second, err := New(cfg, discard())
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !second.Roots()[0].Equal(root) {
		t.Error("reloaded root differs from the generated one")
	}
	// The reloaded key must be the one that signed the root: a leaf from the
	// second CA verifies against the first CA's root.
	chain, err := second.Sign(newCSR(t, p256Key(t), "spiffe://cluster.local/ns/a/sa/b"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := chain[0].CheckSignatureFrom(root); err != nil {
		t.Errorf("leaf from reloaded CA does not verify against the original root: %v", err)
	}
}

func TestNewAcceptsSEC1Key(t *testing.T) {
	dir := t.TempDir()
	key := p256Key(t)
	writeRoot(t, dir, selfSigned(t, key, nil), sec1PEM(t, key))
	cfg := DefaultConfig()
	cfg.Dir = dir
	if _, err := New(cfg, discard()); err != nil {
		t.Fatal(err)
	}
}

func TestNewBadFiles(t *testing.T) {
	key := p256Key(t)
	goodCert := selfSigned(t, key, nil)
	goodKey := pkcs8PEM(t, key)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cert    []byte // nil: file absent
		key     []byte // nil: file absent
		wantErr string // ";"-separated parts; the file name is always checked
		file    string
	}{
		{name: "cert not pem", cert: []byte("hello"), key: goodKey, file: RootCertFile, wantErr: "no PEM data"},
		{name: "cert wrong pem type", cert: goodKey, key: goodKey, file: RootCertFile, wantErr: `"PRIVATE KEY", want CERTIFICATE`},
		{name: "cert corrupt der", cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), key: goodKey, file: RootCertFile, wantErr: "x509"},
		{name: "cert not ca", cert: selfSigned(t, key, func(c *x509.Certificate) { c.IsCA = false }), key: goodKey, file: RootCertFile, wantErr: "not a CA"},
		{name: "cert without certsign", cert: selfSigned(t, key, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }), key: goodKey, file: RootCertFile, wantErr: "certificate signing"},
		{name: "cert p384", cert: selfSigned(t, p384, nil), key: pkcs8PEM(t, p384), file: RootCertFile, wantErr: "ECDSA P-384, want ECDSA P-256"},
		{name: "cert expired", cert: selfSigned(t, key, func(c *x509.Certificate) {
			c.NotBefore = time.Now().Add(-48 * time.Hour)
			c.NotAfter = time.Now().Add(-24 * time.Hour)
		}), key: goodKey, file: RootCertFile, wantErr: "expired"},
		{name: "cert other trust domain", cert: selfSigned(t, key, func(c *x509.Certificate) {
			c.URIs = []*url.URL{{Scheme: "spiffe", Host: "example.org"}}
		}), key: goodKey, file: RootCertFile, wantErr: `trust domain "example.org", configured "cluster.local"`},
		{name: "key not pem", cert: goodCert, key: []byte("nope"), file: RootKeyFile, wantErr: "no PEM data"},
		{name: "key wrong pem type", cert: goodCert, key: goodCert, file: RootKeyFile, wantErr: `"CERTIFICATE"`},
		{name: "key corrupt", cert: goodCert, key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), file: RootKeyFile, wantErr: "asn1"},
		{name: "key ed25519", cert: goodCert, key: pkcs8PEM(t, edKey), file: RootKeyFile, wantErr: "ed25519.PrivateKey, want ECDSA P-256"},
		{name: "key mismatched", cert: goodCert, key: pkcs8PEM(t, p256Key(t)), file: RootKeyFile, wantErr: "does not match the certificate in"},
		{name: "key missing", cert: goodCert, file: RootKeyFile, wantErr: "missing"},
		{name: "cert missing", key: goodKey, file: RootCertFile, wantErr: "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeRoot(t, dir, tt.cert, tt.key)
			cfg := DefaultConfig()
			cfg.Dir = dir
			_, err := New(cfg, discard())
			checkErr(t, err, filepath.Join(dir, tt.file)+";"+tt.wantErr)
			// A failed load must never replace what the operator has.
			for name, want := range map[string][]byte{RootCertFile: tt.cert, RootKeyFile: tt.key} {
				got, _ := os.ReadFile(filepath.Join(dir, name))
				if string(got) != string(want) {
					t.Errorf("%s was modified", name)
				}
			}
		})
	}
}

func writeRoot(t *testing.T, dir string, cert, key []byte) {
	t.Helper()
	if cert != nil {
		if err := os.WriteFile(filepath.Join(dir, RootCertFile), cert, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if key != nil {
		if err := os.WriteFile(filepath.Join(dir, RootKeyFile), key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func p256Key(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pkcs8PEM(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func sec1PEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// selfSigned returns a PEM root for cluster.local signed by key, after mod
// has changed the template.
func selfSigned(t *testing.T, key crypto.Signer, mod func(*x509.Certificate)) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: "cluster.local"}},
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
