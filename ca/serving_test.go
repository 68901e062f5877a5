package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"
)

func TestSignServing(t *testing.T) {
	c, err := New(DefaultConfig(), discard())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignServing(&key.PublicKey, []string{"warren-ca.warren-system.svc"}, []net.IP{net.IPv4(10, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	pool := x509.NewCertPool()
	pool.AddCert(c.Roots()[0])
	for _, name := range []string{"warren-ca.warren-system.svc", "10.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("verifying for %s: %v", name, err)
		}
	}
	// It must never pass as a workload certificate.
	if len(leaf.URIs) != 0 {
		t.Errorf("serving certificate has URI SANs %v", leaf.URIs)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "warren-ca.warren-system.svc", Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("serving certificate is valid for client authentication")
	}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		pub  any
		dns  []string
		ttl  time.Duration
		want string
	}{
		"rsa key":  {pub: &rsaKey.PublicKey, dns: []string{"x"}, ttl: time.Hour, want: "want ECDSA P-256"},
		"no names": {pub: &key.PublicKey, ttl: time.Hour, want: "at least one DNS name"},
		"no ttl":   {pub: &key.PublicKey, dns: []string{"x"}, want: "must be positive"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := c.SignServing(tc.pub, tc.dns, nil, tc.ttl); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
