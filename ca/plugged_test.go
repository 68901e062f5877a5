package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/warren-mesh/warren/ca"
	"github.com/warren-mesh/warren/ca/catest"
)

const pluggedID = "spiffe://cluster.local/ns/default/sa/web"

func newPluggedCA(t *testing.T, files map[string][]byte) (*ca.CA, error) {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := ca.DefaultConfig()
	cfg.Dir = dir
	return ca.New(cfg, slog.New(slog.DiscardHandler))
}

func csrFor(t *testing.T, id string) []byte {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, catest.P256(t))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func p384(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serials(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.CommonName+"/"+c.SerialNumber.String())
	}
	return out
}

// TestPluggedSigns loads Istio layouts of several shapes and checks that
// Sign and SignServing return [leaf, intermediates..., root] chains that
// verify against Roots.
func TestPluggedSigns(t *testing.T) {
	rsa2048 := rsaKey(t, 2048)
	rsaPKCS1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsa2048)})
	ecKey := catest.P256(t)
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})
	other := catest.New(t, catest.Options{})

	// Three levels: root -> mid -> issuing CA.
	three := catest.New(t, catest.Options{Intermediate: func(c *x509.Certificate) { c.MaxPathLenZero = false }})
	issuingKey := catest.P256(t)
	issuingDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:          big.NewInt(3),
		NotBefore:             three.Intermediate.NotBefore,
		NotAfter:              three.Intermediate.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, three.Intermediate, issuingKey.Public(), three.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	issuing, err := x509.ParseCertificate(issuingDER)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		h         *catest.Hierarchy
		mod       func(h *catest.Hierarchy, files map[string][]byte)
		wantChain func(h *catest.Hierarchy) []*x509.Certificate // after the leaf
		wantRoots func(h *catest.Hierarchy) []*x509.Certificate
	}{
		{name: "istio tooling: chain is ca-cert then root", h: catest.New(t, catest.Options{})},
		{name: "chain holds the intermediate only", h: catest.New(t, catest.Options{}), mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedChainFile] = catest.PEM(h.Intermediate)
		}},
		{name: "chain without ca-cert", h: catest.New(t, catest.Options{}), mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedChainFile] = catest.PEM(h.Root)
		}},
		{name: "empty chain", h: catest.New(t, catest.Options{}), mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedChainFile] = nil
		}},
		{name: "ca-cert is the root, empty chain", h: catest.New(t, catest.Options{}), mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedCertFile] = catest.PEM(h.Root)
			f[ca.PluggedKeyFile] = catest.KeyPEM(t, h.RootKey)
			f[ca.PluggedChainFile] = []byte("\n")
		}, wantChain: func(h *catest.Hierarchy) []*x509.Certificate { return []*x509.Certificate{h.Root} }},
		{name: "several roots", h: other, mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedRootFile] = catest.PEM(three.Root, h.Root)
		}, wantRoots: func(h *catest.Hierarchy) []*x509.Certificate { return []*x509.Certificate{three.Root, h.Root} }},
		{name: "rsa intermediate, pkcs1 key", h: catest.New(t, catest.Options{IntermediateKey: rsa2048}), mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedKeyFile] = rsaPKCS1
		}},
		{name: "p384 intermediate, rsa root", h: catest.New(t, catest.Options{IntermediateKey: p384(t), RootKey: rsa2048})},
		{name: "sec1 key", h: catest.New(t, catest.Options{IntermediateKey: ecKey}), mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedKeyFile] = sec1
		}},
		{name: "three levels", h: three, mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedCertFile] = catest.PEM(issuing)
			f[ca.PluggedKeyFile] = catest.KeyPEM(t, issuingKey)
			f[ca.PluggedChainFile] = catest.PEM(issuing, h.Intermediate, h.Root)
		}, wantChain: func(h *catest.Hierarchy) []*x509.Certificate {
			return []*x509.Certificate{issuing, h.Intermediate, h.Root}
		}},
		{name: "three levels, chain in ca-cert.pem", h: three, mod: func(h *catest.Hierarchy, f map[string][]byte) {
			f[ca.PluggedCertFile] = catest.PEM(issuing, h.Intermediate)
			f[ca.PluggedKeyFile] = catest.KeyPEM(t, issuingKey)
			f[ca.PluggedChainFile] = nil
		}, wantChain: func(h *catest.Hierarchy) []*x509.Certificate {
			return []*x509.Certificate{issuing, h.Intermediate, h.Root}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := tt.h.Files(t)
			if tt.mod != nil {
				tt.mod(tt.h, files)
			}
			c, err := newPluggedCA(t, files)
			if err != nil {
				t.Fatal(err)
			}
			wantRoots := []*x509.Certificate{tt.h.Root}
			if tt.wantRoots != nil {
				wantRoots = tt.wantRoots(tt.h)
			}
			if diff := cmp.Diff(serials(wantRoots), serials(c.Roots())); diff != "" {
				t.Errorf("Roots (-want +got):\n%s", diff)
			}
			wantChain := []*x509.Certificate{tt.h.Intermediate, tt.h.Root}
			if tt.wantChain != nil {
				wantChain = tt.wantChain(tt.h)
			}

			chain, err := c.Sign(csrFor(t, pluggedID), 0)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(serials(wantChain), serials(chain[1:])); diff != "" {
				t.Errorf("chain after the leaf (-want +got):\n%s", diff)
			}
			if err := chain[0].CheckSignatureFrom(wantChain[0]); err != nil {
				t.Errorf("leaf not signed by the signing CA: %v", err)
			}
			// As a peer sees it: leaf and intermediates presented, roots
			// from the bundle.
			bundle := x509bundle.FromX509Authorities(c.TrustDomain(), c.Roots())
			if id, _, err := x509svid.Verify(chain[:len(chain)-1], bundle); err != nil || id.String() != pluggedID {
				t.Errorf("x509svid.Verify = %v, %v", id, err)
			}
			inter := x509.NewCertPool()
			for _, ic := range chain[1 : len(chain)-1] {
				inter.AddCert(ic)
			}
			roots := x509.NewCertPool()
			for _, r := range c.Roots() {
				roots.AddCert(r)
			}
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
					t.Errorf("leaf not valid for %v: %v", u, err)
				}
			}
			if _, ok := chain[0].PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("leaf key is %T, want ECDSA", chain[0].PublicKey)
			}

			schain, err := c.SignServing(catest.P256(t).Public(), []string{"warren-ca.example"}, []net.IP{net.IPv4(10, 0, 0, 1)}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(serials(wantChain), serials(schain[1:])); diff != "" {
				t.Errorf("serving chain after the leaf (-want +got):\n%s", diff)
			}
			if _, err := schain[0].Verify(x509.VerifyOptions{DNSName: "warren-ca.example", Roots: roots, Intermediates: inter}); err != nil {
				t.Errorf("serving certificate: %v", err)
			}
		})
	}
}

