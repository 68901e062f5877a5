package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const testID = "spiffe://cluster.local/ns/default/sa/web"

func newTestCA(t testing.TB, mod func(*Config)) *CA {
	t.Helper()
	cfg := DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCSR returns a DER CSR signed by key with the given URI SANs.
func newCSR(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	return csrWith(t, key, func(r *x509.CertificateRequest) {
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			r.URIs = append(r.URIs, u)
		}
	})
}

func csrWith(t testing.TB, key crypto.Signer, mod func(*x509.CertificateRequest)) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	mod(tmpl)
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSignRejects(t *testing.T) {
	c := newTestCA(t, nil)
	key := p256Key(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// 1024 bits keeps the test fast; the size is irrelevant, RSA is refused.
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	badSig := newCSR(t, key, testID)
	// The last byte lies inside the signature.
	badSig[len(badSig)-1] ^= 0xff

	tests := []struct {
		name    string
		csr     []byte
		wantErr string
	}{
		{name: "garbage", csr: []byte("definitely not DER"), wantErr: "parsing"},
		{name: "empty", csr: nil, wantErr: "parsing"},
		{name: "bad signature", csr: badSig, wantErr: "signature"},
		{name: "rsa key", csr: newCSR(t, rsaKey, testID), wantErr: "RSA 1024, want ECDSA P-256"},
		{name: "p384 key", csr: newCSR(t, p384, testID), wantErr: "ECDSA P-384, want ECDSA P-256"},
		{name: "sha384 signature", csr: csrWith(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{mustURL(t, testID)}
			r.SignatureAlgorithm = x509.ECDSAWithSHA384
		}), wantErr: "want ECDSA-SHA256"},
		{name: "no uri san", csr: newCSR(t, key), wantErr: "has 0 URI SANs"},
		{name: "two uri sans", csr: newCSR(t, key, testID, "spiffe://cluster.local/ns/default/sa/other"), wantErr: "has 2 URI SANs"},
		{name: "dns san", csr: csrWith(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{mustURL(t, testID)}
			r.DNSNames = []string{"web.default.svc"}
		}), wantErr: "DNS SANs"},
		{name: "ip san", csr: csrWith(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{mustURL(t, testID)}
			r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)}
		}), wantErr: "IP SANs"},
		{name: "email san", csr: csrWith(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{mustURL(t, testID)}
			r.EmailAddresses = []string{"a@b.c"}
		}), wantErr: "email SANs"},
		{name: "other trust domain", csr: newCSR(t, key, "spiffe://example.org/ns/default/sa/web"), wantErr: `not in trust domain "cluster.local"`},
		{name: "not spiffe", csr: newCSR(t, key, "https://cluster.local/ns/default/sa/web"), wantErr: "not a SPIFFE ID"},
		{name: "trust domain id", csr: newCSR(t, key, "spiffe://cluster.local"), wantErr: "has no path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.Sign(tt.csr, 0)
			if !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("Sign() = %v, %v; want ErrInvalidCSR", chain, err)
			}
			checkErr(t, err, tt.wantErr)
		})
	}
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestSignIssuesSVID(t *testing.T) {
	c := newTestCA(t, nil)
	now := time.Now().Truncate(time.Second)
	c.now = func() time.Time { return now }
	key := p256Key(t)
	// The CSR's subject must not leak into the leaf.
	csr := csrWith(t, key, func(r *x509.CertificateRequest) {
		r.URIs = []*url.URL{mustURL(t, testID)}
		r.Subject = pkix.Name{CommonName: "web"}
	})
	chain, err := c.Sign(csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(c.Roots()[0]) {
		t.Fatalf("chain is not [leaf, root]: %d certificates", len(chain))
	}
	leaf := chain[0]

	bundle := x509bundle.FromX509Authorities(c.TrustDomain(), c.Roots())
	id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id.String() != testID {
		t.Errorf("verified ID = %s, want %s", id, testID)
	}
	// Both ends of an HBONE connection use the same certificate.
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(c.Roots()), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf not valid for %v: %v", usage, err)
		}
	}

	type leafInfo struct {
		Subject     string
		URIs        []string
		DNSNames    []string
		IsCA        bool
		KeyUsage    x509.KeyUsage
		ExtKeyUsage []x509.ExtKeyUsage
		NotBefore   time.Time
		NotAfter    time.Time
		KeyMatches  bool
	}
	got := leafInfo{
		Subject:     leaf.Subject.String(),
		URIs:        []string{leaf.URIs[0].String()},
		DNSNames:    leaf.DNSNames,
		IsCA:        leaf.IsCA,
		KeyUsage:    leaf.KeyUsage,
		ExtKeyUsage: leaf.ExtKeyUsage,
		NotBefore:   leaf.NotBefore,
		NotAfter:    leaf.NotAfter,
		KeyMatches:  key.PublicKey.Equal(leaf.PublicKey),
	}
	want := leafInfo{
		URIs:        []string{testID},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   now.Add(-5 * time.Minute),
		NotAfter:    now.Add(24 * time.Hour),
		KeyMatches:  true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("leaf (-want +got):\n%s", diff)
	}
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestSignTTL(t *testing.T) {
	c := newTestCA(t, func(cfg *Config) {
		cfg.LeafTTL = time.Hour
		cfg.MaxTTL = 2 * time.Hour
	})
	root := c.Roots()[0]
	csr := newCSR(t, p256Key(t), testID)
	start := time.Now().Truncate(time.Second)

	tests := []struct {
		name string
		now  time.Time
		ttl  time.Duration
		want time.Time // NotAfter
	}{
		{name: "default", now: start, ttl: 0, want: start.Add(time.Hour)},
		{name: "negative means default", now: start, ttl: -time.Minute, want: start.Add(time.Hour)},
		{name: "shorter", now: start, ttl: 10 * time.Minute, want: start.Add(10 * time.Minute)},
		{name: "longer than default", now: start, ttl: 90 * time.Minute, want: start.Add(90 * time.Minute)},
		{name: "capped at max", now: start, ttl: 48 * time.Hour, want: start.Add(2 * time.Hour)},
		{name: "capped at root expiry", now: root.NotAfter.Add(-30 * time.Minute), ttl: 0, want: root.NotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.now = func() time.Time { return tt.now }
			chain, err := c.Sign(csr, tt.ttl)
			if err != nil {
				t.Fatal(err)
			}
			if got := chain[0].NotAfter; !got.Equal(tt.want) {
				t.Errorf("NotAfter = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSignSerialsDistinct(t *testing.T) {
	c := newTestCA(t, nil)
	csr := newCSR(t, p256Key(t), testID)
	const n = 64
	seen := make(map[string]bool, n)
	long := 0
	for range n {
		chain, err := c.Sign(csr, 0)
		if err != nil {
			t.Fatal(err)
		}
		s := chain[0].SerialNumber
		if s.Sign() <= 0 || s.BitLen() > 128 {
			t.Fatalf("serial %x out of range", s)
		}
		if seen[s.String()] {
			t.Fatalf("serial %x issued twice", s)
		}
		seen[s.String()] = true
		// A uniform 128-bit value has more than 120 bits with probability
		// 1-2^-7 each; nearly all should.
		if s.BitLen() > 120 {
			long++
		}
	}
	if long < n/2 {
		t.Errorf("only %d of %d serials longer than 120 bits; not random?", long, n)
	}
}

func TestSignFor(t *testing.T) {
	c := newTestCA(t, nil)
	csr := newCSR(t, p256Key(t), testID)
	if _, err := c.SignFor(csr, spiffeid.RequireFromString(testID), 0); err != nil {
		t.Errorf("matching identity: %v", err)
	}
	_, err := c.SignFor(csr, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other"), 0)
	if !errors.Is(err, ErrInvalidCSR) {
		t.Errorf("other identity: got %v, want ErrInvalidCSR", err)
	}
	if _, err := c.SignFor(csr, spiffeid.ID{}, 0); !errors.Is(err, ErrInvalidCSR) {
		t.Errorf("zero identity: got %v, want ErrInvalidCSR", err)
	}
}

// BenchmarkSign measures one CSR check and signature, the CA's per-request
// cost.
func BenchmarkSign(b *testing.B) {
	c := newTestCA(b, nil)
	csr := newCSR(b, p256Key(b), testID)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Sign(csr, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}
