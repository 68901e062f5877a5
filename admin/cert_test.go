package admin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/identity"
)

func selfSigned(t *testing.T, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Unix(1e9, 0), NotAfter: time.Unix(2e9, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A valid certificate is dumped with its chain and roots as PEM that
// decodes back to the same certificates.
func TestRenderCertPEM(t *testing.T) {
	leaf, root := selfSigned(t, 1234), selfSigned(t, 99)
	got := renderCert(identity.CertInfo{
		ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), State: identity.StateValid,
		Chain: []*x509.Certificate{leaf}, Roots: []*x509.Certificate{root},
	})
	if got.State != "Available" || len(got.CertChain) != 1 || len(got.RootCerts) != 1 {
		t.Fatalf("rendered %+v", got)
	}
	for i, pair := range []struct {
		c    Cert
		want *x509.Certificate
	}{{got.CertChain[0], leaf}, {got.RootCerts[0], root}} {
		block, _ := pem.Decode([]byte(pair.c.PEM))
		if block == nil || string(block.Bytes) != string(pair.want.Raw) {
			t.Errorf("entry %d: PEM does not decode to the certificate", i)
		}
		if pair.c.SerialNumber != pair.want.SerialNumber.String() || pair.c.ExpirationTime != "2033-05-18T03:33:20Z" {
			t.Errorf("entry %d: serial %s, expiry %s", i, pair.c.SerialNumber, pair.c.ExpirationTime)
		}
	}
}