// TestPluggedLeafLifetime checks that leaves never outlive the
// intermediate or the root.
func TestPluggedLeafLifetime(t *testing.T) {
	soon := time.Now().Add(30 * time.Minute).Truncate(time.Second)
	tests := []struct {
		name string
		h    *catest.Hierarchy
		want time.Time
	}{
		{name: "intermediate expires first", h: catest.New(t, catest.Options{Intermediate: func(c *x509.Certificate) { c.NotAfter = soon }}), want: soon},
		// The root lives 2 h from an hour ago; the intermediate a day.
		{name: "root expires first", h: catest.New(t, catest.Options{Lifetime: 2 * time.Hour, Intermediate: func(c *x509.Certificate) {
			c.NotAfter = c.NotBefore.Add(24 * time.Hour)
		}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := newPluggedCA(t, tt.h.Files(t))
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want.IsZero() {
				want = tt.h.Root.NotAfter
			}
			chain, err := c.Sign(csrFor(t, pluggedID), 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := chain[0].NotAfter; !got.Equal(want) {
				t.Errorf("leaf NotAfter = %v, want %v (default lifetime is 24 h)", got, want)
			}
		})
	}
}

// TestPluggedBadFiles checks that every inconsistency in the Istio layout
// fails with an error naming the file, and that nothing is written.
func TestPluggedBadFiles(t *testing.T) {
	good := catest.New(t, catest.Options{})
	otherTD := catest.New(t, catest.Options{Intermediate: func(c *x509.Certificate) {
		c.URIs = []*url.URL{{Scheme: "spiffe", Host: "example.org"}}
	}})
	stranger := catest.New(t, catest.Options{})
	mk := func(mod func(*x509.Certificate)) *catest.Hierarchy {
		return catest.New(t, catest.Options{Intermediate: mod})
	}
	rsa1024 := rsaKey(t, 1024)
	type files = map[string][]byte
	tests := []struct {
		name    string
		h       *catest.Hierarchy
		mod     func(h *catest.Hierarchy, f files)
		file    string // named in the error; empty: the directory
		wantErr string // ";"-separated parts
	}{
		{name: "missing ca-cert", h: good, mod: func(_ *catest.Hierarchy, f files) { delete(f, ca.PluggedCertFile) }, file: ca.PluggedCertFile, wantErr: "incomplete;missing"},
		{name: "missing ca-key", h: good, mod: func(_ *catest.Hierarchy, f files) { delete(f, ca.PluggedKeyFile) }, file: ca.PluggedKeyFile, wantErr: "incomplete;missing"},
		{name: "missing root-cert", h: good, mod: func(_ *catest.Hierarchy, f files) { delete(f, ca.PluggedRootFile) }, file: ca.PluggedRootFile, wantErr: "incomplete;missing"},
		{name: "missing cert-chain", h: good, mod: func(_ *catest.Hierarchy, f files) { delete(f, ca.PluggedChainFile) }, file: ca.PluggedChainFile, wantErr: "incomplete;missing"},
		{name: "both layouts", h: good, mod: func(h *catest.Hierarchy, f files) {
			f[ca.RootCertFile] = catest.PEM(h.Root)
			f[ca.RootKeyFile] = catest.KeyPEM(t, h.RootKey)
		}, wantErr: "both a Warren root (root.pem, root-key.pem) and Istio plugged-in CA files (ca-cert.pem"},
		{name: "both layouts, half a root", h: good, mod: func(h *catest.Hierarchy, f files) {
			f[ca.RootKeyFile] = catest.KeyPEM(t, h.RootKey)
		}, wantErr: "both a Warren root (root-key.pem)"},
		{name: "key mismatch", h: good, mod: func(_ *catest.Hierarchy, f files) { f[ca.PluggedKeyFile] = catest.KeyPEM(t, catest.P256(t)) },
			file: ca.PluggedKeyFile, wantErr: "does not match the certificate in;" + ca.PluggedCertFile},
		{name: "key is the root's", h: good, mod: func(h *catest.Hierarchy, f files) { f[ca.PluggedKeyFile] = catest.KeyPEM(t, h.RootKey) },
			file: ca.PluggedKeyFile, wantErr: "does not match"},
		{name: "key not pem", h: good, mod: func(_ *catest.Hierarchy, f files) { f[ca.PluggedKeyFile] = []byte("secret") },
			file: ca.PluggedKeyFile, wantErr: "no PEM data"},
		{name: "key rsa 1024", h: catest.New(t, catest.Options{IntermediateKey: rsa1024}),
			file: ca.PluggedCertFile, wantErr: "RSA 1024, want RSA of at least 2048 bits"},
		{name: "cert not pem", h: good, mod: func(_ *catest.Hierarchy, f files) { f[ca.PluggedCertFile] = []byte("hello") },
			file: ca.PluggedCertFile, wantErr: "no PEM certificate"},
		{name: "cert not a CA", h: mk(func(c *x509.Certificate) { c.IsCA = false; c.MaxPathLenZero = false }),
			file: ca.PluggedCertFile, wantErr: "not a CA certificate"},
		{name: "cert without certsign", h: mk(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }),
			file: ca.PluggedCertFile, wantErr: "lacks certificate signing"},
		{name: "cert expired", h: mk(func(c *x509.Certificate) { c.NotAfter = time.Now().Add(-time.Minute) }),
			file: ca.PluggedCertFile, wantErr: "expired at"},
		{name: "cert not yet valid", h: mk(func(c *x509.Certificate) { c.NotBefore = time.Now().Add(time.Hour) }),
			file: ca.PluggedCertFile, wantErr: "not valid before"},
		{name: "cert other trust domain", h: otherTD, file: ca.PluggedCertFile, wantErr: `trust domain "example.org", configured "cluster.local"`},
		{name: "cert server auth only", h: mk(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }),
			file: ca.PluggedCertFile, wantErr: "lacks client authentication"},
		{name: "chain not verifying: other root", h: good, mod: func(_ *catest.Hierarchy, f files) { f[ca.PluggedRootFile] = catest.PEM(stranger.Root) },
			file: ca.PluggedCertFile, wantErr: "does not chain to a root of;" + ca.PluggedRootFile + ";unknown authority"},
		{name: "chain not verifying: intermediate missing", h: good, mod: func(h *catest.Hierarchy, f files) {
			// An issuing CA under a second-level CA that nobody supplies.
			cert, key := issuingUnderMid(t, h)
			f[ca.PluggedCertFile] = catest.PEM(cert)
			f[ca.PluggedKeyFile] = catest.KeyPEM(t, key)
			f[ca.PluggedChainFile] = catest.PEM(cert, h.Root)
		}, file: ca.PluggedCertFile, wantErr: "does not chain to a root of;" + ca.PluggedChainFile + ";unknown authority"},
		{name: "root bundle not pem", h: good, mod: func(_ *catest.Hierarchy, f files) { f[ca.PluggedRootFile] = []byte("x") },
			file: ca.PluggedRootFile, wantErr: "root bundle;no PEM certificate"},
		{name: "root bundle holds a non-CA", h: good, mod: func(h *catest.Hierarchy, f files) {
			f[ca.PluggedRootFile] = catest.PEM(h.Root, nonCA(t))
		}, file: ca.PluggedRootFile, wantErr: "is not a CA"},
		{name: "chain file corrupt", h: good, mod: func(_ *catest.Hierarchy, f files) {
			f[ca.PluggedChainFile] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 3, 1, 2, 3}})
		}, file: ca.PluggedChainFile, wantErr: "certificate chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := tt.h.Files(t)
			if tt.mod != nil {
				tt.mod(tt.h, files)
			}
			dir := t.TempDir()
			for name, data := range files {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg := ca.DefaultConfig()
			cfg.Dir = dir
			_, err := ca.New(cfg, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("New succeeded")
			}
			want := strings.Split(tt.wantErr, ";")
			if tt.file != "" {
				want = append(want, filepath.Join(dir, tt.file))
			} else {
				want = append(want, dir)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != len(files) {
				t.Errorf("directory holds %d entries after the failure, want the %d written", len(entries), len(files))
			}
		})
	}
}

// issuingUnderMid returns a CA certificate and its key, signed by a new CA
// under h's root.
func issuingUnderMid(t *testing.T, h *catest.Hierarchy) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := catest.P256(t)
	mid := catest.New(t, catest.Options{RootKey: h.RootKey, Intermediate: func(c *x509.Certificate) { c.MaxPathLenZero = false }})
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:          big.NewInt(9),
		NotBefore:             mid.Intermediate.NotBefore,
		NotAfter:              mid.Intermediate.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, mid.Intermediate, key.Public(), mid.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func nonCA(t *testing.T) *x509.Certificate {
	t.Helper()
	key := catest.P256(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(5), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), crypto.Signer(key))
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
